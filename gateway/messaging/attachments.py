"""Attachments of inbound email and MMS as both portals read them: found within an org and a thread,
their names and bytes opened from the vault (sealed at rest, docs/security-model.md 'Sealed fields').

An attachment is found only within its org and thread: the caller names the thread it may see
(the client session's, or the staff page's after its own org check), so another thread's id is
simply not found. How a file is served over HTTP is the portal's (portal/attachments.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import IntegrityError
from gateway.security.vault import Vault
from gateway.storage.store import Doc, Store

_ID = re.compile(r"[0-9a-f]{24}:[0-9]{1,4}")


def is_attachment_id(value: str) -> bool:
    """Attachment ids are "<message id>:<n>" (inbound/email_reply.py)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def may_have_files(docs: list[Doc]) -> list[str]:
    """Ids of the messages whose attachments are worth a lookup: inbound ones with a stored count
    (`files`) other than 0; one stored before the count existed is looked up too."""
    return [d["_id"] for d in docs if d.get("direction") == "inbound" and d.get("files", 1)]


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """What a page lists about one attachment (the name opened; never the bytes)."""

    id: str
    message_id: str
    filename: str
    size: int
    content_type: str


class Attachments:
    def __init__(self, store: Store, vault: Vault) -> None:
        self._store = store
        self._vault = vault

    async def find(self, org_id: str, thread_id: str, attachment_id: str) -> Doc | None:
        """The attachment if it belongs to this org and thread, else None."""
        if not is_attachment_id(attachment_id):
            return None
        doc = await self._store.attachments.find_one({"_id": attachment_id, "org_id": org_id})
        if doc is None:
            return None
        owner = doc.get("thread_id")
        if owner is None:  # stored before attachments carried their thread: ask the message
            message = await self._store.messages.find_one({"_id": doc["message_id"], "org_id": org_id},
                                                          projection={"thread_id": 1})
            owner = message["thread_id"] if message else None
        return doc if owner == thread_id else None

    async def for_messages(self, org_id: str, message_ids: list[str]) -> dict[str, list[AttachmentInfo]]:
        """{message id: its attachments, oldest first} for the given messages; those of an erased
        contact (their key destroyed) are left out."""
        out: dict[str, list[AttachmentInfo]] = {}
        if not message_ids:
            return out
        cursor = self._store.attachments.find({"org_id": org_id, "message_id": {"$in": message_ids}},
                                              projection={"data": 0}).sort("_id", 1)
        async for doc in cursor:
            try:
                name = await self._vault.open(org_id, "attachments", doc["_id"], "filename", doc["filename"])
            except IntegrityError:  # the contact was erased: nothing to show
                continue
            out.setdefault(doc["message_id"], []).append(AttachmentInfo(
                id=doc["_id"], message_id=doc["message_id"], filename=name or "attachment",
                size=int(doc.get("size", 0)), content_type=str(doc.get("content_type") or "")))
        return out

    async def open(self, doc: Doc) -> tuple[bytes, str]:
        """The attachment's bytes and file name; IntegrityError if its key is gone (erased) or it was altered."""
        org_id = doc["org_id"]
        data = await self._vault.open_bytes(org_id, "attachments", doc["_id"], "data", doc["data"])
        filename = await self._vault.open(org_id, "attachments", doc["_id"], "filename", doc["filename"])
        return data, filename or ""
