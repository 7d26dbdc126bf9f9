"""Threads and messages: sending, receiving, listing, and delivery status (the core service)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from gateway.errors import Conflict, KeyErased, NotFound, OptedOut, PinRequired, ValidationError
from gateway.ids import is_id, new_id
from gateway.messaging.contacts import Contact, Contacts
from gateway.messaging.outbox import Outbox
from gateway.messaging.reply_tokens import ReplyTokens
from gateway.ports import Clock
from gateway.rules.may_send import SendPermission, may_send
from gateway.rules.pin import PinDecision, pin_for_link
from gateway.rules.reply_route import reply_route
from gateway.rules.secure import SecureSource, check_standard_content, decide_outbound
from gateway.security.audit import Actor, AuditLog, Pending
from gateway.security.links import Links
from gateway.security.pins import hash_secret, validate_pin
from gateway.security.vault import Vault
from gateway.storage.recent import FLOOR_MARGIN, Recent, oid_at, oid_time
from gateway.storage.store import Doc, Store, insert_new
from gateway.tenancy.orgs import Org

MAX_BODY = 5000
TXN_ATTEMPTS = 8  # transient transaction errors (write conflicts) before giving up
CHANNELS = ("sms", "email")

# Delivery states and the status rules live in gateway/messaging/delivery.py.

NEUTRAL_PREVIEW = {"inbound": "New reply", "outbound": "Message sent"}

# list_threads' assignee filter: True anyone, None nobody, a staff id, or a tuple of any of those.
AssigneeFilter = str | None | bool | tuple[str | None, ...]


def validate_body(body: Any, field: str = "body") -> str:
    if not isinstance(body, str):
        raise ValidationError(field, "must be a string")
    text = body.replace("\r\n", "\n").strip()
    if not text:
        raise ValidationError(field, "must not be empty")
    if len(text) > MAX_BODY:
        raise ValidationError(field, f"must be at most {MAX_BODY} characters")
    if "\x00" in text:
        raise ValidationError(field, "must not contain NUL characters")
    return text


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message for record_inbound_many (the arguments of one record_inbound)."""

    contact: Contact
    thread: Doc
    message_id: str
    body: str
    provider_id: str | None
    secure: bool
    flags: list[str]
    secure_source: SecureSource | None = None  # from gateway.rules.secure.decide_inbound


@dataclass(frozen=True, slots=True)
class Notice:
    """One link-only notice for issue_link_notices (a send_link_notice with a job id)."""

    contact: Contact
    thread_id: str
    job_id: str
    message_id: str | None
    in_reply_to: str | None = None  # the Message-ID a notice mail answers (threads it in mail clients)


@dataclass(frozen=True, slots=True)
class Sent:
    message: Doc
    thread: Doc
    link_id: str | None


def refuse(permission: SendPermission, channel: str) -> None:
    """Raise the domain error for a refused send (gateway/rules/may_send.py)."""
    if permission.allowed:
        return
    if permission.reason == "pin_required":
        raise PinRequired()
    raise OptedOut(channel)  # opted out, or no consent for this purpose on the channel


class Conversations:
    def __init__(
        self, store: Store, vault: Vault, contacts: Contacts, links: Links, outbox: Outbox,
        audit: AuditLog, clock: Clock, reply_tokens: ReplyTokens,
    ) -> None:
        self._store = store
        self._vault = vault
        self._contacts = contacts
        self._links = links
        self._outbox = outbox
        self._audit = audit
        self._clock = clock
        self._reply_tokens = reply_tokens
        self.recent = Recent()  # newest-first pages, one index window at a time (gateway/storage/recent.py)
        self._org_floors: dict[str, datetime | None] = {}

    # -- threads ------------------------------------------------------------------------
    async def thread_for(self, org_id: str, contact_id: str, channel: str) -> Doc:
        """The contact's thread in this org (one per contact), created on first use."""
        # find, then insert: a plain read is far cheaper than findAndModify on SecantusDB, and the
        # unique (org_id, contact_id) index settles a race between two creators.
        doc = await self._store.threads.find_one({"org_id": org_id, "contact_id": contact_id})
        if doc is not None:
            return doc
        now = self._clock.now()
        doc = {"_id": new_id(), "org_id": org_id, "contact_id": contact_id, "secure": False, "status": "open",
               "assignee": None, "created_at": now, "last_activity_at": now, "unread_staff": 0,
               "preview": "", "channel": channel}
        try:
            await self._store.threads.insert_one(doc)
        except DuplicateKeyError:  # created concurrently; the stored one wins
            doc = await self._store.threads.find_one({"org_id": org_id, "contact_id": contact_id})
        assert doc is not None
        return doc

    async def get_thread(self, org_id: str, thread_id: str) -> Doc:
        doc = await self._store.threads.find_one({"_id": thread_id, "org_id": org_id}) if is_id(thread_id) else None
        if doc is None:
            raise NotFound("thread")
        return doc

    # -- sending ------------------------------------------------------------------------
    async def send(
        self,
        org: Org,
        *,
        channel: str,
        body: str,
        actor: Actor,
        contact: Contact | None = None,
        to_phone: str | None = None,
        to_email: str | None = None,
        name: str | None = None,
        secure: bool | None = None,
        pin: str | None = None,
        allow_sensitive: bool = False,
        idempotency_key: str | None = None,
    ) -> Sent:
        """Write an outbound message with its delivery job (and link, when secure)."""
        if channel not in CHANNELS:
            raise ValidationError("channel", "must be sms or email")
        text = validate_body(body)
        if pin is not None:
            validate_pin(pin)
        if idempotency_key is not None:
            previous = await self._store.messages.find_one(
                {"org_id": org.id, "idempotency_key": "k:" + idempotency_key})
            if previous is not None:
                thread = await self.get_thread(org.id, previous["thread_id"])
                return Sent(previous, thread, previous.get("link_id"))
        if contact is None:
            if channel == "sms" and not to_phone:
                raise ValidationError("to.phone", "is required for channel sms")
            if channel == "email" and not to_email:
                raise ValidationError("to.email", "is required for channel email")
            contact, _ = await self._contacts.find_or_create(org.id, phone=to_phone, email=to_email, name=name)
            # Found by the phone, the email given belongs to another contact: they stay apart.
            if channel == "email" and to_email and not contact.has_email:
                raise Conflict("to.email", "belongs to another contact than to.phone; send to one of them")
        if channel == "sms" and not contact.has_phone:
            raise ValidationError("to.phone", "the contact has no phone number")
        if channel == "email" and not contact.has_email:
            raise ValidationError("to.email", "the contact has no email address")
        # Decided before anything is written: a refused send leaves no thread, message or job.
        found = await self._store.threads.find_one({"org_id": org.id, "contact_id": contact.id})
        decision = decide_outbound(org.policy, message=secure, thread_secure=bool(found and found.get("secure")))
        is_secure = decision.secure
        pin_rule: PinDecision | None = None
        if is_secure:
            pin_rule = pin_for_link(
                given_pin_hash=hash_secret(pin) if pin else None,
                thread_pin_hash=found.get("pin_hash") if found else None,
                contact_pin_hash=contact.pin_hash, pin_required=org.policy.pin_required)
        refuse(may_send(contact, channel=channel, secure=is_secure, pin=pin_rule), channel)
        check_standard_content(text, decision, org.policy, allow_sensitive=allow_sensitive)
        thread = found if found is not None else await self.thread_for(org.id, contact.id, channel)
        now = self._clock.now()
        mid = new_id()
        message: Doc = {
            "_id": mid, "org_id": org.id, "thread_id": thread["_id"], "contact_id": contact.id,
            "direction": "outbound", "channel": channel, "author": {"kind": actor.kind, "id": actor.id},
            "secure": is_secure, "secure_source": decision.source,
            "body": await self._vault.seal(contact.dek_id, org.id, "messages", mid, "body", text),
            "preview": NEUTRAL_PREVIEW["outbound"], "status": "queued",
            "status_history": [{"status": "queued", "at": now}], "provider_id": None,
            "link_id": None, "created_at": now,
        }
        # Unique per org; a placeholder when absent (gateway/storage/store.py: no partial indexes).
        message["idempotency_key"] = "k:" + idempotency_key if idempotency_key is not None else "none:" + mid
        link_doc, token = None, None
        if pin_rule is not None:
            link_doc, token = self._links.new(
                org_id=org.id, thread_id=thread["_id"], contact_id=contact.id, message_id=mid,
                ttl_seconds=org.policy.link_ttl_seconds, channel=channel, pin_hash=pin_rule.link_pin_hash,
            )
            message["link_id"] = link_doc["_id"]
        reply_doc, reply_token = self._reply_token(org.id, thread["_id"], contact.id, channel)
        job = await self._outbox.job(
            kind=channel, org_id=org.id, template="secure_notice" if is_secure else "message",
            contact_id=contact.id, dek_id=contact.dek_id, message_id=mid, link_token=token,
            reply_token=reply_token, thread_id=thread["_id"],
        )
        thread_update: Doc = {"$set": {"last_activity_at": now, "channel": channel,
                                       "preview": NEUTRAL_PREVIEW["outbound"]}}
        if is_secure:
            thread_update["$set"]["secure"] = True
        if link_doc is not None and link_doc["pin_hash"]:
            # A per-message PIN guards the whole thread from now on: any later link to it (a
            # renewal, the answer to a texted reply) opens the same content, so it needs the PIN.
            # Which message it came with is kept, so staff see where the PIN in force comes from.
            thread_update["$set"].update({"pin_hash": link_doc["pin_hash"], "pin_message_id": mid,
                                          "pin_set_by": actor.kind})
        for attempt in range(TXN_ATTEMPTS):
            try:
                async with self._store.transaction() as session:
                    await self._store.messages.insert_one(message, session=session)
                    if link_doc is not None:
                        await self._links.insert(link_doc, session=session)
                    if reply_doc is not None:
                        await self._reply_tokens.insert(reply_doc, session=session)
                    await self._outbox.insert(job, session=session)
                    await self._store.threads.update_one({"_id": thread["_id"]}, thread_update, session=session)
            except DuplicateKeyError:
                if idempotency_key is None:
                    raise
                previous = await self._store.messages.find_one(
                    {"org_id": org.id, "idempotency_key": "k:" + idempotency_key})
                assert previous is not None
                return Sent(previous, thread, previous.get("link_id"))
            except OperationFailure as err:
                # Concurrent sends to one thread conflict on it (WriteConflict): run it again.
                if attempt + 1 >= TXN_ATTEMPTS or not err.has_error_label("TransientTransactionError"):
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))
                continue
            break
        self._outbox.announce(job["_id"])
        await self._contacts.touch_channel(contact, channel)
        await self._audit.append(org.id, "message.send", actor, thread_id=thread["_id"], message_id=mid,
                                 contact_id=contact.id, link_id=message["link_id"],
                                 detail={"secure": is_secure, "secure_source": decision.source, "channel": channel})
        thread.update(thread_update["$set"])
        return Sent(message, thread, message["link_id"])

    # -- staff actions (the staff portal, issue 3) --------------------------------------------
    async def reply_staff(
        self, org: Org, thread_id: str, *, body: str, actor: Actor, secure: bool | None = None,
        allow_sensitive: bool = False,
    ) -> Sent:
        """A staff reply, on the channel gateway/rules/reply_route.py picks; a secure thread stays
        secure (gateway/rules/secure.py: sealed body, link-only notice to the client)."""
        thread = await self.get_thread(org.id, thread_id)
        contact = await self._contacts.get(org.id, thread["contact_id"])
        route = reply_route(contact, thread_channel=thread.get("channel"))
        return await self.send(org, channel=route.channel, body=body, actor=actor, contact=contact,
                               secure=secure, allow_sensitive=allow_sensitive)

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
        wanted: Doc = {}
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
        return await self.recent.newest(
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

    # -- receiving ----------------------------------------------------------------------
    async def record_inbound(
        self, org: Org, contact: Contact, *, message_id: str, channel: str, body: str,
        provider_id: str | None, secure: bool, flags: list[str] | None = None,
        author_kind: str = "contact", thread: Doc | None = None, files: int = 0,
        secure_source: SecureSource | None = None,
    ) -> tuple[Doc, Doc, bool]:
        """Store an inbound message once (message_id is deterministic); returns (msg, thread, new).

        `secure` and `secure_source` come from gateway.rules.secure.decide_inbound; without a source
        (a reply typed in the secure portal) the message follows its thread.
        """
        if thread is None:
            thread = await self.thread_for(org.id, contact.id, channel)
        now = self._clock.now()
        message = await self._inbound_doc(org, contact, thread, now, message_id=message_id, channel=channel,
                                          body=body, provider_id=provider_id, secure=secure, flags=flags,
                                          author_kind=author_kind, files=files, secure_source=secure_source)
        try:
            await self._store.messages.insert_one(message)
        except DuplicateKeyError:
            existing = await self._store.messages.find_one({"_id": message_id})
            assert existing is not None
            return existing, thread, False
        update: Doc = {"$set": {"last_activity_at": now, "preview": NEUTRAL_PREVIEW["inbound"],
                                "status": "open"}, "$inc": {"unread_staff": 1}}
        if secure:
            update["$set"]["secure"] = True
        if channel in CHANNELS:
            update["$set"]["channel"] = channel
        await self._store.threads.update_one({"_id": thread["_id"]}, update)
        thread = {**thread, **update["$set"], "unread_staff": int(thread.get("unread_staff", 0)) + 1}
        if channel in CHANNELS:
            await self._contacts.touch_channel(contact, channel)
        return message, thread, True

    async def _inbound_doc(
        self, org: Org, contact: Contact, thread: Doc, now: datetime, *, message_id: str, channel: str, body: str,
        provider_id: str | None, secure: bool, flags: list[str] | None, author_kind: str, files: int = 0,
        secure_source: SecureSource | None = None,
    ) -> Doc:
        return {
            "_id": message_id, "org_id": org.id, "thread_id": thread["_id"], "contact_id": contact.id,
            "direction": "inbound", "channel": channel, "author": {"kind": author_kind, "id": contact.id},
            "secure": secure, "secure_source": secure_source or "thread",
            "body": await self._vault.seal(contact.dek_id, org.id, "messages", message_id, "body", body),
            "preview": NEUTRAL_PREVIEW["inbound"], "status": "received",
            "status_history": [{"status": "received", "at": now}], "provider_id": provider_id,
            "link_id": None, "created_at": now, "flags": flags or [], "idempotency_key": "none:" + message_id,
            # How many attachments were stored with it: pages look attachments up only where there are some.
            "files": files,
        }

    # -- receiving in bulk (the inbound processor under backlog) ---------------------------
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
        docs = [{"_id": new_id(), "org_id": org_id, "contact_id": cid, "secure": False, "status": "open",
                 "assignee": None, "created_at": now, "last_activity_at": now, "unread_staff": 0,
                 "preview": "", "channel": channel} for cid in missing]
        inserted = await insert_new(self._store.threads, docs)
        lost = {d["contact_id"] for d, new in zip(docs, inserted, strict=True) if not new}
        found.update({d["contact_id"]: d for d in docs if d["contact_id"] not in lost})
        if lost:  # created concurrently; the stored ones win
            found.update({d["contact_id"]: d async for d in self._store.threads.find(
                {"org_id": org_id, "contact_id": {"$in": list(lost)}})})
        return found

    async def record_inbound_many(self, org: Org, items: list[Inbound], *, channel: str) -> list[bool]:
        """record_inbound for several messages of one org, in O(1) writes.

        One insert for the messages (a duplicate id is a message stored by an earlier run: not
        new, and like record_inbound it then touches nothing else), one update per distinct
        (count, secure) group of threads, one for the contacts' channel. Returns `new` per item.
        """
        if not items:
            return []
        now = self._clock.now()
        messages = [await self._inbound_doc(org, it.contact, it.thread, now, message_id=it.message_id,
                                            channel=channel, body=it.body, provider_id=it.provider_id,
                                            secure=it.secure, flags=it.flags, author_kind="contact",
                                            secure_source=it.secure_source)
                    for it in items]
        # A message stored before (its id is the event's) is one an earlier run recorded.
        new = await insert_new(self._store.messages, messages)
        per_thread: dict[str, list[int]] = {}  # thread id -> [new messages, any secure]
        for it, is_new in zip(items, new, strict=True):
            if is_new:
                counts = per_thread.setdefault(it.thread["_id"], [0, 0])
                counts[0] += 1
                counts[1] |= int(it.secure)
        groups: dict[tuple[int, int], list[str]] = {}
        for thread_id, (n, secure) in per_thread.items():
            groups.setdefault((n, secure), []).append(thread_id)
        for (n, secure), thread_ids in groups.items():
            update: Doc = {"$set": {"last_activity_at": now, "preview": NEUTRAL_PREVIEW["inbound"],
                                    "status": "open"}, "$inc": {"unread_staff": n}}
            if secure:
                update["$set"]["secure"] = True
            if channel in CHANNELS:
                update["$set"]["channel"] = channel
            await self._store.threads.update_many({"_id": {"$in": thread_ids}}, update)
        if channel in CHANNELS:
            await self._contacts.touch_channels([it.contact for it, n in zip(items, new, strict=True) if n], channel)
        return new

    async def issue_link_notices(
        self, org: Org, notices: list[Notice], *, channel: str, template: str,
    ) -> dict[str, Pending]:
        """send_link_notice for several notices with deterministic job ids, in O(1) writes.

        A notice whose job exists already (an earlier run) or whose contact opted out of the
        channel is skipped. Links, reply tokens and jobs go in one transaction where the server
        has them. Returns {job_id: the "link.issued" audit entry} for the caller to append with
        its other entries (a notice that had to go the one-by-one way is audited there). That
        includes the entry of a job an earlier run queued but stopped before auditing.
        """
        if not notices:
            return {}
        existing = {d["_id"]: d async for d in self._store.outbox.find(
            {"_id": {"$in": [n.job_id for n in notices]}}, projection={"link_id": 1})}
        out: dict[str, Pending] = {}
        earlier = [n for n in notices if n.job_id in existing and existing[n.job_id].get("link_id")]
        unaudited = await self._audit.without(org.id, "link.issued", [n.message_id for n in earlier if n.message_id])
        for n in earlier:
            if n.message_id in unaudited:
                out[n.job_id] = self._link_issued(n, existing[n.job_id]["link_id"], template, channel)
        fresh = [n for n in notices if n.job_id not in existing]
        rules = await self._notice_pins(org, [(n.contact, n.thread_id) for n in fresh])
        todo = [n for n, pin in zip(fresh, rules, strict=True)
                if may_send(n.contact, channel=channel, secure=True, pin=pin).allowed]
        links: list[Doc] = []
        replies: list[Doc] = []
        jobs: list[Doc] = []
        for n in todo:
            link_doc, token = self._links.new(
                org_id=org.id, thread_id=n.thread_id, contact_id=n.contact.id, message_id=n.message_id,
                ttl_seconds=org.policy.link_ttl_seconds, channel=channel,
            )
            reply_doc, reply_token = self._reply_token(org.id, n.thread_id, n.contact.id, channel)
            links.append(link_doc)
            if reply_doc is not None:
                replies.append(reply_doc)
            jobs.append(await self._outbox.job(
                kind=channel, org_id=org.id, template=template, contact_id=n.contact.id,
                dek_id=n.contact.dek_id, message_id=None, link_token=token, job_id=n.job_id,
                link_id=link_doc["_id"], reply_token=reply_token, thread_id=n.thread_id,
                in_reply_to=n.in_reply_to,
            ))
        if not jobs:
            return out
        try:
            async with self._store.transaction() as session:
                await self._store.links.insert_many(links, session=session)
                if replies:
                    await self._store.reply_tokens.insert_many(replies, session=session)
                await self._store.outbox.insert_many(jobs, session=session)
        except OperationFailure:
            # Another run issued some of them meanwhile, or the transaction conflicted. Without a
            # transaction some of ours may be stored: those are recognised by their link id and
            # kept; the others go one by one (send_link_notice skips issued ones, audits the rest).
            link_of = {j["_id"]: j["link_id"] for j in jobs}
            ours = {d["_id"] async for d in self._store.outbox.find(
                {"_id": {"$in": list(link_of)}}, projection={"link_id": 1}) if d.get("link_id") == link_of[d["_id"]]}
            for n in todo:
                if n.job_id not in ours:
                    await self.send_link_notice(org, n.contact, n.thread_id, channel=channel, template=template,
                                                job_id=n.job_id, message_id=n.message_id,
                                                in_reply_to=n.in_reply_to)
        else:
            ours = {j["_id"] for j in jobs}
        for n, link_doc, job in zip(todo, links, jobs, strict=True):
            if job["_id"] not in ours:
                continue
            self._outbox.announce(job["_id"])
            out[n.job_id] = self._link_issued(n, link_doc["_id"], template, channel)
        return out

    @staticmethod
    def _link_issued(n: Notice, link_id: str, template: str, channel: str) -> Pending:
        """The audit entry send_link_notice appends for a notice."""
        return Pending("link.issued", Actor("system"), ids={
            "thread_id": n.thread_id, "link_id": link_id, "contact_id": n.contact.id, "message_id": n.message_id},
            detail={"template": template, "channel": channel})

    # -- reading ------------------------------------------------------------------------
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
        docs = await self.recent.newest(
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

    def _reply_token(self, org_id: str, thread_id: str, contact_id: str, channel: str) -> tuple[Doc | None, str | None]:
        """A fresh reply address token for an outgoing mail (none for SMS)."""
        if channel != "email":
            return None, None
        return self._reply_tokens.new(org_id=org_id, thread_id=thread_id, contact_id=contact_id)

    # -- link-only notices ----------------------------------------------------------------
    async def send_link_notice(
        self, org: Org, contact: Contact, thread_id: str, *, channel: str, template: str,
        job_id: str | None = None, message_id: str | None = None, in_reply_to: str | None = None,
    ) -> str | None:
        """Issue a fresh link to the thread and queue a link-only notice; returns the link id.

        With a deterministic job_id a re-run (crash recovery, duplicate event) sends nothing new.
        """
        if job_id and await self._store.outbox.find_one({"_id": job_id}, projection={"_id": 1}):
            return None
        if not (await self.notice_permission(org, contact, thread_id, channel)).allowed:
            return None
        link_doc, token = self._links.new(
            org_id=org.id, thread_id=thread_id, contact_id=contact.id, message_id=message_id,
            ttl_seconds=org.policy.link_ttl_seconds, channel=channel,
        )
        reply_doc, reply_token = self._reply_token(org.id, thread_id, contact.id, channel)
        job = await self._outbox.job(
            kind=channel, org_id=org.id, template=template, contact_id=contact.id,
            dek_id=contact.dek_id, message_id=None, link_token=token, job_id=job_id,
            link_id=link_doc["_id"], reply_token=reply_token, thread_id=thread_id,
            in_reply_to=in_reply_to,
        )
        try:
            async with self._store.transaction() as session:
                await self._links.insert(link_doc, session=session)
                if reply_doc is not None:
                    await self._reply_tokens.insert(reply_doc, session=session)
                await self._outbox.insert(job, session=session)
        except DuplicateKeyError:
            return None
        self._outbox.announce(job["_id"])
        await self._audit.append(org.id, "link.issued", Actor("system"), thread_id=thread_id,
                                 link_id=link_doc["_id"], contact_id=contact.id, message_id=message_id,
                                 detail={"template": template, "channel": channel})
        return str(link_doc["_id"])

    # -- PINs (gateway/rules/pin.py) --------------------------------------------------------
    async def _notice_pins(self, org: Org, targets: list[tuple[Contact, str]]) -> list[PinDecision]:
        """The PIN rule for link-only notices to (contact, thread id): a notice carries no PIN of
        its own (the thread's or contact's is looked up when the link opens), so the threads are
        read only where they can change the outcome: under pin_required, for contacts with no PIN."""
        wanted = [tid for c, tid in targets if org.policy.pin_required and not c.pin_hash]
        pins: dict[str, str | None] = {}
        if wanted:
            pins = {d["_id"]: d.get("pin_hash") async for d in self._store.threads.find(
                {"_id": {"$in": list(dict.fromkeys(wanted))}, "org_id": org.id}, projection={"pin_hash": 1})}
        return [pin_for_link(given_pin_hash=None, thread_pin_hash=pins.get(tid), contact_pin_hash=c.pin_hash,
                             pin_required=org.policy.pin_required) for c, tid in targets]

    async def notice_permission(self, org: Org, contact: Contact, thread_id: str, channel: str) -> SendPermission:
        """May a link-only notice to this thread go to the contact on the channel (rules/may_send.py)."""
        (pin,) = await self._notice_pins(org, [(contact, thread_id)])
        return may_send(contact, channel=channel, secure=True, pin=pin)

    def pin_in_force(self, org: Org, thread: Doc, contact: Contact) -> PinDecision:
        """The PIN the thread's next link asks for, and where it comes from."""
        return pin_for_link(given_pin_hash=None, thread_pin_hash=thread.get("pin_hash"),
                            contact_pin_hash=contact.pin_hash, pin_required=org.policy.pin_required)

    async def set_thread_pin(self, org_id: str, thread_id: str, pin: str | None) -> None:
        """Replace (or, with None, remove) the thread's per-message PIN, on the thread and on every
        link that carries it: a leaked PIN stops opening links already sent."""
        pin_hash = hash_secret(validate_pin(pin)) if pin is not None else None
        update: Doc = ({"$set": {"pin_hash": pin_hash, "pin_set_by": "staff", "pin_message_id": None}} if pin_hash
                       else {"$unset": {"pin_hash": "", "pin_set_by": "", "pin_message_id": ""}})
        res = await self._store.threads.update_one({"_id": thread_id, "org_id": org_id}, update)
        if res.matched_count == 0:
            raise NotFound("thread")
        # Only per-message PINs are written on links (gateway/rules/pin.py), so every PIN-carrying
        # link of the thread carries the one being replaced.
        await self._store.links.update_many({"org_id": org_id, "thread_id": thread_id, "pin_hash": {"$ne": None}},
                                            {"$set": {"pin_hash": pin_hash}})

