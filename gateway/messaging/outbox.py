"""The outbox, domain side: jobs written together with the messages they deliver.

A job names what to send (template, message, contact) but carries no content, address or token
in the clear: the dispatcher (outbound/) resolves the address and composes the text at send
time; a link token the text needs is sealed into the job and removed once sent.

A job that finished (sent, failed, dead) gets `expire_at` from the dispatcher and is removed
[outbox] keep_done_days later by a TTL index (gateway/storage/store.py); a pending job never expires.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from gateway.ids import new_id
from gateway.ports import Clock
from gateway.security.vault import Vault
from gateway.storage.store import Doc, Store

PENDING, SENT, FAILED, DEAD = "pending", "sent", "failed", "dead"


class Outbox:
    def __init__(self, store: Store, vault: Vault, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._clock = clock
        # Called with a job id once the job is stored (committed): the local dispatcher's fast path.
        self.listeners: list[Callable[[str], None]] = []

    def announce(self, job_id: str) -> None:
        """Tell the local dispatcher a job is due. Where its loops do not run (`--role web`) this
        keeps nothing: the job waits in the database for the sweep of a worker process
        (gateway/storage/leases.py)."""
        for listener in self.listeners:
            listener(job_id)

    async def job(
        self,
        *,
        kind: str,
        org_id: str,
        template: str,
        contact_id: str | None,
        dek_id: str | None = None,
        message_id: str | None = None,
        link_token: str | None = None,
        reply_token: str | None = None,
        job_id: str | None = None,
        **extra: Any,
    ) -> Doc:
        """Build a pending job document (not yet stored)."""
        now = self._clock.now()
        doc: Doc = {
            "_id": job_id or new_id(), "org_id": org_id, "kind": kind, "template": template,
            "contact_id": contact_id, "message_id": message_id, "state": PENDING, "attempts": 0,
            "next_attempt_at": now, "lease_until": now, "created_at": now, "updated_at": now,
            "provider_id": None, "last_error": None, **extra,
        }
        if kind in ("email", "staff_alert"):
            # A mail's Message-ID is fixed before its first attempt (a retry is the same mail): its
            # random part is chosen here, the dispatcher adds the sender's domain (saves a write).
            doc["mail_key"] = secrets.token_hex(16)
        for name, value in (("link_token", link_token), ("reply_token", reply_token)):
            if value is not None:
                assert dek_id is not None, "tokens are sealed with the contact's data key"
                doc[name] = await self._vault.seal(dek_id, org_id, "outbox", doc["_id"], name, value)
        return doc

    async def insert(self, doc: Doc, session: AsyncClientSession | None = None) -> None:
        """Store a job. Outside a transaction it is announced at once; inside, the caller announces
        it after the commit."""
        await self._store.outbox.insert_one(doc, session=session)
        if session is None:
            self.announce(doc["_id"])
