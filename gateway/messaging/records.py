"""The shapes of the main stored documents, for mypy: what a thread, a message, a link, an outbox
job and an inbound event hold (gateway/storage/store.py declares their collections and indexes).

Records are plain dicts at run time. The modules that build documents declare them with these
types (gateway/messaging/threads.py, sending.py, inbound_record.py); they hand them to the
driver, and to callers that take any document, through `stored` (a type-level cast, no copy).
Sealed fields (gateway/security/vault.py) are BSON Binary.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NotRequired, TypedDict, cast

from bson import Binary

from gateway.ids import ContactId, MessageId, OrgId, ThreadId
from gateway.storage.store import Doc


class Thread(TypedDict):
    """One per contact and org (threads: unique (org_id, contact_id))."""

    _id: ThreadId
    org_id: OrgId
    contact_id: ContactId
    secure: bool
    status: str  # open | closed
    assignee: str | None  # a staff id, or nobody
    created_at: datetime
    last_activity_at: datetime
    unread_staff: int
    preview: str  # neutral ("New reply", "Message sent"): never content
    channel: str | None  # sms | email: where replies go by default
    pin_hash: NotRequired[str | None]  # the per-message PIN guarding the thread (gateway/rules/pin.py)
    pin_message_id: NotRequired[str | None]
    pin_set_by: NotRequired[str]
    purged_before: NotRequired[str]  # retention's bound (gateway/compliance/retention.py)


class MessageAuthor(TypedDict):
    kind: str  # contact | staff | api | system
    id: str | None


class StatusChange(TypedDict):
    status: str
    at: datetime
    error_code: NotRequired[str | None]


class Message(TypedDict):
    _id: MessageId
    org_id: OrgId
    thread_id: ThreadId
    contact_id: ContactId
    direction: str  # inbound | outbound
    channel: str
    author: MessageAuthor
    secure: bool
    secure_source: str  # gateway.rules.secure.SecureSource
    body: NotRequired[Binary]  # sealed; gone once retention removed it
    preview: str
    status: str  # gateway/messaging/delivery.py
    status_history: list[StatusChange]
    provider_id: str | None
    link_id: str | None
    created_at: datetime
    idempotency_key: str  # "k:<key>", or the placeholder "none:<id>" (unique per org)
    flags: NotRequired[list[str]]  # classifier flags (inbound)
    files: NotRequired[int]  # attachments stored with it (inbound)
    error_code: NotRequired[str | None]
    purged_at: NotRequired[datetime]


class Link(TypedDict):
    """A secure link (gateway/security/links.py): only the token's SHA-256 is stored."""

    _id: str
    org_id: OrgId
    thread_id: ThreadId
    contact_id: ContactId
    message_id: MessageId | None
    token_hash: str
    channel: str
    created_at: datetime
    expires_at: datetime
    opened_at: datetime | None
    revoked_at: datetime | None
    locked_at: datetime | None
    failures: int
    pin_hash: str | None


class OutboxJob(TypedDict):
    """A delivery job (gateway/messaging/outbox.py); tokens in it are sealed."""

    _id: str
    org_id: OrgId
    kind: str  # sms | email | staff_alert
    template: str
    contact_id: ContactId | None
    message_id: MessageId | None
    state: str
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime
    created_at: datetime
    updated_at: datetime
    provider_id: str | None
    last_error: str | None
    mail_key: NotRequired[str]
    link_token: NotRequired[Binary]
    reply_token: NotRequired[Binary]
    link_id: NotRequired[str]
    thread_id: NotRequired[ThreadId]
    in_reply_to: NotRequired[str | None]
    expire_at: NotRequired[datetime]


class InboundEvent(TypedDict):
    """A provider's webhook or mail, stored before it is answered (gateway/storage/intake.py)."""

    _id: str
    provider: str
    provider_id: str
    org_id: OrgId | None
    kind: str
    received_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime
    meta: dict[str, Any]
    payload: NotRequired[Binary]  # sealed; dropped once processed
    error: NotRequired[str | None]
    processed_at: NotRequired[datetime]
    expire_at: NotRequired[datetime]


def stored(record: Thread | Message | Link | OutboxJob | InboundEvent) -> Doc:
    """The record as the driver (and any code that takes a document) sees it: the same dict."""
    return cast(Doc, record)
