"""Inbound email replies: parse, strip quoted history, seal into the thread, answer with a link.

The thread comes from the reply token the mail was addressed to (checked at RCPT), never from
the From header: a From that does not match the contact is kept but flagged for staff.
Auto-replies are stored as such and never answered; bounces mark the original message failed.
"""

from __future__ import annotations

import logging

from bson import Binary

from gateway.audit import Actor, AuditLog
from gateway.classifier import find_sensitive
from gateway.contacts import Contacts
from gateway.conversations import Conversations
from gateway.orgs import Orgs
from gateway.ports import Clock
from gateway.reply_tokens import ReplyTokens
from gateway.store import Doc, Store
from gateway.vault import Vault
from inbound.events import InboundEvents
from inbound.mail.parse import ParsedMail, parse_message

logger = logging.getLogger(__name__)

MAX_TEXT = 20_000
MAX_ATTACHMENTS = 10  # per mail; more are dropped and the message flagged
MAX_ATTACHMENT_BYTES = 10_000_000  # per attachment, decoded


def _bare(message_id: str | None) -> str:
    return (message_id or "").strip().strip("<>").strip()


class EmailReplyHandler:
    def __init__(self, store: Store, vault: Vault, events: InboundEvents, orgs: Orgs, contacts: Contacts,
                 conversations: Conversations, reply_tokens: ReplyTokens, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._events = events
        self._orgs = orgs
        self._contacts = contacts
        self._conversations = conversations
        self._reply_tokens = reply_tokens
        self._audit = audit
        self._clock = clock

    async def __call__(self, event: Doc) -> str:
        eid = event["_id"]
        payload = await self._events.open_payload(event)
        scope = await self._reply_tokens.by_hash(payload["token_hash"])
        if scope is None or scope["org_id"] != event["org_id"]:
            return "unroutable"
        org = await self._orgs.get(scope["org_id"])
        contact = await self._contacts.get(org.id, scope["contact_id"])
        parsed = parse_message(await self._events.open_raw(event), max_attachments=MAX_ATTACHMENTS,
                               max_attachment_bytes=MAX_ATTACHMENT_BYTES)
        actor = Actor("client", contact.id)
        if parsed.is_bounce:
            return await self._bounce(org.id, contact.id, parsed)
        flags: list[str] = []
        if parsed.is_auto_reply:
            flags.append("auto_reply")
        on_file = (await self._contacts.reveal(contact))["email"]
        if not on_file or (parsed.from_address or "").lower() != on_file.lower():
            flags.append("sender_mismatch")
        if parsed.attachments_dropped:
            flags.append(f"attachments_dropped:{parsed.attachments_dropped}")
        text = (parsed.reply_text or parsed.text or "").strip()[:MAX_TEXT] or "(no text)"
        thread = await self._conversations.get_thread(org.id, scope["thread_id"])
        sensitive = [] if parsed.is_auto_reply else find_sensitive(text, org.policy.sensitive_terms)
        if sensitive and not thread.get("secure"):
            flags.append("classified_sensitive")
        secure = bool(thread.get("secure")) or bool(sensitive)
        # Before the message (idempotent upserts): a crash in between must not leave a message
        # whose attachments are never stored, as a re-run sees the message already there.
        await self._store_attachments(org.id, contact.dek_id, eid, thread["_id"], contact.id, parsed)
        message, thread, new = await self._conversations.record_inbound(
            org, contact, message_id=eid, channel="email", body=text, provider_id=_bare(parsed.message_id) or None,
            secure=secure, flags=flags, thread=thread,
        )
        if new:
            await self._audit.append(org.id, "message.received", actor, thread_id=thread["_id"], message_id=eid,
                                     contact_id=contact.id,
                                     detail={"channel": "email", "secure": secure, "auto_reply": parsed.is_auto_reply,
                                             "sender_mismatch": "sender_mismatch" in flags,
                                             "attachments": len(parsed.attachments)})
        if secure and not parsed.is_auto_reply:
            contact = await self._contacts.get(org.id, contact.id)
            in_reply_to = f"<{_bare(parsed.message_id)}>" if parsed.message_id else None
            await self._conversations.send_link_notice(
                org, contact, thread["_id"], channel="email", template="inbound_ack",
                job_id=f"{eid}:ack", message_id=eid, in_reply_to=in_reply_to,
            )
        return "done"

    async def _store_attachments(self, org_id: str, dek_id: str, message_id: str, thread_id: str, contact_id: str,
                                 parsed: ParsedMail) -> None:
        for n, att in enumerate(parsed.attachments):
            aid = f"{message_id}:{n}"
            await self._store.attachments.update_one({"_id": aid}, {"$setOnInsert": {
                "_id": aid, "org_id": org_id, "message_id": message_id, "thread_id": thread_id,
                "contact_id": contact_id, "size": len(att.data),
                "content_type": att.content_type,
                "filename": await self._vault.seal(dek_id, org_id, "attachments", aid, "filename", att.filename or ""),
                "data": Binary(await self._vault.seal(dek_id, org_id, "attachments", aid, "data", att.data)),
            }}, upsert=True)

    async def _bounce(self, org_id: str, contact_id: str, parsed: ParsedMail) -> str:
        bounce = parsed.bounce
        original = _bare(bounce.original_message_id) if bounce else ""
        if not original:
            return "bounce_unmatched"
        # Scoped to the contact the reply address belongs to, like any reply: a report on one
        # contact's address cannot fail a message sent to someone else.
        message = await self._store.messages.find_one(
            {"org_id": org_id, "contact_id": contact_id, "email_message_id": {"$in": [original, f"<{original}>"]}}
        )
        if message is None:
            return "bounce_unmatched"
        code = (bounce.status if bounce else None) or "bounce"
        await self._conversations.apply_status(message["_id"], "failed", self._clock.now(), code)
        await self._audit.append(org_id, "message.bounced", Actor("provider", "smtp"), message_id=message["_id"],
                                 thread_id=message["thread_id"], outcome="failed", detail={"status": code})
        return "bounce"
