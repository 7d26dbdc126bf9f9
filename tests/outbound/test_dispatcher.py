"""The outbox dispatcher against the Twilio stand-in: retries, permanent failures, leases, secrecy."""

from __future__ import annotations

import logging
import random
import socket
import time
from dataclasses import replace
from typing import Any

import bson

from gateway.messaging.contacts import OPTED_OUT
from gateway.ports import SentSms
from gateway.runtime.app import build_dispatcher
from gateway.runtime.services import Services
from gateway.security.tokens import token_hash
from outbound.twilio_sms import TwilioSmsSender
from tests.support.harness import CLIENT_PHONE, PUBLIC_URL

CANARY = "canary-9d2c: your HIV test came back negative"
OTHER_PHONE = "+15551230002"
LONG_NAME = "Clínica Señora de Guadalupe — Pédiatrie & Santé Familiale de Montréal-Nord ✨ 🩺💙"


def creates(gw: Any) -> list[dict[str, Any]]:
    """Every create-message request the stand-in received (failed ones included)."""
    return [r for r in gw.twilio.requests if r["method"] == "POST" and r["path"].endswith("/Messages.json")]


async def jobs(gw: Any) -> list[dict[str, Any]]:
    return await gw.store.outbox.find({}).sort("_id", 1).to_list(None)


async def only_job(gw: Any) -> dict[str, Any]:
    found = await jobs(gw)
    assert len(found) == 1, found
    return found[0]


async def api_message(gw: Any, mid: str) -> dict[str, Any]:
    resp = await gw.client.get(f"/api/v1/messages/{mid}", headers=gw.auth())
    assert resp.status == 200
    return await resp.json()


def with_outbox(services: Services, **changes: Any) -> Services:
    cfg = services.config
    return replace(services, config=replace(cfg, outbox=replace(cfg.outbox, **changes)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seconds_until(gw: Any, when: Any) -> float:
    return float((when - gw.clock.now()).total_seconds())


# -- transient failures ------------------------------------------------------------------------

async def test_429_then_500_then_success_retries_with_jittered_backoff(gw):
    cfg = gw.services.config.outbox
    sent = await gw.api_send(body=CANARY)
    gw.twilio.fail_next(429)
    gw.twilio.fail_next(500)
    d = gw.runtime.dispatcher
    for attempt, code in ((1, "20429"), (2, "20500")):
        assert await d.run_once() == 1
        job = await only_job(gw)
        assert (job["state"], job["attempts"], job["last_error"]["code"]) == ("pending", attempt, code)
        ceiling = min(cfg.max_backoff_seconds, cfg.base_backoff_seconds * 2 ** (attempt - 1))
        delay = seconds_until(gw, job["next_attempt_at"])
        assert ceiling / 2 - 0.001 <= delay <= ceiling + 0.001, (attempt, delay)
        # Not due yet: running again sends nothing.
        assert await d.run_once() == 0
        gw.clock.advance(delay - 0.05)
        assert await d.run_once() == 0
        assert len(creates(gw)) == attempt
        gw.clock.advance(0.1)
        assert (await api_message(gw, sent["id"]))["status"] == "queued"
    assert await d.run_once() == 1
    assert len(creates(gw)) == 3
    job = await only_job(gw)
    assert job["state"] == "sent" and job["attempts"] == 3
    assert job["provider_id"] == gw.twilio.messages[0]["sid"]
    assert len(gw.twilio.messages) == 1
    assert (await api_message(gw, sent["id"]))["status"] == "accepted"
    gw.clock.advance(3600)
    assert await d.run_once() == 0
    assert len(creates(gw)) == 3


def test_backoff_is_capped_exponential_with_jitter(services):
    d = build_dispatcher(services, sms=None, owner="t", rng=random.Random(7))  # type: ignore[arg-type]
    cfg = services.config.outbox
    for attempts in range(1, 16):
        ceiling = min(cfg.max_backoff_seconds, cfg.base_backoff_seconds * 2 ** (attempts - 1))
        delays = [d.backoff(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= x <= ceiling for x in delays), attempts
        assert len(set(delays)) > 100  # jittered, not a fixed schedule
    assert max(d.backoff(40) for _ in range(100)) <= cfg.max_backoff_seconds


async def test_timeout_is_transient_and_retried(gw):
    await gw.api_send(body=CANARY)
    gw.twilio.delay_next(5)  # the adapter gives up after 3 s (conftest)
    started = time.monotonic()
    assert await gw.runtime.dispatcher.run_once() == 1
    assert time.monotonic() - started < 4.5
    job = await only_job(gw)
    assert job["state"] == "pending" and job["last_error"]["code"] == "network"
    assert job["provider_id"] is None
    delay = seconds_until(gw, job["next_attempt_at"])
    assert delay > 0
    gw.clock.advance(delay + 0.1)
    assert await gw.runtime.dispatcher.run_once() == 1
    job = await only_job(gw)
    assert job["state"] == "sent"
    assert job["provider_id"] in {m["sid"] for m in gw.twilio.messages}


async def test_provider_outage_jobs_wait_then_drain_once(gw):
    for phone in (CLIENT_PHONE, OTHER_PHONE):
        await gw.api_send(body=CANARY, to={"phone": phone})
    gw.twilio.fail_next(503, times=4)  # two rounds of two jobs
    d = gw.runtime.dispatcher
    for _ in range(2):
        assert await d.run_once() == 2
        assert gw.twilio.messages == []
        assert {j["state"] for j in await jobs(gw)} == {"pending"}
        gw.clock.advance(max(seconds_until(gw, j["next_attempt_at"]) for j in await jobs(gw)) + 0.1)
    assert await d.run_once() == 2
    assert len(creates(gw)) == 6
    assert sorted(m["to"] for m in gw.twilio.messages) == sorted([CLIENT_PHONE, OTHER_PHONE])
    assert {j["state"] for j in await jobs(gw)} == {"sent"}


async def test_unreachable_provider_keeps_jobs_pending_until_it_is_back(gw):
    sent = await gw.api_send(body=CANARY)
    await gw.api_send(body="Second", secure=False, to={"phone": OTHER_PHONE})
    dead = TwilioSmsSender(gw.twilio.account_sid, gw.twilio.auth_token,
                           api_base=f"http://127.0.0.1:{free_port()}", timeout=3)
    try:
        down = build_dispatcher(gw.services, dead, owner="down")
        for _ in range(3):
            assert await down.run_once() == 2
            gw.clock.advance(700)
    finally:
        await dead.close()
    assert gw.twilio.requests == []
    for job in await jobs(gw):
        assert job["state"] == "pending" and job["attempts"] == 3
        assert job["last_error"]["code"] == "network"
        assert "link_token" in job or job["template"] == "message"
    assert (await api_message(gw, sent["id"]))["status"] == "queued"
    # The provider is reachable again: everything drains, each message once.
    assert await gw.runtime.dispatcher.run_once() == 2
    assert sorted(m["to"] for m in gw.twilio.messages) == sorted([CLIENT_PHONE, OTHER_PHONE])
    assert (await api_message(gw, sent["id"]))["status"] == "accepted"


async def test_always_500_goes_dead_after_max_attempts_and_alerts_staff(gw):
    services = with_outbox(gw.services, max_attempts=3)
    d = build_dispatcher(services, gw.runtime.sms, owner="dlq")
    sent = await gw.api_send(body=CANARY)
    gw.twilio.fail_next(500, times=10)
    for _ in range(6):
        await d.run_once()
        gw.clock.advance(700)
    assert len(creates(gw)) == 3
    job = await only_job(gw)
    assert job["state"] == "dead" and job["attempts"] == 3
    assert "link_token" not in job
    m = await api_message(gw, sent["id"])
    assert m["status"] == "failed"
    thread = await gw.store.threads.find_one({"_id": sent["thread_id"]})
    assert thread["delivery_problem"]["reason_code"] == "undeliverable"
    assert thread["delivery_problem"]["message_id"] == sent["id"]
    assert "message.failed" in await gw.audit_actions()
    assert gw.twilio.messages == []


# -- permanent failures ------------------------------------------------------------------------

async def test_invalid_number_fails_at_once_with_its_code(gw):
    sent = await gw.api_send(body=CANARY)
    gw.twilio.fail_next(400, code=21211, message="The 'To' number is not a valid phone number.")
    assert await gw.runtime.dispatcher.run_once() == 1
    gw.clock.advance(7200)
    assert await gw.runtime.dispatcher.run_once() == 0
    assert len(creates(gw)) == 1
    job = await only_job(gw)
    assert job["state"] == "failed" and job["last_error"]["code"] == "21211"
    assert CLIENT_PHONE not in job["last_error"]["message"]
    m = await api_message(gw, sent["id"])
    assert m["status"] == "failed" and m["error_code"] == "21211"
    assert m["status_history"][-1]["status"] == "failed"
    thread = await gw.store.threads.find_one({"_id": sent["thread_id"]})
    assert thread["delivery_problem"]["reason_code"] == "cannot_receive_sms"


async def test_provider_opt_out_21610_records_consent_and_blocks_later_sends(gw):
    gw.twilio.opted_out.add(CLIENT_PHONE)
    sent = await gw.api_send(body=CANARY)
    await gw.drain()
    assert len(creates(gw)) == 1 and gw.twilio.messages == []
    job = await only_job(gw)
    assert job["state"] == "failed" and job["last_error"]["code"] == "21610"
    assert (await api_message(gw, sent["id"]))["error_code"] == "21610"
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None and contact.opted_out("sms")
    assert contact.consent["sms"]["source"] == "twilio:21610"
    assert "consent.opt_out" in await gw.audit_actions()
    resp = await gw.client.post("/api/v1/messages", json={"to": {"phone": CLIENT_PHONE}, "body": "again"},
                                headers=gw.auth())
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "opted_out"
    assert len(creates(gw)) == 1


async def test_opt_out_after_queueing_means_the_job_is_refused_locally(gw):
    sent = await gw.api_send(body=CANARY)
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    await gw.services.contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_OUT, "keyword:STOP")
    await gw.drain()
    assert gw.twilio.requests == []
    job = await only_job(gw)
    assert job["state"] == "failed" and job["last_error"]["code"] == "opted_out"
    assert "link_token" not in job
    assert (await api_message(gw, sent["id"]))["status"] == "failed"


# -- leases and crashes ------------------------------------------------------------------------

async def test_a_crashed_workers_job_is_picked_up_after_its_lease(gw):
    cfg = gw.services.config.outbox
    await gw.api_send(body=CANARY)
    crashed = await gw.runtime.dispatcher.claim()  # claimed, then the worker dies
    assert crashed is not None and crashed["attempts"] == 1
    other = build_dispatcher(gw.services, gw.runtime.sms, owner="worker-2")
    assert await other.run_once() == 0
    gw.clock.advance(cfg.lease_seconds - 1)
    assert await other.run_once() == 0
    assert gw.twilio.requests == []
    gw.clock.advance(2)
    assert await other.run_once() == 1
    job = await only_job(gw)
    assert job["state"] == "sent" and job["lease_owner"] == "worker-2" and job["attempts"] == 2
    gw.clock.advance(cfg.lease_seconds * 5)
    assert await other.run_once() == 0
    assert await gw.runtime.dispatcher.run_once() == 0
    assert len(gw.twilio.messages) == 1


async def test_two_workers_never_claim_the_same_job(gw):
    for i in range(6):
        await gw.api_send(body=f"Note {i}", secure=False)
    a = build_dispatcher(gw.services, gw.runtime.sms, owner="a")
    b = build_dispatcher(gw.services, gw.runtime.sms, owner="b")
    claimed_a = [await a.claim() for _ in range(3)]
    claimed_b = [await b.claim() for _ in range(4)]
    ids_a = {j["_id"] for j in claimed_a if j}
    ids_b = {j["_id"] for j in claimed_b if j}
    assert len(ids_a) == 3 and len(ids_b) == 3 and not ids_a & ids_b
    assert claimed_b[-1] is None


class WorkerKilled(Exception):
    """The worker dying mid-batch. (Not SystemExit: raised inside one of a batch's send tasks, that
    escapes to the event loop and stops it, as in a real process, but also the test's loop.)"""


class _CrashAfterSend:
    """A sender that really sends, then dies before the dispatcher can record it (I1)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def send_sms(self, **kwargs: Any) -> SentSms:
        await self.inner.send_sms(**kwargs)
        raise WorkerKilled("worker killed")

    async def redact_sms(self, provider_id: str) -> None:
        raise AssertionError("not used")


async def test_crash_between_provider_and_mark_sent_resends_after_lease(gw):
    cfg = gw.services.config.outbox
    await gw.api_send(body=CANARY)
    dying = build_dispatcher(gw.services, _CrashAfterSend(gw.runtime.sms), owner="dying")
    try:
        await dying.run_once()
    except WorkerKilled:
        pass
    assert len(gw.twilio.messages) == 1
    job = await only_job(gw)
    assert job["state"] == "pending" and "link_token" in job
    gw.clock.advance(cfg.lease_seconds + 1)
    assert await gw.runtime.dispatcher.run_once() == 1
    assert (await only_job(gw))["state"] == "sent"
    # At least once: the notice went twice, with the same working link.
    assert len(gw.twilio.messages) == 2
    assert gw.twilio.messages[0]["body"] == gw.twilio.messages[1]["body"]
    resp = await gw.open_link(gw.last_link_token())
    assert resp.status == 303


# -- secrecy -----------------------------------------------------------------------------------

async def _all_docs(gw: Any) -> list[tuple[str, bytes]]:
    out = []
    for name in await gw.store.collection_names():
        async for doc in gw.store.collection(name).find({}):
            out.append((name, bson.encode(doc)))
    return out


async def test_no_token_phone_or_content_in_the_database_or_logs(gw, caplog):
    caplog.set_level(logging.DEBUG)
    await gw.api_send(body=CANARY, pin="482913")
    before = await _all_docs(gw)
    job = await only_job(gw)
    assert isinstance(job["link_token"], bytes) and len(job["link_token"]) > 43  # sealed
    assert not {"to", "body", "text", "phone"} & set(job)
    await gw.drain()
    token = gw.last_link_token()
    after = await _all_docs(gw)
    needles = [token.encode(), CANARY.encode(), b"canary-9d2c", CLIENT_PHONE.encode(),
               CLIENT_PHONE[1:].encode(), b"482913"]
    for name, blob in before + after:
        for needle in needles:
            assert needle not in blob, (name, needle)
    # What the link store keeps is the token's hash.
    link = await gw.store.links.find_one({})
    assert link["token_hash"] == token_hash(token)
    job = await only_job(gw)
    assert job["state"] == "sent" and "link_token" not in job
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        for needle in (token, CANARY, CLIENT_PHONE, CLIENT_PHONE[1:]):
            assert needle not in text, (record.name, record.getMessage())


async def test_status_callback_points_at_public_url(gw):
    sent = await gw.api_send(body=CANARY)
    await gw.api_send(body="standard", secure=False)
    await gw.drain()
    assert [m["status_callback"] for m in gw.twilio.messages] == [PUBLIC_URL + "/webhooks/twilio/status"] * 2
    assert [m["from"] for m in gw.twilio.messages] == [gw.org.sms_sender] * 2
    # The callback really lands: the message moves to delivered.
    assert await gw.status(gw.twilio.messages[0]["sid"], "delivered") == 200
    assert (await api_message(gw, sent["id"]))["status"] == "delivered"


async def test_secure_notice_is_one_gsm7_segment_with_a_working_link(gw):
    from gateway.messaging.gsm7 import is_gsm7, sms_segments
    await gw.services.orgs.update(gw.org.id, name=LONG_NAME)
    await gw.api_send(body=CANARY)
    await gw.drain()
    body = gw.twilio.messages[0]["body"]
    assert is_gsm7(body) and sms_segments(body) == 1
    token = gw.last_link_token()
    assert f"{PUBLIC_URL}/s/{token}" in body
    assert (await gw.open_link(token)).status == 303


async def test_a_notice_that_cannot_fit_one_sms_fails_its_job_without_stopping_the_dispatcher(gw):
    cfg = gw.services.config
    long_url = "https://" + "x" * 120 + ".example"
    services = replace(gw.services, config=replace(cfg, server=replace(cfg.server, public_url=long_url)))
    d = build_dispatcher(services, gw.runtime.sms, owner="long-url")
    secure = await gw.api_send(body=CANARY)
    # (Another contact: a standard send into the secure thread above would be secure too.)
    standard = await gw.api_send(body="Plain reminder", secure=False, to={"phone": OTHER_PHONE})
    assert await d.run_once() == 2
    assert (await api_message(gw, secure["id"]))["status"] == "failed"
    assert (await api_message(gw, standard["id"]))["status"] == "accepted"
    assert [m["body"] for m in gw.twilio.messages] == ["Plain reminder"]
    failed = await gw.store.outbox.find_one({"message_id": secure["id"]})
    assert failed["state"] == "failed" and failed["last_error"]["code"] == "compose"
    assert "link_token" not in failed


async def test_a_sealed_link_token_moved_to_another_job_is_never_sent(gw):
    a = await gw.api_send(body=CANARY)
    b = await gw.api_send(body="For someone else", to={"phone": OTHER_PHONE})
    job_a = await gw.store.outbox.find_one({"message_id": a["id"]})
    # Someone with write access to the database points B's notice at A's link.
    await gw.store.outbox.update_one({"message_id": b["id"]}, {"$set": {"link_token": job_a["link_token"]}})
    await gw.drain()
    assert [m["to"] for m in gw.twilio.messages] == [CLIENT_PHONE]
    job_b = await gw.store.outbox.find_one({"message_id": b["id"]})
    assert job_b["state"] == "failed" and job_b["last_error"]["code"] == "unavailable"
    assert (await api_message(gw, b["id"]))["status"] == "failed"
