"""MongoDB access: one client, the collections, the one place where indexes are declared."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, WriteConcern
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

logger = logging.getLogger(__name__)

Doc = dict[str, Any]

# Key patterns of indexes that queries rely on. Don't hint() them on hot paths: SecantusDB answers a
# hinted query by walking the WHOLE index (every org's entries), where the unhinted query reads
# only the range its equality prefix and range bounds select.
AUDIT_BY_MESSAGE = [("org_id", ASCENDING), ("message_id", ASCENDING), ("seq", ASCENDING)]
CONTACTS_BY_ID = [("org_id", ASCENDING), ("_id", DESCENDING)]

# Every index, declared once. Created idempotently at start-up (create_indexes is a no-op for
# an index that already exists with the same spec).
#
# No partial or sparse indexes on hot paths: SecantusDB (the embedded and test server) does not
# plan equality lookups onto them and scans instead. Unique fields that may be "absent" hold a
# per-document placeholder ("none:<id>") so a plain unique index works on every server.
INDEXES: dict[str, list[IndexModel]] = {
    "orgs": [
        IndexModel([("sms_numbers", ASCENDING)], unique=True,
                   partialFilterExpression={"sms_numbers": {"$type": "string"}}),
        # A Messaging Service belongs to one org too (inbound routing finds the org by it).
        IndexModel([("messaging_service_sids", ASCENDING)], unique=True,
                   partialFilterExpression={"messaging_service_sids": {"$type": "string"}}),
        IndexModel([("reply_domain", ASCENDING)]),
    ],
    "staff": [
        IndexModel([("email_norm", ASCENDING)], unique=True),
        IndexModel([("org_id", ASCENDING)]),
    ],
    "sessions": [
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0),
        IndexModel([("user_id", ASCENDING)]),
        IndexModel([("link_id", ASCENDING)]),  # revoking a link ends the client sessions it opened
    ],
    "api_keys": [
        IndexModel([("key_hash", ASCENDING)], unique=True),
        IndexModel([("org_id", ASCENDING), ("_id", DESCENDING)]),  # staff portal: settings list
    ],
    "contacts": [
        IndexModel([("org_id", ASCENDING), ("phone_bidx", ASCENDING)], unique=True),
        IndexModel([("org_id", ASCENDING), ("email_bidx", ASCENDING)], unique=True),
        IndexModel(CONTACTS_BY_ID),  # staff portal: contact list
    ],
    "threads": [
        IndexModel([("org_id", ASCENDING), ("contact_id", ASCENDING)], unique=True),
        # Staff inbox: windows of last_activity_at (gateway/storage/recent.py), all threads / one assignee's.
        # The time field is the LAST key field on purpose: SecantusDB drops the rows equal to an
        # inclusive range bound when more key fields follow it.
        IndexModel([("org_id", ASCENDING), ("last_activity_at", DESCENDING)]),
        IndexModel([("org_id", ASCENDING), ("assignee", ASCENDING), ("last_activity_at", DESCENDING)]),
        IndexModel([("org_id", ASCENDING), ("unread_staff", ASCENDING)]),  # staff inbox: unread count
    ],
    "messages": [
        IndexModel([("org_id", ASCENDING), ("thread_id", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("provider_id", ASCENDING)]),
        IndexModel([("org_id", ASCENDING), ("idempotency_key", ASCENDING)], unique=True),
        IndexModel([("email_message_id", ASCENDING)]),
    ],
    "links": [
        IndexModel([("token_hash", ASCENDING)], unique=True),
        # A thread's links, and its newest ones by _id windows (staff thread page).
        IndexModel([("org_id", ASCENDING), ("thread_id", ASCENDING), ("_id", ASCENDING)]),
    ],
    # Finished jobs and processed events carry `expire_at` ([outbox] keep_done_days) and are removed
    # then (TTL); pending ones have none and stay. The window must exceed every provider's retry
    # horizon (Twilio: hours): the unique provider id recognises a repeated webhook, and a status
    # callback finds its job, only while they are kept.
    "inbound_events": [
        IndexModel([("provider", ASCENDING), ("provider_id", ASCENDING)], unique=True),
        IndexModel([("state", ASCENDING), ("next_attempt_at", ASCENDING)]),
        IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0),
    ],
    "outbox": [
        IndexModel([("state", ASCENDING), ("next_attempt_at", ASCENDING)]),
        IndexModel([("message_id", ASCENDING)]),
        IndexModel([("provider_id", ASCENDING)]),
        IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0),
    ],
    # Provider status callbacks, kept to recognise a repeated one and to replay those that beat the
    # dispatcher's write of the provider id: removed [outbox] keep_done_days after they arrived
    # (expire_at, gateway/messaging/delivery.py), like the jobs they name.
    "delivery_events": [
        IndexModel([("provider_id", ASCENDING), ("status", ASCENDING)], unique=True),
        IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0),
    ],
    "audit": [
        IndexModel([("org_id", ASCENDING), ("seq", ASCENDING)], unique=True),
        IndexModel([("org_id", ASCENDING), ("thread_id", ASCENDING), ("seq", ASCENDING)]),
        # Staff portal: per-message timeline, and the audit view's actor filter.
        IndexModel(AUDIT_BY_MESSAGE),
        IndexModel([("org_id", ASCENDING), ("actor.id", ASCENDING), ("seq", ASCENDING)]),
        # A contact's entries that name no thread (viewed, consent, PIN, erasure): the subject export.
        IndexModel([("org_id", ASCENDING), ("contact_id", ASCENDING), ("seq", ASCENDING)]),
        # Staff thread page: the thread-level activity (assigned, closed, viewed, ...), an $in on action,
        # without reading the thread's message events and staff reads.
        IndexModel([("org_id", ASCENDING), ("thread_id", ASCENDING), ("action", ASCENDING), ("seq", ASCENDING)]),
    ],
    # Staff sign-in throttling counters (gateway.security.staff_auth.LoginThrottle): one per key and window.
    "login_throttle": [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0)],
    # First-run setup tokens (gateway.security.staff_auth.SetupTokens): _id is the token's SHA-256.
    "setup_tokens": [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=86400)],
    "sandbox_sms": [IndexModel([("org_id", ASCENDING), ("created_at", ASCENDING)])],
    "sandbox_mail": [IndexModel([("created_at", ASCENDING)])],
    "reply_tokens": [
        IndexModel([("token_hash", ASCENDING)], unique=True),
        IndexModel([("org_id", ASCENDING), ("thread_id", ASCENDING)]),
        # The one-click unsubscribe link of a mail (gateway/messaging/unsubscribe.py): its token's SHA-256.
        IndexModel([("unsubscribe_hash", ASCENDING)]),
    ],
    "attachments": [IndexModel([("org_id", ASCENDING), ("message_id", ASCENDING)])],
    # Inbound mail per thread and day (gateway/storage/mail_quota.py): gone once the day is over.
    "mail_quota": [IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0)],
    # Break-glass grants (gateway.security.access): the check on every request to a thread outside the
    # member's scope (time last: a range on it follows the equality prefix), and the admins' list.
    # No TTL: an expired grant, with its sealed reason, is the record admins review.
    "break_glass": [
        IndexModel([("org_id", ASCENDING), ("staff_id", ASCENDING), ("thread_id", ASCENDING),
                    ("expires_at", ASCENDING)]),
        IndexModel([("org_id", ASCENDING), ("_id", DESCENDING)]),
    ],
    # Staff alerts (gateway.messaging.alerts): the admins' banner counts the org's open ones.
    "alerts": [IndexModel([("org_id", ASCENDING), ("reviewed", ASCENDING), ("_id", DESCENDING)])],
    # The per-thread PIN guards (gateway/security/links.py, looked up by _id) of one contact: their
    # erasure deletes them and the subject export lists them (gateway/compliance/subject_data.py).
    "link_guards": [IndexModel([("org_id", ASCENDING), ("contact_id", ASCENDING)])],
}


# Every collection the gateway uses: those with indexes, and these (looked up by _id only).
COLLECTIONS = frozenset(INDEXES) | {"keys", "orgs", "audit_heads"}
# The audit log lives in a database of its own, "<name>_audit": the gateway's database user may only
# append to it (gateway/storage/db_roles.py), and a database, unlike a collection, is a boundary that every
# server enforces for a role's privileges (SecantusDB matches custom-role privileges by database).
AUDIT_DB_SUFFIX = "_audit"


class Store:
    """The database and its collections. Writes are acknowledged by a majority, journaled."""

    def __init__(self, client: AsyncMongoClient[Doc], name: str) -> None:
        self.client = client
        self.db: AsyncDatabase[Doc] = client.get_database(
            name, write_concern=WriteConcern("majority", j=True)
        )
        self.audit_db: AsyncDatabase[Doc] = client.get_database(
            name + AUDIT_DB_SUFFIX, write_concern=WriteConcern("majority", j=True)
        )
        self._transactions: bool | None = None

    def __getattr__(self, name: str) -> AsyncCollection[Doc]:
        # store.messages, store.outbox, ... — only the collections declared above.
        if name in COLLECTIONS:
            return self.collection(name)
        raise AttributeError(name)

    def collection(self, name: str) -> AsyncCollection[Doc]:
        """Any collection by name, in the database it lives in."""
        return self.audit_db[name] if name == "audit" else self.db[name]

    async def collection_names(self) -> list[str]:
        """The collections that exist, in both databases (e.g. to scan everything stored)."""
        return [*await self.db.list_collection_names(), *await self.audit_db.list_collection_names()]

    async def drop(self) -> None:
        """Drop both databases (tests, benchmarks)."""
        await self.client.drop_database(self.db.name)
        await self.client.drop_database(self.audit_db.name)

    async def ensure_indexes(self) -> None:
        for collection, models in INDEXES.items():
            await self.collection(collection).create_indexes(models)

    async def move_old_audit_log(self) -> int:
        """Move the entries an earlier build kept in `<name>.audit` to the audit database (at start-up;
        repeatable: an entry already moved is skipped). Returns how many were copied."""
        if "audit" not in await self.db.list_collection_names():
            return 0
        old = self.db["audit"]
        copied = 0
        batch: list[Doc] = []
        async for doc in old.find({}):
            batch.append(doc)
            if len(batch) == 1000:
                copied += sum(await insert_new(self.audit, batch))
                batch = []
        copied += sum(await insert_new(self.audit, batch))
        try:
            await old.drop()
        except PyMongoError as err:  # the least-privilege user may not drop: an administrator can
            logger.warning("old audit collection copied but left in place; drop it as an administrator",
                           extra={"fields": {"error": type(err).__name__}})
        return copied

    async def ping(self) -> bool:
        try:
            await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def supports_transactions(self) -> bool:
        if self._transactions is None:
            hello = await self.client.admin.command("hello")
            self._transactions = bool(hello.get("setName") or hello.get("msg") == "isdbgrid")
        return self._transactions

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncClientSession | None]:
        """A transaction where the server has them; otherwise None (callers order their writes)."""
        if not await self.supports_transactions():
            yield None
            return
        async with self.client.start_session() as session:
            async with await session.start_transaction():
                yield session


async def insert_new(coll: AsyncCollection[Doc], docs: list[Doc]) -> list[bool]:
    """Insert `docs` with one unordered insert_many; returns, per document, whether it was inserted
    now (False: a document with the same unique key was stored already, e.g. by an earlier run or
    a concurrent creator). Any other failure, or a write concern error, raises."""
    if not docs:
        return []
    try:
        await coll.insert_many(docs, ordered=False)
    except BulkWriteError as err:
        errors = err.details.get("writeErrors", [])
        if err.details.get("writeConcernErrors") or any(e.get("code") != 11000 for e in errors):
            raise
        taken = {e["index"] for e in errors}
        return [i not in taken for i in range(len(docs))]
    return [True] * len(docs)


def make_client(uri: str, timeout_seconds: float) -> AsyncMongoClient[Doc]:
    """A client with timeouts on every operation, so a dead database fails fast (503) not hangs."""
    ms = int(timeout_seconds * 1000)
    return AsyncMongoClient(
        uri,
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        socketTimeoutMS=ms * 2,
        tz_aware=True,
        retryWrites=True,
    )
