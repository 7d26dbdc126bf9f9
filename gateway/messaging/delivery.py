"""Delivery: where a send stands with its provider, why it failed, and the thread's failure mark.

One home for these rules; the Twilio status webhook, the sandbox's simulated statuses, the outbox
dispatcher and mail bounces all call it (docs/architecture.md):

- Status ranking: a message's delivery states in the order it moves through them. The history
  keeps each status once; the current status only moves forward (a late "delivered" still wins
  over "failed", so a carrier's out-of-order callbacks never make a delivered message look lost).
- Reasons: provider error codes (Twilio's, SMTP replies, RFC 3463 status codes of a bounce) are
  translated into a few reason codes, each with its words for staff.
- The thread's mark (`delivery_problem`): set when a send of the thread fails for good (the
  dispatcher gives up or is refused, Twilio reports failed/undelivered, a mail bounces); cleared
  when a send queued later succeeds, or when staff dismiss it (audited). A link notice that
  failed marks its link too (`undelivered`), so the link is never shown as sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from gateway.ids import new_id
from gateway.messaging.contacts import OPTED_OUT, Contacts
from gateway.ports import Clock
from gateway.security.audit import Actor, AuditLog
from gateway.storage.store import Doc, Store

# Delivery states, in the order a message moves through them. Status only moves forward;
# the terminal failures rank below "delivered" so a late "delivered" still wins.
STATUS_RANK = {
    "received": 0, "queued": 1, "accepted": 2, "scheduled": 2, "sending": 3, "sent": 4,
    "undelivered": 5, "failed": 5, "delivered": 6, "read": 7,
}
FAILED = frozenset({"failed", "undelivered"})
# A send that reached these went out: it clears the mark of a failure queued before it. (Mail has
# no delivery callbacks: the relay taking it, "sent", is as far as we learn.)
SUCCEEDED = frozenset({"sent", "delivered", "read"})

# Reason codes, with the words staff read in the inbox and on the thread page.
CANNOT_RECEIVE_SMS = "cannot_receive_sms"
OPTED_OUT_REASON = "opted_out"
MAILBOX_UNKNOWN = "mailbox_unknown"
BOUNCED = "bounced"
UNDELIVERABLE = "undeliverable"
REASONS = {
    CANNOT_RECEIVE_SMS: "number cannot receive SMS",
    OPTED_OUT_REASON: "client opted out",
    MAILBOX_UNKNOWN: "mail bounced: mailbox unknown",
    BOUNCED: "mail bounced",
    UNDELIVERABLE: "message could not be delivered",
}
# Twilio error codes meaning the number itself cannot take SMS: not a valid number (21211, 21214,
# 21217, 21401, 21421), not a mobile or not reachable by SMS (21407, 21612, 21614, 30005), a
# landline or a carrier that cannot be reached (30006). https://www.twilio.com/docs/api/errors
_NO_SMS_CODES = frozenset({"21211", "21214", "21217", "21401", "21407", "21421", "21612", "21614", "30005",
                           "30006"})
# "21610": the recipient texted STOP (Twilio refuses every send); "opted_out": our own consent record.
_OPT_OUT_CODES = frozenset({"21610", "opted_out"})
# A relay's permanent refusal and a bounce without a readable status code.
_BOUNCE_CODES = frozenset({"smtp_5xx", "bounce"})
# An RFC 3463 enhanced status code, as a delivery status notification reports it ("5.1.1").
_ENHANCED_STATUS = re.compile(r"^[245]\.(\d{1,3})\.(\d{1,3})$")


def reason_code(error_code: str | None) -> str:
    """The reason code for a provider's error code (UNDELIVERABLE when it says nothing more)."""
    code = (error_code or "").strip()
    if code in _OPT_OUT_CODES:
        return OPTED_OUT_REASON
    if code in _NO_SMS_CODES:
        return CANNOT_RECEIVE_SMS
    if code in _BOUNCE_CODES:
        return BOUNCED
    if found := _ENHANCED_STATUS.match(code):
        # X.1.1: bad destination mailbox address (RFC 3463 section 3.2), the mailbox does not exist.
        return MAILBOX_UNKNOWN if found.groups() == ("1", "1") else BOUNCED
    return UNDELIVERABLE


def reason_text(code: str | None) -> str:
    """The plain words for a reason code."""
    return REASONS.get(code or "", REASONS[UNDELIVERABLE])


def failure_of(message: Doc) -> str | None:
    """The reason code of a message that failed for good (failed/undelivered), else None. A failure
    the provider gave no code for reads as UNDELIVERABLE."""
    if message.get("status") not in FAILED:
        return None
    return reason_code(message.get("error_code") or message.get("status"))


def problem_of(thread: Doc) -> dict[str, Any] | None:
    """The thread's failure mark as staff see it (reason in words, when, which send), or None."""
    mark = thread.get("delivery_problem")
    if not mark:
        return None
    return {"reason_code": mark.get("reason_code"), "reason": reason_text(mark.get("reason_code")),
            "at": mark.get("at"), "message_id": mark.get("message_id"), "link_id": mark.get("link_id"),
            "channel": mark.get("channel")}


@dataclass(frozen=True, slots=True)
class Send:
    """One outgoing send as these rules see it, read from its outbox job or from its message."""

    org_id: str
    thread_id: str | None
    contact_id: str | None
    channel: str | None
    message_id: str | None  # None for a link notice (its job carries the link)
    link_id: str | None
    job_id: str | None
    queued_at: datetime  # orders sends: a success clears only the failures queued before it

    @classmethod
    def of_job(cls, job: Doc) -> Send:
        return cls(org_id=job["org_id"], thread_id=job.get("thread_id"), contact_id=job.get("contact_id"),
                   channel=job.get("kind"), message_id=job.get("message_id"), link_id=job.get("link_id"),
                   job_id=job["_id"], queued_at=job["created_at"])

    @classmethod
    def of_message(cls, message: Doc) -> Send:
        return cls(org_id=message["org_id"], thread_id=message.get("thread_id"),
                   contact_id=message.get("contact_id"), channel=message.get("channel"),
                   message_id=message["_id"], link_id=message.get("link_id"), job_id=None,
                   queued_at=message["created_at"])


class Delivery:
    """Applies provider statuses to messages and keeps each thread's failure mark."""

    def __init__(self, store: Store, contacts: Contacts, audit: AuditLog, clock: Clock, *,
                 keep_done_days: int) -> None:
        self._store = store
        # A stored callback is removed this long after it arrived (TTL on expire_at,
        # gateway/storage/store.py), the same window as the outbox job it names ([outbox] keep_done_days).
        self._keep_events = timedelta(days=keep_done_days)
        self._contacts = contacts
        self._audit = audit
        self._clock = clock

    # -- message status ---------------------------------------------------------------------------
    async def apply(self, message_ids: list[str], status: str, at: datetime, error_code: str | None = None) -> int:
        """Record a status on messages: history once per status, current status only forward.

        Two writes however many messages; returns how many moved forward.
        """
        if not message_ids or status not in STATUS_RANK:
            return 0
        ids = list(dict.fromkeys(message_ids))
        entry: Doc = {"status": status, "at": at}
        if error_code:
            entry["error_code"] = error_code
        await self._store.messages.update_many(
            {"_id": {"$in": ids}, "status_history.status": {"$ne": status}}, {"$push": {"status_history": entry}})
        lower = [s for s, r in STATUS_RANK.items() if r < STATUS_RANK[status]]
        update: Doc = {"$set": {"status": status}}
        if error_code:
            update["$set"]["error_code"] = error_code
        res = await self._store.messages.update_many({"_id": {"$in": ids}, "status": {"$in": lower}}, update)
        return int(res.modified_count)

    # -- provider callbacks -----------------------------------------------------------------------
    async def record(self, provider_id: str, status: str, error_code: str | None) -> None:
        """Store a provider's status once per (send, status), then apply it if the send is known.

        A callback can beat the dispatcher's write of the provider id; the dispatcher replays
        stored events for an id once it records it (replay).
        """
        now = self._clock.now()
        try:
            await self._store.delivery_events.insert_one({
                "_id": new_id(), "provider_id": provider_id, "status": status,
                "error_code": error_code, "at": now, "expire_at": now + self._keep_events,
            })
        except DuplicateKeyError:
            # Twilio repeats callbacks; the first one counted. Applying is idempotent, so apply
            # again: the first delivery may have been stored and then failed (503) before applying.
            first = await self._store.delivery_events.find_one({"provider_id": provider_id, "status": status})
            if first is not None:
                now, error_code = first["at"], first.get("error_code")
        await self.provider_event(provider_id, status, error_code, now)

    async def replay(self, provider_ids: list[str]) -> None:
        """Apply the callbacks that arrived before these provider ids were recorded, in order."""
        if not provider_ids:
            return
        async for ev in self._store.delivery_events.find({"provider_id": {"$in": provider_ids}}).sort("_id", 1):
            await self.provider_event(ev["provider_id"], ev["status"], ev.get("error_code"), ev["at"])

    async def provider_event(self, provider_id: str, status: str, error_code: str | None,
                             at: datetime | None = None) -> None:
        """Apply one provider status to the send it names (nothing if the send is not known yet)."""
        at = at or self._clock.now()
        job = await self._store.outbox.find_one({"provider_id": provider_id})
        if job is None or job["kind"] not in ("sms", "email"):  # (e.g. a redaction names an inbound SMS)
            return
        send = Send.of_job(job)
        if send.message_id and await self.apply([send.message_id], status, at, error_code):
            await self._audit.append(send.org_id, "message.status", Actor("provider", "twilio"),
                                     message_id=send.message_id,
                                     detail={"status": status, "error_code": error_code})
        if status in FAILED:
            await self._problem(send, error_code or status, at, Actor("provider", "twilio"))
        elif status in SUCCEEDED:
            await self.succeeded([send])

    # -- the dispatcher's outcomes ----------------------------------------------------------------
    async def accepted(self, jobs: list[Doc], at: datetime) -> None:
        """Jobs the provider took: their messages are accepted; mail is sent as far as we will learn
        (the relay took it), which clears its thread's mark."""
        tracked = [j for j in jobs if j.get("message_id") and j["kind"] in ("sms", "email")]
        await self.apply([j["message_id"] for j in tracked], "accepted", at)
        await self.apply([j["message_id"] for j in tracked if j["kind"] == "email"], "sent", at)
        await self.succeeded([Send.of_job(j) for j in jobs if j["kind"] == "email"])

    async def job_failed(self, job: Doc, code: str, at: datetime, state: str) -> None:
        """A job the dispatcher gave up on or the provider refused for good (`state` failed or dead)."""
        send = Send.of_job(job)
        if send.message_id and job["kind"] in ("sms", "email"):
            await self.apply([send.message_id], "failed", at, code)
            await self._audit.append(send.org_id, "message.failed", Actor("system"), message_id=send.message_id,
                                     job_id=job["_id"], outcome="failed", detail={"code": code, "state": state})
        if job["kind"] in ("sms", "email"):
            await self._problem(send, code, at, Actor("provider", "twilio") if code == "21610" else Actor("system"))

    async def bounced(self, org_id: str, contact_id: str, original_id: str, status_code: str) -> bool:
        """A delivery status notification says the mail `original_id` (its Message-ID, bare) to this
        contact failed (`status_code`: RFC 3463 "5.1.1", or "bounce"). False if no such mail.

        Scoped to the contact the report came back for, like any reply: a report on one contact's
        address cannot fail a mail sent to someone else.
        """
        at = self._clock.now()
        ids = [original_id, f"<{original_id}>"]
        smtp = Actor("provider", "smtp")
        message = await self._store.messages.find_one(
            {"org_id": org_id, "contact_id": contact_id, "email_message_id": {"$in": ids}})
        if message is not None:
            send = Send.of_message(message)
            await self.apply([message["_id"]], "failed", at, status_code)
            await self._audit.append(org_id, "message.bounced", smtp, message_id=message["_id"],
                                     thread_id=send.thread_id, outcome="failed", detail={"status": status_code})
            await self._problem(send, status_code, at, smtp)
            return True
        # A link-only notice has no message: its job knows the Message-ID (a mail's provider id).
        job = await self._store.outbox.find_one(
            {"provider_id": {"$in": ids}, "org_id": org_id, "contact_id": contact_id, "kind": "email"})
        if job is None:
            return False
        await self._problem(Send.of_job(job), status_code, at, smtp)
        return True

    # -- the thread's mark ------------------------------------------------------------------------
    async def _problem(self, send: Send, error_code: str, at: datetime, actor: Actor) -> None:
        """A send failed for good: the contact's opt-out (Twilio 21610), the link, the thread's mark."""
        reason = reason_code(error_code)
        if error_code == "21610" and send.contact_id:
            # Twilio refuses every send to a number that texted STOP: record it as the opt-out it is.
            if await self._contacts.set_consent(send.org_id, send.contact_id, "sms", OPTED_OUT, "twilio:21610"):
                await self._audit.append(send.org_id, "consent.opt_out", Actor("provider", "twilio"),
                                         contact_id=send.contact_id, detail={"channel": "sms", "source": "21610"})
        link_id = send.link_id
        if link_id is None and send.message_id:
            message = await self._store.messages.find_one({"_id": send.message_id}, projection={"link_id": 1})
            link_id = (message or {}).get("link_id")
        if link_id:
            link = await self._store.links.find_one_and_update(
                {"_id": link_id, "org_id": send.org_id}, {"$set": {"undelivered": {"reason_code": reason, "at": at}}},
                projection={"message_id": 1, "undelivered": 1})
            if link is not None and send.message_id is None and not link.get("undelivered"):
                # A link-only notice has no message of its own: its failure goes on the timeline of
                # the message the link belongs to (where "link.issued" shows), once.
                await self._audit.append(send.org_id, "link.undelivered", actor, thread_id=send.thread_id,
                                         link_id=link_id, message_id=link.get("message_id"),
                                         contact_id=send.contact_id, outcome="failed",
                                         detail={"reason": reason, "error_code": error_code[:40]})
        thread_id = send.thread_id or await self._thread_of(send)
        if thread_id is None:
            return
        mark = {"reason_code": reason, "error_code": error_code[:40], "at": at, "message_id": send.message_id,
                "link_id": link_id, "job_id": send.job_id, "channel": send.channel, "since": send.queued_at}
        # The newest failed send names the mark: an older one reported late does not replace it.
        await self._store.threads.update_one(
            {"_id": thread_id, "org_id": send.org_id, "delivery_problem.since": {"$not": {"$gt": send.queued_at}}},
            {"$set": {"delivery_problem": mark}})

    async def _thread_of(self, send: Send) -> str | None:
        """The contact's thread, for a job queued before jobs named their thread."""
        if not send.contact_id:
            return None
        thread = await self._store.threads.find_one({"org_id": send.org_id, "contact_id": send.contact_id},
                                                    projection={"_id": 1})
        return thread["_id"] if thread else None

    async def succeeded(self, sends: list[Send]) -> None:
        """Sends that went out: clear the mark of their threads when it names a send queued no
        later (one read of the threads, and a write only for those that carry a mark)."""
        latest: dict[str, datetime] = {}
        for s in sends:
            if s.thread_id and (s.thread_id not in latest or latest[s.thread_id] < s.queued_at):
                latest[s.thread_id] = s.queued_at
        if not latest:
            return
        marked = [d async for d in self._store.threads.find(
            {"_id": {"$in": list(latest)}, "delivery_problem": {"$ne": None}}, projection={"delivery_problem": 1})]
        todo = [UpdateOne({"_id": d["_id"], "delivery_problem.since": {"$lte": latest[d["_id"]]}},
                          {"$unset": {"delivery_problem": ""}})
                for d in marked if (d.get("delivery_problem") or {}).get("since") is not None
                and d["delivery_problem"]["since"] <= latest[d["_id"]]]
        if todo:
            await self._store.threads.bulk_write(todo, ordered=False)

    async def dismiss(self, org_id: str, thread_id: str, actor: Actor, ip: str | None = None) -> bool:
        """Staff saw the failure and dismiss the mark (audited); False when there was none."""
        thread = await self._store.threads.find_one_and_update(
            {"_id": thread_id, "org_id": org_id, "delivery_problem": {"$ne": None}},
            {"$unset": {"delivery_problem": ""}}, projection={"delivery_problem": 1, "contact_id": 1})
        if thread is None:
            return False
        mark = thread.get("delivery_problem") or {}
        # No message id: the entry belongs to the thread's activity, not to one message's timeline.
        await self._audit.append(org_id, "thread.delivery_problem_dismissed", actor, ip=ip, thread_id=thread_id,
                                 detail={"reason": mark.get("reason_code"), "channel": mark.get("channel")})
        return True

