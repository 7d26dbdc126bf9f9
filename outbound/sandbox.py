"""Sandbox providers: outbound SMS (and mail) are kept in the database and shown at /sandbox.

They stand in for Twilio when no account is configured, so the quick start shows the whole
loop. Stored texts are sealed like everything else (they may hold a link token).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from gateway.errors import ProviderPermanent
from gateway.ports import Clock, Media, OutgoingEmail, SentSms
from gateway.security.vault import Vault
from gateway.storage.store import Store

StatusHook = Callable[[str, str], Awaitable[None]]


class SandboxSmsSender:
    """Accepts every SMS, stores it for /sandbox, and reports it delivered."""

    def __init__(self, store: Store, vault: Vault, clock: Clock, on_status: StatusHook | None = None) -> None:
        self._store = store
        self._vault = vault
        self._clock = clock
        self.on_status = on_status

    async def send_sms(self, *, from_number: str, to_number: str, body: str, status_callback: str | None) -> SentSms:
        sid = "SM" + secrets.token_hex(16)
        dek = await self._vault.org_key(None)
        await self._store.sandbox_sms.insert_one({
            "_id": sid, "org_id": None, "from": from_number, "created_at": self._clock.now(),
            "to": await self._vault.seal(dek, "-", "sandbox_sms", sid, "to", to_number),
            "body": await self._vault.seal(dek, "-", "sandbox_sms", sid, "body", body),
            "redacted": False,
        })
        return SentSms(provider_id=sid, status="queued")

    async def after_send(self, sid: str) -> None:
        """Report the statuses a real network would (called once the provider id is recorded)."""
        if self.on_status:
            for status in ("sent", "delivered"):
                await self.on_status(sid, status)

    async def redact_sms(self, provider_id: str) -> None:
        await self._store.sandbox_sms.update_one({"_id": provider_id}, {"$set": {"redacted": True},
                                                                           "$unset": {"body": ""}})

    async def fetch_media(self, url: str, *, max_bytes: int) -> Media:
        """The sandbox phone sends text only: no inbound message names media here."""
        raise ProviderPermanent("the sandbox has no media", code="media_url")

    async def record_reply(self, *, from_number: str, to_number: str, body: str) -> None:
        """Keep what the sandbox phone sent, so the page shows both sides."""
        sid = "SMreply" + secrets.token_hex(13)
        dek = await self._vault.org_key(None)
        await self._store.sandbox_sms.insert_one({
            "_id": sid, "org_id": None, "from": to_number, "created_at": self._clock.now(), "mine": True,
            "to": await self._vault.seal(dek, "-", "sandbox_sms", sid, "to", from_number),
            "body": await self._vault.seal(dek, "-", "sandbox_sms", sid, "body", body),
            "redacted": False,
        })

    async def messages(self, limit: int = 200) -> list[dict[str, str | bool]]:
        out: list[dict[str, str | bool]] = []
        async for doc in self._store.sandbox_sms.find({}).sort("created_at", -1).limit(limit):
            out.append({
                "sid": doc["_id"], "from": doc["from"], "mine": bool(doc.get("mine")),
                "to": await self._vault.open("-", "sandbox_sms", doc["_id"], "to", doc["to"]),
                "body": (await self._vault.open("-", "sandbox_sms", doc["_id"], "body", doc["body"])
                         if doc.get("body") else "[removed at the provider]"),
                "at": doc["created_at"].isoformat(timespec="seconds"),
            })
        return out


class SandboxEmailSender:
    """Accepts every mail and keeps it (sealed) for /sandbox."""

    def __init__(self, store: Store, vault: Vault, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._clock = clock

    async def send_email(self, mail: OutgoingEmail) -> str:
        dek = await self._vault.org_key(None)
        mid = "mail-" + secrets.token_hex(12)
        fields = {"to": mail.to_address, "subject": mail.subject, "text": mail.text, "reply_to": mail.reply_to or ""}
        doc = {"_id": mid, "from": mail.from_address, "message_id": mail.message_id, "created_at": self._clock.now()}
        for name, value in fields.items():
            doc[name] = await self._vault.seal(dek, "-", "sandbox_mail", mid, name, value)
        await self._store.sandbox_mail.insert_one(doc)
        return mail.message_id

    async def messages(self, limit: int = 200) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        async for doc in self._store.sandbox_mail.find({}).sort("created_at", -1).limit(limit):
            item = {"from": doc["from"], "at": doc["created_at"].isoformat(timespec="seconds")}
            for name in ("to", "subject", "text", "reply_to"):
                item[name] = await self._vault.open("-", "sandbox_mail", doc["_id"], name, doc[name])
            out.append(item)
        return out
