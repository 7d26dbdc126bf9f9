"""Sending: an outbound message with its delivery job (and link, when secure), a staff reply on the
right channel, and the thread's per-message PIN."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError, OperationFailure

from gateway.errors import Conflict, OptedOut, PinRequired, ValidationError
from gateway.ids import ContactId, MessageId, OrgId, ThreadId, new_id
from gateway.messaging.contacts import Contact, Contacts
from gateway.messaging.outbox import Outbox
from gateway.messaging.records import Message, stored
from gateway.messaging.reply_tokens import ReplyTokens
from gateway.messaging.threads import CHANNELS, NEUTRAL_PREVIEW, Threads
from gateway.ports import Clock
from gateway.rules.may_send import SendPermission, may_send
from gateway.rules.pin import PinDecision, pin_for_link
from gateway.rules.reply_route import reply_route
from gateway.rules.secure import check_standard_content, decide_outbound
from gateway.security.audit import Actor, AuditLog
from gateway.security.links import Links
from gateway.security.pins import hash_secret, validate_pin
from gateway.security.vault import Vault
from gateway.storage.store import Doc, Store
from gateway.tenancy.orgs import Org

MAX_BODY = 5000
TXN_ATTEMPTS = 8  # transient transaction errors (write conflicts) before giving up


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


def reply_token_for(reply_tokens: ReplyTokens, org_id: str, thread_id: str, contact_id: str,
                    channel: str) -> tuple[Doc | None, str | None]:
    """A fresh reply address token for an outgoing mail (none for SMS): (its document, the token)."""
    if channel != "email":
        return None, None
    return reply_tokens.new(org_id=org_id, thread_id=thread_id, contact_id=contact_id)


class Sender:
    def __init__(
        self, store: Store, vault: Vault, contacts: Contacts, threads: Threads, links: Links, outbox: Outbox,
        reply_tokens: ReplyTokens, audit: AuditLog, clock: Clock,
    ) -> None:
        self._store = store
        self._vault = vault
        self._contacts = contacts
        self._threads = threads
        self._links = links
        self._outbox = outbox
        self._reply_tokens = reply_tokens
        self._audit = audit
        self._clock = clock

    async def _by_idempotency_key(self, org_id: str, key: str) -> Doc | None:
        return await self._store.messages.find_one({"org_id": org_id, "idempotency_key": "k:" + key})

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
            previous = await self._by_idempotency_key(org.id, idempotency_key)
            if previous is not None:
                thread = await self._threads.get_thread(org.id, previous["thread_id"])
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
        found = await self._threads.of_contact(org.id, contact.id)
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
        thread = found if found is not None else await self._threads.thread_for(org.id, contact.id, channel)
        now = self._clock.now()
        mid = MessageId(new_id())
        message: Message = {
            "_id": mid, "org_id": OrgId(org.id), "thread_id": ThreadId(thread["_id"]),
            "contact_id": ContactId(contact.id),
            "direction": "outbound", "channel": channel, "author": {"kind": actor.kind, "id": actor.id},
            "secure": is_secure, "secure_source": decision.source,
            "body": await self._vault.seal(contact.dek_id, org.id, "messages", mid, "body", text),
            "preview": NEUTRAL_PREVIEW["outbound"], "status": "queued",
            "status_history": [{"status": "queued", "at": now}], "provider_id": None,
            "link_id": None, "created_at": now,
            # Unique per org; a placeholder when absent (gateway/storage/store.py: no partial indexes).
            "idempotency_key": "k:" + idempotency_key if idempotency_key is not None else "none:" + mid,
        }
        link_doc, token = None, None
        if pin_rule is not None:
            link_doc, token = self._links.new(
                org_id=org.id, thread_id=thread["_id"], contact_id=contact.id, message_id=mid,
                ttl_seconds=org.policy.link_ttl_seconds, channel=channel, pin_hash=pin_rule.link_pin_hash,
            )
            message["link_id"] = link_doc["_id"]
        reply_doc, reply_token = reply_token_for(self._reply_tokens, org.id, thread["_id"], contact.id, channel)
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
                    await self._store.messages.insert_one(stored(message), session=session)
                    if link_doc is not None:
                        await self._links.insert(link_doc, session=session)
                    if reply_doc is not None:
                        await self._reply_tokens.insert(reply_doc, session=session)
                    await self._outbox.insert(job, session=session)
                    await self._threads.update(thread["_id"], thread_update, session=session)
            except DuplicateKeyError:
                if idempotency_key is None:
                    raise
                previous = await self._by_idempotency_key(org.id, idempotency_key)
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
        return Sent(stored(message), thread, message["link_id"])

    async def reply_staff(
        self, org: Org, thread_id: str, *, body: str, actor: Actor, secure: bool | None = None,
        allow_sensitive: bool = False,
    ) -> Sent:
        """A staff reply, on the channel gateway/rules/reply_route.py picks; a secure thread stays
        secure (gateway/rules/secure.py: sealed body, link-only notice to the client)."""
        thread = await self._threads.get_thread(org.id, thread_id)
        contact = await self._contacts.get(org.id, thread["contact_id"])
        route = reply_route(contact, thread_channel=thread.get("channel"))
        return await self.send(org, channel=route.channel, body=body, actor=actor, contact=contact,
                               secure=secure, allow_sensitive=allow_sensitive)


class ThreadPins:
    """The per-message PIN a thread carries (gateway/rules/pin.py): which one is in force, and
    replacing or removing it."""

    def __init__(self, store: Store, threads: Threads) -> None:
        self._store = store
        self._threads = threads

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
        await self._threads.update_org_thread(org_id, thread_id, update)
        # Only per-message PINs are written on links (gateway/rules/pin.py), so every PIN-carrying
        # link of the thread carries the one being replaced.
        await self._store.links.update_many({"org_id": org_id, "thread_id": thread_id, "pin_hash": {"$ne": None}},
                                            {"$set": {"pin_hash": pin_hash}})
