"""Threads: one per contact and org; found or created, listed for the staff inbox, assigned, closed,
read. Every write to a thread document goes through here."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from gateway.errors import NotFound, ValidationError
from gateway.ids import ContactId, OrgId, ThreadId, is_id, new_id
from gateway.messaging.records import Thread, stored
from gateway.ports import Clock
from gateway.security.audit import Actor, AuditLog
from gateway.storage.recent import FLOOR_MARGIN, Recent, oid_time
from gateway.storage.store import Doc, Store, insert_new

CHANNELS = ("sms", "email")
# What a thread and a message show without opening the sealed body (docs/security-model.md).
NEUTRAL_PREVIEW = {"inbound": "New reply", "outbound": "Message sent"}

# list_threads' assignee filter: True anyone, None nobody, a staff id, or a tuple of any of those.
AssigneeFilter = str | None | bool | tuple[str | None, ...]


def new_thread(org_id: str, contact_id: str, channel: str, now: datetime) -> Thread:
    return {"_id": ThreadId(new_id()), "org_id": OrgId(org_id), "contact_id": ContactId(contact_id), "secure": False,
            "status": "open", "assignee": None, "created_at": now, "last_activity_at": now, "unread_staff": 0,
            "preview": "", "channel": channel}


def inbound_activity(now: datetime, *, count: int, secure: bool, channel: str) -> Doc:
    """The thread update for `count` new inbound messages: reopened, unread, maybe secure from now on."""
    update: Doc = {"$set": {"last_activity_at": now, "preview": NEUTRAL_PREVIEW["inbound"], "status": "open"},
                   "$inc": {"unread_staff": count}}
    if secure:
        update["$set"]["secure"] = True
    if channel in CHANNELS:
        update["$set"]["channel"] = channel
    return update


class Threads:
    def __init__(self, store: Store, audit: AuditLog, clock: Clock, recent: Recent) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._recent = recent  # newest-first pages, one index window at a time (gateway/storage/recent.py)
        self._org_floors: dict[str, datetime | None] = {}

    # -- finding and creating ------------------------------------------------------------
    async def of_contact(self, org_id: str, contact_id: str) -> Doc | None:
        """The contact's thread in this org, if it has one."""
        return await self._store.threads.find_one({"org_id": org_id, "contact_id": contact_id})

    async def thread_for(self, org_id: str, contact_id: str, channel: str) -> Doc:
        """The contact's thread in this org (one per contact), created on first use."""
        # find, then insert: a plain read is far cheaper than findAndModify on SecantusDB, and the
        # unique (org_id, contact_id) index settles a race between two creators.
        doc = await self.of_contact(org_id, contact_id)
        if doc is not None:
            return doc
        doc = stored(new_thread(org_id, contact_id, channel, self._clock.now()))
        try:
            await self._store.threads.insert_one(doc)
        except DuplicateKeyError:  # created concurrently; the stored one wins
            doc = await self.of_contact(org_id, contact_id)
        assert doc is not None
        return doc

    async def threads_for(self, org_id: str, contact_ids: list[str], channel: str) -> dict[str, Doc]:
        """thread_for for several contacts of one org: one lookup, one insert for the new ones.

        Returns {contact_id: thread}.
        """
        wanted = list(dict.fromkeys(contact_ids))
        if not wanted:
            return {}
        found = {d["contact_id"]: d async for d in self._store.threads.find(
            {"org_id": org_id, "contact_id": {"$in": wanted}})}
        missing = [c for c in wanted if c not in found]
        if not missing:
            return found
        now = self._clock.now()
        docs = [stored(new_thread(org_id, cid, channel, now)) for cid in missing]
        inserted = await insert_new(self._store.threads, docs)
        lost = {d["contact_id"] for d, new in zip(docs, inserted, strict=True) if not new}
        found.update({d["contact_id"]: d for d in docs if d["contact_id"] not in lost})
        if lost:  # created concurrently; the stored ones win
            found.update({d["contact_id"]: d async for d in self._store.threads.find(
                {"org_id": org_id, "contact_id": {"$in": list(lost)}})})
        return found

    async def get_thread(self, org_id: str, thread_id: str) -> Doc:
        doc = await self._store.threads.find_one({"_id": thread_id, "org_id": org_id}) if is_id(thread_id) else None
        if doc is None:
            raise NotFound("thread")
        return doc

    async def pin_hashes(self, org_id: str, thread_ids: list[str]) -> dict[str, str | None]:
        """{thread id: its per-message PIN hash or None} for the org's threads among these."""
        if not thread_ids:
            return {}
        return {d["_id"]: d.get("pin_hash") async for d in self._store.threads.find(
            {"_id": {"$in": list(dict.fromkeys(thread_ids))}, "org_id": org_id}, projection={"pin_hash": 1})}

    # -- writing -------------------------------------------------------------------------
    async def update(self, thread_id: str, update: Doc, *, session: AsyncClientSession | None = None) -> None:
        """Apply an update the caller built (a send's activity, inside its transaction)."""
        await self._store.threads.update_one({"_id": thread_id}, update, session=session)

    async def update_org_thread(self, org_id: str, thread_id: str, update: Doc) -> None:
        """Apply an update to one of the org's threads; NotFound if it has no such thread."""
        res = await self._store.threads.update_one({"_id": thread_id, "org_id": org_id}, update)
        if res.matched_count == 0:
            raise NotFound("thread")

    async def update_many(self, thread_ids: list[str], update: Doc) -> None:
        await self._store.threads.update_many({"_id": {"$in": thread_ids}}, update)

    # -- staff actions (the staff portal, issue 3) ----------------------------------------
    async def assign(self, org_id: str, thread_id: str, assignee: str | None, actor: Actor) -> Doc:
        """Give the thread to a staff member (the caller checks the id is one of the org's), or to nobody."""
        thread = await self._store.threads.find_one_and_update(
            {"_id": thread_id, "org_id": org_id}, {"$set": {"assignee": assignee}},
            return_document=ReturnDocument.AFTER,
        )
        if thread is None:
            raise NotFound("thread")
        await self._audit.append(org_id, "thread.assigned", actor, thread_id=thread_id, staff_id=assignee)
        return thread

    async def set_status(self, org_id: str, thread_id: str, status: str, actor: Actor) -> Doc:
        if status not in ("open", "closed"):
            raise ValidationError("status", "must be open or closed")
        thread = await self._store.threads.find_one_and_update(
            {"_id": thread_id, "org_id": org_id}, {"$set": {"status": status}}, return_document=ReturnDocument.AFTER,
        )
        if thread is None:
            raise NotFound("thread")
        await self._audit.append(org_id, "thread.closed" if status == "closed" else "thread.reopened", actor,
                                 thread_id=thread_id)
        return thread

    async def mark_read(self, org_id: str, thread_id: str, actor: Actor, ip: str | None = None,
                        count: int = 0, unread: int | None = None, grant_id: str | None = None) -> None:
        """A staff member read the thread's content: reset its unread counter and audit the view.

        `unread` is the counter on the thread document the caller read at the start of the request;
        0 skips the reset (an update that matches nothing still costs a journaled write). A reply
        that arrived since then stays unread until the next view, which is the safe side.
        `grant_id` names the break-glass grant the view was made under (gateway.security.access), if any.
        """
        # Only when there is something to reset: a no-op write would wake every live inbox for nothing.
        if unread is None or unread > 0:
            await self._store.threads.update_one({"_id": thread_id, "org_id": org_id, "unread_staff": {"$ne": 0}},
                                                 {"$set": {"unread_staff": 0}})
        detail: dict[str, str | int | bool | None] = {"count": count}
        if grant_id:
            detail["grant_id"] = grant_id
        await self._audit.append(org_id, "thread.read", actor, ip=ip, thread_id=thread_id, detail=detail)

    # -- listing -------------------------------------------------------------------------
    async def list_threads(
        self, org_id: str, *, limit: int = 50, before: tuple[datetime, str] | None = None,
        assignee: AssigneeFilter = True, secure: bool | None = None, status: str | None = None,
        contact_ids: list[str] | None = None, unread: bool = False,
    ) -> list[Doc]:
        """Threads newest activity first, after the cursor (last_activity_at, _id) of the previous page.

        assignee=True means anyone (or nobody); None means unassigned; a string is that staff id; a
        tuple is any of those (an agent who sees only their own and unassigned threads).
        Every read is one index range, sized so a page costs the same however many threads the org
        has (gateway/storage/recent.py): a window of last_activity_at on (org_id, last_activity_at), or on
        (org_id, assignee, last_activity_at) for one assignee. Unread-only reads the unread threads
        (org_id, unread_staff >= 1), a contact search the (org_id, contact_id) index. The other
        filters are applied to what those reads return.
        """
        if isinstance(assignee, tuple):
            # One read per assignee (each an index window of its own), merged; a thread reassigned
            # between the reads is listed once.
            parts = await asyncio.gather(*(
                self.list_threads(org_id, limit=limit, before=before, assignee=one, secure=secure, status=status,
                                  contact_ids=contact_ids, unread=unread) for one in assignee))
            merged = {d["_id"]: d for part in parts for d in part}
            newest = sorted(merged.values(), key=lambda d: (d["last_activity_at"], d["_id"]), reverse=True)
            return newest[:limit]
        wanted: dict[str, Any] = {}
        if assignee is not True:
            wanted["assignee"] = assignee
        if secure is not None:
            wanted["secure"] = secure
        if status is not None:
            wanted["status"] = status

        def keep(d: Doc) -> bool:
            if any(d.get(k) != v for k, v in wanted.items()):
                return False
            if unread and int(d.get("unread_staff") or 0) < 1:
                return False
            return before is None or (d["last_activity_at"], d["_id"]) < before

        order = [("last_activity_at", -1), ("_id", -1)]
        if contact_ids is not None or unread:
            # A few threads at most (one per contact; the unread ones): read them all, order here.
            base: Doc = ({"org_id": org_id, "contact_id": {"$in": contact_ids}} if contact_ids is not None
                         else {"org_id": org_id, "unread_staff": {"$gte": 1}})
            found = [d async for d in self._store.threads.find(base) if keep(d)]
            found.sort(key=lambda d: (d["last_activity_at"], d["_id"]), reverse=True)
            return found[:limit]
        base = {"org_id": org_id}
        if "assignee" in wanted:
            base["assignee"] = wanted.pop("assignee")
        filtered = bool(wanted) or before is not None
        return await self._recent.newest(
            self._store.threads, base, "last_activity_at", limit=limit, order=order,
            key=("threads", org_id, base.get("assignee", True), secure, status),
            now=self._clock.now(), floor=await self._org_floor(org_id), at_of=lambda d: d["last_activity_at"],
            upper=("$lte", before[0]) if before else None, upper_at=before[0] if before else None,
            keep=keep if filtered else None,
        )

    async def _org_floor(self, org_id: str) -> datetime | None:
        """Where the windows stop: the org's creation, less a margin. No thread is older, but one
        that is anyway (an import, a skewed clock) is still read, by the last, open-ended query."""
        if org_id not in self._org_floors:
            doc = await self._store.orgs.find_one({"_id": org_id}, projection={"created_at": 1})
            created = (doc or {}).get("created_at") or (oid_time(org_id) if doc else None)
            if len(self._org_floors) > 10_000:
                self._org_floors.clear()
            self._org_floors[org_id] = created - FLOOR_MARGIN if created else None
        return self._org_floors[org_id]
