"""Tamper-evident audit log: a per-org HMAC hash chain of entries that carry ids, never content.

Each entry stores `prev` (the previous entry's MAC) and `mac` = HMAC(mac_key, canonical JSON of
the entry). A unique index on (org_id, seq) keeps concurrent appends on one linear chain: the
loser of a race gets DuplicateKeyError and retries on the new head.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from gateway.crypto import Sealer
from gateway.ports import Clock
from gateway.store import Doc, Store

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
_ID_FIELDS = ("thread_id", "message_id", "link_id", "contact_id", "staff_id", "event_id", "job_id")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: kind is staff, api, client, provider or system; id is an opaque id."""

    kind: str
    id: str | None = None


SYSTEM = Actor("system")


def _canonical(entry: Doc) -> bytes:
    body = {k: v for k, v in entry.items() if k not in ("_id", "mac")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


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
        unknown = set(ids) - set(_ID_FIELDS)
        if unknown:
            raise ValueError(f"unknown audit id fields: {sorted(unknown)}")
        async with self._locks[org_id]:
            head = self._heads.get(org_id) or await self._load_head(org_id)
            for _ in range(1000):
                entry: Doc = {
                    "org_id": org_id,
                    "seq": head["seq"] + 1,
                    "at": self._clock.now(),
                    "action": action,
                    "actor": {"kind": actor.kind, "id": actor.id},
                    "outcome": outcome,
                    "ip": ip,
                    "detail": detail or {},
                    **{k: v for k, v in ids.items() if v is not None},
                    "prev": head["mac"],
                }
                entry["mac"] = self._sealer.mac(_canonical(entry))
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
                await self._save_head(org_id, head)
                return entry
        raise RuntimeError("audit append kept losing races")

    async def _load_head(self, org_id: str) -> Doc:
        """The chain head from `audit_heads`, rolled forward past entries written after it."""
        doc = await self._store.audit_heads.find_one({"_id": org_id})
        head: Doc = _head_of(doc) if doc else {"seq": 0, "mac": GENESIS}
        while (nxt := await self._store.audit.find_one({"org_id": org_id, "seq": head["seq"] + 1},
                                                       projection={"seq": 1, "mac": 1})) is not None:
            head = _head_of(nxt)
        return head

    async def _save_head(self, org_id: str, head: Doc) -> None:
        res = await self._store.audit_heads.update_one({"_id": org_id, "seq": {"$lt": head["seq"]}}, {"$set": head})
        if res.matched_count == 0:
            try:
                await self._store.audit_heads.insert_one({"_id": org_id, **head})
            except DuplicateKeyError:
                pass  # exists with a later head already

    async def verify(self, org_id: str) -> int | None:
        """Walk the chain; return the first bad seq, or None if the chain is intact."""
        prev = GENESIS
        expected_seq = 1
        async for entry in self._store.audit.find({"org_id": org_id}).sort("seq", 1):
            if entry["seq"] != expected_seq or entry["prev"] != prev:
                return int(expected_seq)
            if self._sealer.mac(_canonical(entry)) != entry["mac"]:
                return int(entry["seq"])
            prev = entry["mac"]
            expected_seq += 1
        # Entries cut off the end leave the recorded head pointing past the chain.
        recorded = await self._store.audit_heads.find_one({"_id": org_id})
        if recorded is not None and int(recorded["seq"]) >= expected_seq:
            return int(expected_seq)
        return None

    async def head(self, org_id: str) -> Doc | None:
        """The last entry's seq and MAC (anchor it somewhere else to detect truncation)."""
        head = await self._load_head(org_id)
        return head if head["seq"] else None


def _head_of(doc: Doc) -> Doc:
    return {"seq": int(doc["seq"]), "mac": str(doc["mac"])}
