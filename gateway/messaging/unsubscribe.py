"""One-click email opt-out (RFC 8058, RFC 2369): the token in a mail's List-Unsubscribe URL.

Every mail to a client carries `List-Unsubscribe: <PUBLIC_URL/u/TOKEN>` and `List-Unsubscribe-Post:
List-Unsubscribe=One-Click` (outbound/dispatcher.py). The token is a capability: 256 bits, scoped
to one org, one contact and the email channel, and only its SHA-256 is stored.

It is derived from the mail's reply token (one fresh token per outgoing mail, gateway/messaging/reply_tokens.py)
with HMAC-SHA256 under a fixed label, so it costs no write of its own: its hash is stored with the
reply token's record when the mail is queued, and the token itself is composed at send time from
the reply token the job carries sealed. It is never in an outbox job in the clear. Knowing it
does not reveal the reply token (HMAC is one-way), so a mail provider that follows the link
learns no address that would post into the conversation. It lives as long as the reply token
(400 days) and dies with the contact's erasure (which deletes reply tokens).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from gateway.messaging.contacts import OPTED_OUT, Contacts
from gateway.security.audit import Actor, AuditLog
from gateway.security.tokens import looks_like_token, token_hash
from gateway.storage.store import Doc, Store

_LABEL = b"hushlink list-unsubscribe v1"
SOURCE = "list_unsubscribe"  # the consent source recorded for an opt-out by this link


def unsubscribe_token(reply_token: str) -> str:
    """The one-click unsubscribe token of the mail whose reply token is `reply_token` (43 characters)."""
    mac = hmac.new(reply_token.encode("ascii"), _LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def unsubscribe_hash(reply_token: str) -> str:
    """What is stored to recognise the unsubscribe token: the SHA-256 of the token."""
    return token_hash(unsubscribe_token(reply_token))


class Unsubscribe:
    """Finds the contact an unsubscribe token names and opts it out of email (consent, audited)."""

    def __init__(self, store: Store, contacts: Contacts, audit: AuditLog) -> None:
        self._store = store
        self._contacts = contacts
        self._audit = audit

    async def scope(self, token: str) -> Doc | None:
        """The reply token record (org_id, contact_id) the token belongs to; None if unknown."""
        if not looks_like_token(token):
            return None
        doc = await self._store.reply_tokens.find_one({"unsubscribe_hash": token_hash(token)},
                                                      projection={"org_id": 1, "contact_id": 1})
        return doc

    async def opt_out(self, token: str, ip: str | None = None) -> bool:
        """Opt the token's contact out of email; False if the token is unknown. Repeating it is
        harmless: the consent changes (and is audited) once."""
        scope = await self.scope(token)
        if scope is None:
            return False
        org_id, contact_id = scope["org_id"], scope["contact_id"]
        if await self._contacts.set_consent(org_id, contact_id, "email", OPTED_OUT, SOURCE):
            await self._audit.append(org_id, "consent.opt_out", Actor("client", contact_id), ip=ip,
                                     contact_id=contact_id, detail={"channel": "email", "source": SOURCE})
        return True
