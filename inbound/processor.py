"""The inbound processor: claims stored provider events by lease and hands each to its handler.

Leases live in MongoDB (gateway/leases.py), so any number of worker processes can run this. A
handler must be idempotent: a crash after any step re-runs the whole event safely.

Under backlog the worker hands over whole batches. A handler with a `batch` method processes the
common case of a batch in bulk and returns what it finished plus the events it leaves to the
one-by-one path (anything unusual); those, and a whole batch whose bulk step failed, then run
exactly as single events would (every step is idempotent, so re-running part of a batch is safe).
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
# A handler's optional `batch`: (ids of events now done, events to run one by one).
BatchHandler = Callable[[list[Doc]], Awaitable[tuple[list[object], list[Doc]]]]

MAX_ATTEMPTS = 10
LEASE_SECONDS = 60


class InboundProcessor:
    def __init__(self, store: Store, clock: Clock, handlers: dict[str, Handler], *, owner: str,
                 poll_seconds: float = 1.0, before_work: Callable[[], Awaitable[None]] | None = None) -> None:
        self._store = store
        self._clock = clock
        self._handlers = handlers
        self._batch_handlers: dict[str, BatchHandler] = {
            kind: batch for kind, h in handlers.items() if (batch := getattr(h, "batch", None)) is not None}
        self.worker = LeaseWorker(store.inbound_events, clock, owner=owner, lease_seconds=LEASE_SECONDS,
                                  poll_seconds=poll_seconds, handle=self.process, name="inbound processor",
                                  handle_batch=self.process_batch, before_work=before_work)

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

    async def process_batch(self, events: list[Doc]) -> None:
        """Process claimed events: in bulk where the kind's handler can, else one by one."""
        by_kind: dict[str, list[Doc]] = {}
        for event in events:
            by_kind.setdefault(event.get("kind", ""), []).append(event)
        for kind, group in by_kind.items():
            batch = self._batch_handlers.get(kind)
            rest = group
            if batch is not None and len(group) > 1:
                try:
                    done, rest = await batch(group)
                except Exception as err:  # the one-by-one path re-runs each and accounts for its failure
                    logger.warning("inbound batch failed; processing its events one by one", exc_info=True,
                                   extra={"fields": {"kind": kind, "events": len(group), "error": type(err).__name__}})
                    done, rest = [], group
                if done:
                    await self._store.inbound_events.update_many(
                        {"_id": {"$in": done}},
                        {"$set": {"state": "done", "processed_at": self._clock.now()},
                         "$unset": {"payload": "", "raw": ""}},
                    )
            for event in rest:
                await self.process(event)

    async def run_once(self) -> int:
        """Process every due event; returns how many were handled."""
        return await self.worker.run_once()

    async def run(self, stop: asyncio.Event, concurrency: int = 1) -> None:
        await self.worker.run(stop, concurrency)
