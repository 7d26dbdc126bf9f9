"""Email reply addresses: reply+<token>@<reply_domain>, one fresh token per outgoing mail.

A token (256 bits, only its SHA-256 stored) is scoped to one thread and one contact, so a reply
lands in that conversation whatever its subject or From header says. Tokens stay valid for a
long time (replies come late) and die with the contact's erasure.
"""

from __future__ import annotations

from datetime import timedelta

from pymongo.asynchronous.client_session import AsyncClientSession

from gateway.ids import new_id
from gateway.messaging.unsubscribe import unsubscribe_hash
from gateway.ports import Clock
from gateway.security.tokens import looks_like_token, new_token, token_hash
from gateway.storage.grouped import GroupedLookup
from gateway.storage.store import Doc, Store

REPLY_TOKEN_DAYS = 400


class ReplyTokens:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        # Concurrent SMTP sessions checking their recipients share one query (gateway/storage/grouped.py).
        self._lookup: GroupedLookup[str, Doc] = GroupedLookup(self.by_hashes)

    def new(self, *, org_id: str, thread_id: str, contact_id: str) -> tuple[Doc, str]:
        token = new_token()
        now = self._clock.now()
        doc: Doc = {"_id": new_id(), "org_id": org_id, "thread_id": thread_id, "contact_id": contact_id,
                    "token_hash": token_hash(token), "created_at": now,
                    # The mail's one-click unsubscribe link is derived from this token
                    # (gateway/messaging/unsubscribe.py).
                    "unsubscribe_hash": unsubscribe_hash(token),
                    "expires_at": now + timedelta(days=REPLY_TOKEN_DAYS), "revoked_at": None}
        return doc, token

    async def insert(self, doc: Doc, session: AsyncClientSession | None = None) -> None:
        await self._store.reply_tokens.insert_one(doc, session=session)

    async def find_live(self, token: str) -> Doc | None:
        doc = await self.find_known(token)
        return doc if doc is not None and self.is_live(doc) else None

    async def find_known(self, token: str) -> Doc | None:
        """The token's document, expired or not; None if unknown or revoked."""
        if not looks_like_token(token):
            return None
        doc = await self._lookup.get(token_hash(token))
        return None if doc is None or doc.get("revoked_at") else doc

    def is_live(self, doc: Doc) -> bool:
        return not doc.get("revoked_at") and self._clock.now() < doc["expires_at"]

    async def by_hash(self, digest: str) -> Doc | None:
        return await self._lookup.get(digest)

    async def by_hashes(self, digests: list[str]) -> dict[str, Doc]:
        """by_hash for several tokens with one read: {token hash: token document}."""
        if not digests:
            return {}
        cursor = self._store.reply_tokens.find({"token_hash": {"$in": list(dict.fromkeys(digests))}})
        return {d["token_hash"]: d async for d in cursor}
