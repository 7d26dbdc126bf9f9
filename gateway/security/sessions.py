"""Server-side sessions for clients (after opening a link) and staff: idle and absolute limits.

The cookie carries a 256-bit random id; the database keeps only its SHA-256. Expiry is checked
against the injected clock on every request (the TTL index only cleans up).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gateway.ports import Clock
from gateway.security.tokens import new_token, token_hash
from gateway.storage.store import Doc, Store

TOUCH_SECONDS = 30.0


class Sessions:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create(
        self, kind: str, org_id: str, *, idle_seconds: int, absolute_seconds: int, **subject: Any
    ) -> tuple[str, Doc]:
        sid = new_token()
        now = self._clock.now()
        doc: Doc = {
            "_id": token_hash(sid), "kind": kind, "org_id": org_id, "created_at": now,
            "last_seen_at": now, "idle_seconds": idle_seconds,
            "absolute_until": now + timedelta(seconds=absolute_seconds),
            "expires_at": min(now + timedelta(seconds=idle_seconds), now + timedelta(seconds=absolute_seconds)),
            **subject,
        }
        await self._store.sessions.insert_one(doc)
        return sid, doc

    async def get(self, kind: str, sid: str | None, *, touch: bool = True) -> Doc | None:
        """The live session for this cookie value, or None (unknown, expired, or another kind)."""
        if not sid or len(sid) > 100:
            return None
        doc = await self._store.sessions.find_one({"_id": token_hash(sid), "kind": kind})
        if doc is None:
            return None
        now = self._clock.now()
        if now >= doc["expires_at"] or now >= doc["absolute_until"]:
            await self._store.sessions.delete_one({"_id": doc["_id"]})
            return None
        # Activity is recorded at most every TOUCH_SECONDS (a journaled write per request was the
        # biggest cost of a page view); the idle timeout can so end up to that much early.
        if touch and (now - doc["last_seen_at"]).total_seconds() >= min(TOUCH_SECONDS, doc["idle_seconds"] / 20):
            expires = min(now + timedelta(seconds=doc["idle_seconds"]), doc["absolute_until"])
            await self._store.sessions.update_one(
                {"_id": doc["_id"]}, {"$set": {"last_seen_at": now, "expires_at": expires}}
            )
        return doc

    async def claim_flag(self, doc: Doc, flag: str) -> bool:
        """Set a boolean flag on the session if it is still false; whether this call set it (of
        concurrent requests of one session, exactly one wins)."""
        res = await self._store.sessions.update_one({"_id": doc["_id"], flag: False}, {"$set": {flag: True}})
        return res.modified_count == 1

    async def update(self, doc: Doc, **changes: Any) -> None:
        await self._store.sessions.update_one({"_id": doc["_id"]}, {"$set": changes})

    async def delete(self, sid: str) -> None:
        await self._store.sessions.delete_one({"_id": token_hash(sid)})

    async def delete_where(self, **match: Any) -> int:
        res = await self._store.sessions.delete_many(match)
        return int(res.deleted_count)

    async def end_for_user(self, user_id: str, *, keep: str | None = None) -> int:
        """End every session of a staff member (signed in or half-way), except the one whose
        stored id is `keep` (the acting member's own, when a change they make applies to them)."""
        match: Doc = {"user_id": user_id}
        if keep is not None:
            match["_id"] = {"$ne": keep}
        res = await self._store.sessions.delete_many(match)
        return int(res.deleted_count)

    async def of_user(self, kind: str, user_id: str, limit: int) -> list[Doc]:
        """A member's sessions of this kind, newest first (their account page lists them)."""
        return [d async for d in self._store.sessions.find({"kind": kind, "user_id": user_id})
                .sort("created_at", -1).limit(limit)]

    async def live_per_user(self, kind: str, org_id: str) -> dict[str, int]:
        """How many unexpired sessions of this kind each of the org's users holds."""
        now = self._clock.now()
        counts: dict[str, int] = {}
        async for d in self._store.sessions.find({"kind": kind, "org_id": org_id},
                                                 projection={"user_id": 1, "expires_at": 1}):
            if d["expires_at"] > now:
                counts[d["user_id"]] = counts.get(d["user_id"], 0) + 1
        return counts
