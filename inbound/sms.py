"""Inbound SMS: keyword handling, sealing into the thread, link-only acknowledgement, redaction.

Flow for one stored Twilio event: org (by the number it was sent to) → contact (blind index on
the sender) → STOP/START/HELP → classify → sealed message in the thread → acknowledgement and
provider-side redaction through the outbox. Every step is idempotent (ids derive from the event).
"""

from __future__ import annotations

import logging

from pymongo.errors import DuplicateKeyError

from gateway.audit import Actor, AuditLog
from gateway.classifier import find_sensitive
from gateway.contacts import OPTED_IN, OPTED_OUT, Contacts
from gateway.conversations import Conversations
from gateway.errors import ValidationError
from gateway.keywords import Keyword, parse_keyword
from gateway.orgs import Orgs
from gateway.outbox import Outbox
from gateway.store import Doc, Store
from inbound.events import InboundEvents

logger = logging.getLogger(__name__)


class SmsReplyHandler:
    def __init__(self, store: Store, events: InboundEvents, orgs: Orgs, contacts: Contacts,
                 conversations: Conversations, outbox: Outbox, audit: AuditLog) -> None:
        self._store = store
        self._events = events
        self._orgs = orgs
        self._contacts = contacts
        self._conversations = conversations
        self._outbox = outbox
        self._audit = audit

    async def __call__(self, event: Doc) -> str:
        payload = await self._events.open_payload(event)
        eid = event["_id"]
        org = await self._orgs.get(event["org_id"]) if event.get("org_id") else None
        if org is None:
            return "unroutable"
        try:
            contact, created = await self._contacts.find_or_create(org.id, phone=payload.get("From", ""))
        except ValidationError:
            logger.warning("inbound SMS from a sender that is not E.164", extra={"fields": {"event_id": eid}})
            return "unroutable"
        body = str(payload.get("Body", ""))
        actor = Actor("client", contact.id)
        keyword = parse_keyword(body)
        thread = await self._conversations.thread_for(org.id, contact.id, "sms")
        sensitive = find_sensitive(body, org.policy.sensitive_terms) if keyword is None else []
        secure = bool(thread.get("secure")) or bool(sensitive)
        flags = [f"media:{payload['NumMedia']}"] if str(payload.get("NumMedia", "0")) not in ("", "0") else []
        if sensitive and not thread.get("secure"):
            flags.append("classified_sensitive")
        message, thread, new = await self._conversations.record_inbound(
            org, contact, message_id=eid, channel="sms", body=body,
            provider_id=payload.get("MessageSid"), secure=secure, flags=flags, thread=thread,
        )
        if new:
            await self._audit.append(org.id, "message.received", actor, thread_id=thread["_id"],
                                     message_id=eid, contact_id=contact.id,
                                     detail={"channel": "sms", "secure": secure,
                                             "keyword": keyword.name if keyword else None})
        if keyword is Keyword.STOP:
            if await self._contacts.set_consent(org.id, contact.id, "sms", OPTED_OUT, "sms:keyword"):
                await self._audit.append(org.id, "consent.opt_out", actor, contact_id=contact.id,
                                         detail={"channel": "sms", "source": "keyword"})
            # Twilio's own opt-out handling confirms STOP to the sender; we send nothing more.
        elif keyword is Keyword.START:
            if await self._contacts.set_consent(org.id, contact.id, "sms", OPTED_IN, "sms:keyword"):
                await self._audit.append(org.id, "consent.opt_in", actor, contact_id=contact.id,
                                         detail={"channel": "sms", "source": "keyword"})
            await self._queue_reply(org.id, contact.id, "start_confirm", f"{eid}:reply")
        elif keyword is Keyword.HELP:
            await self._queue_reply(org.id, contact.id, "help", f"{eid}:reply")
        elif secure:
            contact = await self._contacts.get(org.id, contact.id)
            await self._conversations.send_link_notice(
                org, contact, thread["_id"], channel="sms", template="inbound_ack",
                job_id=f"{eid}:ack", message_id=eid,
            )
        if org.policy.provider_redaction and payload.get("MessageSid"):
            await self._queue_once(await self._outbox.job(
                kind="sms_redact", org_id=org.id, template="redact", contact_id=contact.id,
                job_id=f"{eid}:redact", provider_sid=payload["MessageSid"],
            ))
        return "done"

    async def _queue_reply(self, org_id: str, contact_id: str, template: str, job_id: str) -> None:
        contact = await self._contacts.get(org_id, contact_id)
        if contact.opted_out("sms"):
            return
        await self._queue_once(await self._outbox.job(
            kind="sms", org_id=org_id, template=template, contact_id=contact_id, job_id=job_id,
        ))

    async def _queue_once(self, job: Doc) -> None:
        try:
            await self._outbox.insert(job)
        except DuplicateKeyError:
            pass  # queued by an earlier run of this event
