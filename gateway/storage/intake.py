"""The inbound_events collection: durable intake of provider deliveries, and the event states the
inbound processor (inbound/processor.py) records.

Every provider delivery is sealed and stored once before it is acknowledged. Concurrent
deliveries share their insert (group commit): a delivery that arrives while another insert is in
flight waits for it and then goes in the next insert_many with every other delivery that arrived
meanwhile. Each caller still returns only once the write holding its own document is
acknowledged (majority, journaled), and learns its own outcome (stored, duplicate, or failed). A
lone delivery is inserted at once, so there is no added latency without concurrency.

Intake first: background work waits for a lull in intake (`EventIntake.lull`), so a burst of
webhooks or mail is acknowledged at full speed. Both are storage tuning and live here, behind the
storage layer (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from gateway.errors import StoreUnavailable
from gateway.ids import new_id
from gateway.ports import Clock
from gateway.security.vault import Vault
from gateway.storage.leases import LeaseWorker
from gateway.storage.store import Doc, Store

logger = logging.getLogger(__name__)

GROUP_MAX = 64  # documents per shared insert
GROUP_INFLIGHT = 2  # shared inserts in flight at once
# Intake first: background work (processing, sending) waits for a lull of this long in intake...
INTAKE_LULL_SECONDS = 0.01
# ...for at most this long after a burst began: a longer burst, or steady traffic that never
# leaves such a lull, shares the database with the background work as usual.
INTAKE_BURST_SECONDS = 2.0


class GroupInsert:
    """insert_one for concurrent callers, done as shared insert_many commands (group commit)."""

    def __init__(self, collection: AsyncCollection[Doc], *, max_docs: int = GROUP_MAX,
                 inflight: int = GROUP_INFLIGHT) -> None:
        self._coll = collection
        self._max = max_docs
        self._inflight_max = inflight
        self._inflight = 0
        self._waiting: list[tuple[Doc, asyncio.Future[BaseException | None], Callable[[], None] | None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def insert(self, doc: Doc, on_stored: Callable[[], None] | None = None) -> None:
        """Store `doc`; returns once that is acknowledged. Raises as insert_one would
        (DuplicateKeyError for this document, another PyMongoError when the write failed).

        `on_stored` runs as soon as the write is acknowledged, even if the caller has gone.
        """
        fut: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((doc, fut, on_stored))
        if self._inflight < self._inflight_max:
            self._inflight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a caller that goes away must not cancel the write that others share.
        err = await asyncio.shield(fut)
        if err is not None:
            raise err

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:self._max], self._waiting[self._max:]
                try:
                    outcomes = await self._write([doc for doc, _, _ in group])
                except BaseException as err:  # cancelled: nobody may be left waiting
                    for _, fut, _ in group:
                        if not fut.done():
                            fut.set_result(StoreUnavailable("intake interrupted"))
                    raise err
                for (_, fut, on_stored), outcome in zip(group, outcomes, strict=True):
                    if outcome is None and on_stored is not None:
                        try:
                            on_stored()
                        except Exception:
                            logger.exception("intake: hand-over failed (the sweep takes the event)")
                    if not fut.done():
                        fut.set_result(outcome)
        finally:
            self._inflight -= 1

    async def _write(self, docs: list[Doc]) -> list[BaseException | None]:
        """One outcome per document: None (stored) or the exception its caller raises."""
        try:
            if len(docs) == 1:
                await self._coll.insert_one(docs[0])
            else:
                await self._coll.insert_many(docs, ordered=False)
        except BulkWriteError as err:
            if err.details.get("writeConcernErrors"):  # nothing in it is known to be durable
                return [PyMongoError("write concern not satisfied") for _ in docs]
            out: list[BaseException | None] = [None] * len(docs)
            for e in err.details.get("writeErrors", []):
                msg = str(e.get("errmsg", "write error"))
                out[e["index"]] = DuplicateKeyError(msg, 11000) if e.get("code") == 11000 else PyMongoError(msg)
            return out
        except PyMongoError as err:
            return [err] if len(docs) == 1 else [_own(err) for _ in docs]
        except Exception as err:
            if len(docs) == 1:
                return [err]
            # One document the driver refused (it fails the whole command): one by one, so that
            # only its own caller gets the error.
            return [(await self._write([doc]))[0] for doc in docs]
        return [None] * len(docs)


def _own(err: PyMongoError) -> PyMongoError:
    """A copy of a shared error for one caller (an exception object is raised in one place)."""
    try:
        copy = type(err)(str(err))
    except Exception:
        copy = PyMongoError(str(err))
    copy.__cause__ = err
    return copy


class EventIntake:
    """Stores raw provider events (sealed, unique per provider id) and wakes the processor.

    The edges (the Twilio webhook, the SMTP listener, the sandbox forms) call `store_event`; the
    background workers call `lull` before each unit of work (intake first)."""

    def __init__(self, store: Store, vault: Vault, clock: Clock, *, lull_seconds: float = INTAKE_LULL_SECONDS,
                 burst_seconds: float = INTAKE_BURST_SECONDS) -> None:
        self._store = store
        self._vault = vault
        self._clock = clock
        self._intake = GroupInsert(store.inbound_events)
        self._lull_seconds = lull_seconds
        self._burst_seconds = burst_seconds
        self._in_flight = 0  # store_event() calls not finished
        self._last_activity = float("-inf")  # event loop time a store_event() last began or ended
        self._burst_began = float("-inf")  # ...and when the first one after a lull began
        # Called with an event id and document once it is stored: the local processor's fast path.
        self.listeners: list[Callable[[str, Doc], None]] = []

    async def store_event(
        self, *, provider: str, provider_id: str, org_id: str | None, kind: str,
        payload: dict[str, Any] | None = None, raw: bytes | None = None, state: str = "pending",
        meta: dict[str, Any] | None = None, sender: str | None = None,
    ) -> tuple[str, bool]:
        """Store the event; returns (event id, newly stored). Raises StoreUnavailable.

        `sender` (a blind index or id, never an address) names who sent it: the processor handles
        one sender's events in the order they arrived (inbound/processor.py).
        """
        loop = asyncio.get_running_loop()
        if not self._in_flight and loop.time() - self._last_activity >= self._lull_seconds:
            self._burst_began = loop.time()
        self._in_flight += 1
        self._last_activity = loop.time()
        try:
            return await self._store_event(provider=provider, provider_id=provider_id, org_id=org_id, kind=kind,
                                           payload=payload, raw=raw, state=state, meta=meta, sender=sender)
        finally:
            self._in_flight -= 1
            self._last_activity = loop.time()

    async def _store_event(
        self, *, provider: str, provider_id: str, org_id: str | None, kind: str, payload: dict[str, Any] | None,
        raw: bytes | None, state: str, meta: dict[str, Any] | None, sender: str | None,
    ) -> tuple[str, bool]:
        eid = new_id()
        now = self._clock.now()
        try:
            dek_id = await self._vault.org_key(org_id)
            seal_org = org_id or "-"
            doc: Doc = {
                "_id": eid, "provider": provider, "provider_id": provider_id, "org_id": org_id,
                "kind": kind, "received_at": now, "state": state, "attempts": 0,
                "next_attempt_at": now, "lease_until": now, "meta": meta or {},
            }
            if sender is not None:
                doc["sender"] = sender
            if state == "pending":
                doc.update(self._lease_on_insert() or {})

            def hand_over() -> None:  # as soon as it is stored (even if our caller has gone)
                if state == "pending":
                    for listener in self.listeners:
                        listener(eid, doc)

            if payload is not None:
                doc["payload"] = await self._vault.seal(
                    dek_id, seal_org, "inbound_events", eid, "payload", json.dumps(payload)
                )
            if raw is not None:
                doc["raw"] = await self._vault.seal(dek_id, seal_org, "inbound_events", eid, "raw", raw)
            await self._intake.insert(doc, on_stored=hand_over)
        except DuplicateKeyError:
            existing = await self._store.inbound_events.find_one(
                {"provider": provider, "provider_id": provider_id}, projection={"_id": 1}
            )
            return (existing["_id"] if existing else eid), False
        except PyMongoError as err:
            logger.warning("inbound event not stored: database unavailable",
                           extra={"fields": {"provider": provider, "error": type(err).__name__}})
            raise StoreUnavailable("database unavailable") from err
        return eid, True

    def _lease_on_insert(self) -> Doc | None:
        """A local worker's lease for the event (its insert is then the claim): gateway/storage/leases.py."""
        for listener in self.listeners:
            offer = getattr(listener, "lease_on_insert", None)
            if offer is not None and (lease := offer()) is not None:
                return dict(lease)
        return None

    async def lull(self) -> None:
        """While a burst of deliveries comes in, wait for it to end: until none is being stored and
        none has begun or ended for `lull_seconds` (senders wait for our answer before sending
        more), but not past `burst_seconds` after the burst began.

        Background work calls this before each unit of work (gateway/storage/leases.py `before_work`), so
        that a burst of webhooks or mail is stored and acknowledged at full speed: the provider
        waits on every acknowledgement (and retries, adding load, when it is slow); nobody waits on
        the processing, which the burst's backlog then feeds with full batches. With no burst the
        wait is at most `lull_seconds`; a burst longer than `burst_seconds`, like steady traffic,
        shares the database as if there were no priority (so a backlog cannot grow without end).
        """
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            # (A delivery being stored keeps intake busy: look again after one lull's length.)
            quiet_at = (now if self._in_flight else self._last_activity) + self._lull_seconds
            give_up_at = self._burst_began + self._burst_seconds
            if quiet_at <= now or give_up_at <= now:
                return
            await asyncio.sleep(min(quiet_at, give_up_at) - now)

    async def open_payload(self, event: Doc) -> dict[str, Any]:
        org = event.get("org_id") or "-"
        text = await self._vault.open(org, "inbound_events", event["_id"], "payload", event["payload"])
        data = json.loads(text)
        assert isinstance(data, dict)
        return data

    async def open_raw(self, event: Doc) -> bytes:
        org = event.get("org_id") or "-"
        return await self._vault.open_bytes(org, "inbound_events", event["_id"], "raw", event["raw"])


class InboundEventQueue:
    """The processor's reads and writes of stored events: claimed by lease (gateway/storage/leases.py),
    finished, retried or given back. One database command per call, as the processor counts on."""

    def __init__(self, store: Store) -> None:
        self._coll = store.inbound_events

    def lease_worker(self, clock: Clock, *, owner: str, lease_seconds: float, poll_seconds: float,
                     handle: Callable[[Doc], Awaitable[None]], name: str,
                     handle_batch: Callable[[list[Doc]], Awaitable[None]] | None = None,
                     before_work: Callable[[], Awaitable[None]] | None = None) -> LeaseWorker:
        return LeaseWorker(self._coll, clock, owner=owner, lease_seconds=lease_seconds, poll_seconds=poll_seconds,
                           handle=handle, name=name, handle_batch=handle_batch, before_work=before_work)

    async def retry_later(self, event_id: object, *, final: bool, error: str, next_attempt_at: datetime,
                          now: datetime) -> None:
        """A failed attempt: pending again from `next_attempt_at`, or "failed" for good when `final`."""
        await self._coll.update_one(
            {"_id": event_id},
            {"$set": {"state": "failed" if final else "pending", "error": error,
                      "next_attempt_at": next_attempt_at, "lease_until": now}},
        )

    async def finish(self, event_id: object, state: str, *, now: datetime, expire_at: datetime | None) -> None:
        """Record the event's final state. A "done" event drops its raw sealed payload (one less
        copy of client content to protect); `expire_at` None keeps it (TTL, gateway/storage/store.py)."""
        update: Doc = {"$set": {"state": state, "processed_at": now}}
        if state == "done":
            update["$unset"] = {"payload": "", "raw": ""}
        if expire_at is not None:
            update["$set"]["expire_at"] = expire_at
        await self._coll.update_one({"_id": event_id}, update)

    async def finish_done(self, event_ids: list[object], *, now: datetime, expire_at: datetime) -> None:
        """`finish(id, "done", ...)` for many events in one command."""
        await self._coll.update_many(
            {"_id": {"$in": event_ids}},
            {"$set": {"state": "done", "processed_at": now, "expire_at": expire_at},
             "$unset": {"payload": "", "raw": ""}},
        )

    async def pending_until(self, received_by: datetime) -> AsyncIterator[Doc]:
        """Every pending event stored by `received_by` (sender, arrival, next attempt, lease only).
        One read; the caller filters by sender (a `sender $in [...]` query costs ~50x more on
        SecantusDB)."""
        async for doc in self._coll.find(
                {"state": "pending", "received_at": {"$lte": received_by}},
                projection={"sender": 1, "received_at": 1, "next_attempt_at": 1, "lease_owner": 1, "lease_until": 1}):
            yield doc

    async def give_back(self, event: Doc, *, now: datetime, not_before: datetime | None) -> None:
        """Release a claimed event unhandled without counting the attempt, due again at `not_before`
        when that is later than its own next attempt (only while this lease holder still has it)."""
        update: Doc = {"$set": {"lease_until": now}, "$inc": {"attempts": -1}}
        if not_before is not None and not_before > event.get("next_attempt_at", not_before):
            update["$set"]["next_attempt_at"] = not_before
        await self._coll.update_one(
            {"_id": event["_id"], "state": "pending", "lease_owner": event.get("lease_owner")}, update)
