"""Reads of threads for the staff pages that are not a conversation's own operations: the unread
counter of the nav bar, the one conversation of a contact, which contacts' conversations are
assigned outside an agent's scope, and the live-update feed (change stream or polling).

Every query here is shaped for an index (gateway/storage/store.py) and bounded: the staff pages'
read counts are asserted by tests/portal/test_page_scaling.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from gateway.storage.store import Doc, Store

CHANGED_LIMIT = 100  # threads per polling round; the next round goes on from the last one


class InboxQueries:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def unread_threads(self, org_id: str, assignees: tuple[str | None, ...] | None) -> int:
        """Unread threads of the org, or of those assigned to one of `assignees` (None: all)."""
        # $gte 1, not $gt 0: SecantusDB starts an exclusive range at the first entry EQUAL to the bound
        # and steps over every one of them (here: every read thread of the org).
        query = {"org_id": org_id, "unread_staff": {"$gte": 1}}
        if assignees is None:
            return int(await self._store.threads.count_documents(query))
        # The same indexed read of the unread threads; the assignee is checked here, since no index
        # has both fields (a second range in the filter would read every thread of the org).
        unread = self._store.threads.find(query, projection={"assignee": 1})
        return sum([1 async for d in unread if d.get("assignee") in assignees])

    async def thread_of_contact(self, org_id: str, contact_id: str, fields: tuple[str, ...]) -> Doc | None:
        """The contact's conversation (at most one per org: unique (org_id, contact_id)), these fields only."""
        return await self._store.threads.find_one({"org_id": org_id, "contact_id": contact_id},
                                                  projection={"_id": 1, **{f: 1 for f in fields}})

    async def assigned_outside(self, org_id: str, contact_ids: list[str],
                               assignees: tuple[str | None, ...]) -> set[str]:
        """Those of the contacts whose conversation is assigned outside `assignees`: ONE read, an $in
        on the unique (org_id, contact_id) index (a contact has at most one conversation per org)."""
        if not contact_ids:
            return set()
        threads = self._store.threads.find({"org_id": org_id, "contact_id": {"$in": contact_ids}},
                                           projection={"_id": 0, "contact_id": 1, "assignee": 1})
        return {t["contact_id"] async for t in threads if t.get("assignee") not in assignees}

    async def changed_since(self, org_id: str, since: datetime) -> list[Doc]:
        """The polling feed: threads with activity after `since`, oldest first."""
        cursor = self._store.threads.find({"org_id": org_id, "last_activity_at": {"$gt": since}}).sort(
            [("last_activity_at", 1), ("_id", 1)]).limit(CHANGED_LIMIT)
        return [d async for d in cursor]

    @asynccontextmanager
    async def watch(self, org_id: str, max_await_ms: int) -> AsyncIterator[Any]:
        """A change stream of the org's threads as stored after each change (`try_next()` gives a
        change or None after `max_await_ms`). Raises the driver's OperationFailure where change
        streams are unavailable (a standalone server): the caller polls instead."""
        pipeline = [{"$match": {"fullDocument.org_id": org_id,
                                "operationType": {"$in": ["insert", "update", "replace"]}}}]
        async with await self._store.threads.watch(pipeline, full_document="updateLookup",
                                                   max_await_time_ms=max_await_ms) as changes:
            yield changes
