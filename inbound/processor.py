"""The inbound processor: claims stored provider events by lease and hands each to its handler.

Leases live in MongoDB (gateway/leases.py), so any number of worker processes can run this. A
handler must be idempotent: a crash after any step re-runs the whole event safely.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

from gateway.leases import LeaseWorker
from gateway.ports import Clock
from gateway.store import Doc, Store

logger = logging.getLogger(__name__)

Handler = Callable[[Doc], Awaitable[str]]  # returns the event's final state, e.g. "done"

MAX_ATTEMPTS = 10
LEASE_SECONDS = 60


class InboundProcessor:
    def __init__(self, store: Store, clock: Clock, handlers: dict[str, Handler], *, owner: str,
                 poll_seconds: float = 1.0) -> None:
        self._store = store
        self._clock = clock
        self._handlers = handlers
        self.worker = LeaseWorker(store.inbound_events, clock, owner=owner, lease_seconds=LEASE_SECONDS,
                                  poll_seconds=poll_seconds, handle=self.process, name="inbound processor")

    async def claim(self) -> Doc | None:
        return await self.worker.claim()

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

    async def run_once(self) -> int:
        """Process every due event; returns how many were handled."""
        return await self.worker.run_once()

    async def run(self, stop: asyncio.Event, concurrency: int = 1) -> None:
        await self.worker.run(stop, concurrency)
