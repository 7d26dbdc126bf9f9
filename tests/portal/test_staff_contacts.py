"""Contacts: list and detail with consent per channel, opt-out history and PIN status."""

from __future__ import annotations

from tests.portal.test_staff_support import audit_entries, signed_in
from tests.support.harness import CLIENT_PHONE


async def test_contact_list_and_detail_show_consent_history_and_pin(gw):
    await gw.api_send(to={"phone": CLIENT_PHONE, "name": "Alex Example"}, body="hello")
    await gw.inbound_sms("STOP")
    await gw.drain()
    await gw.inbound_sms("START")
    await gw.drain()
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    await gw.services.contacts.set_pin(gw.org.id, contact.id, "246810")
    browser, member = await signed_in(gw)
    async with browser as b:
        listing = await (await b.get("/staff/contacts")).text()
        assert "Alex Example" in listing and "opted_in" in listing and "set" in listing
        assert CLIENT_PHONE not in listing  # the list shows masked hints only
        detail = await b.get(f"/staff/contacts/{contact.id}")
        html = await detail.text()
    assert detail.status == 200
    assert CLIENT_PHONE in html and "Alex Example" in html
    assert "sms: opted_out (sms:keyword)" in html and "sms: opted_in (sms:keyword)" in html
    assert "A PIN is set" in html
    viewed = await audit_entries(gw, "contact.viewed")
    assert [(e["actor"]["id"], e["contact_id"]) for e in viewed] == [(member.id, contact.id)]


async def test_contact_search_is_an_exact_phone_match(gw):
    await gw.api_send(to={"phone": CLIENT_PHONE, "name": "Alex Example"}, body="hello")
    await gw.api_send(to={"phone": "+15551230002", "name": "Blake Other"}, body="hello")
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get("/staff/contacts?q=%2B15551230002")).text()
        assert "Blake Other" in html and "Alex Example" not in html
        none = await (await b.get("/staff/contacts?q=%2B15559990000")).text()
        assert "No contacts found" in none
