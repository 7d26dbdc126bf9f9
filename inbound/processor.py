"""The inbound processor: claims stored provider events by lease and hands each to its handler.

Leases live in MongoDB (gateway/storage/leases.py; the event reads and writes in
gateway/storage/intake.py), so any number of worker processes can run this. A
handler must be idempotent: a crash after any step re-runs the whole event safely.

Under backlog the worker hands over whole batches; a single event is a batch of one and takes
the same path. A handler with a `batch` method processes the common case in bulk and returns what
it finished plus the events it leaves to its per-event path (anything unusual); those, and a whole
batch whose bulk step failed, then run one by one (every step is idempotent, so re-running part of
a batch is safe).

One sender's events are handled in the order they arrived (by `received_at`, then by id: ids are
ObjectIds, which one process makes in increasing order), whichever worker claims them: a "YES"
then "STOP" must end opted out (CTIA and TCPA: an opt-out is never undone by an earlier message).
An event whose sender (a blind index stored with it at intake) has an earlier event still pending
elsewhere (being handled, or waiting for a retry) is given back unhandled, not counted as an
attempt, and taken again once that one is finished (when that one is leased to this process, it
is simply kept and run right after it); inside a batch, a sender's events run in
order and stop at the first that fails. A sender's later messages therefore wait while an earlier
one is retried (at most MAX_ATTEMPTS times, ~15 minutes). Consent changes are also ordered on
their own (gateway/messaging/contacts.py record_consent), for events stored without a sender.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from gateway.ports import Clock
from gateway.storage.intake import InboundEventQueue
from gateway.storage.store import Doc

logger = logging.getLogger(__name__)

Handler = Callable[[Doc], Awaitable[str]]  # returns the event's final state, e.g. "done"
# A handler's optional `batch`: (ids of events now done, events to run one by one).
BatchHandler = Callable[[list[Doc]], Awaitable[tuple[list[object], list[Doc]]]]

MAX_ATTEMPTS = 10
LEASE_SECONDS = 60
# Processed events are removed this long after (config [outbox] keep_done_days; TTL, gateway/storage/store.py),
# except those kept for review: events no org could be found for. Events that failed for good
# (state "failed") are never processed and stay too.
KEEP_DONE_DAYS = 30
KEPT_STATES = frozenset({"unroutable"})
MAX_WAITING = 10_000  # deferred events remembered for a prompt hand-over (else the sweep finds them)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def arrival(event: Doc) -> tuple[datetime, str]:
    """An event's place in arrival order (its sender's order): stored time, then id."""
    return event.get("received_at") or _EPOCH, str(event["_id"])


class InboundProcessor:
    def __init__(self, queue: InboundEventQueue, clock: Clock, handlers: dict[str, Handler], *, owner: str,
                 poll_seconds: float = 1.0, before_work: Callable[[], Awaitable[None]] | None = None,
                 keep_done_days: int = KEEP_DONE_DAYS) -> None:
        self._queue = queue
        self._clock = clock
        self._keep_done = timedelta(days=keep_done_days)
        self._handlers = handlers
        self._batch_handlers: dict[str, BatchHandler] = {
            kind: batch for kind, h in handlers.items() if (batch := getattr(h, "batch", None)) is not None}
        self.worker = queue.lease_worker(clock, owner=owner, lease_seconds=LEASE_SECONDS,
                                         poll_seconds=poll_seconds, handle=self.process, name="inbound processor",
                                         handle_batch=self.process_batch, before_work=before_work)
        self._owner = owner
        # Events given back because an earlier one of their sender was pending, by sender: handed
        # over again as soon as this process finishes one of that sender's events.
        self._waiting: dict[str, set[object]] = {}
        # Claimed events whose sender's earlier event is leased to this process too (queued or in
        # hand): kept, lease and all, and run right after it, instead of given back and claimed again.
        self._parked: dict[str, list[Doc]] = {}

    async def claim(self) -> Doc | None:
        return await self.worker.claim()

    async def process(self, event: Doc) -> None:
        """Process one claimed event (a batch of one)."""
        await self.process_batch([event])

    async def _run(self, event: Doc) -> bool:
        """Run the event's handler and record the outcome; False when it failed (retried later)."""
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
            await self._queue.retry_later(event["_id"], final=final, error=type(err).__name__,
                                          next_attempt_at=self._clock.now() + timedelta(seconds=delay),
                                          now=self._clock.now())
            return False
        # Done: the raw sealed payload is dropped (one less copy of client content to protect). Events
        # that could not be routed keep it, sealed, for review, and do not expire.
        now = self._clock.now()
        await self._queue.finish(event["_id"], state, now=now,
                                 expire_at=None if state in KEPT_STATES else now + self._keep_done)
        return True

    async def process_batch(self, events: list[Doc]) -> None:
        """Process claimed events in their senders' order: in bulk where the kind's handler can,
        else one by one."""
        ready = await self._in_turn(sorted(events, key=arrival))
        by_kind: dict[str, list[Doc]] = {}
        for event in ready:
            by_kind.setdefault(event.get("kind", ""), []).append(event)
        senders = {e["sender"] for e in ready if e.get("sender")}
        try:
            for kind, group in by_kind.items():
                await self._process_kind(kind, group)
        finally:
            self._wake_waiting(senders)
        followers = [doc for sender in senders for doc in self._parked.pop(sender, [])]
        if followers:
            await self.process_batch(followers)

    async def _process_kind(self, kind: str, group: list[Doc]) -> None:
        batch = self._batch_handlers.get(kind)
        rest = group
        if batch is not None:  # a single event is a batch of one: the same path
            try:
                done, rest = await batch(group)
            except Exception as err:  # the one-by-one path re-runs each and accounts for its failure
                logger.warning("inbound batch failed; processing its events one by one", exc_info=True,
                               extra={"fields": {"kind": kind, "events": len(group), "error": type(err).__name__}})
                done, rest = [], group
            if done:
                now = self._clock.now()
                await self._queue.finish_done(done, now=now, expire_at=now + self._keep_done)
        stalled: set[str] = set()  # senders whose earlier event in this batch failed
        for event in sorted(rest, key=arrival):
            sender = event.get("sender")
            if sender in stalled:
                await self._give_back(event)
            elif not await self._run(event) and sender:
                stalled.add(sender)

    async def _in_turn(self, events: list[Doc]) -> list[Doc]:
        """The events whose sender has no earlier event pending outside `events`; the others are
        given back (one read for the whole batch)."""
        senders = {e["sender"] for e in events if e.get("sender")}
        if not senders:
            return events
        # Every pending event that arrived by the batch's last, filtered here: the batch is taken
        # from the oldest queued, so that is the batch itself plus the few held elsewhere or
        # waiting for a retry. (A `sender $in [...]` query instead costs ~50x more on SecantusDB.)
        ours = {e["_id"] for e in events}
        earlier: dict[str, list[Doc]] = {}
        async for doc in self._queue.pending_until(max(arrival(e)[0] for e in events)):
            if doc.get("sender") in senders and doc["_id"] not in ours:
                earlier.setdefault(doc["sender"], []).append(doc)
        now = self._clock.now()
        ready: list[Doc] = []
        for event in events:
            blockers = [d for d in earlier.get(event.get("sender") or "", []) if arrival(d) < arrival(event)]
            if not blockers:
                ready.append(event)
            elif all(self._leased_here(d, now) for d in blockers) and len(self._parked) < MAX_WAITING:
                self._parked.setdefault(event["sender"], []).append(event)
            else:
                await self._give_back(event, not_before=max(d["next_attempt_at"] for d in blockers))
        return ready

    def _leased_here(self, event: Doc, now: datetime) -> bool:
        """Is the event leased to this process (so it runs here, and wakes its followers)?"""
        owner = str(event.get("lease_owner") or "")
        return (owner == self._owner or owner.startswith(self._owner + "#")) and event["lease_until"] > now

    async def _give_back(self, event: Doc, not_before: datetime | None = None) -> None:
        """Release a claimed event unhandled, without counting the attempt: it is due again when
        its sender's earlier event may be (`not_before`, that one's next attempt)."""
        await self._queue.give_back(event, now=self._clock.now(), not_before=not_before)
        if len(self._waiting) < MAX_WAITING:
            self._waiting.setdefault(event["sender"], set()).add(event["_id"])
        for follower in self._parked.pop(event["sender"], []):  # they would wait for it anyway
            await self._give_back(follower, not_before)

    def _wake_waiting(self, senders: set[str]) -> None:
        """Hand over again the events given back for these senders (their turn may have come)."""
        for sender in senders:
            for event_id in self._waiting.pop(sender, ()):
                self.worker.notify(event_id)

    async def run_once(self) -> int:
        """Process every due event; returns how many were handled."""
        return await self.worker.run_once()

    async def run(self, stop: asyncio.Event, concurrency: int = 1) -> None:
        await self.worker.run(stop, concurrency)
