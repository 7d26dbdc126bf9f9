"""Retention: message content older than an org's `retention_days` is removed for good (GDPR
storage limitation, Art. 5(1)(e); docs/security-model.md, 'Retention').

What goes: each message's sealed body and the attachments stored with it. What stays: the
message's record (ids, direction, channel, times, delivery history), the links' records and the
audit chain, which holds ids only: that a message was sent or received, and when, outlives what
it said. A contact under a legal hold (J3) keeps everything. Outbound messages still queued are
left for a later run (their send would need the text).

Each run reads only what aged past the cutoff since the previous one: a thread records the
bound it was purged up to (`purged_before`, an ObjectId hex: message ids are ObjectIds, so they
sort by creation time), and the next run reads that thread's messages from there.

`hushlink serve` runs this every RUN_SECONDS; `hushlink admin purge-expired` runs it once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from pymongo.errors import PyMongoError

from gateway.ports import Clock
from gateway.security.audit import SYSTEM, AuditLog
from gateway.storage.recent import oid_at
from gateway.storage.store import Doc, Store
from gateway.tenancy.orgs import Org, Orgs

logger = logging.getLogger(__name__)

RUN_SECONDS = 3600
THREADS_PER_READ = 200


class Retention:
    """The purge of content past each org's retention_days (see the module docstring)."""

    def __init__(self, store: Store, orgs: Orgs, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._orgs = orgs
        self._audit = audit
        self._clock = clock

    async def purge_org(self, org: Org) -> dict[str, int]:
        """Remove the content the org's policy no longer keeps; returns what was removed."""
        removed = {"messages": 0, "attachments": 0}
        if org.policy.retention_days <= 0:
            return removed
        now = self._clock.now()
        cutoff = now - timedelta(days=org.policy.retention_days)
        bound = oid_at(cutoff)
        batch: list[Doc] = []
        async for thread in self._store.threads.find({"org_id": org.id},
                                                     projection={"contact_id": 1, "purged_before": 1}):
            if thread.get("purged_before", "") < bound:
                batch.append(thread)
            if len(batch) >= THREADS_PER_READ:
                await self._purge_threads(org.id, batch, bound, now, removed)
                batch = []
        await self._purge_threads(org.id, batch, bound, now, removed)
        if removed["messages"]:
            await self._audit.append(org.id, "retention.purged", SYSTEM, detail={
                **removed, "older_than": cutoff.isoformat(timespec="seconds"), "days": org.policy.retention_days})
        return removed

    async def _purge_threads(self, org_id: str, threads: list[Doc], bound: str, now: datetime,
                             removed: dict[str, int]) -> None:
        if not threads:
            return
        store = self._store
        held = {d["_id"] async for d in store.contacts.find(
            {"org_id": org_id, "_id": {"$in": [t["contact_id"] for t in threads]}, "legal_hold": {"$ne": None}},
            projection={"_id": 1})}
        for thread in threads:
            if thread["contact_id"] in held:
                continue
            old = [m async for m in store.messages.find(
                {"org_id": org_id, "thread_id": thread["_id"],
                 "_id": {"$gte": thread.get("purged_before", ""), "$lt": bound}},
                projection={"direction": 1, "status": 1, "files": 1, "body": 1})]
            if any(m.get("status") == "queued" for m in old):
                continue  # a send still needs its text: the thread waits for a later run
            content = [m["_id"] for m in old if "body" in m]
            if content:
                await store.messages.update_many({"org_id": org_id, "_id": {"$in": content}},
                                                 {"$unset": {"body": ""}, "$set": {"purged_at": now}})
                removed["messages"] += len(content)
            files = [m["_id"] for m in old if m.get("direction") == "inbound" and m.get("files", 1)]
            if files:
                res = await store.attachments.delete_many({"org_id": org_id, "message_id": {"$in": files}})
                removed["attachments"] += res.deleted_count
            await store.threads.update_one({"_id": thread["_id"], "org_id": org_id},
                                           {"$set": {"purged_before": bound}})

    async def purge_all(self) -> dict[str, dict[str, int]]:
        return {org.id: await self.purge_org(org) for org in await self._orgs.all() if org.policy.retention_days > 0}

    async def run(self, stop: asyncio.Event) -> None:
        """Purge every org now and then every RUN_SECONDS, until stopped."""
        while not stop.is_set():
            try:
                await self.purge_all()
            except PyMongoError as err:
                logger.warning("retention: database unavailable; next run later", extra={"fields": {
                    "error": type(err).__name__}})
            except Exception:  # a bug must not end the loop for good
                logger.exception("retention run failed")
            try:
                await asyncio.wait_for(stop.wait(), RUN_SECONDS)
            except TimeoutError:
                pass
