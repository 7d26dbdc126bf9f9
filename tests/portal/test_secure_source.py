"""Why a message is secure or standard (gateway/rules/secure.py): recorded on every message as
`secure_source`, given by the API and shown on the staff timeline in plain words."""

from __future__ import annotations

from tests.portal.test_staff_support import signed_in
from tests.support.harness import CLIENT_PHONE

BODY = "canary-5rc: your results are ready"


async def api_message(gw, message_id: str) -> dict:
    resp = await gw.client.get(f"/api/v1/messages/{message_id}", headers=gw.auth())
    assert resp.status == 200
    return await resp.json()


async def test_always_secure_org_sends_secure_even_when_the_api_asks_for_standard(gw):
    await gw.services.orgs.update_policy(gw.org.id, secure_forced=True)
    sent = await gw.api_send(body=BODY, secure=False)
    assert sent["secure"] is True and sent["secure_source"] == "org_forced"
    assert (await api_message(gw, sent["id"]))["secure_source"] == "org_forced"
    await gw.drain()
    sms = gw.sms_to(CLIENT_PHONE)
    assert len(sms) == 1 and "canary-5rc" not in sms[0]["body"] and "/s/" in sms[0]["body"]
    # Even text that looks sensitive goes, secure: no standard send is possible to refuse.
    again = await gw.api_send(body="SSN 123-45-6789", secure=False)
    assert again["secure_source"] == "org_forced"


async def test_staff_reply_on_a_secure_thread_is_secure_because_of_the_thread(gw):
    first = await gw.api_send(body=BODY)
    assert first["secure_source"] == "org_default"
    browser, _ = await signed_in(gw)
    url = f"/staff/threads/{first['thread_id']}"
    async with browser as b:
        # No "secure" box on a secure thread: the form carries no choice, the thread decides.
        resp = await b.post(url, {"body": "See you Tuesday"}, csrf_from=url)
        assert resp.status == 303
        reply = await gw.store.messages.find_one({"thread_id": first["thread_id"], "author.kind": "staff"})
        assert reply["secure"] is True and reply["secure_source"] == "thread"
        html = await (await b.get(url)).text()
    assert "secure: organization default" in html and "secure: thread is secure" in html


async def test_inbound_sms_with_an_ssn_on_a_standard_thread_is_a_sensitive_reply(gw):
    sent = await gw.api_send(body="Your appointment is confirmed.", secure=False)
    assert sent["secure_source"] == "message"
    await gw.inbound_sms("my SSN is 123-45-6789 for the form")
    await gw.drain()
    inbound = await gw.store.messages.find_one({"thread_id": sent["thread_id"], "direction": "inbound"})
    assert inbound["secure"] is True and inbound["secure_source"] == "sensitive_reply"
    resp = await gw.client.get(f"/api/v1/threads/{sent['thread_id']}/messages", headers=gw.auth())
    page = await resp.json()
    assert [m["secure_source"] for m in page["messages"]] == ["message", "sensitive_reply"]
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get(f"/staff/threads/{sent['thread_id']}")).text()
    assert "standard: chosen by sender" in html and "secure: sensitive content in reply" in html
    # The thread is secure from then on: the next plain reply follows it.
    await gw.inbound_sms("thanks")
    await gw.drain()
    last = await gw.store.messages.find({"thread_id": sent["thread_id"]}).sort("_id", -1).to_list(1)
    assert last[0]["secure_source"] == "thread" and last[0]["secure"] is True


async def test_inbound_sms_under_an_always_secure_org_is_secure_by_policy(gw):
    await gw.services.orgs.update_policy(gw.org.id, secure_forced=True)
    await gw.inbound_sms("hello, is the clinic open?")
    await gw.drain()
    inbound = await gw.store.messages.find_one({"org_id": gw.org.id, "direction": "inbound"})
    assert inbound["secure"] is True and inbound["secure_source"] == "org_forced"


async def test_messages_stored_before_the_source_was_recorded_show_nothing_special(gw):
    sent = await gw.api_send(body=BODY)
    await gw.store.messages.update_one({"_id": sent["id"]}, {"$unset": {"secure_source": ""}})
    assert (await api_message(gw, sent["id"]))["secure_source"] is None
    browser, _ = await signed_in(gw)
    async with browser as b:
        resp = await b.get(f"/staff/threads/{sent['thread_id']}")
        html = await resp.text()
    assert resp.status == 200 and BODY in html
    assert "secure-source" not in html and "sms · secure" in html
