"""Roles the domain needs from the outside world, as Protocols (implementations live elsewhere)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SentSms:
    """What a provider said when it accepted an SMS."""

    provider_id: str
    status: str  # the provider's first status, e.g. "queued" or "accepted"


class SmsSender(Protocol):
    """Sends one SMS. Raises ProviderTransient or ProviderPermanent (gateway.errors)."""

    async def send_sms(
        self, *, from_number: str, to_number: str, body: str, status_callback: str | None
    ) -> SentSms: ...

    async def redact_sms(self, provider_id: str) -> None:
        """Remove the body and media of a stored message at the provider (Twilio: update
        body="", delete each Media resource)."""
        ...

    async def fetch_media(self, url: str, *, max_bytes: int) -> Media:
        """Download one media item of an inbound MMS (a MediaUrl the provider's webhook named).
        ProviderPermanent for a URL outside the provider's API or a file over max_bytes."""
        ...


@dataclass(frozen=True, slots=True)
class Media:
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """One mail to send; the sender builds headers from these fields, never from raw strings."""

    from_address: str
    from_name: str
    to_address: str
    subject: str
    text: str
    html: str | None
    message_id: str
    reply_to: str | None
    headers: tuple[tuple[str, str], ...] = ()
    # The envelope sender (MAIL FROM), where relays send bounces; None: from_address.
    return_path: str | None = None


class EmailSender(Protocol):
    """Sends one mail. Raises ProviderTransient or ProviderPermanent (gateway.errors)."""

    async def send_email(self, mail: OutgoingEmail) -> str: ...


class StaffAlerts(Protocol):
    """Tells an org's admins that something needs their review (e.g. break-glass access was used).

    An alert carries ids only (grant, thread, staff member): never content, a reason typed by
    staff, or client data, so every channel it may travel through is safe for it.
    """

    async def alert(self, org_id: str, kind: str, ids: Mapping[str, str], *, severity: str = "high") -> None: ...


class Clock(Protocol):
    """Where the time comes from (injected so tests can freeze it)."""

    def now(self) -> datetime: ...
