"""Work claimed by lease from a MongoDB collection: the one mechanism behind both worker loops.

A document is due when `state` is "pending", `next_attempt_at` has passed and nobody holds its
lease. Claiming sets `lease_until`/`lease_owner` with a conditional update by _id, so any number
of processes can compete and each job runs once per lease; a crashed worker's lease simply runs
out and another takes the job.

Work found in this process (a webhook just stored an event, a send just queued a job) is handed
over by id on an in-memory queue — a hint that saves a collection scan, never needed for
correctness: a periodic sweep finds everything due, including other processes' work and retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from gateway.ports import Clock
from gateway.store import Doc

logger = logging.getLogger(__name__)

SWEEP_BATCH = 200


class LeaseWorker:
    """Claims due documents and hands each to `handle`; run() drives concurrent loops + a sweeper."""

    def __init__(self, collection: AsyncCollection[Doc], clock: Clock, *, owner: str, lease_seconds: float,
                 poll_seconds: float, handle: Callable[[Doc], Awaitable[None]], name: str) -> None:
        self._coll = collection
        self._clock = clock
        self._owner = owner
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._handle = handle
        self._name = name
        self._ready: asyncio.Queue[object] = asyncio.Queue()
        self._queued: set[object] = set()
        self._known: dict[object, Doc] = {}  # documents handed over with their id (saves a read)
        self.wake = asyncio.Event()  # ask for a sweep now (e.g. work queued by another component)

    def notify(self, doc_id: object, doc: Doc | None = None) -> None:
        """Hand over a document known to be due (fast path; safe to call twice or wrongly).

        With `doc` (as just inserted) the claim needs no read: a successful conditional update
        proves the stored document is still the pending one that was handed over.
        """
        if doc is not None and len(self._known) < 10_000:
            self._known[doc_id] = doc
        if doc_id not in self._queued:
            self._queued.add(doc_id)
            self._ready.put_nowait(doc_id)

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
        """Handle everything due now, one at a time; returns how many were handled."""
        n = 0
        while (doc := await self.claim()) is not None:
            await self._handle(doc)
            n += 1
        return n

    async def run(self, stop: asyncio.Event, concurrency: int = 1) -> None:
        """Handle work until stopped: `concurrency` loops fed by notify() and by the sweeper."""
        await asyncio.gather(self._sweeper(stop), *(self._loop(stop) for _ in range(concurrency)))

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
                doc = await self.claim_id(doc_id)
                if doc is not None:
                    await self._handle(doc)
            except PyMongoError as err:
                logger.warning("%s: database unavailable", self._name, extra={"fields": {"error": type(err).__name__}})
                await asyncio.sleep(self._poll)

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
