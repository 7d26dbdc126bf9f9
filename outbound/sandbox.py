"""Sandbox providers: outbound SMS (and mail) are kept in the database and shown at /sandbox.

They stand in for Twilio when no account is configured, so the quick start shows the whole
loop. What they send is kept, sealed, by gateway/messaging/sandbox_box.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from gateway.errors import ProviderPermanent
from gateway.messaging.sandbox_box import SandboxBox
from gateway.ports import Media, OutgoingEmail, SentSms

StatusHook = Callable[[str, str], Awaitable[None]]


class SandboxSmsSender:
    """Accepts every SMS, keeps it for /sandbox, and reports it delivered."""

    def __init__(self, box: SandboxBox, on_status: StatusHook | None = None) -> None:
        self._box = box
        self.on_status = on_status

    async def send_sms(self, *, from_number: str, to_number: str, body: str, status_callback: str | None) -> SentSms:
        sid = "SM" + secrets.token_hex(16)
        await self._box.keep_sms(sid, from_number=from_number, to_number=to_number, body=body)
        return SentSms(provider_id=sid, status="queued")

    async def after_send(self, sid: str) -> None:
        """Report the statuses a real network would (called once the provider id is recorded)."""
        if self.on_status:
            for status in ("sent", "delivered"):
                await self.on_status(sid, status)

    async def redact_sms(self, provider_id: str) -> None:
        await self._box.redact_sms(provider_id)

    async def fetch_media(self, url: str, *, max_bytes: int) -> Media:
        """The sandbox phone sends text only: no inbound message names media here."""
        raise ProviderPermanent("the sandbox has no media", code="media_url")

    async def record_reply(self, *, from_number: str, to_number: str, body: str) -> None:
        """Keep what the sandbox phone sent, so the page shows both sides."""
        sid = "SMreply" + secrets.token_hex(13)
        await self._box.keep_sms(sid, from_number=to_number, to_number=from_number, body=body, mine=True)

    async def messages(self, limit: int = 200) -> list[dict[str, str | bool]]:
        return await self._box.texts(limit)


class SandboxEmailSender:
    """Accepts every mail and keeps it (sealed) for /sandbox."""

    def __init__(self, box: SandboxBox) -> None:
        self._box = box

    async def send_email(self, mail: OutgoingEmail) -> str:
        await self._box.keep_mail("mail-" + secrets.token_hex(12), from_address=mail.from_address,
                                  message_id=mail.message_id,
                                  fields={"to": mail.to_address, "subject": mail.subject, "text": mail.text,
                                          "reply_to": mail.reply_to or ""})
        return mail.message_id

    async def messages(self, limit: int = 200) -> list[dict[str, str]]:
        return await self._box.mails(limit)
