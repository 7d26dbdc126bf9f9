"""Reading a thread's messages: one by id, pages in either direction, bodies opened (or gone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.errors import KeyErased, NotFound
from gateway.security.vault import Vault
from gateway.storage.recent import FLOOR_MARGIN, Recent, oid_at, oid_time
from gateway.storage.store import Doc, Store


class History:
    def __init__(self, store: Store, vault: Vault, recent: Recent) -> None:
        self._store = store
        self._vault = vault
        self._recent = recent  # newest-first pages, one index window at a time (gateway/storage/recent.py)

    async def get_message(self, org_id: str, message_id: str) -> Doc:
        doc = await self._store.messages.find_one({"_id": message_id, "org_id": org_id}) if message_id else None
        if doc is None:
            raise NotFound("message")
        return doc

    async def open_body(self, message: Doc) -> str:
        return await self._vault.open(message["org_id"], "messages", message["_id"], "body", message["body"])

    async def open_body_or_erased(self, message: Doc) -> str | None:
        """The body, or None once its contact was erased (its data key destroyed) or the org's
        retention removed it (gateway/compliance/retention.py). Any other failure to open (tampering) still raises."""
        if "body" not in message:
            return None
        try:
            return await self.open_body(message)
        except KeyErased:
            return None

    async def messages(
        self, org_id: str, thread_id: str, *, after: str | None = None, limit: int = 50, with_body: bool = True
    ) -> list[Doc]:
        """Messages of a thread, oldest first, after the cursor (a message id)."""
        query: Doc = {"org_id": org_id, "thread_id": thread_id}
        if after:
            query["_id"] = {"$gt": after}
        out = []
        async for doc in self._store.messages.find(query).sort("_id", 1).limit(limit):
            if with_body:
                doc["text"] = await self.open_body_or_erased(doc)
            out.append(doc)
        return out

    async def latest_messages(self, org_id: str, thread_id: str, limit: int = 50,
                              before: str | None = None) -> list[Doc]:
        """The newest `limit` messages of a thread (older than the message id `before`), returned
        oldest first, bodies opened.

        Message ids are ObjectId hex, so they sort by creation time: the read is one window of
        _id on (org_id, thread_id, _id) at a time (gateway/storage/recent.py), so the first page of a
        thread of 5,000 messages costs what a thread of 50 costs.
        """
        now = datetime.now(UTC)  # ids carry the real time, not the service clock
        created = oid_time(thread_id)
        upper_at = oid_time(before) if before else None
        docs = await self._recent.newest(
            self._store.messages, {"org_id": org_id, "thread_id": thread_id}, "_id", limit=limit,
            order=[("_id", -1)], key=("messages", thread_id, limit), now=now,
            floor=created - FLOOR_MARGIN if created else None, bound=oid_at,
            at_of=lambda d: oid_time(d["_id"]) or now, upper=("$lt", before) if before else None,
            upper_at=(upper_at + timedelta(seconds=1)) if upper_at else None,
        )
        docs.reverse()
        for d in docs:
            d["text"] = await self.open_body_or_erased(d)
        return docs
