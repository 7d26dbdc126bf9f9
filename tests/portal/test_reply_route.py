"""Where replies and new links go (gateway/rules/reply_route.py): one precedence for the staff
reply and the client's new-link request — the thread's channel if the contact can still get it,
else the last one they used, else SMS if they have a phone, else email."""

from __future__ import annotations

from gateway.messaging.contacts import OPTED_OUT
from tests.portal.test_client_portal import renew
from tests.portal.test_staff_support import signed_in
from tests.support.harness import CLIENT_EMAIL, CLIENT_PHONE, LINK_RE

BOTH = {"phone": CLIENT_PHONE, "email": CLIENT_EMAIL}


async def opt_out_of_sms(gw, thread_id: str) -> None:
    thread = await gw.store.threads.find_one({"_id": thread_id})
    assert await gw.services.contacts.set_consent(gw.org.id, thread["contact_id"], "sms", OPTED_OUT, "test")


async def test_staff_reply_to_a_contact_who_opted_out_of_the_threads_channel_goes_by_email(gw):
    sent = await gw.api_send(to=BOTH, body="Your appointment is confirmed.", channel="sms")
    await gw.drain()
    await opt_out_of_sms(gw, sent["thread_id"])
    browser, _ = await signed_in(gw)
    url = f"/staff/threads/{sent['thread_id']}"
    async with browser as b:
        resp = await b.post(url, {"body": "We moved you to 3pm"}, csrf_from=url)
        assert resp.status == 303
    reply = await gw.store.messages.find_one({"thread_id": sent["thread_id"], "author.kind": "staff"})
    assert reply["channel"] == "email"
    await gw.drain()
    assert len(gw.sms_to()) == 1 and len(gw.mail_to()) == 1


async def test_a_new_link_the_client_asks_for_follows_the_same_route(gw):
    sent = await gw.api_send(to=BOTH, body="Your results are in.", channel="sms")
    await gw.drain()
    old = gw.last_link_token()
    await opt_out_of_sms(gw, sent["thread_id"])
    gw.clock.advance(seconds=86400 + 60)
    status, _ = await renew(gw, old)
    assert status == 200
    mails = gw.mail_to()
    assert len(gw.sms_to()) == 1 and len(mails) == 1
    assert LINK_RE.search(mails[0].get_body(("plain",)).get_content())
