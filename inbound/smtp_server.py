"""The SMTP listener for email replies (aiosmtpd), on the gateway's event loop or alone (--role smtp).

Reply codes are the contract (RFC 5321): RCPT accepts only reply+<token>@<reply domain> for a
known token (550 5.1.1 otherwise, so nothing is stored for unknown addresses; the fifth unknown
recipient of a session ends it with 421, against address harvesting); DATA answers 250
only after the sealed raw message is durably stored, 451 4.3.0 when the store is unavailable;
aiosmtpd answers 552 above the size limit; a peer sending too fast gets 451 4.7.0; a conversation
over its daily quota of messages or bytes gets 452 4.2.2 (gateway/storage/mail_quota.py).

Routing is by the reply token first and by In-Reply-To/References second: a token past its
lifetime (never a revoked one) still routes a reply whose In-Reply-To or References names a mail
we sent to that same contact, the way a mail client answers an old notice. Without such a
reference the recipient is refused at DATA (550 5.1.1), and nothing is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Any
from weakref import WeakKeyDictionary

from aiosmtpd.smtp import SMTP, Envelope, Session
from pymongo.errors import PyMongoError

from gateway.errors import StoreUnavailable
from gateway.messaging.phone import mask_email
from gateway.messaging.reply_address import parse_reply_address
from gateway.messaging.reply_context import ReplyContext
from gateway.messaging.reply_tokens import ReplyTokens
from gateway.runtime.config import InboundSmtpConfig
from gateway.security.ratelimit import RateLimiter
from gateway.security.tokens import token_hash
from gateway.storage.intake import EventIntake
from gateway.storage.mail_quota import ThreadMailQuota
from gateway.storage.store import Doc
from gateway.tenancy.orgs import Orgs

logger = logging.getLogger(__name__)


def _no_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


# aiosmtpd logs every line of DATA at DEBUG ("DATA readline: ..."): mail content, which no log
# may hold whatever the configured level. Its INFO lines (commands, peers) carry addresses only,
# which the redacting log handler masks like any other.
logging.getLogger("mail.log").addFilter(_no_debug)

MAX_RECIPIENTS = 10
# Unknown recipients a session may try: the last one is answered 421 and the connection closed
# (a client guessing reply addresses learns nothing more from this session).
MAX_UNKNOWN_RECIPIENTS = 5
# A conversation over its daily quota: 452 4.2.2, "mailbox full" (RFC 3463 X.2.2: over a
# per-mailbox administrative quota), transient (RFC 5321 4.2.5: 4yz, the sender retries) because
# the quota is per day and frees itself: a client's real reply is delivered later, not bounced,
# while a flood is held back. (552 5.2.2 would bounce it for good; 552 stays for a message over
# max_message_bytes, which can never fit.)
OVER_QUOTA = "452 4.2.2 Mailbox over its daily quota, try again later"
MAX_REFERENCES = 50
_MSG_ID = re.compile(r"<[^<>\s]{1,250}>")


class ReplyHandler:
    """aiosmtpd handler: recipients must be live reply addresses; DATA is stored before 250."""

    def __init__(self, config: InboundSmtpConfig, orgs: Orgs, reply_tokens: ReplyTokens, events: EventIntake,
                 quota: ThreadMailQuota, context: ReplyContext) -> None:
        """`quota` is built with config's thread_messages_per_day and thread_bytes_per_day."""
        self._config = config
        self._orgs = orgs
        self._reply_tokens = reply_tokens
        self._events = events
        self._context = context
        self._rate = RateLimiter(config.messages_per_minute_per_peer, 60)
        self._quota = quota
        self._unknown: WeakKeyDictionary[Session, int] = WeakKeyDictionary()  # unknown recipients per session
        # The token documents found at RCPT, for DATA (saves a second lookup per recipient).
        self._scopes: WeakKeyDictionary[Envelope, dict[str, Doc]] = WeakKeyDictionary()

    async def _domains(self, domain: str) -> bool:
        domain = domain.lower()
        if self._config.reply_domain and domain == self._config.reply_domain.lower():
            return True
        return bool(await self._orgs.by_reply_domain(domain))

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        if not self._rate.allow(peer):
            logger.warning("smtp: peer over its rate", extra={"fields": {"peer": peer}})
            return "451 4.7.0 Too many messages, slow down"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        domain = address.rpartition("@")[2]
        token = parse_reply_address(address, domain) if domain else None
        try:
            known = await self._reply_tokens.find_known(token) if token and await self._domains(domain) else None
            over = await self._quota.over([known["thread_id"]]) if known else []
        except PyMongoError:  # the database is down: say so, the sender will retry
            logger.warning("smtp: cannot check recipient, database unavailable")
            return "451 4.3.0 Temporarily unable to check the recipient"
        if not known:
            unknown = self._unknown[session] = self._unknown.get(session, 0) + 1
            logger.info("smtp: unknown recipient refused",
                        extra={"fields": {"rcpt": mask_email(address), "unknown": unknown}})
            if unknown >= MAX_UNKNOWN_RECIPIENTS:
                # Closed once this answer is written (aiosmtpd writes it right after we return).
                if server.transport is not None:
                    asyncio.get_running_loop().call_soon(server.transport.close)
                return "421 4.7.0 Too many unknown recipients, closing connection"
            return "550 5.1.1 No such recipient"
        if over:
            logger.info("smtp: conversation over its daily quota", extra={"fields": {"thread_id": over[0]}})
            return OVER_QUOTA
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        self._scopes.setdefault(envelope, {})[address] = known
        return "250 OK"

    async def _answers_our_mail(self, scope: Doc, headers: Message) -> bool:
        """Does the mail name (In-Reply-To/References) one we sent to the token's contact?"""
        refs = _referenced_ids(headers)
        if not refs:
            return False
        bare = [r.strip("<>") for r in refs]
        return await self._context.sent_to(scope["org_id"], scope["contact_id"], refs + bare)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        headers = BytesHeaderParser(policy=default_policy).parsebytes(raw)
        try:
            message_id = str(headers.get("Message-ID", "") or "").strip()
        except Exception:  # noqa: BLE001 - a malformed header must not lose the mail
            message_id = ""
        message_key = message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
        scopes = self._scopes.pop(envelope, {})
        live: dict[str, tuple[Doc, str]] = {}  # thread id -> (token document, token hash)
        try:
            for rcpt in envelope.rcpt_tos:
                token = parse_reply_address(rcpt, rcpt.rpartition("@")[2])
                assert token is not None  # RCPT accepted only reply addresses
                digest = token_hash(token)
                doc = scopes.get(rcpt) or await self._reply_tokens.by_hash(digest)
                if doc is None or doc.get("revoked_at"):
                    continue
                if not self._reply_tokens.is_live(doc) and not await self._answers_our_mail(doc, headers):
                    logger.info("smtp: expired reply address without a reference to our mail",
                                extra={"fields": {"rcpt": mask_email(rcpt)}})
                    continue
                live.setdefault(doc["thread_id"], (doc, digest))
            # All or nothing: one conversation over its quota defers the whole message (SMTP has
            # one answer to DATA); the others' copies, if stored already, are recognised on retry.
            if live and (over := await self._quota.over(list(live), len(raw))):
                logger.info("smtp: conversation over its daily quota", extra={"fields": {"thread_id": over[0]}})
                return OVER_QUOTA
            for thread_id, (doc, digest) in live.items():
                # Once per (Message-ID, conversation): a resent mail, or one sent to two reply
                # addresses of the same conversation (reply-all), is stored once.
                _, new = await self._events.store_event(
                    provider="smtp", provider_id=f"{message_key}|{thread_id}", org_id=doc["org_id"],
                    kind="email", raw=raw, payload={"mail_from": envelope.mail_from or "", "token_hash": digest},
                    meta={"size": len(raw)}, sender=f"contact:{doc['contact_id']}",
                )
                if new:
                    self._quota.count(thread_id, len(raw))
        except (StoreUnavailable, PyMongoError):
            # Never a 5xx here: aiosmtpd would answer an unhandled error with 500 and the
            # sender would bounce the mail instead of retrying it.
            logger.warning("smtp: message not stored, database unavailable")
            return "451 4.3.0 Temporarily unable to store the message, try again later"
        if not live:
            return "550 5.1.1 No such recipient (the reply address has expired)"
        return "250 2.0.0 Message accepted"


def _referenced_ids(headers: Message) -> list[str]:
    """The Message-IDs named by In-Reply-To and References (newest last; at most MAX_REFERENCES)."""
    found: list[str] = []
    for name in ("References", "In-Reply-To"):
        try:
            value = str(headers.get(name, "") or "")
        except Exception:  # noqa: BLE001 - a malformed header names nothing
            value = ""
        found += _MSG_ID.findall(value)
    return list(dict.fromkeys(found))[-MAX_REFERENCES:]


def make_smtp(handler: ReplyHandler, config: InboundSmtpConfig, hostname: str) -> SMTP:
    """One SMTP protocol instance (aiosmtpd makes one per connection)."""
    tls: ssl.SSLContext | None = None
    if config.tls_cert_file:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs["tls_context"] = tls
        kwargs["require_starttls"] = config.require_starttls
    return SMTP(handler, data_size_limit=config.max_message_bytes, hostname=hostname,
                ident="Hushlink ESMTP", decode_data=False, enable_SMTPUTF8=True, **kwargs)
