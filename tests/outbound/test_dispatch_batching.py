"""The dispatcher under backlog: a claimed batch delivers like one job at a time, in O(1) writes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.clock import FrozenClock
from gateway.messaging.contacts import OPTED_OUT
from gateway.runtime.app import build_dispatcher
from gateway.runtime.config import Config
from gateway.security.audit import Actor
from gateway.security.crypto import Keyring
from gateway.storage.store import Doc, Store
from outbound.dispatcher import OutboxDispatcher
from outbound.twilio_sms import TwilioSmsSender
from tests.inbound.test_batching import Counted
from tests.support.harness import ORG_NUMBER, Gateway
from tests.support.twilio_standin import TwilioStandIn

PHONES = [f"+1555888{i:04d}" for i in range(8)]
EMAILS = ["pat@client.test", "lee@client.test"]
STANDARD_PHONE = "+15558887777"


async def claim_all(gw: Gateway) -> list[Doc]:
    worker = gw.runtime.dispatcher.worker
    return await worker.claim_batch(await worker.due_ids())


async def message(gw: Gateway, mid: str) -> Doc:
    found = await gw.store.messages.find_one({"_id": mid})
    assert found is not None
    return found


async def test_a_batch_of_jobs_is_delivered_and_recorded_like_one_at_a_time(gw: Gateway) -> None:
    sms = [await gw.api_send(to={"phone": p}, body=f"Secure note {i}", secure=True) for i, p in enumerate(PHONES)]
    # (To a contact of its own: a standard send into a secure thread would be secure too.)
    standard = await gw.api_send(to={"phone": STANDARD_PHONE}, body="See you Tuesday.", secure=False)
    mail = [await gw.api_send(channel="email", to={"email": e}, body="Your forms", secure=True) for e in EMAILS]
    refused = await gw.api_send(to={"phone": "+15558889999"}, body="Secure note", secure=True)
    contact = await gw.services.contacts.by_phone(gw.org.id, "+15558889999")
    assert contact is not None
    await gw.services.contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_OUT, "keyword:STOP")
    jobs = await claim_all(gw)
    assert len(jobs) == len(PHONES) + 1 + len(EMAILS) + 1
    await gw.runtime.dispatcher.deliver_batch(jobs)

    # Every sendable job went out once, to its own contact, and is recorded as sent.
    assert sorted(m["to"] for m in gw.twilio.messages) == sorted([*PHONES, STANDARD_PHONE])
    assert sorted(str(m["message"]["To"]) for m in gw.mail.messages) == sorted(EMAILS)
    by_sid = {m["sid"]: m for m in gw.twilio.messages}
    for sent in [*sms, standard]:
        stored = await message(gw, sent["id"])
        assert stored["status"] == "accepted" and [h["status"] for h in stored["status_history"]][-1] == "accepted"
        assert stored["provider_id"] in by_sid
    standard_sms = by_sid[(await message(gw, standard["id"]))["provider_id"]]
    assert standard_sms["body"].endswith("See you Tuesday.") and standard_sms["to"] == STANDARD_PHONE
    for sent in mail:
        stored = await message(gw, sent["id"])
        assert stored["status"] == "sent"
        assert [h["status"] for h in stored["status_history"]] == ["queued", "accepted", "sent"]
        assert stored["email_message_id"] in {str(m["message"]["Message-ID"]) for m in gw.mail.messages}
    states = Counter([j["state"] async for j in gw.store.outbox.find({})])
    assert states == {"sent": len(jobs) - 1, "failed": 1}
    assert await gw.store.outbox.count_documents({"link_token": {"$exists": True}}) == 0

    # The opted-out contact's job failed locally, visibly, as it would alone.
    failed = await message(gw, refused["id"])
    assert failed["status"] == "failed" and failed["error_code"] == "opted_out"

    # One "message.accepted" entry per delivered message, and the audit chain holds.
    accepted = [e async for e in gw.store.audit.find({"action": "message.accepted"})]
    assert sorted(e["message_id"] for e in accepted) == sorted(s["id"] for s in [*sms, standard, *mail])
    assert await gw.services.audit.verify(gw.org.id) is None


async def test_a_provider_error_in_a_batch_fails_only_its_own_job(gw: Gateway) -> None:
    sent = [await gw.api_send(to={"phone": p}, body="Secure note", secure=True) for p in PHONES[:4]]
    gw.twilio.fail_next(400, code=21211, message="The 'To' number is not a valid phone number.")
    await gw.runtime.dispatcher.deliver_batch(await claim_all(gw))
    statuses = Counter([(await message(gw, s["id"]))["status"] for s in sent])
    assert statuses == {"accepted": 3, "failed": 1}
    failed = [await message(gw, s["id"]) for s in sent]
    assert [m["error_code"] for m in failed if m["status"] == "failed"] == ["21211"]


async def test_a_transient_error_in_a_batch_retries_only_its_own_job(gw: Gateway) -> None:
    sent = [await gw.api_send(to={"phone": p}, body="Secure note", secure=True) for p in PHONES[:4]]
    gw.twilio.fail_next(status=503, code=20503)
    await gw.runtime.dispatcher.deliver_batch(await claim_all(gw))
    assert Counter([(await message(gw, s["id"]))["status"] for s in sent]) == {"accepted": 3, "queued": 1}
    gw.clock.advance(seconds=600)
    await gw.drain()
    assert [(await message(gw, s["id"]))["status"] for s in sent] == ["accepted"] * 4
    assert len(gw.twilio.messages) == 4


class WrappedSender:
    """The real Twilio sender with a twist in send_sms (subclasses say which)."""

    def __init__(self, inner: TwilioSmsSender) -> None:
        self.inner = inner

    async def before_send(self, to_number: str) -> None:
        pass

    async def send_sms(self, *, from_number: str, to_number: str, body: str, status_callback: str | None) -> Any:
        await self.before_send(to_number)
        return await self.inner.send_sms(from_number=from_number, to_number=to_number, body=body,
                                         status_callback=status_callback)

    async def redact_sms(self, provider_id: str) -> None:
        await self.inner.redact_sms(provider_id)

    async def fetch_media(self, url: str, *, max_bytes: int) -> Any:
        return await self.inner.fetch_media(url, max_bytes=max_bytes)


class BrokenForOneNumber(WrappedSender):
    """A sender that fails unexpectedly (not a provider error) for one number, sends the rest."""

    def __init__(self, inner: TwilioSmsSender, broken: str) -> None:
        super().__init__(inner)
        self.broken = broken

    async def before_send(self, to_number: str) -> None:
        if to_number == self.broken:
            raise RuntimeError("sender bug")


async def test_an_unexpected_error_in_one_send_still_records_the_others_as_sent(gw: Gateway) -> None:
    sent = [await gw.api_send(to={"phone": p}, body="Secure note", secure=True) for p in PHONES[:4]]
    inner = TwilioSmsSender(gw.twilio.account_sid, gw.twilio.auth_token, api_base=gw.twilio.base_url, timeout=3)
    dispatcher = build_dispatcher(gw.services, BrokenForOneNumber(inner, PHONES[2]), owner="test")
    try:
        with pytest.raises(RuntimeError):
            await dispatcher.deliver_batch(await claim_all(gw))
    finally:
        await inner.close()
    statuses = [(await message(gw, s["id"]))["status"] for s in sent]
    assert statuses == ["accepted", "accepted", "queued", "accepted"]  # nothing sent twice later
    assert sorted(m["to"] for m in gw.twilio.messages) == sorted(PHONES[:2] + PHONES[3:4])


class SlowProvider(WrappedSender):
    """Each send takes 8 s by the service clock; on the twelfth, another worker sweeps (as another
    process would while this batch is still going)."""

    def __init__(self, gw: Gateway, inner: TwilioSmsSender, competitor: OutboxDispatcher) -> None:
        super().__init__(inner)
        self.gw = gw
        self.competitor = competitor
        self.calls = 0

    async def before_send(self, to_number: str) -> None:
        self.calls += 1
        self.gw.clock.advance(seconds=8)
        if self.calls == 12:
            await self.competitor.run_once()


async def test_a_batch_that_outlasts_its_lease_keeps_it_and_nothing_is_sent_twice(gw: Gateway) -> None:
    assert gw.services.config.outbox.lease_seconds == 60
    sent = [await gw.api_send(to={"phone": p}, body=f"Secure note {i}", secure=True)
            for i in range(2) for p in PHONES]
    inner = TwilioSmsSender(gw.twilio.account_sid, gw.twilio.auth_token, api_base=gw.twilio.base_url, timeout=3)
    competitor = build_dispatcher(gw.services, inner, owner="another-process")
    slow = SlowProvider(gw, inner, competitor)
    dispatcher = build_dispatcher(gw.services, slow, owner="this-process")
    try:
        await dispatcher.deliver_batch(await claim_all(gw))
    finally:
        await inner.close()
    # 16 sends, 8 at a time, 8 s each: the batch takes 128 s on a 60 s lease. Without keeping
    # it, the sweep on the twelfth send would take (and send again) the jobs still waiting.
    assert slow.calls == len(sent)
    assert Counter(m["to"] for m in gw.twilio.messages) == {p: 2 for p in PHONES}
    assert [(await message(gw, s["id"]))["status"] for s in sent] == ["accepted"] * len(sent)


# -- round trips --------------------------------------------------------------------------------


class CountedDispatch(Counted):
    def __init__(self, mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock,
                 twilio: TwilioStandIn) -> None:
        super().__init__(mongo_uri, store, config, keyring, clock)
        sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url, timeout=3)
        self.dispatcher = build_dispatcher(self.services, sender, owner="test")

    async def deliver_all(self) -> tuple[int, list[str]]:
        self.commands.names.clear()
        self.commands.on = True
        try:
            n = await self.dispatcher.run_once()
        finally:
            self.commands.on = False
        return n, list(self.commands.names)


async def dispatch_round_trips(counted: CountedDispatch, org: Any, n: int) -> list[str]:
    s = counted.services
    for i in range(n):
        await s.conversations.send(org, channel="sms", body=f"Secure note {i}", actor=Actor("api", "test"),
                                   to_phone=PHONES[i % len(PHONES)], secure=True)
    handled, commands = await counted.deliver_all()
    assert handled == n
    return commands


async def test_a_batch_of_jobs_costs_a_constant_number_of_round_trips(
        mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock,
        twilio: TwilioStandIn) -> None:
    counted = CountedDispatch(mongo_uri, store, config, keyring, clock, twilio)
    try:
        s = counted.services
        org = await s.orgs.create("Batch Clinic", ORG_NUMBER)
        ten = await dispatch_round_trips(counted, org, 10)
        fifty = await dispatch_round_trips(counted, org, 50)
        assert len(fifty) <= 16, Counter(fifty)
        assert len(fifty) <= len(ten) + 1, (Counter(ten), Counter(fifty))
        assert await s.store.messages.count_documents({"status": "accepted"}) == 60
        assert len(twilio.messages) == 60
        assert await s.audit.verify(org.id) is None
    finally:
        await counted.client.close()
