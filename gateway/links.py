"""Secure links: capability tokens that open one thread for one contact (DESIGN.md §7).

Rules kept here and nowhere else: 256-bit token, only its SHA-256 stored, expiry from org
policy, revocation, PIN with a race-free wrong-PIN counter that locks the link at the org's
threshold (even the right PIN is then refused) until staff unlock it.
"""

from __future__ import annotations

from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession

from gateway.audit import Actor, AuditLog
from gateway.errors import LinkUnavailable, NotFound, PinRejected
from gateway.ids import new_id
from gateway.pins import verify_secret
from gateway.ports import Clock
from gateway.store import Doc, Store
from gateway.tokens import looks_like_token, new_token, token_hash


class Links:
    def __init__(self, store: Store, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock

    def new(
        self, *, org_id: str, thread_id: str, contact_id: str, message_id: str | None,
        ttl_seconds: int, pin_hash: str | None = None, channel: str = "sms",
    ) -> tuple[Doc, str]:
        """A link document (not yet stored) and its raw token (never stored)."""
        token = new_token()
        now = self._clock.now()
        doc: Doc = {
            "_id": new_id(), "org_id": org_id, "thread_id": thread_id, "contact_id": contact_id,
            "message_id": message_id, "token_hash": token_hash(token), "channel": channel,
            "created_at": now, "expires_at": now + timedelta(seconds=ttl_seconds),
            "revoked_at": None, "locked_at": None, "failures": 0, "pin_hash": pin_hash,
            "opened_at": None,
        }
        return doc, token

    async def insert(self, doc: Doc, session: AsyncClientSession | None = None) -> None:
        await self._store.links.insert_one(doc, session=session)

    async def find(self, token: str) -> Doc | None:
        """The link for a token whatever its state (None for malformed or unknown tokens)."""
        if not looks_like_token(token):
            return None
        return await self._store.links.find_one({"token_hash": token_hash(token)})

    def usable(self, link: Doc | None) -> bool:
        return bool(
            link and link["revoked_at"] is None and link["locked_at"] is None
            and self._clock.now() < link["expires_at"]
        )

    async def find_usable(self, token: str) -> Doc:
        link = await self.find(token)
        if not self.usable(link):
            raise LinkUnavailable()
        assert link is not None
        return link

    async def check_pin(self, link: Doc, pin_hash: str, pin: str, threshold: int, ip: str | None) -> None:
        """Verify a PIN against the link's counter; lock at `threshold` consecutive wrong ones. Raises
        PinRejected.

        The attempt is counted *before* the (slow) hash check with a conditional $inc, so any
        number of concurrent guesses evaluates at most `threshold` of them (SECURITY.md B3).
        """
        claimed = await self._store.links.find_one_and_update(
            {"_id": link["_id"], "locked_at": None, "revoked_at": None, "failures": {"$lt": threshold}},
            {"$inc": {"failures": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if claimed is None:
            raise LinkUnavailable()
        ids = {"thread_id": link["thread_id"], "link_id": link["_id"], "message_id": link.get("message_id"),
               "contact_id": link["contact_id"]}
        if verify_secret(pin_hash, pin):
            # The lock is for N *consecutive* wrong PINs (NIST 800-63B §5.2.2): the right one
            # starts the count again (and does not count itself).
            await self._store.links.update_one({"_id": link["_id"], "locked_at": None}, {"$set": {"failures": 0}})
            return
        failures = int(claimed["failures"])
        await self._audit.append(link["org_id"], "link.pin_failed", Actor("client"), outcome="denied",
                                 ip=ip, detail={"failures": failures}, **ids)
        if failures >= threshold:
            locked = await self._store.links.update_one(
                {"_id": link["_id"], "locked_at": None}, {"$set": {"locked_at": self._clock.now()}}
            )
            if locked.modified_count:
                await self._audit.append(link["org_id"], "link.locked", Actor("system"), ip=ip, **ids)
                await self._store.threads.update_one(
                    {"_id": link["thread_id"], "org_id": link["org_id"]},
                    {"$set": {"attention": "link_locked"}, "$inc": {"unread_staff": 1}},
                )
            raise LinkUnavailable()
        raise PinRejected(tries_left=threshold - failures)

    async def mark_opened(self, link: Doc, ip: str | None) -> None:
        await self._store.links.update_one(
            {"_id": link["_id"], "opened_at": None}, {"$set": {"opened_at": self._clock.now()}}
        )
        await self._audit.append(
            link["org_id"], "link.opened", Actor("client", link["contact_id"]), ip=ip,
            thread_id=link["thread_id"], link_id=link["_id"], message_id=link.get("message_id"),
            contact_id=link["contact_id"],
        )

    async def _staff_change(self, org_id: str, link_id: str, update: Doc, action: str, actor: Actor) -> Doc:
        link = await self._store.links.find_one_and_update(
            {"_id": link_id, "org_id": org_id}, update, return_document=ReturnDocument.AFTER
        )
        if link is None:
            raise NotFound("link")
        await self._audit.append(org_id, action, actor, thread_id=link["thread_id"], link_id=link_id,
                                 message_id=link.get("message_id"), contact_id=link["contact_id"])
        return link

    async def revoke(self, org_id: str, link_id: str, actor: Actor) -> Doc:
        """Revoke the link, and end the client sessions it opened: a revoked link gives no access."""
        link = await self._staff_change(org_id, link_id, {"$set": {"revoked_at": self._clock.now()}},
                                        "link.revoked", actor)
        await self._store.sessions.delete_many({"org_id": org_id, "kind": "client", "link_id": link_id})
        return link

    async def unlock(self, org_id: str, link_id: str, actor: Actor) -> Doc:
        link = await self._staff_change(org_id, link_id, {"$set": {"locked_at": None, "failures": 0}},
                                        "link.unlocked", actor)
        await self._store.threads.update_one(
            {"_id": link["thread_id"], "org_id": org_id, "attention": "link_locked"}, {"$unset": {"attention": ""}}
        )
        return link

    async def for_thread(self, org_id: str, thread_id: str) -> list[Doc]:
        return [d async for d in self._store.links.find({"org_id": org_id, "thread_id": thread_id}).sort("_id", -1)]
