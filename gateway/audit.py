"""Tamper-evident audit log: a per-org HMAC hash chain of entries that carry ids, never content.

Each entry stores `prev` (the previous entry's MAC) and `mac` = HMAC(mac_key, canonical JSON of
the entry). A unique index on (org_id, seq) keeps concurrent appends on one linear chain: the
loser of a race gets DuplicateKeyError and retries on the new head.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING
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
        # Last known head per org: saves a read per append; a stale head only costs a retry,
        # because the unique (org_id, seq) index refuses the colliding insert.
        self._heads: dict[str, Doc] = {}

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
        for _ in range(50):
            head = self._heads.get(org_id)
            if head is None:
                head = await self.head(org_id)
            entry: Doc = {
                "org_id": org_id,
                "seq": (head["seq"] + 1) if head else 1,
                "at": self._clock.now(),
                "action": action,
                "actor": {"kind": actor.kind, "id": actor.id},
                "outcome": outcome,
                "ip": ip,
                "detail": detail or {},
                **{k: v for k, v in ids.items() if v is not None},
                "prev": head["mac"] if head else GENESIS,
            }
            entry["mac"] = self._sealer.mac(_canonical(entry))
            try:
                await self._store.audit.insert_one(entry)
            except DuplicateKeyError:
                self._heads.pop(org_id, None)
                continue  # another writer took this seq; chain onto the new head
            self._heads[org_id] = {"seq": entry["seq"], "mac": entry["mac"]}
            return entry
        raise RuntimeError("audit append kept losing races")

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
        return None

    async def head(self, org_id: str) -> Doc | None:
        return await self._store.audit.find_one(
            {"org_id": org_id}, sort=[("seq", DESCENDING)], projection={"seq": 1, "mac": 1}
        )
