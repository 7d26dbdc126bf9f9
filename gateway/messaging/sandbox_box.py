"""The sandbox's mailbox: what the sandbox providers "sent" (and what the sandbox phone answered),
kept sealed for the /sandbox page (outbound/sandbox.py, portal/sandbox.py).

Stored texts are sealed like everything else (they may hold a link token), under the
instance-wide data key (org "-"): the sandbox is not an org's data.
"""

from __future__ import annotations

from datetime import datetime

from gateway.ports import Clock
from gateway.security.vault import Vault
from gateway.storage.store import Store

MAIL_FIELDS = ("to", "subject", "text", "reply_to")


class SandboxBox:
    def __init__(self, store: Store, vault: Vault, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._clock = clock

    async def keep_sms(self, sid: str, *, from_number: str, to_number: str, body: str, mine: bool = False) -> None:
        """Keep one text: sent by the gateway, or by the sandbox phone (`mine`)."""
        dek = await self._vault.org_key(None)
        doc = {
            "_id": sid, "org_id": None, "from": from_number, "created_at": self._clock.now(),
            "to": await self._vault.seal(dek, "-", "sandbox_sms", sid, "to", to_number),
            "body": await self._vault.seal(dek, "-", "sandbox_sms", sid, "body", body),
            "redacted": False,
        }
        if mine:
            doc["mine"] = True
        await self._store.sandbox_sms.insert_one(doc)

    async def redact_sms(self, sid: str) -> None:
        """Remove a text's body, as a provider does on redaction."""
        await self._store.sandbox_sms.update_one({"_id": sid}, {"$set": {"redacted": True}, "$unset": {"body": ""}})

    async def texts(self, limit: int = 200) -> list[dict[str, str | bool]]:
        """The newest texts first, opened."""
        out: list[dict[str, str | bool]] = []
        async for doc in self._store.sandbox_sms.find({}).sort("created_at", -1).limit(limit):
            out.append({
                "sid": doc["_id"], "from": doc["from"], "mine": bool(doc.get("mine")),
                "to": await self._vault.open("-", "sandbox_sms", doc["_id"], "to", doc["to"]),
                "body": (await self._vault.open("-", "sandbox_sms", doc["_id"], "body", doc["body"])
                         if doc.get("body") else "[removed at the provider]"),
                "at": _at(doc["created_at"]),
            })
        return out

    async def keep_mail(self, mail_id: str, *, from_address: str, message_id: str, fields: dict[str, str]) -> None:
        """Keep one mail; `fields` (MAIL_FIELDS) are sealed."""
        dek = await self._vault.org_key(None)
        doc = {"_id": mail_id, "from": from_address, "message_id": message_id, "created_at": self._clock.now()}
        for name in MAIL_FIELDS:
            doc[name] = await self._vault.seal(dek, "-", "sandbox_mail", mail_id, name, fields[name])
        await self._store.sandbox_mail.insert_one(doc)

    async def mails(self, limit: int = 200) -> list[dict[str, str]]:
        """The newest mails first, opened."""
        out: list[dict[str, str]] = []
        async for doc in self._store.sandbox_mail.find({}).sort("created_at", -1).limit(limit):
            item = {"from": doc["from"], "at": _at(doc["created_at"])}
            for name in MAIL_FIELDS:
                item[name] = await self._vault.open("-", "sandbox_mail", doc["_id"], name, doc[name])
            out.append(item)
        return out


def _at(when: datetime) -> str:
    return when.isoformat(timespec="seconds")
