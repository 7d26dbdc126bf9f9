"""What inbound reply handling reads besides gateway/messaging/conversations.py: the threads a
batch of email replies names, and whether a mail answers one we sent to a contact."""

from __future__ import annotations

from gateway.storage.store import Doc, Store


class ReplyContext:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def threads(self, org_id: str, thread_ids: list[str]) -> dict[str, Doc]:
        """The org's threads among `thread_ids`, by id (one read; unknown ids are left out)."""
        return {d["_id"]: d async for d in self._store.threads.find(
            {"_id": {"$in": list(thread_ids)}, "org_id": org_id})}

    async def sent_to(self, org_id: str, contact_id: str, email_message_ids: list[str]) -> bool:
        """Did we send the contact a mail with one of these Message-IDs (as given, with or without <>)?"""
        if not email_message_ids:
            return False
        found = await self._store.messages.find_one(
            {"email_message_id": {"$in": email_message_ids}, "org_id": org_id, "contact_id": contact_id},
            projection={"_id": 1})
        return found is not None
