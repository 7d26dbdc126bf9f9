"""Right to erasure by crypto-shredding (docs/security-model.md, 'Erasure and legal hold'): an admin
erases a contact for good."""

from __future__ import annotations

from typing import Any

from gateway.messaging.contacts import NO_VALUE
from tests.portal.test_staff_support import audit_entries, signed_in
from tests.support.harness import CLIENT_PHONE

SECRET = "Your biopsy results are ready"
NAME = "Alex Example"


async def secure_contact(gw: Any) -> tuple[str, str]:
    """A contact with a secure thread; returns (contact id, thread id)."""
    sent = await gw.api_send(to={"phone": CLIENT_PHONE, "name": NAME}, body=SECRET, secure=True)
    await gw.drain()
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None
    return contact.id, sent["thread_id"]


async def test_an_admin_erases_a_contact_for_good(gw):
    contact_id, thread_id = await secure_contact(gw)
    token = gw.last_link_token()
    opened = await gw.open_link(token)
    assert opened.status == 303
    assert (await gw.client.get("/s/thread")).status == 200  # the client's session works before
    dek_id = (await gw.store.contacts.find_one({"_id": contact_id}))["dek_id"]

    browser, admin = await signed_in(gw, role="admin")
    async with browser as b:
        page = await (await b.get(f"/staff/contacts/{contact_id}")).text()
        assert f'action="/staff/contacts/{contact_id}/erase"' in page and 'name="confirm"' in page
        resp = await b.post(f"/staff/contacts/{contact_id}/erase", {"confirm": "ERASE"},
                            csrf_from=f"/staff/contacts/{contact_id}")
        assert resp.status == 303, await resp.text()
        assert resp.headers["Location"] == "/staff/contacts"
        assert (await b.get(f"/staff/contacts/{contact_id}")).status == 404
        listing = await (await b.get("/staff/contacts")).text()
        assert contact_id not in listing and NAME not in listing

    doc = await gw.store.contacts.find_one({"_id": contact_id})
    assert doc["erased_at"] is not None
    for field in ("name", "phone", "email", "phone_hint", "email_hint", "pin_hash"):
        assert field not in doc, field
    assert doc["phone_bidx"] == NO_VALUE + contact_id and doc["email_bidx"] == NO_VALUE + contact_id
    assert CLIENT_PHONE not in repr(doc) and NAME not in repr(doc)
    key = await gw.store.keys.find_one({"_id": dek_id})
    assert key is not None and "wrapped" not in key and key.get("destroyed_at")

    # The message bodies no longer open.
    resp = await gw.client.get(f"/api/v1/threads/{thread_id}/messages", headers=gw.auth())
    assert SECRET not in await resp.text()
    # The messages stay (the record that they were sent), their text is gone for good.
    assert resp.status == 200
    assert [m["body"] for m in (await resp.json())["messages"]] == [None]

    # The client's session and link give no access.
    thread_page = await gw.client.get("/s/thread")
    assert thread_page.status != 200 and SECRET not in await thread_page.text()
    assert await gw.store.sessions.count_documents({"contact_id": contact_id}) == 0
    assert await gw.store.reply_tokens.count_documents({"contact_id": contact_id}) == 0
    assert await gw.store.links.count_documents({"contact_id": contact_id, "revoked_at": None}) == 0
    link_page = await gw.client.get(f"/s/{token}")
    assert link_page.status != 200 or 'name="csrf"' not in await link_page.text()

    # The same person writing again is a new contact, not linked to the erased one.
    await gw.inbound_sms("Hello again")
    await gw.drain()
    fresh = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert fresh is not None and fresh.id != contact_id

    erased = await audit_entries(gw, "contact.erased")
    assert [(e["actor"]["id"], e["contact_id"]) for e in erased] == [(admin.id, contact_id)]
    assert CLIENT_PHONE not in repr(erased) and NAME not in repr(erased)
    assert await gw.services.audit.verify(gw.org.id) is None

    # Idempotent: erasing again changes nothing.
    assert await gw.services.contacts.erase(gw.org.id, contact_id) is False
    assert await gw.store.contacts.find_one({"_id": contact_id}) == doc


async def test_an_agent_cannot_erase(gw):
    contact_id, _ = await secure_contact(gw)
    browser, _ = await signed_in(gw, role="agent")
    async with browser as b:
        page = await (await b.get(f"/staff/contacts/{contact_id}")).text()
        assert "/erase" not in page  # admins only see the form
        resp = await b.post(f"/staff/contacts/{contact_id}/erase", {"confirm": "ERASE"},
                            csrf_from=f"/staff/contacts/{contact_id}")
    assert resp.status == 403
    assert (await gw.services.contacts.get(gw.org.id, contact_id)).id == contact_id
    assert await audit_entries(gw, "contact.erased") == []


async def test_erasure_needs_the_typed_confirmation(gw):
    contact_id, _ = await secure_contact(gw)
    browser, _ = await signed_in(gw, role="admin")
    async with browser as b:
        for form in ({}, {"confirm": "erase"}, {"confirm": "yes"}):
            resp = await b.post(f"/staff/contacts/{contact_id}/erase", form,
                                csrf_from=f"/staff/contacts/{contact_id}")
            assert resp.status == 422
            assert "type ERASE" in await resp.text()
    contact = await gw.services.contacts.get(gw.org.id, contact_id)
    assert (await gw.services.contacts.reveal(contact))["phone"] == CLIENT_PHONE
    assert await audit_entries(gw, "contact.erased") == []
