"""Which PIN a link asks for (gateway/rules/pin.py), the org's pin_required at send time, and the
PIN staff see and change on the thread page."""

from __future__ import annotations

import re

from tests.portal.test_staff_support import audit_entries, signed_in
from tests.support.harness import CLIENT_PHONE

BODY = "canary-p1n: your lab results"
API_PIN = "731902"
NEW_PIN = "264810"
NEW_PHONE = "+15551239877"
PIN_ERROR = "This organization requires a PIN for secure messages; set one for this contact first."


async def asks_for_pin(gw, token: str) -> bool:
    html = await (await gw.client.get(f"/s/{token}")).text()
    return 'name="pin"' in html


async def stored(gw) -> dict[str, int]:
    return {name: await getattr(gw.store, name).count_documents({"org_id": gw.org.id})
            for name in ("messages", "outbox", "links", "threads")}


async def test_api_secure_send_under_pin_required_without_any_pin_is_422_and_stores_nothing(gw):
    await gw.services.orgs.update_policy(gw.org.id, pin_required=True)
    resp = await gw.client.post("/api/v1/messages", json={"to": {"phone": CLIENT_PHONE}, "body": BODY},
                                headers=gw.auth())
    data = await resp.json()
    assert resp.status == 422 and data["error"]["code"] == "pin_required" and data["error"]["field"] == "pin"
    assert await stored(gw) == {"messages": 0, "outbox": 0, "links": 0, "threads": 0}
    await gw.drain()
    assert gw.sms_to(CLIENT_PHONE) == []
    # A standard message carries no link: no PIN needed.
    assert (await gw.api_send(body="Your appointment is confirmed.", secure=False))["secure"] is False
    # With a PIN given, the secure send goes; the thread then has a PIN, so later sends need none.
    first = await gw.api_send(body=BODY, pin=API_PIN)
    second = await gw.api_send(body="a second secure note")
    assert first["secure"] and second["secure"]
    await gw.drain()
    assert await asks_for_pin(gw, gw.last_link_token())


async def test_api_secure_send_under_pin_required_goes_to_a_contact_with_a_pin(gw):
    await gw.services.orgs.update_policy(gw.org.id, pin_required=True)
    contact, _ = await gw.services.contacts.find_or_create(gw.org.id, phone=CLIENT_PHONE)
    await gw.services.contacts.set_pin(gw.org.id, contact.id, NEW_PIN)
    await gw.api_send(body=BODY)
    await gw.drain()
    token = gw.last_link_token()
    assert await asks_for_pin(gw, token)
    assert (await gw.open_link(token, pin=NEW_PIN)).status == 303


async def test_staff_compose_under_pin_required_shows_the_form_error_and_keeps_the_draft(gw):
    await gw.services.orgs.update_policy(gw.org.id, pin_required=True)
    browser, _ = await signed_in(gw)
    async with browser as b:
        resp = await b.post("/staff/compose", {"phone": NEW_PHONE, "body": BODY, "secure": "1"})
        html = await resp.text()
    assert resp.status == 422
    assert PIN_ERROR in html and BODY in html and NEW_PHONE in html
    assert await gw.store.messages.count_documents({}) == 0 and await gw.store.outbox.count_documents({}) == 0


async def test_staff_reply_under_pin_required_shows_the_form_error_and_keeps_the_draft(gw):
    sent = await gw.api_send(body="Your appointment is confirmed.", secure=False)
    await gw.services.orgs.update_policy(gw.org.id, pin_required=True)
    browser, _ = await signed_in(gw)
    url = f"/staff/threads/{sent['thread_id']}"
    async with browser as b:
        page = await (await b.get(url)).text()
        assert "PIN required by policy but none set" in page
        resp = await b.post(url, {"body": BODY, "secure": "1"}, csrf_from=url)
        html = await resp.text()
    assert resp.status == 422 and PIN_ERROR in html and BODY in html
    assert await gw.store.messages.count_documents({"org_id": gw.org.id}) == 1


async def test_thread_page_says_which_pin_the_next_link_asks_for(gw):
    sent = await gw.api_send(body=BODY)
    browser, _ = await signed_in(gw)
    url = f"/staff/threads/{sent['thread_id']}"
    async with browser as b:
        assert "Next link asks for no PIN." in await (await b.get(url)).text()
        assert (await b.post(url + "/pin", {"action": "set", "pin": NEW_PIN}, csrf_from=url)).status == 303
        assert "Next link asks for the contact&#39;s PIN." in await (await b.get(url)).text()
        with_pin = await gw.api_send(body="another", pin=API_PIN)
        html = await (await b.get(url)).text()
    assert f"Next link asks for the PIN given with message {with_pin['id']} (by API)." in html


async def test_set_generate_and_clear_on_the_thread_rotate_the_api_pin_in_force(gw):
    sent = await gw.api_send(body=BODY, pin=API_PIN)
    await gw.drain()
    old_link = gw.last_link_token()
    browser, _ = await signed_in(gw)
    url = f"/staff/threads/{sent['thread_id']}"
    async with browser as b:
        # Set: the leaked API PIN no longer opens the link already sent; the new one does.
        assert (await b.post(url + "/pin", {"action": "set", "pin": NEW_PIN}, csrf_from=url)).status == 303
        assert (await gw.open_link(old_link, pin=API_PIN)).status != 303
        assert (await gw.open_link(old_link, pin=NEW_PIN)).status == 303
        assert "Next link asks for the PIN staff set for this conversation." in await (await b.get(url)).text()
        # Generate: shown once, and it is what a new link asks for.
        resp = await b.post(url + "/pin", {"action": "generate"}, csrf_from=url)
        generated = re.search(r'<strong class="secret">(\d{6,})</strong>', await resp.text()).group(1)
        await gw.api_send(body="a new note")
        await gw.drain()
        new_link = gw.last_link_token()
        assert (await gw.open_link(new_link, pin=NEW_PIN)).status != 303
        assert (await gw.open_link(new_link, pin=generated)).status == 303
        # Clear: links open without a PIN (the contact has none).
        assert (await b.post(url + "/pin", {"action": "clear"}, csrf_from=url)).status == 303
        assert "Next link asks for no PIN." in await (await b.get(url)).text()
    assert not await asks_for_pin(gw, old_link) and not await asks_for_pin(gw, new_link)
    thread = await gw.store.threads.find_one({"_id": sent["thread_id"]})
    assert "pin_hash" not in thread
    contact = await gw.store.contacts.find_one({"_id": thread["contact_id"]})
    assert "pin_hash" not in contact  # the thread's PIN was changed, not the contact's
    changes = [(e["action"], e["detail"].get("pin")) for e in
               [*await audit_entries(gw, "contact.pin_set"), *await audit_entries(gw, "contact.pin_cleared")]]
    assert sorted(changes) == [("contact.pin_cleared", "thread"), ("contact.pin_set", "thread"),
                               ("contact.pin_set", "thread")]
