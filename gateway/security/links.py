"""Secure links: capability tokens that open one thread for one contact (docs/security-model.md).

Rules kept here and nowhere else: 256-bit token, only its SHA-256 stored, expiry from org
policy, revocation, renewal, and the PIN guard.

The PIN guard is one document per (org, thread, contact) in `link_guards`, not a counter per
link: every link of a thread opens the same conversation, so a fresh link (a renewal, the
answer to a texted reply, a staff re-issue) must not buy a fresh set of guesses. Wrong PINs on
any of the thread's links count together; at the org's `lock_threshold` consecutive wrong PINs
(NIST 800-63B §5.2.2) every link of the thread is locked for that contact — even the right PIN
is refused — until staff unlock it. The right PIN starts the count again. The counter moves
only by conditional updates, so concurrent guesses can never evaluate more than the threshold
(OWASP ASVS 5.0 §6.3.1 / 2.3.4).

The same document caps the client's "send me a new link" requests per thread per rolling day
(`link_renewals_per_day`), so the form cannot be used to flood a phone or an inbox.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from gateway.errors import LinkUnavailable, NotFound, PinRejected
from gateway.ids import new_id
from gateway.ports import Clock
from gateway.security.audit import Actor, AuditLog
from gateway.security.pins import verify_secret
from gateway.security.tokens import looks_like_token, new_token, token_hash
from gateway.storage.recent import FLOOR_MARGIN, Recent, oid_at, oid_time
from gateway.storage.store import Doc, Store

RENEWAL_WINDOW = timedelta(hours=24)


def _guard_id(link: Doc) -> str:
    return f"{link['org_id']}:{link['thread_id']}:{link['contact_id']}"


def _thread_links(link: Doc) -> Doc:
    """The filter for every link of the link's thread, for the link's contact."""
    return {"org_id": link["org_id"], "thread_id": link["thread_id"], "contact_id": link["contact_id"]}


def _ids(link: Doc) -> Doc:
    """The ids an audit entry about the link names."""
    return {"thread_id": link["thread_id"], "link_id": link["_id"], "message_id": link.get("message_id"),
            "contact_id": link["contact_id"]}


class Links:
    def __init__(self, store: Store, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        # The staff thread page's newest links, one index window at a time (gateway/storage/recent.py).
        self._recent = Recent()

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
            # failures: the wrong PINs entered through this link that count towards the thread's
            # lock (shown to staff); the lock itself is decided on the thread's guard.
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
        """Not revoked, not locked itself, not expired (the thread's lock is `thread_locked`)."""
        return bool(
            link and link["revoked_at"] is None and link["locked_at"] is None
            and self._clock.now() < link["expires_at"]
        )

    async def thread_locked(self, link: Doc) -> bool:
        """Whether wrong PINs have locked the link's thread for its contact (any of its links)."""
        guard = await self._store.link_guards.find_one({"_id": _guard_id(link)}, projection={"locked_at": 1})
        return guard is not None and guard.get("locked_at") is not None

    async def thread_locked_for(self, org_id: str, thread_id: str, contact_id: str) -> bool:
        """Whether wrong PINs have locked this thread for this contact: every link of it, also one
        issued after the lock, which carries no locked_at of its own (staff pages show it locked)."""
        return await self.thread_locked({"org_id": org_id, "thread_id": thread_id, "contact_id": contact_id})

    async def find_usable(self, token: str) -> Doc:
        """The link for a token that may be opened now; LinkUnavailable otherwise (whatever the reason)."""
        link = await self.find(token)
        if link is None or not self.usable(link) or await self.thread_locked(link):
            raise LinkUnavailable()
        return link

    async def tries_left(self, link: Doc, threshold: int) -> int:
        guard = await self._store.link_guards.find_one({"_id": _guard_id(link)}, projection={"failures": 1})
        return max(threshold - int(guard.get("failures", 0) if guard else 0), 0)

    async def _ensure_guard(self, link: Doc) -> None:
        try:
            await self._store.link_guards.update_one(
                {"_id": _guard_id(link)},
                {"$setOnInsert": {**_thread_links(link), "failures": 0, "locked_at": None,
                                  "renewals": 0, "renewals_since": None}},
                upsert=True,
            )
        except DuplicateKeyError:  # two first attempts raced on the upsert: the other one created it
            pass

    async def check_pin(self, link: Doc, pin_hash: str, pin: str, threshold: int, ip: str | None) -> None:
        """Verify a PIN against the thread's guard; lock every link of the thread at `threshold`
        consecutive wrong ones. Raises PinRejected (wrong, tries left) or LinkUnavailable (locked).

        The attempt is counted *before* the (slow) hash check with a conditional $inc, so any
        number of concurrent guesses, over any number of the thread's links, evaluates at most
        `threshold` of them.
        """
        gid = _guard_id(link)
        claimed = await self._claim_attempt(link, threshold)
        if claimed is None:
            raise LinkUnavailable()
        if verify_secret(pin_hash, pin):
            # The lock is for N *consecutive* wrong PINs (NIST 800-63B §5.2.2): the right one starts
            # the count again (and does not count itself) — unless concurrent wrong guesses locked
            # the thread meanwhile, or staff revoked this link: then it does not open.
            reset = await self._store.link_guards.update_one({"_id": gid, "locked_at": None}, {"$set": {"failures": 0}})
            if not reset.matched_count:
                raise LinkUnavailable()
            still = await self._store.links.find_one({"_id": link["_id"], "locked_at": None, "revoked_at": None},
                                                     projection={"_id": 1})
            if still is None:
                raise LinkUnavailable()
            if int(claimed["failures"]) > 1:  # wrong PINs came before this one: clear their tally on the links
                await self._store.links.update_many({**_thread_links(link), "failures": {"$gt": 0}},
                                                     {"$set": {"failures": 0}})
            return
        failures = int(claimed["failures"])
        await self._store.links.update_one({"_id": link["_id"]}, {"$inc": {"failures": 1}})
        await self._audit.append(link["org_id"], "link.pin_failed", Actor("client"), outcome="denied",
                                 ip=ip, detail={"failures": failures}, **_ids(link))
        if failures >= threshold:
            await self._lock_thread(link, ip)
            raise LinkUnavailable()
        raise PinRejected(tries_left=threshold - failures)

    async def _claim_attempt(self, link: Doc, threshold: int) -> Doc | None:
        """Count one attempt on the thread's guard; None when it is locked or at the threshold."""
        claim = {"_id": _guard_id(link), "locked_at": None, "failures": {"$lt": threshold}}
        for _ in range(2):
            claimed = await self._store.link_guards.find_one_and_update(
                claim, {"$inc": {"failures": 1}}, return_document=ReturnDocument.AFTER)
            if claimed is not None:
                return claimed
            if await self._store.link_guards.find_one({"_id": claim["_id"]}, projection={"_id": 1}):
                return None  # locked, or as many attempts in flight as are left
            await self._ensure_guard(link)  # the thread's first attempt: create its guard, then count
        return None

    async def _lock_thread(self, link: Doc, ip: str | None) -> None:
        now = self._clock.now()
        locked = await self._store.link_guards.update_one({"_id": _guard_id(link), "locked_at": None},
                                                          {"$set": {"locked_at": now}})
        if not locked.modified_count:
            return  # a concurrent guess locked it first (and audited it)
        # Marked on each link too, so staff see which links are locked. Links issued later are
        # locked by the guard alone (find_usable).
        await self._store.links.update_many({**_thread_links(link), "locked_at": None}, {"$set": {"locked_at": now}})
        await self._audit.append(link["org_id"], "link.locked", Actor("system"), ip=ip, **_ids(link))
        await self._store.threads.update_one(
            {"_id": link["thread_id"], "org_id": link["org_id"]},
            {"$set": {"attention": "link_locked"}, "$inc": {"unread_staff": 1}},
        )

    async def mark_opened(self, link: Doc, ip: str | None) -> None:
        await self._store.links.update_one(
            {"_id": link["_id"], "opened_at": None}, {"$set": {"opened_at": self._clock.now()}}
        )
        await self._audit.append(link["org_id"], "link.opened", Actor("client", link["contact_id"]), ip=ip,
                                 **_ids(link))

    async def refuse_open(self, link: Doc, reason: str, ip: str | None) -> None:
        """Record that a usable link was not opened for a policy reason (e.g. `pin_required`)."""
        await self._audit.append(link["org_id"], "link.open_refused", Actor("client", link["contact_id"]),
                                 outcome="denied", ip=ip, detail={"reason": reason}, **_ids(link))

    # -- renewal ------------------------------------------------------------------------------
    async def claim_renewal(self, link: Doc, per_day: int) -> bool:
        """Take one of the thread's `per_day` renewals in the current 24 h window; False when none is left.

        Race-free: the count only moves by conditional updates, so concurrent requests never
        take more than `per_day` in a window.
        """
        if per_day < 1:
            return False
        await self._ensure_guard(link)
        gid = _guard_id(link)
        guards = self._store.link_guards
        now = self._clock.now()
        since = now - RENEWAL_WINDOW
        for _ in range(2):
            taken = await guards.find_one_and_update(
                {"_id": gid, "renewals_since": {"$gt": since}, "renewals": {"$lt": per_day}},
                {"$inc": {"renewals": 1}},
            )
            if taken is not None:
                return True
            # No window open (or it ended): start one with this renewal. Only one concurrent request
            # can match the old window; the others retry above, in the new one.
            started = await guards.find_one_and_update(
                {"_id": gid, "$or": [{"renewals_since": None}, {"renewals_since": {"$lte": since}}]},
                {"$set": {"renewals_since": now, "renewals": 1}},
            )
            if started is not None:
                return True
        return False

    async def replace(self, old: Doc, new_link_id: str, actor: Actor) -> None:
        """Revoke `old` now that `new_link_id` replaces it, ending the sessions it opened."""
        await self._revoke(old["org_id"], old["_id"], actor, detail={"replaced_by": new_link_id})

    # -- staff ------------------------------------------------------------------------------
    async def _revoke(self, org_id: str, link_id: str, actor: Actor,
                      detail: dict[str, str | int | bool | None] | None = None) -> Doc:
        link = await self._store.links.find_one_and_update(
            {"_id": link_id, "org_id": org_id}, {"$set": {"revoked_at": self._clock.now()}},
            return_document=ReturnDocument.AFTER,
        )
        if link is None:
            raise NotFound("link")
        await self._store.sessions.delete_many({"org_id": org_id, "kind": "client", "link_id": link_id})
        await self._audit.append(org_id, "link.revoked", actor, detail=detail, **_ids(link))
        return link

    async def revoke(self, org_id: str, link_id: str, actor: Actor) -> Doc:
        """Revoke the link, and end the client sessions it opened: a revoked link gives no access."""
        return await self._revoke(org_id, link_id, actor)

    async def unlock(self, org_id: str, link_id: str, actor: Actor) -> Doc:
        """Unlock the link's thread for its contact: its wrong-PIN count starts again, every link unlocks."""
        link = await self._store.links.find_one({"_id": link_id, "org_id": org_id})
        if link is None:
            raise NotFound("link")
        await self._store.link_guards.update_one({"_id": _guard_id(link)}, {"$set": {"failures": 0, "locked_at": None}})
        await self._store.links.update_many(
            {**_thread_links(link), "$or": [{"locked_at": {"$ne": None}}, {"failures": {"$gt": 0}}]},
            {"$set": {"locked_at": None, "failures": 0}},
        )
        await self._audit.append(org_id, "link.unlocked", actor, **_ids(link))
        await self._store.threads.update_one(
            {"_id": link["thread_id"], "org_id": org_id, "attention": "link_locked"}, {"$unset": {"attention": ""}}
        )
        return {**link, "locked_at": None, "failures": 0}

    async def in_thread(self, org_id: str, thread_id: str, link_id: str) -> Doc | None:
        """The link, if it is this org's and belongs to this thread."""
        return await self._store.links.find_one({"_id": link_id, "org_id": org_id, "thread_id": thread_id})

    async def newest_in_thread(self, org_id: str, thread_id: str, limit: int) -> list[Doc]:
        """The thread's newest links (ids are ObjectId hex: one window of (org_id, thread_id, _id))."""
        created = oid_time(thread_id)
        return await self._recent.newest(
            self._store.links, {"org_id": org_id, "thread_id": thread_id}, "_id", limit=limit, order=[("_id", -1)],
            key=("links", thread_id), now=datetime.now(UTC), floor=created - FLOOR_MARGIN if created else None,
            bound=oid_at, at_of=lambda d: oid_time(d["_id"]) or datetime.now(UTC),
        )

    async def for_thread(self, org_id: str, thread_id: str) -> list[Doc]:
        return [d async for d in self._store.links.find({"org_id": org_id, "thread_id": thread_id}).sort("_id", -1)]
