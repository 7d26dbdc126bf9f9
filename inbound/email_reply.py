"""Inbound email replies: parse, strip quoted history, seal into the thread, answer with a link.

The thread comes from the reply token the mail was addressed to (checked at RCPT), never from
the From header: a From that does not match the contact is kept but flagged for staff.
Auto-replies are stored as such and never answered; bounces mark the original message failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.messaging.contacts import OPTED_OUT, Contacts
from gateway.messaging.conversations import Conversations, Inbound, Notice
from gateway.messaging.delivery import Delivery
from gateway.messaging.incoming_files import IncomingFile, IncomingFiles
from gateway.messaging.reply_context import ReplyContext
from gateway.messaging.reply_tokens import ReplyTokens
from gateway.rules.classifier import find_sensitive
from gateway.rules.keywords import is_email_opt_out
from gateway.rules.secure import SecureSource, decide_inbound
from gateway.security.audit import Actor, AuditLog, Pending
from gateway.storage.intake import EventIntake
from gateway.storage.store import Doc
from gateway.tenancy.orgs import Org, OrgPolicy, Orgs
from inbound.mail.parse import ParsedMail, parse_message

logger = logging.getLogger(__name__)

MAX_TEXT = 20_000
MAX_ATTACHMENTS = 10  # per mail; more are dropped and the message flagged
MAX_ATTACHMENT_BYTES = 10_000_000  # per attachment, decoded


def _bare(message_id: str | None) -> str:
    return (message_id or "").strip().strip("<>").strip()


@dataclass(frozen=True, slots=True)
class Reply:
    """What an inbound mail becomes in its thread: the stripped text and how it is treated."""

    text: str
    secure: bool
    secure_source: SecureSource
    flags: list[str]
    auto_reply: bool
    provider_id: str | None  # the mail's own Message-ID, bare
    in_reply_to: str | None  # for the link-only answer
    opt_out: bool = False  # the text begins with STOP or UNSUBSCRIBE (gateway/rules/keywords.py)

    @property
    def answer(self) -> bool:
        """A link-only answer goes back for secure replies, never to an auto-reply, and no mail at
        all to a reply that opts out of email."""
        return self.secure and not self.auto_reply and not self.opt_out


def _null_sender(payload: dict[str, Any]) -> bool:
    """Was the mail sent from the null envelope sender, MAIL FROM:<> (aiosmtpd reports "<>")?"""
    sender = payload.get("mail_from")
    return sender is not None and str(sender).strip() in ("", "<>")


def _assess(parsed: ParsedMail, on_file: str | None, thread_secure: bool, policy: OrgPolicy,
            *, null_sender: bool) -> Reply:
    # Mail from the null envelope sender (MAIL FROM:<>) is a bounce or other notification: never
    # answered (RFC 5321 4.5.5), even when it is not a delivery-status report we can read, or an
    # answer to a dead address would bounce back and be answered again.
    automatic = parsed.is_auto_reply or null_sender
    flags: list[str] = []
    if automatic:
        flags.append("auto_reply")
    if not on_file or (parsed.from_address or "").lower() != on_file.lower():
        flags.append("sender_mismatch")
    if parsed.attachments_dropped:
        flags.append(f"attachments_dropped:{parsed.attachments_dropped}")
    text = (parsed.reply_text or parsed.text or "").strip()[:MAX_TEXT] or "(no text)"
    sensitive = [] if automatic else find_sensitive(text, policy.sensitive_terms)
    if sensitive and not thread_secure:
        flags.append("classified_sensitive")
    decision = decide_inbound(policy, thread_secure=thread_secure, sensitive=bool(sensitive))
    # An auto-reply ("Out of office. Stop by room 4...") speaks for nobody: it never opts out.
    opt_out = not automatic and is_email_opt_out(parsed.reply_text or parsed.text or "")
    return Reply(text=text, secure=decision.secure, secure_source=decision.source, flags=flags, auto_reply=automatic,
                 provider_id=_bare(parsed.message_id) or None,
                 in_reply_to=f"<{_bare(parsed.message_id)}>" if parsed.message_id else None, opt_out=opt_out)


def _received(reply: Reply, message_id: str, thread_id: str, contact_id: str, attachments: int) -> Pending:
    """The "message.received" audit entry of a reply."""
    return Pending("message.received", Actor("client", contact_id), ids={
        "thread_id": thread_id, "message_id": message_id, "contact_id": contact_id},
        detail={"channel": "email", "secure": reply.secure, "auto_reply": reply.auto_reply,
                "sender_mismatch": "sender_mismatch" in reply.flags, "attachments": attachments})


class EmailReplyHandler:
    def __init__(self, events: EventIntake, orgs: Orgs, contacts: Contacts, conversations: Conversations,
                 reply_tokens: ReplyTokens, audit: AuditLog, delivery: Delivery, files: IncomingFiles,
                 context: ReplyContext) -> None:
        self._events = events
        self._orgs = orgs
        self._contacts = contacts
        self._conversations = conversations
        self._reply_tokens = reply_tokens
        self._audit = audit
        self._delivery = delivery
        self._files = files
        self._context = context

    async def __call__(self, event: Doc) -> str:
        eid = event["_id"]
        payload = await self._events.open_payload(event)
        scope = await self._reply_tokens.by_hash(payload["token_hash"])
        if scope is None or scope["org_id"] != event["org_id"]:
            return "unroutable"
        org = await self._orgs.get(scope["org_id"])
        contact, fields = await self._contacts.get_revealed(org.id, scope["contact_id"], ("email",))
        parsed = await self._parse(event)
        if parsed.is_bounce:
            return await self._bounce(org.id, contact.id, parsed)
        on_file = fields["email"]
        thread = await self._conversations.get_thread(org.id, scope["thread_id"])
        reply = _assess(parsed, on_file, bool(thread.get("secure")), org.policy,
                        null_sender=_null_sender(payload))
        # Before the message (idempotent upserts): a crash in between must not leave a message
        # whose attachments are never stored, as a re-run sees the message already there.
        await self._files.seal(org_id=org.id, dek_id=contact.dek_id, message_id=eid,
                               thread_id=thread["_id"], contact_id=contact.id, files=[
                                   IncomingFile(a.filename or "", a.content_type, a.data, n)
                                   for n, a in enumerate(parsed.attachments)])
        message, thread, new = await self._conversations.record_inbound(
            org, contact, message_id=eid, channel="email", body=reply.text, provider_id=reply.provider_id,
            secure=reply.secure, flags=reply.flags, thread=thread, files=len(parsed.attachments),
            secure_source=reply.secure_source,
        )
        if new or await self._audit.without(org.id, "message.received", [eid]):
            # (Stored by an earlier run that stopped before its audit entry: append it now.)
            await self._audit.append_many(org.id, [_received(reply, eid, thread["_id"], contact.id,
                                                             len(parsed.attachments))])
        if reply.opt_out:
            await self._opt_out(org.id, contact.id, event)
        if reply.answer:
            contact = await self._contacts.get(org.id, contact.id)
            await self._conversations.send_link_notice(
                org, contact, thread["_id"], channel="email", template="inbound_ack",
                job_id=f"{eid}:ack", message_id=eid, in_reply_to=reply.in_reply_to,
            )
        return "done"

    async def _opt_out(self, org_id: str, contact_id: str, event: Doc) -> None:
        """Opt the contact out of email, as of the reply's arrival (gateway/messaging/contacts.py record_consent).

        No confirmation mail: the client asked for no more mail, the reply itself stands in the
        conversation for staff, and RFC 8058 and CAN-SPAM ask for nothing further from the person
        unsubscribing (a confirmation is allowed, not expected). SMS STOP is not answered either.
        """
        if await self._contacts.set_consent(org_id, contact_id, "email", OPTED_OUT, "email:reply",
                                            at=event.get("received_at"), event_id=event["_id"]):
            await self._audit.append(org_id, "consent.opt_out", Actor("client", contact_id), contact_id=contact_id,
                                     detail={"channel": "email", "source": "reply"})

    async def _parse(self, event: Doc) -> ParsedMail:
        return parse_message(await self._events.open_raw(event), max_attachments=MAX_ATTACHMENTS,
                             max_attachment_bytes=MAX_ATTACHMENT_BYTES)

    # -- many at once -------------------------------------------------------------------------
    async def batch(self, events: list[Doc]) -> tuple[list[object], list[Doc]]:
        """Process the plain replies among `events` in bulk, as __call__ would one by one.

        Returns (ids of events done, events left to the one-by-one path): bounces, mail with
        attachments, and anything unreadable or unroutable go there. Raises on a database error;
        the processor then runs every event of the batch one by one (every step is idempotent).
        """
        rest: list[Doc] = []
        hashes: dict[object, str] = {}
        null_senders: set[object] = set()
        for event in events:
            try:
                payload = await self._events.open_payload(event)
                hashes[event["_id"]] = payload["token_hash"]
            except Exception:  # unreadable: the one-by-one path decides
                rest.append(event)
                continue
            if _null_sender(payload):
                null_senders.add(event["_id"])
        scopes = await self._reply_tokens.by_hashes(list(hashes.values()))
        by_org: dict[str, list[tuple[Doc, Doc]]] = {}
        for event in events:
            scope = scopes.get(hashes.get(event["_id"], ""))
            if scope is None or scope["org_id"] != event.get("org_id"):
                if event["_id"] in hashes:
                    rest.append(event)
                continue
            by_org.setdefault(scope["org_id"], []).append((event, scope))
        done: list[object] = []
        for org_id, items in by_org.items():
            ok, left = await self._bulk(await self._orgs.get(org_id), items, null_senders)
            done += ok
            rest += left
        return done, rest

    async def _bulk(self, org: Org, items: list[tuple[Doc, Doc]], null_senders: set[object]
                    ) -> tuple[list[object], list[Doc]]:
        rest: list[Doc] = []
        contacts = await self._contacts.get_many_revealed(org.id, [s["contact_id"] for _, s in items], ("email",))
        threads = await self._context.threads(org.id, list({s["thread_id"] for _, s in items}))
        # In arrival order, as one-by-one processing would see them: a sensitive reply makes its
        # standard thread secure, and every later reply in that thread is then secure too.
        items = sorted(items, key=lambda x: (x[0].get("received_at") is None, x[0].get("received_at"), x[0]["_id"]))
        secure_now = {tid: bool(t.get("secure")) for tid, t in threads.items()}
        flow: list[tuple[Inbound, Reply]] = []
        held: set[str] = set()  # contacts with an event left to the one-by-one path: so are their later ones
        for event, scope in items:
            found = contacts.get(scope["contact_id"])
            thread = threads.get(scope["thread_id"])
            if found is None or thread is None:
                rest.append(event)
                continue
            parsed = await self._parse(event)
            if scope["contact_id"] in held or parsed.is_bounce or parsed.attachments:
                held.add(scope["contact_id"])
                rest.append(event)
                continue
            contact, on_file = found[0], found[1]["email"]
            reply = _assess(parsed, on_file, secure_now[thread["_id"]], org.policy,
                            null_sender=event["_id"] in null_senders)
            if reply.opt_out:  # a consent change: one by one, in order with the contact's other mail
                held.add(scope["contact_id"])
                rest.append(event)
                continue
            secure_now[thread["_id"]] = reply.secure
            flow.append((Inbound(contact, thread, event["_id"], reply.text, reply.provider_id, reply.secure,
                                 reply.flags, reply.secure_source), reply))
        if not flow:
            return [], rest
        stored = await self._conversations.record_inbound_many(org, [m for m, _ in flow], channel="email")
        new = {m.message_id: n for (m, _), n in zip(flow, stored, strict=True)}
        # Stored by an earlier run that stopped before its audit entry: append it now, once.
        unaudited = await self._audit.without(
            org.id, "message.received", [m.message_id for m, _ in flow if not new[m.message_id]])
        issued: dict[str, Pending] = {}
        wanted = [(m, r) for m, r in flow if r.answer]
        if wanted:  # consent as it is now (as contacts.get would see it)
            fresh = await self._contacts.get_many(org.id, [m.contact.id for m, _ in wanted])
            gone = {m.message_id for m, _ in wanted if m.contact.id not in fresh}
            issued = await self._conversations.issue_link_notices(org, [
                Notice(fresh[m.contact.id], m.thread["_id"], f"{m.message_id}:ack", m.message_id, r.in_reply_to)
                for m, r in wanted if m.message_id not in gone], channel="email", template="inbound_ack")
            if gone:  # erased meanwhile: the one-by-one path handles them as it would have
                rest += [event for event, _ in items if event["_id"] in gone]
                flow = [(m, r) for m, r in flow if m.message_id not in gone]
        entries: list[Pending] = []
        for m, reply in flow:
            if new[m.message_id] or m.message_id in unaudited:
                entries.append(_received(reply, m.message_id, m.thread["_id"], m.contact.id, 0))
            if (ack := issued.get(f"{m.message_id}:ack")) is not None:
                entries.append(ack)
        await self._audit.append_many(org.id, entries)
        return [m.message_id for m, _ in flow], rest

    async def _bounce(self, org_id: str, contact_id: str, parsed: ParsedMail) -> str:
        bounce = parsed.bounce
        original = _bare(bounce.original_message_id) if bounce else ""
        if not original:
            return "bounce_unmatched"
        code = (bounce.status if bounce else None) or "bounce"
        # The mail fails and its thread is marked with the reason (gateway/messaging/delivery.py).
        found = await self._delivery.bounced(org_id, contact_id, original, code)
        return "bounce" if found else "bounce_unmatched"
