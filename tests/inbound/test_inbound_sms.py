"""Inbound SMS processing: sealing into the thread, link-only acknowledgements, keywords, retries."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any

import pytest

from gateway.messaging.contacts import OPTED_IN, OPTED_OUT, Contact
from gateway.messaging.gsm7 import is_gsm7, sms_segments
from gateway.storage.intake import InboundEventQueue
from gateway.storage.store import Doc
from inbound.processor import InboundProcessor
from inbound.sms import SmsReplyHandler
from tests.support.harness import CLIENT_PHONE, LINK_RE, Gateway
from tests.support.twilio_standin import new_sid

SECURE_BODY = "Your lab results are ready."


def canary() -> str:
    return f"canary-{secrets.token_hex(8)}"


async def raw_bytes(gw: Gateway, *collections: str) -> bytes:
    """Every document of the collections as the database returns them (raw BSON)."""
    out = b""
    for name in collections:
        async for batch in gw.store.collection(name).find_raw_batches({}):
            out += bytes(batch)
    return out


async def contact(gw: Gateway, phone: str = CLIENT_PHONE) -> Contact:
    found = await gw.services.contacts.by_phone(gw.org.id, phone)
    assert found is not None
    return found


async def thread(gw: Gateway) -> Doc:
    c = await contact(gw)
    doc: Doc | None = await gw.store.threads.find_one({"org_id": gw.org.id, "contact_id": c.id})
    assert doc is not None
    return doc


async def inbound_messages(gw: Gateway) -> list[Doc]:
    return [d async for d in gw.store.messages.find({"direction": "inbound"}).sort("_id", 1)]


async def start_secure_thread(gw: Gateway) -> None:
    await gw.api_send(body=SECURE_BODY, secure=True)
    await gw.drain()
    assert len(gw.sms_to()) == 1


async def start_standard_thread(gw: Gateway) -> None:
    await gw.api_send(body="See you Tuesday at 3pm.", secure=False)
    await gw.drain()
    assert len(gw.sms_to()) == 1
    assert (await thread(gw))["secure"] is False


def assert_link_only(sms_body: str, *secrets_: str) -> str:
    found = LINK_RE.search(sms_body)
    assert found, sms_body
    for s in secrets_:
        assert s not in sms_body
    assert CLIENT_PHONE not in sms_body
    assert is_gsm7(sms_body) and sms_segments(sms_body) == 1, sms_body
    return found.group(1)


async def thread_api(gw: Gateway, thread_id: str) -> list[dict[str, Any]]:
    resp = await gw.client.get(f"/api/v1/threads/{thread_id}/messages", headers=gw.auth())
    assert resp.status == 200
    data = await resp.json()
    messages: list[dict[str, Any]] = data["messages"]
    return messages


# -- secure threads -----------------------------------------------------------------------------


async def test_reply_on_secure_thread_is_sealed_and_acknowledged_with_a_link(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await start_secure_thread(gw)
    secret = canary()
    body = f"My new address is 12 Elm St, {secret}"
    params = await gw.inbound_sms(body)
    # Stored sealed before processing...
    assert secret.encode() not in await raw_bytes(gw, "inbound_events")
    await gw.drain()
    # ...and after: nowhere in the database in the clear.
    everything = await raw_bytes(gw, "inbound_events", "messages", "threads", "contacts", "outbox",
                                 "links", "audit", "delivery_events")
    assert secret.encode() not in everything
    msgs = await inbound_messages(gw)
    assert len(msgs) == 1 and msgs[0]["secure"] is True
    assert msgs[0]["provider_id"] == params["MessageSid"]
    assert await gw.services.conversations.open_body(msgs[0]) == body
    th = await thread(gw)
    assert th["unread_staff"] == 1 and th["secure"] is True
    assert secret not in th.get("preview", "")
    sms = gw.sms_to()
    assert len(sms) == 2
    ack = str(sms[-1]["body"])
    token = assert_link_only(ack, secret, "Elm")
    assert token != assert_link_only(str(sms[0]["body"]), secret)  # a fresh link for the ack
    assert secret not in caplog.text
    # The link in the acknowledgement opens the thread, where the client sees their reply.
    opened = await gw.open_link(token)
    assert opened.status == 303
    page = await gw.client.get(opened.headers["Location"])
    assert page.status == 200
    assert secret in await page.text()


async def test_ack_stays_one_gsm7_segment_with_a_long_unicode_org_name(gw: Gateway) -> None:
    await gw.services.orgs.update(
        gw.org.id, name="Clínica Pédiatrique Ñúñez & Søn — Family Health Partners 💙 of Greater Riverside")
    await start_secure_thread(gw)
    await gw.inbound_sms("Got it, thanks")
    await gw.drain()
    sms = gw.sms_to()
    assert len(sms) == 2
    assert_link_only(str(sms[-1]["body"]))


async def test_api_thread_shows_the_inbound_reply_decrypted(gw: Gateway) -> None:
    await start_secure_thread(gw)
    secret = canary()
    await gw.inbound_sms(f"Thanks {secret}")
    await gw.drain()
    th = await thread(gw)
    messages = await thread_api(gw, th["_id"])
    assert [m["direction"] for m in messages] == ["outbound", "inbound"]
    assert messages[0]["body"] == SECURE_BODY
    assert messages[1]["body"] == f"Thanks {secret}"
    assert messages[1]["channel"] == "sms" and messages[1]["status"] == "received"


async def test_processed_event_drops_its_sealed_payload(gw: Gateway) -> None:
    params = await gw.inbound_sms("Hello")
    event = await gw.store.inbound_events.find_one({"provider_id": params["MessageSid"]})
    assert event is not None and "payload" in event and event["state"] == "pending"
    await gw.drain()
    event = await gw.store.inbound_events.find_one({"_id": event["_id"]})
    assert event is not None
    assert event["state"] == "done"
    assert "payload" not in event and "raw" not in event


# -- standard threads and the classifier --------------------------------------------------------


async def test_standard_thread_plain_reply_gets_no_acknowledgement(gw: Gateway) -> None:
    await start_standard_thread(gw)
    await gw.inbound_sms("Thanks, see you then")
    await gw.drain()
    assert len(gw.sms_to()) == 1
    msgs = await inbound_messages(gw)
    assert len(msgs) == 1 and msgs[0]["secure"] is False
    assert "classified_sensitive" not in msgs[0]["flags"]
    th = await thread(gw)
    assert th["secure"] is False and th["unread_staff"] == 1


async def test_first_contact_plain_reply_creates_contact_without_acknowledgement(gw: Gateway) -> None:
    await gw.inbound_sms("Hi, do you have openings next week?", frm="+15551230077")
    await gw.drain()
    c = await gw.services.contacts.by_phone(gw.org.id, "+15551230077")
    assert c is not None
    assert gw.twilio.messages == []
    assert len(await inbound_messages(gw)) == 1


@pytest.mark.parametrize("sensitive", ["My SSN is 123-45-6789", "card 4111 1111 1111 1111 exp 09/29"])
async def test_standard_thread_sensitive_reply_turns_secure(gw: Gateway, sensitive: str) -> None:
    await start_standard_thread(gw)
    await gw.inbound_sms(sensitive)
    await gw.drain()
    th = await thread(gw)
    assert th["secure"] is True
    msgs = await inbound_messages(gw)
    assert len(msgs) == 1 and msgs[0]["secure"] is True
    assert "classified_sensitive" in msgs[0]["flags"]
    assert b"123-45-6789" not in await raw_bytes(gw, "messages", "inbound_events", "outbox")
    assert b"4111 1111" not in await raw_bytes(gw, "messages", "inbound_events", "outbox")
    sms = gw.sms_to()
    assert len(sms) == 2
    assert_link_only(str(sms[-1]["body"]), "6789", "1111")


# -- keywords -----------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["STOP", "stop", " Unsubscribe ", "QUIT!", "optout"])
async def test_stop_family_opts_out(gw: Gateway, word: str) -> None:
    await start_secure_thread(gw)
    await gw.inbound_sms(word)
    await gw.drain()
    c = await contact(gw)
    assert c.opted_out("sms")
    assert c.consent["sms"]["state"] == OPTED_OUT
    assert c.consent["sms"]["source"] == "sms:keyword"
    assert c.consent["sms"]["at"] is not None
    assert "consent.opt_out" in await gw.audit_actions()
    assert len(gw.sms_to()) == 1  # no acknowledgement to a STOP
    err = await gw.api_send(expect=422, body="One more thing")
    assert err["error"]["code"] == "opted_out"
    await gw.drain()
    assert len(gw.sms_to()) == 1


async def test_queued_message_to_contact_who_then_opts_out_is_not_sent(gw: Gateway) -> None:
    await start_secure_thread(gw)
    queued = await gw.api_send(body="Second message", secure=True)  # not yet dispatched
    await gw.inbound_sms("STOP")
    await gw.drain()
    assert len(gw.twilio.messages) == 1  # only the first notice ever reached Twilio
    job = await gw.store.outbox.find_one({"message_id": queued["id"]})
    assert job is not None
    assert job["state"] == "failed" and job["last_error"]["code"] == "opted_out"
    resp = await gw.client.get(f"/api/v1/messages/{queued['id']}", headers=gw.auth())
    data = await resp.json()
    assert data["status"] == "failed" and data["error_code"] == "opted_out"


async def test_stop_inside_a_sentence_is_not_a_keyword(gw: Gateway) -> None:
    await start_standard_thread(gw)
    await gw.inbound_sms("stop please")
    await gw.drain()
    c = await contact(gw)
    assert not c.opted_out("sms")
    assert "consent.opt_out" not in await gw.audit_actions()
    await gw.api_send(body="Sure, we will call instead.", secure=False)
    await gw.drain()
    assert len(gw.sms_to()) == 2


async def test_start_opts_back_in_and_confirms(gw: Gateway) -> None:
    await start_secure_thread(gw)
    await gw.inbound_sms("STOP")
    await gw.drain()
    assert (await contact(gw)).opted_out("sms")
    await gw.inbound_sms("Start")
    await gw.drain()
    c = await contact(gw)
    assert c.consent["sms"]["state"] == OPTED_IN and c.consent["sms"]["source"] == "sms:keyword"
    assert "consent.opt_in" in await gw.audit_actions()
    sms = gw.sms_to()
    assert len(sms) == 2
    confirm = str(sms[-1]["body"])
    assert "/s/" not in confirm and SECURE_BODY not in confirm
    assert "STOP" in confirm
    await gw.api_send(body="Welcome back", secure=True)
    await gw.drain()
    assert len(gw.sms_to()) == 3
    log = [entry["state"] for entry in (await gw.store.contacts.find_one({"_id": c.id}))["consent_log"]]
    assert log == [OPTED_OUT, OPTED_IN]


@pytest.mark.parametrize("word", ["HELP", "info"])
async def test_help_gets_help_text_without_link_or_content(gw: Gateway, word: str) -> None:
    secret = canary()
    await gw.api_send(body=f"Results: {secret}", secure=True)
    await gw.drain()
    await gw.inbound_sms(word)
    await gw.drain()
    sms = gw.sms_to()
    assert len(sms) == 2
    text = str(sms[-1]["body"])
    assert "/s/" not in text and secret not in text
    assert "STOP" in text and "Riverside Clinic" in text
    assert is_gsm7(text) and sms_segments(text) == 1
    assert not (await contact(gw)).opted_out("sms")


async def test_help_from_opted_out_contact_sends_nothing(gw: Gateway) -> None:
    await start_secure_thread(gw)
    await gw.inbound_sms("STOP")
    await gw.inbound_sms("HELP")
    await gw.drain()
    assert len(gw.sms_to()) == 1


# -- provider redaction -------------------------------------------------------------------------


async def test_provider_redaction_removes_the_body_at_twilio(gw: Gateway) -> None:
    await gw.services.orgs.update_policy(gw.org.id, provider_redaction=True)
    sid = new_sid("SM")
    # Twilio keeps the inbound message as a resource under the account.
    gw.twilio.store[sid] = {"sid": sid, "body": "My SSN is 123-45-6789", "status": "received"}
    await gw.inbound_sms("My SSN is 123-45-6789", sid=sid)
    await gw.drain()
    assert gw.twilio.redactions == [sid]
    assert gw.twilio.store[sid]["body"] == ""
    job = await gw.store.outbox.find_one({"kind": "sms_redact"})
    assert job is not None and job["state"] == "sent"


async def test_no_redaction_by_default(gw: Gateway) -> None:
    await gw.inbound_sms("My SSN is 123-45-6789")
    await gw.drain()
    assert gw.twilio.redactions == []
    assert await gw.store.outbox.count_documents({"kind": "sms_redact"}) == 0


# -- idempotency and retries --------------------------------------------------------------------


def real_handler(gw: Gateway) -> SmsReplyHandler:
    s = gw.services
    return SmsReplyHandler(gw.runtime.events, s.orgs, s.contacts, s.conversations, s.outbox, s.audit)


async def test_crash_after_handling_reruns_without_duplicates(gw: Gateway) -> None:
    await gw.services.orgs.update_policy(gw.org.id, provider_redaction=True)
    await start_secure_thread(gw)
    sid = new_sid("SM")
    gw.twilio.store[sid] = {"sid": sid, "body": "x", "status": "received"}
    await gw.inbound_sms("Here is my reply", sid=sid)
    # A worker claims the event and runs the handler, then dies before marking it done.
    event = await gw.runtime.processor.claim()
    assert event is not None
    assert await real_handler(gw)(event) == "done"
    assert await gw.runtime.processor.claim() is None  # still leased by the dead worker
    gw.clock.advance(seconds=61)  # the lease expires; another worker picks it up
    await gw.drain()
    assert await gw.store.messages.count_documents({"direction": "inbound"}) == 1
    assert len(gw.sms_to()) == 2  # the notice and exactly one acknowledgement
    assert gw.twilio.redactions == [sid]
    assert (await thread(gw))["unread_staff"] == 1
    assert (await gw.audit_actions()).count("message.received") == 1
    done = await gw.store.inbound_events.find_one({"provider_id": sid})
    assert done is not None and done["state"] == "done" and done["attempts"] == 2


async def test_running_the_handler_twice_directly_is_harmless(gw: Gateway) -> None:
    await start_standard_thread(gw)
    await gw.inbound_sms("My SSN is 123-45-6789")
    event = await gw.store.inbound_events.find_one({})
    assert event is not None
    handler = real_handler(gw)
    assert await handler(event) == "done"
    assert await handler(event) == "done"
    await gw.drain()
    msgs = await inbound_messages(gw)
    assert len(msgs) == 1 and "classified_sensitive" in msgs[0]["flags"]
    assert len(gw.sms_to()) == 2
    assert await gw.store.links.count_documents({}) == 1  # one ack link (the send was standard)


async def test_handler_error_is_retried_not_lost(gw: Gateway) -> None:
    await start_secure_thread(gw)
    handler = real_handler(gw)
    calls = {"n": 0}

    async def flaky(event: Doc) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("database blip")
        return await handler(event)

    processor = InboundProcessor(InboundEventQueue(gw.store), gw.clock, {"sms": flaky},
                                 owner="flaky")
    params = await gw.inbound_sms("Reply that hits a failure")
    assert await processor.run_once() == 1
    event = await gw.store.inbound_events.find_one({"provider_id": params["MessageSid"]})
    assert event is not None
    assert event["state"] == "pending" and event["attempts"] == 1
    assert event["next_attempt_at"] > gw.clock.now()
    assert "payload" in event  # nothing dropped
    assert await gw.store.messages.count_documents({"direction": "inbound"}) == 0
    assert await processor.run_once() == 0  # not due yet
    gw.clock.advance(seconds=5)
    assert await processor.run_once() == 1
    await gw.drain()
    event = await gw.store.inbound_events.find_one({"_id": event["_id"]})
    assert event is not None and event["state"] == "done" and event["attempts"] == 2
    assert await gw.store.messages.count_documents({"direction": "inbound"}) == 1
    assert len(gw.sms_to()) == 2


async def test_event_that_always_fails_ends_failed_but_kept(gw: Gateway) -> None:
    async def broken(event: Doc) -> str:
        raise RuntimeError("bug")

    processor = InboundProcessor(InboundEventQueue(gw.store), gw.clock, {"sms": broken},
                                 owner="broken")
    params = await gw.inbound_sms("hello")
    for _ in range(10):
        await processor.run_once()
        gw.clock.advance(timedelta(minutes=10).total_seconds())
    event = await gw.store.inbound_events.find_one({"provider_id": params["MessageSid"]})
    assert event is not None
    assert event["state"] == "failed" and event["attempts"] == 10
    assert "payload" in event and event["error"] == "RuntimeError"
