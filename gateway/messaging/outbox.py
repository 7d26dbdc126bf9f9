"""The outbox, domain side: jobs written together with the messages they deliver.

A job names what to send (template, message, contact) but carries no content, address or token
in the clear: the dispatcher (outbound/) resolves the address and composes the text at send
time; a link token the text needs is sealed into the job and removed once sent.

A job that finished (sent, failed, dead) gets `expire_at` from the dispatcher and is removed
[outbox] keep_done_days later by a TTL index (gateway/storage/store.py); a pending job never expires.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession

from gateway.ids import new_id
from gateway.ports import Clock
from gateway.security.vault import Vault
from gateway.storage.leases import LeaseWorker
from gateway.storage.store import Doc, Store, insert_new

PENDING, SENT, FAILED, DEAD = "pending", "sent", "failed", "dead"
TRACKED_KINDS = ("sms", "email")  # jobs that deliver a message (its provider id is recorded on it)


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

    async def insert_new(self, docs: list[Doc]) -> None:
        """Store jobs with one write, skipping those stored already (same id: queued by an earlier
        run of the same work); each newly stored job is announced."""
        for job, new in zip(docs, await insert_new(self._store.outbox, docs), strict=True):
            if new:
                self.announce(job["_id"])

    # -- the dispatcher's side (outbound/dispatcher.py): leases and job state transitions -------

    def lease_worker(self, *, owner: str, lease_seconds: float, poll_seconds: float, name: str,
                     handle_batch: Callable[[list[Doc]], Awaitable[None]],
                     before_work: Callable[[], Awaitable[None]] | None = None) -> LeaseWorker:
        """The lease worker that hands due jobs to a dispatcher (gateway/storage/leases.py); a job
        claimed alone is handed over as a batch of one."""
        async def one(job: Doc) -> None:
            await handle_batch([job])

        return LeaseWorker(self._store.outbox, self._clock, owner=owner, lease_seconds=lease_seconds,
                           poll_seconds=poll_seconds, handle=one, name=name, handle_batch=handle_batch,
                           before_work=before_work)

    async def open_token(self, job: Doc, name: str) -> str:
        """A token sealed into the job (`link_token`, `reply_token`), opened for composing its text."""
        return await self._vault.open(job["org_id"], "outbox", job["_id"], name, job[name])

    async def fix_message_ids(self, message_ids: dict[str, str]) -> None:
        """Record each job's Message-ID before its first attempt (a retry is then the same mail):
        one write however many."""
        if message_ids:
            await self._store.outbox.bulk_write([
                UpdateOne({"_id": job_id}, {"$set": {"email_message_id": mid}})
                for job_id, mid in message_ids.items()], ordered=False)

    async def mark_sent(self, sent: list[tuple[Doc, str]], expire_at: datetime) -> None:
        """Jobs the provider accepted, with its id: the job is sent (its tokens removed) and the
        message it delivers learns the provider id (and a mail its Message-ID, which bounces name).
        At most two writes however many."""
        if not sent:
            return
        now = self._clock.now()
        await self._store.outbox.bulk_write([UpdateOne(
            {"_id": job["_id"]},
            {"$set": {"state": SENT, "provider_id": provider_id, "sent_at": now, "updated_at": now,
                      "last_error": None, "expire_at": expire_at},
             "$unset": {"link_token": "", "reply_token": ""}},
        ) for job, provider_id in sent], ordered=False)
        tracked = [(job, pid) for job, pid in sent if job.get("message_id") and job["kind"] in TRACKED_KINDS]
        if tracked:
            await self._store.messages.bulk_write([UpdateOne({"_id": job["message_id"]}, {"$set": {
                "provider_id": pid,
                **({"email_message_id": pid} if job["kind"] == "email" else {}),
            }}) for job, pid in tracked], ordered=False)

    async def retry_at(self, job_id: str, at: datetime, error: dict[str, Any]) -> None:
        """A transient failure: the job is due again at `at`, its lease ends now."""
        now = self._clock.now()
        await self._store.outbox.update_one(
            {"_id": job_id},
            {"$set": {"next_attempt_at": at, "lease_until": now, "updated_at": now, "last_error": error}})

    async def finish_failed(self, job_id: str, state: str, error: dict[str, Any], expire_at: datetime) -> None:
        """The job will not be sent (FAILED, or DEAD after its attempts): its tokens go with it."""
        now = self._clock.now()
        await self._store.outbox.update_one(
            {"_id": job_id},
            {"$set": {"state": state, "updated_at": now, "lease_until": now, "expire_at": expire_at,
                      "last_error": error},
             "$unset": {"link_token": "", "reply_token": ""}})
