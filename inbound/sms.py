"""Inbound SMS: keyword handling, sealing into the thread, link-only acknowledgement, redaction.

Flow for one stored Twilio event: org (by the number it was sent to) → contact (blind index on
the sender) → STOP/START/HELP → classify → MMS media downloaded and sealed as attachments →
sealed message in the thread → acknowledgement and provider-side redaction (body and media)
through the outbox. Every step is idempotent (ids derive from the event).

`batch` runs the same flow for many events with O(1) round trips: contacts and threads looked up
(and created) with `$in`, messages in one insert (a duplicate id = stored by an earlier run),
thread counters in a few grouped updates, link-only acknowledgements and redactions in one write
each, every audit entry of the batch in one chained append. A sender with a keyword anywhere in
the batch has all of its events left to the one-by-one path, in order, as has any event that is
not a plain text reply from a valid number to a known org (MMS included).
"""

from __future__ import annotations

import logging
import mimetypes
from typing import Any

from pymongo.errors import DuplicateKeyError

from gateway.errors import ProviderPermanent, ProviderTransient, ValidationError
from gateway.messaging.contacts import OPTED_IN, OPTED_OUT, Contact, Contacts
from gateway.messaging.conversations import Conversations, Inbound, Notice
from gateway.messaging.incoming_files import IncomingFile, IncomingFiles
from gateway.messaging.outbox import Outbox
from gateway.messaging.phone import normalize_e164
from gateway.ports import SmsSender
from gateway.rules.classifier import find_sensitive
from gateway.rules.keywords import Keyword, parse_keyword
from gateway.rules.secure import decide_inbound
from gateway.security.audit import Actor, AuditLog, Pending
from gateway.storage.intake import EventIntake
from gateway.storage.store import Doc
from gateway.tenancy.orgs import Org, Orgs
from inbound.processor import MAX_ATTEMPTS

logger = logging.getLogger(__name__)


MAX_MEDIA_BYTES = 10_000_000  # per item; Twilio's own cap for inbound MMS is 5 MB in total


def media_count(payload: dict[str, Any]) -> int:
    try:
        return max(0, int(payload.get("NumMedia", "0") or "0"))
    except ValueError:
        return 0


MEDIA_EXTENSIONS = frozenset({".jpg", ".png", ".gif", ".webp", ".pdf", ".mp4", ".3gp", ".txt", ".vcf"})


def media_filename(n: int, content_type: str) -> str:
    """A neutral name for the n-th item (MMS media has none): "media-1.jpg"."""
    ext = mimetypes.guess_extension(content_type) or ""
    return f"media-{n + 1}{ext if ext in MEDIA_EXTENSIONS else ''}"


def _consent_set_by(contact: Contact, channel: str, event_id: str) -> bool:
    """Was the contact's current consent on `channel` recorded from this event?"""
    return str((contact.consent.get(channel) or {}).get("order", "")).endswith(f"|{event_id}")


class SmsReplyHandler:
    def __init__(self, events: EventIntake, orgs: Orgs, contacts: Contacts,
                 conversations: Conversations, outbox: Outbox, audit: AuditLog, *,
                 media: SmsSender | None = None, files: IncomingFiles | None = None) -> None:
        """`media` fetches MMS media and `files` seals it (both or neither: without them an MMS is
        stored as text with its media flagged unavailable)."""
        self._media = media
        self._files = files
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
        if keyword is Keyword.START and not (contact.opted_out("sms") or _consent_set_by(contact, "sms", eid)):
            # A "Yes" answering a question from a contact who is not opted out is an ordinary reply:
            # no consent change and no "subscribed again" confirmation (issue 9). (The second test
            # is a re-run of this event after its opt-in was recorded: it still gets its answer.)
            keyword = None
        thread = await self._conversations.thread_for(org.id, contact.id, "sms")
        sensitive = find_sensitive(body, org.policy.sensitive_terms) if keyword is None else []
        decision = decide_inbound(org.policy, thread_secure=bool(thread.get("secure")), sensitive=bool(sensitive))
        secure = decision.secure
        flags = [f"media:{payload['NumMedia']}"] if str(payload.get("NumMedia", "0")) not in ("", "0") else []
        if sensitive and not thread.get("secure"):
            flags.append("classified_sensitive")
        # The last attempt stores the text without what still can't be fetched: a message (a STOP
        # above all) must never be lost to a provider's media outage.
        files, unavailable = await self._fetch_media(payload, last_try=int(event.get("attempts", 1)) >= MAX_ATTEMPTS)
        if unavailable:
            flags.append(f"media_unavailable:{unavailable}")
        if files:
            assert self._files is not None  # given with the media source (gateway/runtime/app.py)
            await self._files.seal(org_id=org.id, dek_id=contact.dek_id, message_id=eid,
                                   thread_id=thread["_id"], contact_id=contact.id, files=files)
        message, thread, new = await self._conversations.record_inbound(
            org, contact, message_id=eid, channel="sms", body=body,
            provider_id=payload.get("MessageSid"), secure=secure, flags=flags, thread=thread, files=len(files),
            secure_source=decision.source,
        )
        if new or await self._audit.without(org.id, "message.received", [eid]):
            # (Stored by an earlier run that stopped before its audit entry: append it now.)
            await self._audit.append(org.id, "message.received", actor, thread_id=thread["_id"],
                                     message_id=eid, contact_id=contact.id,
                                     detail={"channel": "sms", "secure": secure,
                                             "keyword": keyword.name if keyword else None})
        # Consent changes carry the message's arrival: one from an earlier message never undoes a
        # later one, whatever order they are processed in (gateway/messaging/contacts.py record_consent).
        arrived = event.get("received_at")
        if keyword is Keyword.STOP:
            if await self._contacts.set_consent(org.id, contact.id, "sms", OPTED_OUT, "sms:keyword",
                                                at=arrived, event_id=eid):
                await self._audit.append(org.id, "consent.opt_out", actor, contact_id=contact.id,
                                         detail={"channel": "sms", "source": "keyword"})
            # Twilio's own opt-out handling confirms STOP to the sender; we send nothing more.
        elif keyword is Keyword.START:
            if await self._contacts.set_consent(org.id, contact.id, "sms", OPTED_IN, "sms:keyword",
                                                at=arrived, event_id=eid):
                await self._audit.append(org.id, "consent.opt_in", actor, contact_id=contact.id,
                                         detail={"channel": "sms", "source": "keyword"})
            # (Not sent if a later STOP is recorded already: _queue_reply checks consent.)
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

    async def _fetch_media(self, payload: dict[str, Any], *, last_try: bool
                           ) -> tuple[list[IncomingFile], int]:
        """The MMS media of a message, downloaded, and how many could not be (gone at the
        provider, too large, not a media URL of ours). A transient failure raises, unless this
        is the event's last try: the event runs again later, before its message exists."""
        files: list[IncomingFile] = []
        unavailable = 0
        for n in range(media_count(payload)):
            url = str(payload.get(f"MediaUrl{n}", ""))
            if self._media is None or not url:
                unavailable += 1
                continue
            try:
                media = await self._media.fetch_media(url, max_bytes=MAX_MEDIA_BYTES)
            except (ProviderPermanent, ProviderTransient) as err:
                if isinstance(err, ProviderTransient) and not last_try:
                    raise
                logger.warning("mms media not stored", extra={"fields": {"code": err.code, "item": n}})
                unavailable += 1
                continue
            # Numbered by media index: a re-run that fetches a different subset stores the same ids.
            files.append(IncomingFile(media_filename(n, media.content_type), media.content_type, media.data, n))
        return files, unavailable

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

    # -- many at once -------------------------------------------------------------------------
    async def batch(self, events: list[Doc]) -> tuple[list[object], list[Doc]]:
        """Process the plain replies among `events` in bulk.

        Returns (ids of events done, events left to the one-by-one path). Raises on a database
        error; the processor then runs every event of the batch one by one (all idempotent).
        """
        rest: list[Doc] = []
        orgs: dict[str, Org] = {}
        senders: dict[tuple[str, str], list[tuple[Doc, dict[str, Any]]]] = {}  # (org, phone) -> events
        unusual: set[tuple[str, str]] = set()
        for event in sorted(events, key=lambda e: (e.get("received_at") is None, e.get("received_at"), e["_id"])):
            try:
                payload = await self._events.open_payload(event)
                org_id = event.get("org_id")
                org = orgs.get(org_id) if org_id else None
                if org is None and org_id:
                    org = orgs[org_id] = await self._orgs.get(org_id)
                phone = normalize_e164(payload.get("From", ""), field="From")
            except Exception:  # unreadable, unknown org, not E.164: the one-by-one path decides
                rest.append(event)
                continue
            if org is None:
                rest.append(event)
                continue
            key = (org.id, phone)
            senders.setdefault(key, []).append((event, payload))
            if parse_keyword(str(payload.get("Body", ""))) is not None or media_count(payload):
                unusual.add(key)
        for key in unusual:  # keep a sender's STOP/START/HELP or MMS in order with its other messages
            rest.extend(event for event, _ in senders.pop(key))
        done: list[object] = []
        by_org: dict[str, dict[str, list[tuple[Doc, dict[str, Any]]]]] = {}
        for (org_id, phone), items in senders.items():
            by_org.setdefault(org_id, {})[phone] = items
        for org_id, by_phone in by_org.items():
            ok, left = await self._bulk(orgs[org_id], by_phone)
            done += ok
            rest += left
        return done, rest

    async def _bulk(self, org: Org, by_phone: dict[str, list[tuple[Doc, dict[str, Any]]]]
                    ) -> tuple[list[object], list[Doc]]:
        contacts = await self._contacts.find_or_create_phones(org.id, list(by_phone))
        rest = [event for phone, items in by_phone.items() if phone not in contacts for event, _ in items]
        threads = await self._conversations.threads_for(org.id, [c.id for c, _ in contacts.values()], "sms")
        # In arrival order, as one-by-one processing would see them: a sensitive reply makes its
        # standard thread secure, and every later reply in that thread is then secure too.
        flow = sorted(((event, payload, contacts[phone][0]) for phone, items in by_phone.items()
                       if phone in contacts for event, payload in items),
                      key=lambda x: (x[0].get("received_at") is None, x[0].get("received_at"), x[0]["_id"]))
        secure_now = {t["_id"]: bool(t.get("secure")) for t in threads.values()}
        inbound: list[Inbound] = []
        for event, payload, contact in flow:
            thread = threads[contact.id]
            body = str(payload.get("Body", ""))
            sensitive = find_sensitive(body, org.policy.sensitive_terms)
            was_secure = secure_now[thread["_id"]]
            decision = decide_inbound(org.policy, thread_secure=was_secure, sensitive=bool(sensitive))
            secure = decision.secure
            flags = [f"media:{payload['NumMedia']}"] if str(payload.get("NumMedia", "0")) not in ("", "0") else []
            if sensitive and not was_secure:
                flags.append("classified_sensitive")
            secure_now[thread["_id"]] = secure
            inbound.append(Inbound(contact, thread, event["_id"], body, payload.get("MessageSid"), secure, flags,
                                   decision.source))
        if not inbound:
            return [], rest
        stored = await self._conversations.record_inbound_many(org, inbound, channel="sms")
        new = {m.message_id: n for m, n in zip(inbound, stored, strict=True)}
        # Stored by an earlier run that stopped before its audit entry: append it now, once.
        unaudited = await self._audit.without(
            org.id, "message.received", [m.message_id for m in inbound if not new[m.message_id]])
        # Link-only acknowledgements, checked against consent as it is now (as contacts.get would).
        issued: dict[str, Pending] = {}
        wanted = [m for m in inbound if m.secure]
        if wanted:
            fresh = await self._contacts.get_many(org.id, [m.contact.id for m in wanted])
            gone = {m.message_id for m in wanted if m.contact.id not in fresh}
            issued = await self._conversations.issue_link_notices(org, [
                Notice(fresh[m.contact.id], m.thread["_id"], f"{m.message_id}:ack", m.message_id)
                for m in wanted if m.message_id not in gone], channel="sms", template="inbound_ack")
            if gone:  # erased meanwhile: the one-by-one path fails them as it would have
                rest += [event for event, _, _ in flow if event["_id"] in gone]
                inbound = [m for m in inbound if m.message_id not in gone]
        entries: list[Pending] = []
        for m in inbound:
            if new[m.message_id] or m.message_id in unaudited:
                entries.append(Pending("message.received", Actor("client", m.contact.id), ids={
                    "thread_id": m.thread["_id"], "message_id": m.message_id, "contact_id": m.contact.id},
                    detail={"channel": "sms", "secure": m.secure, "keyword": None}))
            if (ack := issued.get(f"{m.message_id}:ack")) is not None:
                entries.append(ack)
        await self._audit.append_many(org.id, entries)
        if org.policy.provider_redaction:  # (one write; a job queued by an earlier run is skipped)
            await self._outbox.insert_new([await self._outbox.job(
                kind="sms_redact", org_id=org.id, template="redact", contact_id=m.contact.id,
                job_id=f"{m.message_id}:redact", provider_sid=m.provider_id,
            ) for m in inbound if m.provider_id])
        return [m.message_id for m in inbound], rest
