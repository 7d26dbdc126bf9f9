"""The outbox dispatcher: leases due jobs, sends through the provider, records the outcome.

Transient failures (429, 5xx, timeouts, network) retry with capped exponential backoff and
jitter; permanent ones (invalid number, opted out) fail at once and show on the message. A job
is "sent" only with a provider id. Leases live in MongoDB, so several workers can run this.

There is one path: the lease worker hands over a batch (gateway/storage/leases.py), and a job
claimed alone is a batch of one. The recipients of a batch are read with one query per org, the
sends go out concurrently (bounded), and the jobs that went out are marked sent with O(1)
writes; a job that fails records its own outcome (retry, failure).

Besides contacts, the outbox mails staff: a "staff_alert" job (gateway/messaging/alerts.py) names a staff
member, not a contact. Its address is the member's account email, read at send time (the batch
reads a group's members with one query per org); an account that was disabled, deleted or is no
longer an admin fails the job at once (codes staff_disabled, staff_deleted, staff_not_admin).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

from gateway.errors import IntegrityError, NotFound, ProviderPermanent, ProviderTransient
from gateway.messaging.alerts import STAFF_ALERT
from gateway.messaging.contacts import Contact, Contacts
from gateway.messaging.conversations import Conversations
from gateway.messaging.delivery import Delivery
from gateway.messaging.outbox import DEAD, FAILED, TRACKED_KINDS, Outbox
from gateway.messaging.reply_address import reply_address
from gateway.messaging.unsubscribe import unsubscribe_token
from gateway.ports import Clock, EmailSender, OutgoingEmail, SmsSender
from gateway.runtime.config import OutboxConfig
from gateway.security.audit import Actor, AuditLog, Pending
from gateway.storage.store import Doc
from gateway.tenancy.orgs import Org, Orgs
from gateway.tenancy.staff import Staff, StaffMember
from outbound.compose import LINK_TEMPLATES, sms_text
from outbound.compose_email import (
    CONTENT_TEMPLATES,
    STAFF_ALERTS,
    make_message_id,
    render_email,
    render_staff_alert,
)
from outbound.compose_email import LINK_TEMPLATES as EMAIL_LINK_TEMPLATES

logger = logging.getLogger(__name__)

SEND_CONCURRENCY = 8  # provider calls in flight per batch
ADDRESS_FIELD = {"sms": "phone", "email": "email"}
MAILED = ("email", STAFF_ALERT)  # the job kinds that go out as mail (one Message-ID each)
STAFF_FROM_NAME = "Hushlink"  # staff alerts come from the gateway, not from the org to its clients


class Recipient(NamedTuple):
    org: Org
    contact: Contact
    address: str | None  # the contact's address on file for the job's channel


class StaffRecipient(NamedTuple):
    org: Org
    member: StaffMember  # the staff account a staff_alert job mails


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """The config values the dispatcher reads (built by the composition root, gateway/runtime/app.py)."""

    public_url: str  # without a trailing slash: links, status callbacks, unsubscribe URLs
    from_address: str = ""  # [smtp] from_address; an org's own email_from comes first
    reply_domain: str = ""  # [inbound_smtp] reply_domain; an org's own reply_domain comes first
    bounces_to_reply: bool = True  # [smtp] return_path = "reply": the envelope sender is the reply address
    outbox: OutboxConfig = field(default_factory=OutboxConfig)  # [outbox]: attempts, backoff, lease, pacing, TTL


# What a job's recipient lookup found: whom to send to, or the error the job fails with.
Found = Recipient | StaffRecipient | Exception


class Pacer:
    """Per-sender spacing of sends in this process (the provider's rate per number)."""

    def __init__(self, per_second: float) -> None:
        self._gap = 1.0 / per_second
        self._next: dict[str, float] = {}

    async def wait(self, sender: str) -> None:
        now = time.monotonic()
        at = max(now, self._next.get(sender, now))
        self._next[sender] = at + self._gap
        if at > now:
            await asyncio.sleep(at - now)


class OutboxDispatcher:
    def __init__(
        self, *, outbox: Outbox, orgs: Orgs, contacts: Contacts, staff: Staff,
        conversations: Conversations, audit: AuditLog, delivery: Delivery, clock: Clock,
        sms: SmsSender, email: EmailSender | None = None, settings: DispatchSettings,
        owner: str, rng: random.Random | None = None, before_work: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # Job state (claims, sent, retry, failed) and sealed tokens: gateway/messaging/outbox.py.
        self._outbox = outbox
        self._orgs = orgs
        self._contacts = contacts
        self._staff = staff
        self._conversations = conversations
        self._audit = audit
        self._clock = clock
        # Status rules and the thread's failure mark (gateway/messaging/delivery.py).
        self._delivery = delivery
        self._sms = sms
        self._email = email
        self._owner = owner
        self._rng = rng or random.Random()
        self._cfg = settings
        self._pacer = Pacer(settings.outbox.sms_per_second)
        # Finished jobs are removed this long after (TTL on expire_at, gateway/storage/store.py). Nothing
        # needs them later but a provider's late status callback (hours), which finds its job by
        # provider id; deterministic job ids guard re-runs of an event only while it is processed.
        self._keep_done = timedelta(days=settings.outbox.keep_done_days)
        self.worker = outbox.lease_worker(owner=owner, lease_seconds=settings.outbox.lease_seconds,
                                          poll_seconds=settings.outbox.poll_seconds, name="outbox dispatcher",
                                          handle_batch=self.deliver_batch, before_work=before_work)
        self.wake = self.worker.wake
        outbox.listeners.append(self.worker.notify)

    @property
    def status_callback(self) -> str:
        return self._cfg.public_url + "/webhooks/twilio/status"

    def backoff(self, attempts: int) -> float:
        """Capped exponential backoff with equal jitter: half fixed, half random."""
        retry = self._cfg.outbox
        ceiling = min(retry.max_backoff_seconds, retry.base_backoff_seconds * 2.0 ** (attempts - 1))
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    async def claim(self) -> Doc | None:
        return await self.worker.claim()

    async def run_once(self) -> int:
        return await self.worker.run_once()

    async def run(self, stop: asyncio.Event, concurrency: int = 1) -> None:
        """Claim and deliver jobs until stopped (gateway/storage/leases.py: concurrent loops + sweeper)."""
        await self.worker.run(stop, concurrency)

    # -- sending one job of a batch -------------------------------------------------------
    async def _attempt(self, job: Doc, recipient: Found | None) -> str | None:
        """Send the job; returns its provider id, or None once its failure is recorded."""
        try:
            if job["kind"] == "sms":
                return await self._send_sms(job, recipient)
            if job["kind"] == "sms_redact":
                await self._sms.redact_sms(job["provider_sid"])
                return str(job["provider_sid"])
            if job["kind"] == "email" and self._email is not None:
                return await self._send_email(job, recipient)
            if job["kind"] == STAFF_ALERT and self._email is not None:
                return await self._send_staff_alert(job, recipient)
            raise ProviderPermanent(f"no sender for job kind {job['kind']}", code="no_sender")
        except ProviderTransient as err:
            await self._retry_or_give_up(job, err)
        except ProviderPermanent as err:
            await self._fail(job, FAILED, err.code or "permanent", str(err))
        except (NotFound, IntegrityError) as err:
            # The contact was erased or its data no longer opens: nothing can ever be sent.
            await self._fail(job, FAILED, "unavailable", type(err).__name__)
        except ValueError as err:
            # The text cannot be composed (e.g. the link does not fit one SMS): retrying won't help.
            await self._fail(job, FAILED, "compose", str(err))
        return None

    @staticmethod
    def _recipient(channel: str, found: Found | None) -> tuple[Org, str]:
        """The org and the contact's address on file for `channel` (read for the batch, _recipients);
        permanent failure if none or opted out, the lookup's error if it failed."""
        if isinstance(found, Exception):
            raise found
        if not isinstance(found, Recipient):
            raise NotFound("no contact for this job")
        org, contact, address = found
        if contact.opted_out(channel):
            raise ProviderPermanent(f"contact opted out of {channel}", code="opted_out")
        if not address:
            raise ProviderPermanent(f"contact has no {channel} address", code="no_address")
        return org, address

    @staticmethod
    def _staff_recipient(found: Found | None) -> tuple[Org, str]:
        """The org and the address of the admin a staff_alert job mails; permanent failure if the
        account is gone, disabled or no longer an admin (such a job never reaches a contact lookup)."""
        if isinstance(found, Exception):
            raise found
        if not isinstance(found, StaffRecipient):
            raise ProviderPermanent("the staff account no longer exists", code="staff_deleted")
        org, member = found
        if member.disabled:
            raise ProviderPermanent("the staff account is disabled", code="staff_disabled")
        if member.role != "admin":
            raise ProviderPermanent("the staff member is no longer an admin", code="staff_not_admin")
        return org, member.email

    # -- a batch -----------------------------------------------------------------------------
    async def deliver_batch(self, jobs: list[Doc]) -> None:
        """Deliver claimed jobs together (see the module docstring).

        A slow provider can make a batch outlast its lease; then, before it runs out (half-way,
        by the service clock), what was sent so far is recorded and the lease of what is still
        waiting is extended, so no other worker takes and sends a job a second time. A job whose
        lease was lost meanwhile is left to the worker that holds it.
        """
        recipients = await self._recipients(jobs)
        await self._assign_message_ids([j for j in jobs if j["kind"] in MAILED
                                        and isinstance(recipients.get(j["_id"]), Recipient | StaffRecipient)])
        slots = asyncio.Semaphore(SEND_CONCURRENCY)
        keeping = asyncio.Lock()
        waiting = {job["_id"]: job for job in jobs}  # not sent yet: still needs its lease
        sent: list[tuple[Doc, str]] = []  # sent, not recorded yet
        half_lease = timedelta(seconds=self._cfg.outbox.lease_seconds / 2)
        renew_at = self._clock.now() + half_lease

        async def keep_leases() -> None:
            nonlocal renew_at
            async with keeping:
                if self._clock.now() < renew_at:
                    return
                recorded = list(sent)
                await self._mark_sent(recorded)
                del sent[:len(recorded)]  # (others only append meanwhile)
                # Still held: the jobs waiting, and those that went out while the others were being
                # recorded (not recorded yet, so still pending: their lease must not run out either).
                held = [*waiting.values(), *(job for job, _ in sent)]
                for lost in await self.worker.extend(held):
                    waiting.pop(lost, None)
                renew_at = self._clock.now() + half_lease

        async def attempt(job: Doc) -> None:
            async with slots:
                await keep_leases()
                if job["_id"] not in waiting:
                    return
                provider_id = await self._attempt(job, recipients.get(job["_id"]))
                waiting.pop(job["_id"], None)
                if provider_id is not None:
                    sent.append((job, provider_id))
                # Also after each send, not only before: when every send has started early (all
                # slots busy with slow sends), the leases of those still in flight must not run out.
                await keep_leases()

        # Every outcome is waited for: one job's unexpected error (the database going away while
        # recording a failure) must not keep the others that did go out from being marked sent.
        outcomes = await asyncio.gather(*(attempt(job) for job in jobs), return_exceptions=True)
        await self._mark_sent(sent)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _recipients(self, jobs: list[Doc]) -> dict[object, Found]:
        """Each sms/email job's org, contact and address, and each staff_alert job's org and staff
        member: one read per org and kind. A job whose lookup failed (its org gone, its contact
        erased or no longer opening, its staff account deleted) gets the error it fails with."""
        by_org: dict[str, list[Doc]] = {}
        staff_by_org: dict[str, list[Doc]] = {}
        out: dict[object, Found] = {}
        for job in jobs:
            if job["kind"] in ADDRESS_FIELD:
                if job.get("contact_id"):
                    by_org.setdefault(job["org_id"], []).append(job)
                else:
                    out[job["_id"]] = NotFound("the job names no contact")
            elif job["kind"] == STAFF_ALERT:
                if job.get("staff_id"):
                    staff_by_org.setdefault(job["org_id"], []).append(job)
                else:
                    out[job["_id"]] = ProviderPermanent("the staff account no longer exists", code="staff_deleted")
        orgs: dict[str, Org | NotFound] = {}
        for org_id in {*by_org, *staff_by_org}:
            try:
                orgs[org_id] = await self._orgs.get(org_id)
            except NotFound as err:
                orgs[org_id] = err
        for org_id, group in staff_by_org.items():
            org = orgs[org_id]
            if isinstance(org, NotFound):
                out.update((job["_id"], org) for job in group)
                continue
            members = await self._staff.get_many(org.id, [j["staff_id"] for j in group])
            for job in group:
                member = members.get(job["staff_id"])
                out[job["_id"]] = StaffRecipient(org, member) if member is not None else ProviderPermanent(
                    "the staff account no longer exists", code="staff_deleted")
        for org_id, group in by_org.items():
            org = orgs[org_id]
            if isinstance(org, NotFound):
                out.update((job["_id"], org) for job in group)
                continue
            fields = tuple({ADDRESS_FIELD[j["kind"]] for j in group})
            try:
                found: dict[str, tuple[Contact, dict[str, str | None]] | IntegrityError] = dict(
                    await self._contacts.get_many_revealed(org.id, [j["contact_id"] for j in group], fields))
            except IntegrityError:
                # One contact's data no longer opens: read the group's contacts one by one, so only
                # its own jobs fail.
                found = {}
                for contact_id in dict.fromkeys(j["contact_id"] for j in group):
                    try:
                        found.update(await self._contacts.get_many_revealed(org.id, [contact_id], fields))
                    except IntegrityError as err:
                        found[contact_id] = err
            for job in group:
                hit = found.get(job["contact_id"])
                if hit is None:
                    out[job["_id"]] = NotFound("the contact was erased")
                elif isinstance(hit, IntegrityError):
                    out[job["_id"]] = hit
                else:
                    out[job["_id"]] = Recipient(org, hit[0], hit[1].get(ADDRESS_FIELD[job["kind"]]))
        return out

    async def _assign_message_ids(self, jobs: list[Doc]) -> None:
        """Fix the Message-ID of every email job that has none yet, with one write (a retry then
        sends the same mail)."""
        todo: dict[str, str] = {}
        for job in jobs:
            if not job.get("email_message_id") and not job.get("mail_key"):  # (jobs queued before mail_key)
                org = await self._orgs.get(job["org_id"])
                job["email_message_id"] = make_message_id(self._from_address(org).rpartition("@")[2])
                todo[job["_id"]] = job["email_message_id"]
        await self._outbox.fix_message_ids(todo)

    async def _send_sms(self, job: Doc, recipient: Found | None) -> str:
        org, phone = self._recipient("sms", recipient)
        text = await self._text_for(job, org.name)
        await self._pacer.wait(org.sms_sender)
        sent = await self._sms.send_sms(from_number=org.sms_sender, to_number=phone, body=text,
                                        status_callback=self.status_callback)
        return sent.provider_id

    async def _text_for(self, job: Doc, org_name: str) -> str:
        template = job["template"]
        if template == "message":
            message = await self._conversations.get_message(job["org_id"], job["message_id"])
            return await self._conversations.open_body(message)
        url = None
        if template in LINK_TEMPLATES:
            token = await self._outbox.open_token(job, "link_token")
            url = f"{self._cfg.public_url}/s/{token}"
        return sms_text(template, org_name=org_name, url=url)

    async def _send_email(self, job: Doc, recipient: Found | None) -> str:
        assert self._email is not None
        org, address = self._recipient("email", recipient)
        template = job["template"]
        if template not in EMAIL_LINK_TEMPLATES | CONTENT_TEMPLATES:
            raise ProviderPermanent(f"template {template} has no email form", code="no_template")
        url = body = None
        if template in EMAIL_LINK_TEMPLATES:
            token = await self._outbox.open_token(job, "link_token")
            url = f"{self._cfg.public_url}/s/{token}"
        else:
            message = await self._conversations.get_message(org.id, job["message_id"])
            body = await self._conversations.open_body(message)
        subject, text, html = render_email(template, org_name=org.name, url=url, body=body)
        from_address = self._from_address(org)
        reply_domain = org.reply_domain or self._cfg.reply_domain
        reply_token = None
        if job.get("reply_token"):
            reply_token = await self._outbox.open_token(job, "reply_token")
        reply_to = reply_address(reply_token, reply_domain) if reply_token and reply_domain else None
        message_id = self._message_id(job, from_address)
        headers: list[tuple[str, str]] = []
        if reply_token:
            # Every mail to a client can be unsubscribed from in one click (RFC 8058; RFC 2369): a
            # POST to this URL opts the contact out of email (portal/unsubscribe.py). Staff alerts
            # (_send_staff_alert) go to staff and carry none.
            url = f"{self._cfg.public_url}/u/{unsubscribe_token(reply_token)}"
            headers += [("List-Unsubscribe", f"<{url}>"), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
        if template == "inbound_ack":
            headers.append(("Auto-Submitted", "auto-replied"))
        if job.get("in_reply_to"):
            headers += [("In-Reply-To", job["in_reply_to"]), ("References", job["in_reply_to"])]
        # Bounces go to the envelope sender: the reply address (config smtp.return_path = "reply")
        # brings them back to our listener, into this contact's conversation, where they mark the
        # mail failed (inbound/email_reply.py).
        mail = OutgoingEmail(from_address=from_address, from_name=org.name, to_address=address, subject=subject,
                             text=text, html=html, message_id=message_id, reply_to=reply_to,
                             headers=tuple(headers),
                             return_path=reply_to if self._cfg.bounces_to_reply else None)
        return await self._email.send_email(mail)

    async def _send_staff_alert(self, job: Doc, recipient: Found | None) -> str:
        assert self._email is not None
        if job["template"] not in STAFF_ALERTS:
            raise ProviderPermanent(f"alert kind {job['template']} has no email form", code="no_template")
        org, address = self._staff_recipient(recipient)
        subject, text, html = render_staff_alert(job["template"], org_name=org.name, public_url=self._cfg.public_url)
        from_address = self._from_address(org)
        # No Reply-To and no reply token: an answer to an alert has nowhere to go but the sender.
        mail = OutgoingEmail(from_address=from_address, from_name=STAFF_FROM_NAME, to_address=address,
                             subject=subject, text=text, html=html,
                             message_id=self._message_id(job, from_address), reply_to=None,
                             headers=(("Auto-Submitted", "auto-generated"),))  # RFC 3834 section 5
        return await self._email.send_email(mail)

    @staticmethod
    def _message_id(job: Doc, from_address: str) -> str:
        """The job's Message-ID, fixed before the first attempt (at queueing as `mail_key`, or by
        _assign_message_ids), so a retry is the same mail."""
        if job.get("email_message_id"):
            return str(job["email_message_id"])
        return make_message_id(from_address.rpartition("@")[2], job["mail_key"])

    def _from_address(self, org: Org) -> str:
        return org.email_from or self._cfg.from_address or f"no-reply@{self._mail_domain(org)}"

    def _mail_domain(self, org: Org) -> str:
        return org.reply_domain or self._cfg.reply_domain or "localhost"

    async def _mark_sent(self, sent: list[tuple[Doc, str]]) -> None:
        """Record sent jobs: O(1) writes however many."""
        if not sent:
            return
        now = self._clock.now()
        await self._outbox.mark_sent(sent, now + self._keep_done)
        tracked = [job for job, _ in sent if job.get("message_id") and job["kind"] in TRACKED_KINDS]
        if tracked:
            by_org: dict[str, list[Pending]] = {}
            for job in tracked:
                by_org.setdefault(job["org_id"], []).append(Pending(
                    "message.accepted", Actor("system"), ids={"message_id": job["message_id"], "job_id": job["_id"]},
                    detail={"channel": job["kind"]}))
            for org_id, entries in by_org.items():
                await self._audit.append_many(org_id, entries)
        # Messages accepted; mail sent as far as we will learn (the relay took it), which clears
        # its thread's failure mark.
        await self._delivery.accepted([job for job, _ in sent], now)
        # Status callbacks that arrived before we knew these provider ids: apply them now.
        await self._delivery.replay([pid for _, pid in sent])
        after_send = getattr(self._sms, "after_send", None)
        if after_send is not None:
            for job, provider_id in sent:
                if job["kind"] == "sms":
                    await after_send(provider_id)

    async def _retry_or_give_up(self, job: Doc, err: ProviderTransient) -> None:
        attempts = int(job["attempts"])
        if attempts >= self._cfg.outbox.max_attempts:
            await self._fail(job, DEAD, err.code or "transient", f"gave up after {attempts} attempts: {err}")
            return
        delay = self.backoff(attempts)
        now = self._clock.now()
        logger.info("outbox job will retry", extra={"fields": {
            "job_id": job["_id"], "attempts": attempts, "delay_s": round(delay, 2), "code": err.code}})
        await self._outbox.retry_at(job["_id"], now + timedelta(seconds=delay),
                                    {"code": err.code, "message": str(err)[:300], "at": now})

    async def _fail(self, job: Doc, state: str, code: str, message: str) -> None:
        now = self._clock.now()
        logger.warning("outbox job failed", extra={"fields": {"job_id": job["_id"], "state": state, "code": code}})
        await self._outbox.finish_failed(job["_id"], state, {"code": code, "message": message[:300], "at": now},
                                         now + self._keep_done)
        # The message fails, the thread is marked with the reason (and a 21610 is the opt-out it is).
        await self._delivery.job_failed(job, code, now, state)
