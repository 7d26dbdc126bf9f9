"""Recording inbound messages (SMS, mail, replies typed in the secure portal): once each, sealed,
with the thread's activity and the contact's channel; one at a time or a batch in O(1) writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pymongo.errors import DuplicateKeyError

from gateway.ids import ContactId, MessageId, OrgId, ThreadId
from gateway.messaging.contacts import Contact, Contacts
from gateway.messaging.records import Message, stored
from gateway.messaging.threads import CHANNELS, NEUTRAL_PREVIEW, Threads, inbound_activity
from gateway.ports import Clock
from gateway.rules.secure import SecureSource
from gateway.security.vault import Vault
from gateway.storage.store import Doc, Store, insert_new
from gateway.tenancy.orgs import Org


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


class InboundRecorder:
    def __init__(self, store: Store, vault: Vault, contacts: Contacts, threads: Threads, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._contacts = contacts
        self._threads = threads
        self._clock = clock

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
            thread = await self._threads.thread_for(org.id, contact.id, channel)
        now = self._clock.now()
        message = stored(await self._inbound_doc(
            org, contact, thread, now, message_id=message_id, channel=channel, body=body, provider_id=provider_id,
            secure=secure, flags=flags, author_kind=author_kind, files=files, secure_source=secure_source))
        try:
            await self._store.messages.insert_one(message)
        except DuplicateKeyError:
            existing = await self._store.messages.find_one({"_id": message_id})
            assert existing is not None
            return existing, thread, False
        update = inbound_activity(now, count=1, secure=secure, channel=channel)
        await self._threads.update(thread["_id"], update)
        thread = {**thread, **update["$set"], "unread_staff": int(thread.get("unread_staff", 0)) + 1}
        if channel in CHANNELS:
            await self._contacts.touch_channel(contact, channel)
        return message, thread, True

    async def record_inbound_many(self, org: Org, items: list[Inbound], *, channel: str) -> list[bool]:
        """record_inbound for several messages of one org, in O(1) writes.

        One insert for the messages (a duplicate id is a message stored by an earlier run: not
        new, and like record_inbound it then touches nothing else), one update per distinct
        (count, secure) group of threads, one for the contacts' channel. Returns `new` per item.
        """
        if not items:
            return []
        now = self._clock.now()
        messages = [stored(await self._inbound_doc(org, it.contact, it.thread, now, message_id=it.message_id,
                                                   channel=channel, body=it.body, provider_id=it.provider_id,
                                                   secure=it.secure, flags=it.flags, author_kind="contact",
                                                   secure_source=it.secure_source))
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
            await self._threads.update_many(thread_ids, inbound_activity(now, count=n, secure=bool(secure),
                                                                         channel=channel))
        if channel in CHANNELS:
            await self._contacts.touch_channels([it.contact for it, n in zip(items, new, strict=True) if n], channel)
        return new

    async def _inbound_doc(
        self, org: Org, contact: Contact, thread: Doc, now: datetime, *, message_id: str, channel: str, body: str,
        provider_id: str | None, secure: bool, flags: list[str] | None, author_kind: str, files: int = 0,
        secure_source: SecureSource | None = None,
    ) -> Message:
        return {
            "_id": MessageId(message_id), "org_id": OrgId(org.id), "thread_id": ThreadId(thread["_id"]),
            "contact_id": ContactId(contact.id),
            "direction": "inbound", "channel": channel, "author": {"kind": author_kind, "id": contact.id},
            "secure": secure, "secure_source": secure_source or "thread",
            "body": await self._vault.seal(contact.dek_id, org.id, "messages", message_id, "body", body),
            "preview": NEUTRAL_PREVIEW["inbound"], "status": "received",
            "status_history": [{"status": "received", "at": now}], "provider_id": provider_id,
            "link_id": None, "created_at": now, "flags": flags or [], "idempotency_key": "none:" + message_id,
            # How many attachments were stored with it: pages look attachments up only where there are some.
            "files": files,
        }
