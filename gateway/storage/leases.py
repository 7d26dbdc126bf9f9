"""Work claimed by lease from a MongoDB collection: the one mechanism behind both worker loops.

A document is due when `state` is "pending", `next_attempt_at` has passed and nobody holds its
lease. Claiming sets `lease_until`/`lease_owner` with a conditional update by _id, so any number
of processes can compete and each job runs once per lease; a crashed worker's lease simply runs
out and another takes the job.

Work found in this process (a webhook just stored an event, a send just queued a job) is handed
over by id on an in-memory queue — a hint that saves a collection scan, never needed for
correctness: a periodic sweep finds everything due, including other processes' work and retries.
The queue is kept only while the worker's loops run in this process (not in `--role web`).

With a batch handler, a loop that finds more work queued behind the id it took claims it all at
once: one conditional update_many by `_id $in` that stamps a lease token unique to the batch, so
a find by that token returns exactly the documents this batch won (others may win the rest).
One document at a time — no backlog — still takes the single-document path, so latency is the
same; the batch path only starts when work is waiting, and costs O(1) round trips per batch.

A document inserted in this process for this worker can carry the worker's lease from the start
(`lease_on_insert`, then `notify(id, doc)`): the insert is then the claim and no update is needed.
Only while the worker's loops run; if the process dies, the lease runs out like any other and a
sweep anywhere takes the document; on a clean stop, leases on documents not yet handled are
given back at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from gateway.ids import new_id
from gateway.ports import Clock
from gateway.storage.store import Doc

logger = logging.getLogger(__name__)

SWEEP_BATCH = 200
MAX_BATCH = 100  # documents per claimed batch
# Batches in flight per worker. One: the next batch gathers while this one is in the database,
# and the worker leaves the database room for the writes that feed it (webhooks acknowledging).
BATCH_SLOTS = 1
HANDOVER_MAX = 10_000  # documents remembered from notify(id, doc)


class Handover:
    """A worker's `notify`: hand over a document by id (and optionally as inserted).

    Callable like a function, so it goes wherever a listener does; whoever inserts documents for
    the worker may also ask it for `lease_on_insert()`.
    """

    def __init__(self, worker: LeaseWorker) -> None:
        self._worker = worker

    def __call__(self, doc_id: object, doc: Doc | None = None) -> None:
        self._worker.hand_over(doc_id, doc)

    def lease_on_insert(self) -> Doc | None:
        return self._worker.lease_on_insert()


class LeaseWorker:
    """Claims due documents and hands each to `handle`; run() drives concurrent loops + a sweeper."""

    def __init__(self, collection: AsyncCollection[Doc], clock: Clock, *, owner: str, lease_seconds: float,
                 poll_seconds: float, handle: Callable[[Doc], Awaitable[None]], name: str,
                 handle_batch: Callable[[list[Doc]], Awaitable[None]] | None = None,
                 max_batch: int = MAX_BATCH, before_work: Callable[[], Awaitable[None]] | None = None) -> None:
        self._coll = collection
        self._clock = clock
        self._owner = owner
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._handle = handle
        self._handle_batch = handle_batch
        self._max_batch = max_batch
        # Awaited by the run() loops before each unit of work: e.g. EventIntake.lull (intake first,
        # gateway/storage/intake.py).
        self._before_work = before_work
        self._batch_slots = asyncio.Semaphore(BATCH_SLOTS)
        self._name = name
        self._ready: asyncio.Queue[object] = asyncio.Queue()
        self._queued: set[object] = set()
        self._known: dict[object, Doc] = {}  # documents handed over with their id (saves a read)
        self._owned: dict[object, Doc] = {}  # handed over already leased to us (saves the claim)
        self._stop: asyncio.Event | None = None  # set while run() drives the loops
        self.notify = Handover(self)
        self.wake = asyncio.Event()  # ask for a sweep now (e.g. work queued by another component)

    def hand_over(self, doc_id: object, doc: Doc | None = None) -> None:
        """Hand over a document known to be due (fast path; safe to call twice or wrongly).

        With `doc` (as just inserted) the claim needs no read: a successful conditional update
        proves the stored document is still the pending one that was handed over. A `doc` inserted
        with lease_on_insert() needs no claim at all.

        Only while this worker's loops run: a process that does not run them (`--role web` or
        `smtp`) would otherwise queue ids that nobody takes, without bound. Its documents are
        found by the sweep of whichever process runs the worker.
        """
        if self._stop is None or self._stop.is_set():
            return
        if doc is not None:
            if doc.get("lease_owner") == self._owner and doc.get("lease_until") is not None:
                if len(self._owned) < HANDOVER_MAX:
                    self._owned[doc_id] = doc
            elif len(self._known) < HANDOVER_MAX:
                self._known[doc_id] = doc
        if doc_id not in self._queued:
            self._queued.add(doc_id)
            self._ready.put_nowait(doc_id)

    def lease_on_insert(self) -> Doc | None:
        """Fields that make a document's insert this worker's claim, when it is handed over with
        notify(id, doc) right after. None unless the worker's loops are running (a process that
        only serves webhooks stores due documents, for whichever worker sweeps them)."""
        if self._stop is None or self._stop.is_set() or len(self._owned) >= HANDOVER_MAX:
            return None
        now = self._clock.now()
        return {"lease_until": now + timedelta(seconds=self._lease), "lease_owner": self._owner,
                "attempts": 1, "updated_at": now}

    def _adopt(self, doc_id: object) -> Doc | None:
        """The document if it was inserted under our lease and the lease has long enough to run;
        else None (an ageing one is claimed the ordinary way once its lease is over)."""
        doc = self._owned.pop(doc_id, None)
        if doc is None or doc["lease_until"] - self._clock.now() < timedelta(seconds=self._lease / 2):
            return None
        return doc

    def _due(self) -> Doc:
        now = self._clock.now()
        return {"state": "pending", "next_attempt_at": {"$lte": now}, "lease_until": {"$lte": now}}

    async def claim_id(self, doc_id: object) -> Doc | None:
        """Take the lease on one document if it is due; returns it, or None."""
        now = self._clock.now()
        res = await self._coll.update_one(
            {"_id": doc_id, **self._due()},
            {"$set": {"lease_until": now + timedelta(seconds=self._lease), "lease_owner": self._owner,
                      "updated_at": now}, "$inc": {"attempts": 1}},
        )
        known = self._known.pop(doc_id, None)
        if res.modified_count != 1:
            return None
        if known is not None and known.get("attempts") == 0:
            lease = now + timedelta(seconds=self._lease)
            return {**known, "attempts": 1, "lease_until": lease, "lease_owner": self._owner, "updated_at": now}
        return await self._coll.find_one({"_id": doc_id})

    async def claim_batch(self, ids: list[object]) -> list[Doc]:
        """Take the lease on every due document among `ids` (one update, at most one read)."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return []
        now = self._clock.now()
        lease = now + timedelta(seconds=self._lease)
        token = f"{self._owner}#{new_id()}"
        res = await self._coll.update_many(
            {"_id": {"$in": ids}, **self._due()},
            {"$set": {"lease_until": lease, "lease_owner": token, "updated_at": now}, "$inc": {"attempts": 1}},
        )
        known = [self._known.pop(i, None) for i in ids]
        if res.modified_count == 0:
            return []
        if res.modified_count == len(ids) and all(k is not None and k.get("attempts") == 0 for k in known):
            # Every one was won and each was handed over as inserted: no read needed (as claim_id).
            return [{**k, "attempts": 1, "lease_until": lease, "lease_owner": token, "updated_at": now}
                    for k in known if k is not None]
        return [d async for d in self._coll.find({"_id": {"$in": ids}, "lease_owner": token})]

    async def extend(self, docs: list[Doc]) -> set[object]:
        """Push back the lease on claimed documents still being worked on (a long batch); returns
        the ids no longer held (the lease ran out and another worker took the document)."""
        until = self._clock.now() + timedelta(seconds=self._lease)
        by_owner: dict[object, list[Doc]] = {}
        for doc in docs:
            by_owner.setdefault(doc.get("lease_owner"), []).append(doc)
        lost: set[object] = set()
        for owner, group in by_owner.items():
            ids = [d["_id"] for d in group]
            res = await self._coll.update_many({"_id": {"$in": ids}, "lease_owner": owner, "state": "pending"},
                                               {"$set": {"lease_until": until}})
            if res.modified_count < len(ids):
                held = {d["_id"] async for d in self._coll.find(
                    {"_id": {"$in": ids}, "lease_owner": owner, "lease_until": until}, projection={"_id": 1})}
                lost |= set(ids) - held
            for doc in group:
                doc["lease_until"] = until
        return lost

    async def due_ids(self, limit: int = SWEEP_BATCH) -> list[object]:
        return [d["_id"] async for d in self._coll.find(self._due(), projection={"_id": 1}).limit(limit)]

    async def claim(self) -> Doc | None:
        """Claim any one due document."""
        for doc_id in await self.due_ids(limit=16):
            doc = await self.claim_id(doc_id)
            if doc is not None:
                return doc
        return None

    async def run_once(self) -> int:
        """Handle everything due now (in batches with a batch handler); returns how many were handled."""
        n = 0
        if self._handle_batch is not None:
            while len(ids := await self.due_ids(limit=self._max_batch)) > 1:
                docs = await self.claim_batch(ids)
                if not docs:
                    break
                await self._handle_batch(docs)
                n += len(docs)
        while (doc := await self.claim()) is not None:
            await self._handle(doc)
            n += 1
        return n

    async def run(self, stop: asyncio.Event, concurrency: int = 1) -> None:
        """Handle work until stopped: `concurrency` loops fed by notify() and by the sweeper."""
        self._stop = stop
        try:
            await asyncio.gather(self._sweeper(stop), *(self._loop(stop) for _ in range(concurrency)))
        finally:
            await self._give_back()
            self._stop = None

    async def _give_back(self) -> None:
        """Stopping: end our leases on handed-over documents not handled yet, so that another
        worker (or this one after a restart) takes them at once rather than when they run out."""
        ids, self._owned = list(self._owned), {}
        if not ids:
            return
        try:
            await self._coll.update_many(
                {"_id": {"$in": ids}, "lease_owner": self._owner, "state": "pending"},
                {"$set": {"lease_until": self._clock.now()}, "$inc": {"attempts": -1}},
            )
        except PyMongoError as err:
            logger.warning("%s: leases not given back; they run out", self._name,
                           extra={"fields": {"error": type(err).__name__, "count": len(ids)}})

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                doc_id = await asyncio.wait_for(self._ready.get(), timeout=self._poll)
            except TimeoutError:
                continue
            self._queued.discard(doc_id)
            if doc_id is None:  # stop sentinel
                continue
            try:
                if self._before_work is not None:
                    await self._before_work()
                if self._handle_batch is not None and not self._ready.empty():
                    await self._run_batch(doc_id)
                else:
                    doc = self._adopt(doc_id) or await self.claim_id(doc_id)
                    if doc is not None:
                        await self._handle(doc)
            except PyMongoError as err:
                logger.warning("%s: database unavailable", self._name, extra={"fields": {"error": type(err).__name__}})
                await asyncio.sleep(self._poll)
            except Exception:  # a bug met by one document must not stop the worker for all the others
                logger.exception("%s: unexpected error; the document's lease runs out and it is retried", self._name)
                await asyncio.sleep(self._poll)

    async def _run_batch(self, first: object) -> None:
        """Claim `first` and whatever is queued behind it (taken once a batch slot is free, so a
        batch grows while the previous one is in the database), and hand them over together."""
        assert self._handle_batch is not None
        async with self._batch_slots:
            ids = [first]
            sentinels = 0
            while len(ids) < self._max_batch and not self._ready.empty():
                doc_id = self._ready.get_nowait()
                self._queued.discard(doc_id)
                if doc_id is None:
                    sentinels += 1
                else:
                    ids.append(doc_id)
            for _ in range(sentinels):  # stop sentinels are for the other loops
                self._ready.put_nowait(None)
            docs: list[Doc] = []
            others: list[object] = []
            for doc_id in ids:
                if (doc := self._adopt(doc_id)) is not None:
                    docs.append(doc)
                else:
                    others.append(doc_id)
            if len(others) == 1 and not docs:
                claimed = await self.claim_id(others[0])
                docs += [claimed] if claimed is not None else []
            elif others:
                docs += await self.claim_batch(others)
            if len(docs) == 1:
                await self._handle(docs[0])
            elif docs:
                await self._handle_batch(docs)

    async def _sweeper(self, stop: asyncio.Event) -> None:
        """Every poll interval (or when woken), queue whatever is due and not queued yet."""
        while not stop.is_set():
            self.wake.clear()
            try:
                for doc_id in await self.due_ids():
                    self.notify(doc_id)
            except PyMongoError as err:
                logger.warning("%s: database unavailable", self._name, extra={"fields": {"error": type(err).__name__}})
            waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        # Let the loops see the stop promptly.
        for _ in range(64):
            self._ready.put_nowait(None)
