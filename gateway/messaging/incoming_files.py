"""Files that arrive with a client's message (email attachments, MMS media), sealed at rest.

Stored before the message itself, with ids derived from the message id ("<message id>:<n>") and
idempotent upserts: a crash in between never leaves a message whose files are missing, since a
re-run stores them again and finds the message already there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bson import Binary

from gateway.security.vault import Vault
from gateway.storage.store import Store


@dataclass(frozen=True, slots=True)
class IncomingFile:
    filename: str
    content_type: str
    data: bytes
    index: int  # its place in the message (the n-th attachment or media item): part of its id


async def seal_attachments(store: Store, vault: Vault, *, org_id: str, dek_id: str, message_id: str,
                           thread_id: str, contact_id: str, files: Sequence[IncomingFile]) -> None:
    for f in files:
        aid = f"{message_id}:{f.index}"
        await store.attachments.update_one({"_id": aid}, {"$setOnInsert": {
            "_id": aid, "org_id": org_id, "message_id": message_id, "thread_id": thread_id,
            "contact_id": contact_id, "size": len(f.data), "content_type": f.content_type,
            "filename": await vault.seal(dek_id, org_id, "attachments", aid, "filename", f.filename),
            "data": Binary(await vault.seal(dek_id, org_id, "attachments", aid, "data", f.data)),
        }}, upsert=True)


class IncomingFiles:
    """`seal_attachments` for the inbound handlers, with its store and vault given once."""

    def __init__(self, store: Store, vault: Vault) -> None:
        self._store = store
        self._vault = vault

    async def seal(self, *, org_id: str, dek_id: str, message_id: str, thread_id: str, contact_id: str,
                   files: Sequence[IncomingFile]) -> None:
        await seal_attachments(self._store, self._vault, org_id=org_id, dek_id=dek_id, message_id=message_id,
                               thread_id=thread_id, contact_id=contact_id, files=files)
