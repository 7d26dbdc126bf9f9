"""Tamper-evident audit log: a per-org HMAC hash chain of entries that carry ids, never content.

Each entry stores `prev` (the previous entry's MAC) and `mac` = HMAC(mac_key, canonical JSON of
the entry). A unique index on (org_id, seq) keeps concurrent appends on one linear chain: the
loser of a race gets DuplicateKeyError and retries on the new head.

The chain's head is also recorded in `audit_heads`, so that verify() notices entries cut off the
end. An append returns once its entries are stored; the head is recorded just after, in the
background, at most once a second per org: appends that come meanwhile share one head write
(every page view that audits would otherwise pay for a second write). A crash in between
leaves the recorded head behind the chain, never ahead of it: the chain stays valid, and only the
newest entries are not covered by the truncation check until the next append.

The recorded head carries its own MAC, `sig` (same key as the entries), so that someone who can
write to the database but does not hold the key cannot lower it after cutting entries off; and a
chain with entries but no recorded head is reported, so deleting the head does not help either.
(A signed head can still be replayed: restoring an older head document after cutting the chain
back to it is not detected here. Compare with the head the CLI prints, anchored elsewhere.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from gateway.ports import Clock
from gateway.security.crypto import Sealer
from gateway.storage.store import Doc, Store

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
HEAD_INTERVAL_SECONDS = 1.0  # the recorded head lags the chain by at most this (flush() writes it now)
_ID_FIELDS = ("thread_id", "message_id", "link_id", "contact_id", "staff_id", "event_id", "job_id")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: kind is staff, api, client, provider or system; id is an opaque id."""

    kind: str
    id: str | None = None


SYSTEM = Actor("system")


@dataclass(frozen=True, slots=True)
class Pending:
    """One entry for AuditLog.append_many (the arguments of one append())."""

    action: str
    actor: Actor
    ids: dict[str, str | None] = field(default_factory=dict)
    detail: dict[str, str | int | bool | None] | None = None
    outcome: str = "ok"
    ip: str | None = None


def _canonical(entry: Doc) -> bytes:
    body = {k: v for k, v in entry.items() if k not in ("_id", "mac")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def _head_bytes(org_id: str, seq: int, mac: str) -> bytes:
    """What a recorded head's `sig` is the MAC of (a JSON array: never an entry's canonical bytes)."""
    return json.dumps(["audit_head", org_id, seq, mac], separators=(",", ":")).encode()


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, ObjectId):
        return str(value)
    raise TypeError(type(value).__name__)


class AuditLog:
    """Appends and verifies the per-org chain."""

    def __init__(self, store: Store, sealer: Sealer, clock: Clock) -> None:
        self._store = store
        self._sealer = sealer
        self._clock = clock
        # Last known head per org, and one writer per org in this process: appends then never
        # race each other here; across processes the unique (org_id, seq) index settles it.
        self._heads: dict[str, Doc] = {}
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._unsaved: dict[str, Doc] = {}  # heads waiting for their write, per org
        self._head_writers: dict[str, asyncio.Task[None]] = {}
        self._head_written_at: dict[str, float] = {}  # event loop time of each org's last head write
        self._flushing = asyncio.Event()  # set while flush() runs: write heads at once

    async def append(
        self,
        org_id: str,
        action: str,
        actor: Actor,
        *,
        outcome: str = "ok",
        ip: str | None = None,
        detail: dict[str, str | int | bool | None] | None = None,
        **ids: str | None,
    ) -> Doc:
        """Append one entry; ids are keyword arguments such as thread_id=..., link_id=...."""
        _check_ids(ids)
        async with self._locks[org_id]:
            head = self._heads.get(org_id) or await self._load_head(org_id)
            for _ in range(1000):
                entry = self._entry(org_id, head, Pending(action, actor, ids, detail, outcome, ip))
                try:
                    await self._store.audit.insert_one(entry)
                except DuplicateKeyError:
                    # Another process took this seq: step onto its entry (an indexed equality
                    # lookup) and try the next one.
                    taken = await self._store.audit.find_one({"org_id": org_id, "seq": head["seq"] + 1},
                                                             projection={"seq": 1, "mac": 1})
                    head = _head_of(taken) if taken else await self._load_head(org_id)
                    continue
                head = _head_of(entry)
                self._heads[org_id] = head
                self._record_head(org_id, head)
                return entry
        raise RuntimeError("audit append kept losing races")

    async def append_many(self, org_id: str, items: Sequence[Pending]) -> list[Doc]:
        """Append several entries, in order, with one insert and one head update.

        The entries chain exactly as the same append() calls one after another would. Another
        process can take a seq in the middle; the entries stored before it stay (each is a valid
        link of the chain) and the rest are chained again on top of the other process's entry.
        """
        for item in items:
            _check_ids(item.ids)
        if not items:
            return []
        stored: list[Doc] = []
        rest = list(items)
        async with self._locks[org_id]:
            head = self._heads.get(org_id) or await self._load_head(org_id)
            for _ in range(1000):
                batch: list[Doc] = []
                tip = head
                for item in rest:
                    entry = self._entry(org_id, tip, item)
                    batch.append(entry)
                    tip = _head_of(entry)
                try:
                    await self._store.audit.insert_many(batch, ordered=True)
                except BulkWriteError as err:
                    if any(e.get("code") != 11000 for e in err.details.get("writeErrors", [])):
                        raise
                    # What of ours is stored? (Ordered: a prefix; compare MACs rather than trust
                    # counts, so a retried write that did land is recognised as ours.)
                    found = {d["seq"]: d["mac"] async for d in self._store.audit.find(
                        {"org_id": org_id, "seq": {"$gte": batch[0]["seq"], "$lte": batch[-1]["seq"]}},
                        projection={"seq": 1, "mac": 1})}
                    kept = 0
                    while kept < len(batch) and found.get(batch[kept]["seq"]) == batch[kept]["mac"]:
                        kept += 1
                    stored += batch[:kept]
                    rest = rest[kept:]
                    head = _head_of(batch[kept - 1]) if kept else head
                    if not rest:
                        break
                    head = await self._roll_forward(org_id, head)
                    continue
                stored += batch
                head = tip
                break
            else:
                raise RuntimeError("audit append kept losing races")
            self._heads[org_id] = head
            self._record_head(org_id, head)
        return stored

    async def without(self, org_id: str, action: str, message_ids: list[str]) -> set[str]:
        """Those of `message_ids` with no `action` entry yet (one indexed read): lets a re-run
        append an entry that a crash cut off, without ever appending it twice."""
        if not message_ids:
            return set()
        seen = {d["message_id"] async for d in self._store.audit.find(
            {"org_id": org_id, "message_id": {"$in": message_ids}}, projection={"message_id": 1, "action": 1})
            if d.get("action") == action}
        return set(message_ids) - seen

    # -- reads for the staff pages (each on an index of gateway/storage/store.py) -------------------
    async def for_messages(self, org_id: str, message_ids: list[str], limit: int) -> list[Doc]:
        """Entries naming any of the messages, oldest first: (org_id, message_id, seq), one lookup each."""
        if not message_ids:
            return []
        return await self._store.audit.find({"org_id": org_id, "message_id": {"$in": message_ids}}).sort(
            "seq", 1).limit(limit).to_list(None)

    async def thread_actions(self, org_id: str, thread_id: str, actions: Sequence[str], limit: int) -> list[Doc]:
        """The thread's newest entries of these actions, by (org_id, thread_id, action, seq)."""
        query = {"org_id": org_id, "thread_id": thread_id, "action": {"$in": list(actions)}}
        return await self._store.audit.find(query).sort("seq", -1).limit(limit).to_list(None)

    async def newest(self, query: Doc, limit: int) -> list[Doc]:
        """The newest `limit` entries matching `query` (which names its org_id)."""
        assert "org_id" in query, "an audit read is always within one org"
        return [d async for d in self._store.audit.find(query).sort("seq", -1).limit(limit)]

    async def oldest_first(self, query: Doc) -> AsyncIterator[Doc]:
        """Every entry matching `query` (which names its org_id), oldest first, as the chain runs."""
        assert "org_id" in query, "an audit read is always within one org"
        async for entry in self._store.audit.find(query).sort("seq", 1):
            yield entry

    def _entry(self, org_id: str, head: Doc, item: Pending) -> Doc:
        entry: Doc = {
            "org_id": org_id,
            "seq": head["seq"] + 1,
            "at": self._clock.now(),
            "action": item.action,
            "actor": {"kind": item.actor.kind, "id": item.actor.id},
            "outcome": item.outcome,
            "ip": item.ip,
            "detail": item.detail or {},
            **{k: v for k, v in item.ids.items() if v is not None},
            "prev": head["mac"],
        }
        entry["mac"] = self._sealer.mac(_canonical(entry))
        return entry

    async def _roll_forward(self, org_id: str, head: Doc) -> Doc:
        """Step past entries written after `head` (by another process)."""
        while (nxt := await self._store.audit.find_one({"org_id": org_id, "seq": head["seq"] + 1},
                                                       projection={"seq": 1, "mac": 1})) is not None:
            head = _head_of(nxt)
        return head

    async def _load_head(self, org_id: str) -> Doc:
        """The chain head from `audit_heads`, rolled forward past entries written after it."""
        doc = await self._store.audit_heads.find_one({"_id": org_id})
        head: Doc = _head_of(doc) if doc else {"seq": 0, "mac": GENESIS}
        return await self._roll_forward(org_id, head)

    def _record_head(self, org_id: str, head: Doc) -> None:
        """Record `head` in the background; one writer per org writes the latest head it sees."""
        self._unsaved[org_id] = head
        if org_id not in self._head_writers:
            self._head_writers[org_id] = asyncio.create_task(self._write_heads(org_id))

    async def _write_heads(self, org_id: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while org_id in self._unsaved:
                due = self._head_written_at.get(org_id, float("-inf")) + HEAD_INTERVAL_SECONDS
                if due > loop.time() and not self._flushing.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._flushing.wait(), due - loop.time())
                head = self._unsaved.pop(org_id)  # the latest, including appends made while waiting
                try:
                    await self._save_head(org_id, head)
                except PyMongoError as err:  # the next append records a later head
                    logger.warning("audit head not recorded", extra={"fields": {"error": type(err).__name__}})
                self._head_written_at[org_id] = loop.time()
        finally:
            del self._head_writers[org_id]

    async def flush(self) -> None:
        """Write every head recorded so far, now (before verifying or stopping)."""
        self._flushing.set()
        try:
            while self._head_writers:
                await asyncio.gather(*self._head_writers.values(), return_exceptions=True)
        finally:
            self._flushing.clear()

    async def _save_head(self, org_id: str, head: Doc) -> None:
        signed = {**head, "sig": self._head_sig(org_id, head["seq"], head["mac"])}
        res = await self._store.audit_heads.update_one({"_id": org_id, "seq": {"$lt": head["seq"]}}, {"$set": signed})
        if res.matched_count == 0:
            try:
                await self._store.audit_heads.insert_one({"_id": org_id, **signed})
            except DuplicateKeyError:
                pass  # exists with a later head already

    def _head_sig(self, org_id: str, seq: int, mac: str) -> str:
        return self._sealer.mac(_head_bytes(org_id, seq, mac))

    async def verify(self, org_id: str) -> int | None:
        """Walk the chain; return the first bad seq, or None if the chain is intact.

        A bad recorded head (its `sig` missing or wrong, it points past the chain, or it is missing
        while the chain has entries) is reported as the seq just after the last valid entry.
        """
        await self.flush()
        prev = GENESIS
        expected_seq = 1
        async for entry in self._store.audit.find({"org_id": org_id}).sort("seq", 1):
            if entry["seq"] != expected_seq or entry["prev"] != prev:
                return int(expected_seq)
            if self._sealer.mac(_canonical(entry)) != entry["mac"]:
                return int(entry["seq"])
            prev = entry["mac"]
            expected_seq += 1
        # Entries cut off the end leave the recorded head pointing past the chain; lowering the head
        # to match needs its sig, which needs the key. Deleting the head is reported too. Heads are
        # written just after their appends (flushed above, for this process), so a crash in between
        # leaves the head behind the chain, which is fine, or, before an org's first head write
        # ever, no head at all: that is reported, for a human to check the chain against the
        # anchored head the CLI prints.
        recorded = await self._store.audit_heads.find_one({"_id": org_id})
        if recorded is None:
            return int(expected_seq) if expected_seq > 1 else None
        try:
            seq, mac, sig = int(recorded["seq"]), str(recorded["mac"]), recorded["sig"]
        except (KeyError, TypeError, ValueError):
            return int(expected_seq)
        if not isinstance(sig, str) or not hmac.compare_digest(sig, self._head_sig(org_id, seq, mac)):
            return int(expected_seq)
        if seq >= expected_seq:
            return int(expected_seq)
        return None

    async def head(self, org_id: str) -> Doc | None:
        """The last entry's seq and MAC (anchor it somewhere else to detect truncation)."""
        head = await self._load_head(org_id)
        return head if head["seq"] else None


def _check_ids(ids: dict[str, str | None]) -> None:
    unknown = set(ids) - set(_ID_FIELDS)
    if unknown:
        raise ValueError(f"unknown audit id fields: {sorted(unknown)}")


def _head_of(doc: Doc) -> Doc:
    return {"seq": int(doc["seq"]), "mac": str(doc["mac"])}
