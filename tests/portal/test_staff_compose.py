"""Compose: a new SMS to a new or existing contact, secure preset from the org, sensitive check."""

from __future__ import annotations

import re

from gateway.messaging.contacts import OPTED_OUT
from tests.portal.test_staff_support import signed_in
from tests.support.harness import CLIENT_PHONE, LINK_RE

NEW_PHONE = "+15551239876"


def secure_checked(html: str) -> bool:
    box = re.search(r'<input type="checkbox" name="secure" value="1"( checked)?>', html)
    assert box, html
    return bool(box.group(1))


async def test_secure_toggle_starts_at_the_org_default(gw):
    browser, _ = await signed_in(gw)
    async with browser as b:
        assert secure_checked(await (await b.get("/staff/compose")).text())
        await gw.services.orgs.update_policy(gw.org.id, secure_default=False)
        assert not secure_checked(await (await b.get("/staff/compose")).text())


async def test_secure_compose_to_a_new_contact_sends_only_a_link(gw):
    body = "canary-c0mp: your results are in"
    browser, member = await signed_in(gw)
    async with browser as b:
        resp = await b.post("/staff/compose", {"phone": "+1 (555) 123-9876", "name": "Nora New", "body": body,
                                               "secure": "1"})
        assert resp.status == 303
        thread_id = resp.headers["Location"].rsplit("/", 1)[1]
        html = await (await b.get(resp.headers["Location"])).text()
        assert body in html and "Nora New" in html
    await gw.drain()
    sms = gw.sms_to(NEW_PHONE)
    assert len(sms) == 1 and LINK_RE.search(sms[0]["body"]) and "canary-c0mp" not in sms[0]["body"]
    msg = await gw.store.messages.find_one({"thread_id": thread_id})
    assert msg["secure"] is True and msg["author"] == {"kind": "staff", "id": member.id}


async def test_standard_compose_that_looks_sensitive_needs_explicit_confirmation(gw):
    body = "Card on file 4111 1111 1111 1111 was charged"
    browser, _ = await signed_in(gw)
    async with browser as b:
        warned = await b.post("/staff/compose", {"phone": NEW_PHONE, "body": body})
        assert warned.status == 422
        html = await warned.text()
        assert "card number" in html and 'name="confirm_sensitive"' in html
        assert body in html  # the draft is kept
        assert not secure_checked(html)
        assert await gw.store.messages.count_documents({}) == 0
        sent = await b.post("/staff/compose", {"phone": NEW_PHONE, "body": body, "confirm_sensitive": "1"})
        assert sent.status == 303
    await gw.drain()
    sms = gw.sms_to(NEW_PHONE)
    assert len(sms) == 1 and body in sms[0]["body"]


async def test_standard_compose_of_plain_text_needs_no_confirmation(gw):
    browser, _ = await signed_in(gw)
    async with browser as b:
        assert (await b.post("/staff/compose", {"phone": NEW_PHONE, "body": "See you at 3pm"})).status == 303
    await gw.drain()
    sms = gw.sms_to(NEW_PHONE)
    assert len(sms) == 1 and "See you at 3pm" in sms[0]["body"]


async def test_compose_to_an_existing_contact(gw):
    data = await gw.api_send(body="first")
    thread = await gw.store.threads.find_one({"_id": data["thread_id"]})
    browser, _ = await signed_in(gw)
    async with browser as b:
        page = await b.get(f"/staff/compose?contact={thread['contact_id']}")
        assert page.status == 200 and 'name="phone"' not in await page.text()
        resp = await b.post("/staff/compose", {"contact": thread["contact_id"], "body": "second", "secure": "1"},
                            csrf_from=f"/staff/compose?contact={thread['contact_id']}")
        assert resp.status == 303 and resp.headers["Location"] == f"/staff/threads/{data['thread_id']}"
    assert await gw.store.messages.count_documents({"thread_id": data["thread_id"]}) == 2


async def test_compose_refuses_bad_numbers_and_opted_out_contacts(gw):
    await gw.api_send(body="first")
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    await gw.services.contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_OUT, "test")
    browser, _ = await signed_in(gw)
    async with browser as b:
        bad = await b.post("/staff/compose", {"phone": "555-1234", "body": "hi", "secure": "1"})
        assert bad.status == 422 and "to.phone" in await bad.text()
        out = await b.post("/staff/compose", {"phone": CLIENT_PHONE, "body": "hi", "secure": "1"})
        assert out.status == 422 and "opted out" in await out.text()
    assert await gw.store.messages.count_documents({}) == 1


async def test_staff_can_compose_a_secure_email_to_a_new_contact(gw):
    from tests.support.harness import CLIENT_EMAIL

    browser, _ = await signed_in(gw, "agent")
    async with browser as b:
        page = await b.get("/staff/compose")
        assert 'name="channel" value="email"' in await page.text()
        resp = await b.post("/staff/compose", {"channel": "email", "email": CLIENT_EMAIL, "name": "Alex",
                                               "body": "Canary-compose-mail-8812", "secure": "1"})
        assert resp.status == 303
    await gw.drain()
    [mail] = gw.mail_to(CLIENT_EMAIL)
    assert "Canary-compose-mail-8812" not in mail.as_string()
    assert "/s/" in mail.get_body(("plain",)).get_content()
