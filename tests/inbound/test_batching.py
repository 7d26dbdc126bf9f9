"""Inbound processing in batches: same outcome as one event at a time, O(1) round trips per batch."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from gateway.clock import FrozenClock
from gateway.messaging.conversations import Inbound, Notice
from gateway.runtime.config import Config
from gateway.runtime.services import Services, build_services
from gateway.security.audit import Actor, AuditLog, Pending
from gateway.security.crypto import Keyring
from gateway.storage.intake import EventIntake, InboundEventQueue
from gateway.storage.store import Doc, Store
from inbound.processor import InboundProcessor
from inbound.sms import SmsReplyHandler
from tests.support.database import SecantusServer
from tests.support.harness import ORG_NUMBER, Gateway
from tests.support.twilio_standin import inbound_sms_params, new_sid

SENDERS = [f"+1555777{i:04d}" for i in range(6)]


async def secure_thread_for(gw: Gateway, phone: str) -> None:
    await gw.api_send(to={"phone": phone}, body="Your results are ready.", secure=True)


async def standard_thread_for(gw: Gateway, phone: str) -> None:
    await gw.api_send(to={"phone": phone}, body="See you Tuesday at 3pm.", secure=False)


async def claim_all(gw: Gateway) -> list[Doc]:
    """Claim every due event as one batch (what the worker does under backlog)."""
    worker = gw.runtime.processor.worker
    return await worker.claim_batch(await worker.due_ids())


async def messages_by_event(gw: Gateway) -> dict[str, Doc]:
    return {d["_id"]: d async for d in gw.store.messages.find({"direction": "inbound"})}


async def audit_entries(gw: Gateway, action: str) -> list[Doc]:
    return [d async for d in gw.store.audit.find({"org_id": gw.org.id, "action": action})]


async def test_a_batch_from_several_senders_lands_like_one_at_a_time(gw: Gateway) -> None:
    secure, standard, flips = SENDERS[0], SENDERS[1], SENDERS[2]
    new_a, new_b = SENDERS[3], SENDERS[4]
    await secure_thread_for(gw, secure)
    await standard_thread_for(gw, standard)
    await standard_thread_for(gw, flips)
    await gw.drain()
    sent_before = len(gw.twilio.messages)
    plan = [
        (secure, "Thanks"), (new_a, "Hi, is Monday ok?"), (standard, "See you then"),
        (flips, "Quick question"), (secure, "Also, can I move it?"), (new_b, "Hello"),
        (flips, "My SSN is 123-45-6789"), (new_a, "Or Tuesday"), (flips, "Thanks again"),
        (standard, "Bye"), (new_a, "Either works"), (secure, "Great"),
    ]
    sids = []
    for phone, body in plan:
        sids.append((await gw.inbound_sms(body, frm=phone))["MessageSid"])
    events = await claim_all(gw)
    assert len(events) == len(plan)
    await gw.runtime.processor.process_batch(events)

    stored = await messages_by_event(gw)
    assert len(stored) == len(plan)
    by_sid = {m["provider_id"]: m for m in stored.values()}
    threads = {d["_id"]: d async for d in gw.store.threads.find({"org_id": gw.org.id})}
    contacts = {p: await gw.services.contacts.by_phone(gw.org.id, p) for p in SENDERS[:5]}
    for (phone, body), sid in zip(plan, sids, strict=True):
        message = by_sid[sid]
        contact = contacts[phone]
        assert contact is not None
        assert message["contact_id"] == contact.id
        assert threads[message["thread_id"]]["contact_id"] == contact.id
        assert await gw.services.conversations.open_body(message) == body
    per_sender = Counter(phone for phone, _ in plan)
    for phone, n in per_sender.items():
        contact = contacts[phone]
        assert contact is not None
        (thread,) = [t for t in threads.values() if t["contact_id"] == contact.id]
        assert thread["unread_staff"] == n
        assert thread["status"] == "open" and thread["channel"] == "sms"

    # The classifier flips the standard thread at the sensitive reply, and from then on (in
    # arrival order) its replies are secure and acknowledged; before, they were not.
    flipped = [by_sid[sid] for (phone, _), sid in zip(plan, sids, strict=True) if phone == flips]
    assert [m["secure"] for m in flipped] == [False, True, True]
    assert ["classified_sensitive" in m["flags"] for m in flipped] == [False, True, False]
    assert threads[flipped[0]["thread_id"]]["secure"] is True
    # Secure thread: every reply secure and acknowledged. Standard and new: neither.
    acks = {j["_id"] async for j in gw.store.outbox.find({"template": "inbound_ack"})}
    expected = {f"{by_sid[sid]['_id']}:ack" for (phone, _), sid in zip(plan, sids, strict=True)
                if phone == secure} | {f"{m['_id']}:ack" for m in flipped[1:]}
    assert acks == expected
    for (phone, _), sid in zip(plan, sids, strict=True):
        assert by_sid[sid]["secure"] is (phone == secure or by_sid[sid] in flipped[1:])

    # One audit entry per message, one per link issued, and the chain verifies.
    received = await audit_entries(gw, "message.received")
    assert sorted(e["message_id"] for e in received) == sorted(stored)
    issued = await audit_entries(gw, "link.issued")
    assert {f"{e['message_id']}:ack" for e in issued if e["detail"]["template"] == "inbound_ack"} == expected
    assert await gw.services.audit.verify(gw.org.id) is None
    # Every event done, its sealed payload dropped.
    async for event in gw.store.inbound_events.find({"_id": {"$in": list(stored)}}):
        assert event["state"] == "done" and "payload" not in event
    # The acknowledgements go out as link-only SMS.
    await gw.drain()
    assert len(gw.twilio.messages) == sent_before + len(expected)


async def test_a_sender_with_a_keyword_in_the_batch_is_handled_in_order(gw: Gateway) -> None:
    stopper, other = SENDERS[0], SENDERS[1]
    await secure_thread_for(gw, stopper)
    await secure_thread_for(gw, other)
    await gw.drain()
    first = await gw.inbound_sms("Got it", frm=stopper)
    await gw.inbound_sms("Thanks", frm=other)
    await gw.inbound_sms("STOP", frm=stopper)
    last = await gw.inbound_sms("One more thing", frm=stopper)
    events = await claim_all(gw)
    assert len(events) == 4
    await gw.runtime.processor.process_batch(events)
    c = await gw.services.contacts.by_phone(gw.org.id, stopper)
    assert c is not None and c.opted_out("sms")
    acks = {j["_id"] async for j in gw.store.outbox.find({"template": "inbound_ack"})}
    stored = {m["provider_id"]: m["_id"] for m in (await messages_by_event(gw)).values()}
    assert f"{stored[first['MessageSid']]}:ack" in acks  # before the STOP: acknowledged
    assert f"{stored[last['MessageSid']]}:ack" not in acks  # after it: nothing more by SMS
    assert len(acks) == 2  # and the other sender's reply, in bulk
    assert len(stored) == 4
    assert await gw.services.audit.verify(gw.org.id) is None


async def test_rerunning_a_half_processed_batch_creates_no_duplicates(gw: Gateway) -> None:
    await gw.services.orgs.update_policy(gw.org.id, provider_redaction=True)
    for phone in SENDERS[:3]:
        await secure_thread_for(gw, phone)
    await gw.drain()
    for i in range(15):
        await gw.inbound_sms(f"Reply {i}", frm=SENDERS[i % 3])
    events = sorted(await claim_all(gw), key=lambda e: e["_id"])
    assert len(events) == 15
    handler: SmsReplyHandler = gw.runtime.processor._handlers["sms"]  # type: ignore[assignment]
    # A first worker handles the first five completely and dies before marking them done...
    done, rest = await handler.batch(events[:5])
    assert len(done) == 5 and rest == []
    # ...another stored the next five messages and died before anything else (no thread
    # counter, no audit entry, no acknowledgement yet).
    s = gw.services
    org = await s.orgs.get(gw.org.id)
    partial = []
    for event in events[5:10]:
        payload = await gw.runtime.events.open_payload(event)
        contact = await s.contacts.by_phone(org.id, payload["From"])
        assert contact is not None
        thread = await s.conversations.thread_for(org.id, contact.id, "sms")
        partial.append(Inbound(contact, thread, event["_id"], payload["Body"], payload["MessageSid"], True, []))
    assert await s.conversations.record_inbound_many(org, partial, channel="sms") == [True] * 5
    # ...and of two of those it had also queued the acknowledgements (not yet audited).
    unaudited = await s.conversations.issue_link_notices(org, [
        Notice(m.contact, m.thread["_id"], f"{m.message_id}:ack", m.message_id) for m in partial[:2]],
        channel="sms", template="inbound_ack")
    assert len(unaudited) == 2
    # Their leases run out; the whole batch runs again.
    gw.clock.advance(seconds=120)
    await gw.drain()

    stored = await messages_by_event(gw)
    assert sorted(stored) == sorted(e["_id"] for e in events)
    acks = [j async for j in gw.store.outbox.find({"template": "inbound_ack"})]
    assert sorted(j["_id"] for j in acks) == sorted(f"{e['_id']}:ack" for e in events)
    redactions = [j async for j in gw.store.outbox.find({"kind": "sms_redact"})]
    assert sorted(j["_id"] for j in redactions) == sorted(f"{e['_id']}:redact" for e in events)
    # One link per acknowledgement (a re-run issues none for an acknowledgement already queued).
    assert await gw.store.links.count_documents({"message_id": {"$in": list(stored)}}) == 15
    # Exactly one "received" entry per message: the re-run appended the five the crash cut off.
    received = await audit_entries(gw, "message.received")
    assert sorted(e["message_id"] for e in received) == sorted(stored)
    issued = [e for e in await audit_entries(gw, "link.issued") if e["detail"]["template"] == "inbound_ack"]
    assert sorted(e["message_id"] for e in issued) == sorted(stored)
    assert {e["link_id"] for e in issued} == {j["link_id"] for j in acks}
    assert await s.audit.verify(gw.org.id) is None
    assert await gw.store.inbound_events.count_documents({"state": "done"}) >= 15


# -- round trips --------------------------------------------------------------------------------


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.docs: list[Doc] = []
        self.on = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on:
            self.names.append(event.command_name)
            self.docs.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class Counted:
    """Services on a client that counts the commands it sends."""

    def __init__(self, mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock) -> None:
        self.commands = Commands()
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_uri, tz_aware=True,
                                                              event_listeners=[self.commands])
        self.services: Services = build_services(config, Store(self.client, store.db.name), keyring, clock)
        s = self.services
        self.events = EventIntake(s.store, s.vault, s.clock)
        handler = SmsReplyHandler(self.events, s.orgs, s.contacts, s.conversations, s.outbox, s.audit)
        self.processor = InboundProcessor(InboundEventQueue(s.store), s.clock, {"sms": handler}, owner="test")  # type: ignore[dict-item]

    async def accept(self, org_id: str, phone: str, body: str) -> None:
        params = inbound_sms_params(frm=phone, to=ORG_NUMBER, body=body, account_sid="AC" + "0" * 32,
                                    sid=new_sid("SM"))
        await self.events.store_event(provider="twilio", provider_id=params["MessageSid"], org_id=org_id,
                                 kind="sms", payload=params)

    async def process(self) -> tuple[int, list[str]]:
        self.commands.names.clear()
        self.commands.docs.clear()
        self.commands.on = True
        try:
            n = await self.processor.run_once()
        finally:
            self.commands.on = False
        return n, list(self.commands.names)


async def round_trips(counted: Counted, org_id: str, n: int) -> list[str]:
    for i in range(n):
        await counted.accept(org_id, SENDERS[i % len(SENDERS)], f"Reply number {i}: see you Tuesday.")
    handled, commands = await counted.process()
    assert handled == n
    return commands


async def test_a_batch_costs_a_constant_number_of_round_trips(
        mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock) -> None:
    counted = Counted(mongo_uri, store, config, keyring, clock)
    try:
        org = await counted.services.orgs.create("Batch Clinic", ORG_NUMBER)
        await round_trips(counted, org.id, len(SENDERS))  # contacts and threads exist from here on
        ten = await round_trips(counted, org.id, 10)
        fifty = await round_trips(counted, org.id, 50)
        assert len(fifty) <= 20, Counter(fifty)
        assert len(fifty) <= len(ten) + 1, (Counter(ten), Counter(fifty))
        assert await counted.services.store.messages.count_documents({}) == len(SENDERS) + 60
        assert await counted.services.audit.verify(org.id) is None
    finally:
        await counted.client.close()


async def test_acknowledgements_and_redactions_stay_constant_too(
        mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock) -> None:
    counted = Counted(mongo_uri, store, config, keyring, clock)
    try:
        s = counted.services
        org = await s.orgs.create("Batch Clinic", ORG_NUMBER)
        await s.orgs.update_policy(org.id, provider_redaction=True)
        await round_trips(counted, org.id, len(SENDERS))
        await s.store.threads.update_many({"org_id": org.id}, {"$set": {"secure": True}})
        fifty = await round_trips(counted, org.id, 50)
        assert len(fifty) <= 22, Counter(fifty)
        assert await s.store.outbox.count_documents({"template": "inbound_ack"}) == 50
        assert await s.store.outbox.count_documents({"kind": "sms_redact"}) == len(SENDERS) + 50
        assert await s.audit.verify(org.id) is None
    finally:
        await counted.client.close()


# -- the audit chain under concurrent batch appends -----------------------------------------------


async def test_append_many_chains_onto_entries_other_processes_wrote(services: Services) -> None:
    org_id = "org-append-many"
    # Two AuditLog instances are two processes: each caches its own head.
    a = AuditLog(services.store, services.sealer, services.clock)
    b = AuditLog(services.store, services.sealer, services.clock)
    await a.append(org_id, "thread.read", Actor("staff", "s1"))
    await b.append_many(org_id, [Pending("thread.read", Actor("staff", "s2"))])  # b learns the head
    await a.append(org_id, "thread.read", Actor("staff", "s1"))  # b's cached head is now stale

    def items(who: str, n: int) -> list[Pending]:
        return [Pending("message.received", Actor("client", who), ids={"message_id": f"{who}-{i}"},
                        detail={"channel": "sms"}) for i in range(n)]

    stored = await b.append_many(org_id, items("b", 5))
    assert [e["seq"] for e in stored] == [4, 5, 6, 7, 8]
    for _ in range(5):
        await asyncio.gather(a.append_many(org_id, items("a", 7)), b.append_many(org_id, items("b", 9)))
    entries = [d async for d in services.store.audit.find({"org_id": org_id}).sort("seq", 1)]
    assert [d["seq"] for d in entries] == list(range(1, 8 + 5 * 16 + 1))
    assert await services.audit.verify(org_id) is None


# -- the webhook side -----------------------------------------------------------------------------


async def test_concurrent_deliveries_share_inserts_and_keep_their_own_outcome(gw: Gateway) -> None:
    events: EventIntake = gw.runtime.events
    params: list[dict[str, Any]] = [gw.sms_params(body=f"hi {i}", sid=new_sid("SM")) for i in range(20)]
    params.append(dict(params[3]))  # Twilio retried one while the first delivery was in flight
    results = await asyncio.gather(*(events.store_event(
        provider="twilio", provider_id=p["MessageSid"], org_id=gw.org.id, kind="sms", payload=p) for p in params))
    assert sum(new for _, new in results) == 20
    assert results[3][0] == results[20][0] and results[3][1] != results[20][1]
    assert await gw.store.inbound_events.count_documents({}) == 20
    again = await events.store_event(provider="twilio", provider_id=params[0]["MessageSid"], org_id=gw.org.id,
                                kind="sms", payload=params[0])
    assert again == (results[0][0], False)
    await gw.drain()
    assert len(await messages_by_event(gw)) == 20


# -- the worker loops: hand-over with the lease already taken -------------------------------------


class Gated:
    """A handler that waits at a gate (to hold the worker's one loop busy)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen: list[str] = []

    async def __call__(self, event: Doc) -> str:
        self.seen.append(event["_id"])
        await self.gate.wait()
        return "done"


async def until(predicate: Any) -> None:
    """Poll the database (what the test waits on happens in another task) for up to 10 s."""
    async with asyncio.timeout(10):
        for _ in range(500):
            if await predicate():
                return
            await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_running_worker_takes_events_inserted_under_its_lease_without_a_claim(
        mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock) -> None:
    counted = Counted(mongo_uri, store, config, keyring, clock)
    s = counted.services
    processor = counted.processor
    counted.events.listeners.append(processor.worker.notify)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop, 4))
    try:
        org = await s.orgs.create("Batch Clinic", ORG_NUMBER)
        await asyncio.sleep(0.05)  # the loops are running
        counted.commands.names.clear()
        counted.commands.on = True
        await asyncio.gather(*(counted.accept(org.id, SENDERS[i % 3], f"Reply {i}") for i in range(40)))
        await until(lambda: _count(s.store, "messages", 40))
        await until(lambda: _count(s.store, "inbound_events", 40, {"state": "done"}))
        counted.commands.on = False
        # Stored already leased to this worker (attempt 1), and never claimed with an update:
        # the only writes to the events are the shared inserts and the "done" marks.
        async for event in s.store.inbound_events.find({}):
            assert event["lease_owner"] == "test" and event["attempts"] == 1
        on_events = [d for d in counted.commands.docs if "inbound_events" in (d.get("insert"), d.get("update"))]
        inserted = [len(d["documents"]) for d in on_events if "insert" in d]
        assert sum(inserted) == 40 and len(inserted) < 40  # concurrent deliveries shared inserts
        for d in on_events:
            if "update" in d:
                assert all(u["u"]["$set"]["state"] == "done" for u in d["updates"]), d
        assert await s.audit.verify(org.id) is None
    finally:
        counted.commands.on = False
        stop.set()
        await task
        await counted.client.close()


async def test_stopping_gives_back_the_leases_of_events_not_handled_yet(
        mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock) -> None:
    counted = Counted(mongo_uri, store, config, keyring, clock)
    s = counted.services
    handler = Gated()
    processor = InboundProcessor(InboundEventQueue(s.store), s.clock, {"sms": handler}, owner="test")
    counted.events.listeners.append(processor.worker.notify)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop, 1))
    try:
        org = await s.orgs.create("Batch Clinic", ORG_NUMBER)
        await asyncio.sleep(0.05)
        await counted.accept(org.id, SENDERS[0], "first")
        await until(lambda: _true(len(handler.seen) == 1))  # the one loop is busy with it
        await counted.accept(org.id, SENDERS[1], "second")  # handed over, leased, waiting
        second = await s.store.inbound_events.find_one({"_id": {"$ne": handler.seen[0]}})
        assert second is not None and second["lease_owner"] == "test" and second["lease_until"] > clock.now()
        stop.set()
        handler.gate.set()
        await task
        second = await s.store.inbound_events.find_one({"_id": second["_id"]})
        assert second is not None and second["state"] == "pending"
        assert second["lease_until"] <= clock.now() and second["attempts"] == 0  # due again at once
        first = await s.store.inbound_events.find_one({"_id": handler.seen[0]})
        assert first is not None and first["state"] == "done"
        # A worker that is not running stores events due, for whoever sweeps.
        await counted.accept(org.id, SENDERS[2], "third")
        third = await s.store.inbound_events.find_one({"payload": {"$exists": True}, "_id": {"$ne": second["_id"]}})
        assert third is not None and third["attempts"] == 0 and "lease_owner" not in third
        assert await processor.run_once() == 2
    finally:
        stop.set()
        handler.gate.set()
        if not task.done():
            await task
        await counted.client.close()


async def _count(store: Store, collection: str, n: int, query: Doc | None = None) -> bool:
    return bool(await store.collection(collection).count_documents(query or {}) >= n)


async def _true(value: bool) -> bool:
    return value


async def test_a_document_that_cannot_be_stored_fails_only_its_own_delivery(store: Store) -> None:
    from bson.errors import InvalidDocument
    from pymongo.errors import PyMongoError

    from gateway.storage.intake import GroupInsert

    intake = GroupInsert(store.db["group_insert_test"], inflight=1)
    docs: list[Doc] = [{"_id": f"d{i}", "n": i} for i in range(6)]
    docs[3]["blob"] = b"x" * (17 * 1024 * 1024)  # over the 16 MB document limit
    results = await asyncio.gather(*(intake.insert(d) for d in docs), return_exceptions=True)
    assert [r is None for r in results] == [True, True, True, False, True, True]
    assert isinstance(results[3], PyMongoError | InvalidDocument)
    assert sorted([d["_id"] async for d in store.db["group_insert_test"].find({})]) == ["d0", "d1", "d2", "d4", "d5"]


async def test_deliveries_sharing_an_insert_during_an_outage_each_get_503(
        outage_gw: tuple[Gateway, SecantusServer]) -> None:
    gw, server = outage_gw
    server.stop()
    responses = await asyncio.gather(*(gw.post_signed("/webhooks/twilio/sms", gw.sms_params(body=f"during {i}"))
                                       for i in range(6)))
    assert [r.status for r in responses] == [503] * 6


async def test_a_bug_met_by_one_document_does_not_stop_the_worker(store: Store, clock: FrozenClock) -> None:
    """A handler error that is not the database's is logged; the loop goes on with the next."""
    from gateway.storage.leases import LeaseWorker

    coll = store.db["lease_bug_test"]
    handled: list[str] = []

    async def handle(doc: Doc) -> None:
        if doc["_id"] == "bad":
            raise KeyError("a bug")
        handled.append(doc["_id"])
        await coll.update_one({"_id": doc["_id"]}, {"$set": {"state": "done"}})

    worker = LeaseWorker(coll, clock, owner="test", lease_seconds=60, poll_seconds=0.05, handle=handle,
                         name="test worker")
    now = clock.now()
    await coll.insert_many([{"_id": i, "state": "pending", "next_attempt_at": now, "lease_until": now}
                            for i in ("bad", "good")])
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, 1))
    try:
        worker.notify("bad")
        worker.notify("good")
        await until(lambda: _true(handled == ["good"]))
        assert not task.done()  # the one loop survived the bug
    finally:
        stop.set()
        await task


class BothPaths:
    """A handler that records which of its paths ran: every event is done by `batch`."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.single = 0

    async def __call__(self, event: Doc) -> str:
        self.single += 1
        return "done"

    async def batch(self, events: list[Doc]) -> tuple[list[object], list[Doc]]:
        self.batches.append(len(events))
        return [e["_id"] for e in events], []


async def test_a_single_event_is_a_batch_of_one(
        mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock) -> None:
    """One code path per operation (issue 9): a lone reply goes through the same bulk step as a
    backlog, not a separate single-event path."""
    counted = Counted(mongo_uri, store, config, keyring, clock)
    try:
        s = counted.services
        org = await s.orgs.create("Single Clinic", ORG_NUMBER)
        handler = BothPaths()
        processor = InboundProcessor(InboundEventQueue(s.store), s.clock, {"sms": handler}, owner="test")  # type: ignore[dict-item]
        await counted.accept(org.id, SENDERS[0], "Just one reply")
        assert await processor.run_once() == 1
        assert handler.batches == [1] and handler.single == 0
        event = await s.store.inbound_events.find_one({})
        assert event is not None and event["state"] == "done" and "payload" not in event
    finally:
        await counted.client.close()
