"""Link-only notices: a fresh link to the thread and a notice that carries nothing but it (the
secure portal shows the content), one at a time or many with deterministic job ids."""

from __future__ import annotations

from dataclasses import dataclass

from pymongo.errors import DuplicateKeyError, OperationFailure

from gateway.messaging.contacts import Contact
from gateway.messaging.outbox import Outbox
from gateway.messaging.reply_tokens import ReplyTokens
from gateway.messaging.sending import reply_token_for
from gateway.messaging.threads import Threads
from gateway.rules.may_send import SendPermission, may_send
from gateway.rules.pin import PinDecision, pin_for_link
from gateway.security.audit import Actor, AuditLog, Pending
from gateway.security.links import Links
from gateway.storage.store import Doc, Store
from gateway.tenancy.orgs import Org


@dataclass(frozen=True, slots=True)
class Notice:
    """One link-only notice for issue_link_notices (a send_link_notice with a job id)."""

    contact: Contact
    thread_id: str
    job_id: str
    message_id: str | None
    in_reply_to: str | None = None  # the Message-ID a notice mail answers (threads it in mail clients)


def link_issued(n: Notice, link_id: str, template: str, channel: str) -> Pending:
    """The audit entry send_link_notice appends for a notice."""
    return Pending("link.issued", Actor("system"), ids={
        "thread_id": n.thread_id, "link_id": link_id, "contact_id": n.contact.id, "message_id": n.message_id},
        detail={"template": template, "channel": channel})


class Notices:
    def __init__(self, store: Store, threads: Threads, links: Links, outbox: Outbox, reply_tokens: ReplyTokens,
                 audit: AuditLog) -> None:
        self._store = store
        self._threads = threads
        self._links = links
        self._outbox = outbox
        self._reply_tokens = reply_tokens
        self._audit = audit

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
        reply_doc, reply_token = reply_token_for(self._reply_tokens, org.id, thread_id, contact.id, channel)
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
                out[n.job_id] = link_issued(n, existing[n.job_id]["link_id"], template, channel)
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
            reply_doc, reply_token = reply_token_for(self._reply_tokens, org.id, n.thread_id, n.contact.id, channel)
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
            out[n.job_id] = link_issued(n, link_doc["_id"], template, channel)
        return out

    async def _notice_pins(self, org: Org, targets: list[tuple[Contact, str]]) -> list[PinDecision]:
        """The PIN rule for link-only notices to (contact, thread id): a notice carries no PIN of
        its own (the thread's or contact's is looked up when the link opens), so the threads are
        read only where they can change the outcome: under pin_required, for contacts with no PIN."""
        wanted = [tid for c, tid in targets if org.policy.pin_required and not c.pin_hash]
        pins = await self._threads.pin_hashes(org.id, wanted)
        return [pin_for_link(given_pin_hash=None, thread_pin_hash=pins.get(tid), contact_pin_hash=c.pin_hash,
                             pin_required=org.policy.pin_required) for c, tid in targets]

    async def notice_permission(self, org: Org, contact: Contact, thread_id: str, channel: str) -> SendPermission:
        """May a link-only notice to this thread go to the contact on the channel (rules/may_send.py)."""
        (pin,) = await self._notice_pins(org, [(contact, thread_id)])
        return may_send(contact, channel=channel, secure=True, pin=pin)
