"""The inbound processor: claims stored provider events by lease and hands each to its handler.

Leases live in MongoDB, so any number of worker processes can run this loop. A handler must be
idempotent: a crash after any step re-runs the whole event safely.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from gateway.ports import Clock
from gateway.store import Doc, Store

logger = logging.getLogger(__name__)

Handler = Callable[[Doc], Awaitable[str]]  # returns the event's final state, e.g. "done"

MAX_ATTEMPTS = 10
LEASE_SECONDS = 60


class InboundProcessor:
    def __init__(self, store: Store, clock: Clock, handlers: dict[str, Handler], wake: asyncio.Event,
                 *, owner: str, poll_seconds: float = 1.0,
                 after_event: Callable[[], None] | None = None) -> None:
        self._store = store
        self._clock = clock
        self._handlers = handlers
        self._wake = wake
        self._owner = owner
        self._poll = poll_seconds
        self._after_event = after_event  # e.g. wake the dispatcher: an acknowledgement may be queued

    async def claim(self) -> Doc | None:
        now = self._clock.now()
        return await self._store.inbound_events.find_one_and_update(
            {"state": "pending", "next_attempt_at": {"$lte": now}, "lease_until": {"$lte": now}},
            {"$set": {"lease_until": now + timedelta(seconds=LEASE_SECONDS), "lease_owner": self._owner},
             "$inc": {"attempts": 1}},
            sort=[("next_attempt_at", 1)], return_document=ReturnDocument.AFTER,
        )

    async def process(self, event: Doc) -> None:
        handler = self._handlers.get(event["kind"])
        try:
            if handler is None:
                raise RuntimeError(f"no handler for event kind {event['kind']!r}")
            state = await handler(event)
        except Exception as err:  # any failure: retry later, never lose the event
            attempts = int(event.get("attempts", 1))
            final = attempts >= MAX_ATTEMPTS
            delay = min(300.0, 2.0 ** attempts) * (0.5 + random.random() / 2)
            logger.exception("inbound event failed", extra={"fields": {
                "event_id": event["_id"], "kind": event["kind"], "attempts": attempts,
                "error": type(err).__name__, "final": final}})
            await self._store.inbound_events.update_one(
                {"_id": event["_id"]},
                {"$set": {"state": "failed" if final else "pending", "error": type(err).__name__,
                          "next_attempt_at": self._clock.now() + timedelta(seconds=delay),
                          "lease_until": self._clock.now()}},
            )
            return
        # Done: drop the raw sealed payload (one less copy of client content to protect). Events
        # that could not be routed keep it, sealed, for review.
        update: Doc = {"$set": {"state": state, "processed_at": self._clock.now()}}
        if state == "done":
            update["$unset"] = {"payload": "", "raw": ""}
        await self._store.inbound_events.update_one({"_id": event["_id"]}, update)
        if self._after_event is not None:
            self._after_event()

    async def run_once(self) -> int:
        """Process every due event; returns how many were handled."""
        n = 0
        while (event := await self.claim()) is not None:
            await self.process(event)
            n += 1
        return n

    async def run(self, stop: asyncio.Event, concurrency: int = 1) -> None:
        """Claim and process events until stopped, with `concurrency` loops sharing the wake-up."""
        await asyncio.gather(*(self._loop(stop) for _ in range(concurrency)))

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()  # before the sweep, so an event stored during it wakes us again
            try:
                await self.run_once()
            except PyMongoError as err:
                logger.warning("inbound processor: database unavailable",
                               extra={"fields": {"error": type(err).__name__}})
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
