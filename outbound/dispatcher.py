"""The outbox dispatcher: leases due jobs, sends through the provider, records the outcome.

Transient failures (429, 5xx, timeouts, network) retry with capped exponential backoff and
jitter; permanent ones (invalid number, opted out) fail at once and show on the message. A job
is "sent" only with a provider id. Leases live in MongoDB, so several workers can run this.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import timedelta

from gateway.audit import Actor
from gateway.contacts import OPTED_OUT
from gateway.errors import IntegrityError, NotFound, ProviderPermanent, ProviderTransient
from gateway.leases import LeaseWorker
from gateway.orgs import Org
from gateway.outbox import DEAD, FAILED, SENT
from gateway.ports import EmailSender, OutgoingEmail, SmsSender
from gateway.services import Services
from gateway.store import Doc
from inbound.twilio_webhooks import apply_delivery_event
from outbound.compose import LINK_TEMPLATES, sms_text
from outbound.compose_email import CONTENT_TEMPLATES, make_message_id, render_email, reply_address
from outbound.compose_email import LINK_TEMPLATES as EMAIL_LINK_TEMPLATES

logger = logging.getLogger(__name__)


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
        self, services: Services, sms: SmsSender, email: EmailSender | None = None, *,
        owner: str, rng: random.Random | None = None,
    ) -> None:
        self._s = services
        self._sms = sms
        self._email = email
        self._owner = owner
        self._rng = rng or random.Random()
        self._cfg = services.config.outbox
        self._pacer = Pacer(self._cfg.sms_per_second)
        self.worker = LeaseWorker(services.store.outbox, services.clock, owner=owner,
                                  lease_seconds=self._cfg.lease_seconds, poll_seconds=self._cfg.poll_seconds,
                                  handle=self.deliver, name="outbox dispatcher")
        self.wake = self.worker.wake
        services.outbox.listeners.append(self.worker.notify)

    @property
    def status_callback(self) -> str:
        return self._s.public_url + "/webhooks/twilio/status"

    def backoff(self, attempts: int) -> float:
        """Capped exponential backoff with equal jitter: half fixed, half random."""
        ceiling = min(self._cfg.max_backoff_seconds, self._cfg.base_backoff_seconds * 2.0 ** (attempts - 1))
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    async def claim(self) -> Doc | None:
        return await self.worker.claim()

    async def run_once(self) -> int:
        return await self.worker.run_once()

    async def run(self, stop: asyncio.Event, concurrency: int = 1) -> None:
        """Claim and deliver jobs until stopped (gateway/leases.py: concurrent loops + sweeper)."""
        await self.worker.run(stop, concurrency)

    # -- one job --------------------------------------------------------------------------
    async def deliver(self, job: Doc) -> None:
        try:
            if job["kind"] == "sms":
                provider_id = await self._send_sms(job)
            elif job["kind"] == "sms_redact":
                await self._sms.redact_sms(job["provider_sid"])
                provider_id = job["provider_sid"]
            elif job["kind"] == "email" and self._email is not None:
                provider_id = await self._send_email(job)
            else:
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
        else:
            await self._mark_sent(job, provider_id)

    async def _recipient(self, job: Doc, channel: str) -> tuple[Org, str]:
        """The org and the contact's address on file for `channel`; permanent failure if none or opted out."""
        org = await self._s.orgs.get(job["org_id"])
        contact = await self._s.contacts.get(org.id, job["contact_id"])
        if contact.opted_out(channel):
            raise ProviderPermanent(f"contact opted out of {channel}", code="opted_out")
        address = (await self._s.contacts.reveal(contact))["phone" if channel == "sms" else "email"]
        if not address:
            raise ProviderPermanent(f"contact has no {channel} address", code="no_address")
        return org, address

    async def _send_sms(self, job: Doc) -> str:
        org, phone = await self._recipient(job, "sms")
        text = await self._text_for(job, org.name)
        await self._pacer.wait(org.sms_sender)
        sent = await self._sms.send_sms(from_number=org.sms_sender, to_number=phone, body=text,
                                        status_callback=self.status_callback)
        return sent.provider_id

    async def _text_for(self, job: Doc, org_name: str) -> str:
        template = job["template"]
        if template == "message":
            message = await self._s.conversations.get_message(job["org_id"], job["message_id"])
            return await self._s.conversations.open_body(message)
        url = None
        if template in LINK_TEMPLATES:
            token = await self._s.vault.open(job["org_id"], "outbox", job["_id"], "link_token", job["link_token"])
            url = f"{self._s.public_url}/s/{token}"
        return sms_text(template, org_name=org_name, url=url)

    async def _send_email(self, job: Doc) -> str:
        s = self._s
        assert self._email is not None
        org, address = await self._recipient(job, "email")
        template = job["template"]
        if template not in EMAIL_LINK_TEMPLATES | CONTENT_TEMPLATES:
            raise ProviderPermanent(f"template {template} has no email form", code="no_template")
        url = body = None
        if template in EMAIL_LINK_TEMPLATES:
            token = await s.vault.open(org.id, "outbox", job["_id"], "link_token", job["link_token"])
            url = f"{s.public_url}/s/{token}"
        else:
            message = await s.conversations.get_message(org.id, job["message_id"])
            body = await s.conversations.open_body(message)
        subject, text, html = render_email(template, org_name=org.name, url=url, body=body)
        from_address = org.email_from or s.config.smtp.from_address or f"no-reply@{self._mail_domain(org)}"
        reply_domain = org.reply_domain or s.config.inbound_smtp.reply_domain
        reply_to = None
        if job.get("reply_token") and reply_domain:
            reply_token = await s.vault.open(org.id, "outbox", job["_id"], "reply_token", job["reply_token"])
            reply_to = reply_address(reply_token, reply_domain)
        # One Message-ID per job, fixed before the first attempt, so a retry is the same mail.
        message_id = job.get("email_message_id")
        if not message_id:
            message_id = make_message_id(from_address.rpartition("@")[2])
            await s.store.outbox.update_one({"_id": job["_id"]}, {"$set": {"email_message_id": message_id}})
        headers: list[tuple[str, str]] = []
        if template == "inbound_ack":
            headers.append(("Auto-Submitted", "auto-replied"))
        if job.get("in_reply_to"):
            headers += [("In-Reply-To", job["in_reply_to"]), ("References", job["in_reply_to"])]
        mail = OutgoingEmail(from_address=from_address, from_name=org.name, to_address=address, subject=subject,
                             text=text, html=html, message_id=message_id, reply_to=reply_to,
                             headers=tuple(headers))
        return await self._email.send_email(mail)

    def _mail_domain(self, org: Org) -> str:
        return org.reply_domain or self._s.config.inbound_smtp.reply_domain or "localhost"

    async def _mark_sent(self, job: Doc, provider_id: str) -> None:
        s = self._s
        now = s.clock.now()
        await s.store.outbox.update_one(
            {"_id": job["_id"]},
            {"$set": {"state": SENT, "provider_id": provider_id, "sent_at": now, "updated_at": now,
                      "last_error": None}, "$unset": {"link_token": "", "reply_token": ""}},
        )
        if job.get("message_id") and job["kind"] in ("sms", "email"):
            ids = {"provider_id": provider_id}
            if job["kind"] == "email":
                ids["email_message_id"] = provider_id  # bounces name the original Message-ID
            await s.store.messages.update_one({"_id": job["message_id"]}, {"$set": ids})
            await s.conversations.apply_status(job["message_id"], "accepted", now)
            if job["kind"] == "email":  # the relay took it; mail has no delivery callbacks
                await s.conversations.apply_status(job["message_id"], "sent", now)
            await s.audit.append(job["org_id"], "message.accepted", Actor("system"), message_id=job["message_id"],
                                 job_id=job["_id"], detail={"channel": job["kind"]})
        # Status callbacks that arrived before we knew this provider id: apply them now.
        async for ev in s.store.delivery_events.find({"provider_id": provider_id}).sort("_id", 1):
            await apply_delivery_event(s, provider_id, ev["status"], ev.get("error_code"), ev["at"])
        after_send = getattr(self._sms, "after_send", None)
        if after_send is not None and job["kind"] == "sms":
            await after_send(provider_id)

    async def _retry_or_give_up(self, job: Doc, err: ProviderTransient) -> None:
        attempts = int(job["attempts"])
        if attempts >= self._cfg.max_attempts:
            await self._fail(job, DEAD, err.code or "transient", f"gave up after {attempts} attempts: {err}")
            return
        delay = self.backoff(attempts)
        now = self._s.clock.now()
        logger.info("outbox job will retry", extra={"fields": {
            "job_id": job["_id"], "attempts": attempts, "delay_s": round(delay, 2), "code": err.code}})
        await self._s.store.outbox.update_one(
            {"_id": job["_id"]},
            {"$set": {"next_attempt_at": now + timedelta(seconds=delay), "lease_until": now, "updated_at": now,
                      "last_error": {"code": err.code, "message": str(err)[:300], "at": now}}},
        )

    async def _fail(self, job: Doc, state: str, code: str, message: str) -> None:
        s = self._s
        now = s.clock.now()
        logger.warning("outbox job failed", extra={"fields": {"job_id": job["_id"], "state": state, "code": code}})
        await s.store.outbox.update_one(
            {"_id": job["_id"]},
            {"$set": {"state": state, "updated_at": now, "lease_until": now,
                      "last_error": {"code": code, "message": message[:300], "at": now}},
             "$unset": {"link_token": "", "reply_token": ""}},
        )
        if job.get("message_id") and job["kind"] in ("sms", "email"):
            await s.conversations.apply_status(job["message_id"], "failed", now, code)
            await s.audit.append(job["org_id"], "message.failed", Actor("system"), message_id=job["message_id"],
                                 job_id=job["_id"], outcome="failed", detail={"code": code, "state": state})
        if job.get("contact_id"):
            if code == "21610":
                if await s.contacts.set_consent(job["org_id"], job["contact_id"], "sms", OPTED_OUT, "twilio:21610"):
                    await s.audit.append(job["org_id"], "consent.opt_out", Actor("provider", "twilio"),
                                         contact_id=job["contact_id"], detail={"channel": "sms", "source": "21610"})
            thread = await s.store.threads.find_one({"org_id": job["org_id"], "contact_id": job["contact_id"]})
            if thread is not None:
                await s.store.threads.update_one({"_id": thread["_id"]},
                                                 {"$set": {"attention": "delivery_failed"}})
