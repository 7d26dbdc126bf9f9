"""Data keys and sealed fields: the only module that turns plaintext into stored bytes and back.

Each contact has its own data key (crypto-shredding: erase the key, the contact's sealed data is
gone). Per-org keys seal what belongs to no contact yet (raw inbound events); the "system" key
seals events for numbers that belong to no org.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from bson import Binary
from pymongo.errors import DuplicateKeyError

from gateway.errors import IntegrityError, KeyErased
from gateway.ports import Clock
from gateway.security.crypto import Sealer, aad
from gateway.storage.store import Store

logger = logging.getLogger(__name__)

_CACHE_SECONDS = 30.0  # other processes see a destroyed key gone within this long


class Vault:
    """Creates, caches and destroys data keys; seals and opens fields bound to their place."""

    def __init__(self, store: Store, sealer: Sealer, clock: Clock) -> None:
        self._store = store
        self._sealer = sealer
        self._clock = clock
        self._cache: dict[str, tuple[float, bytes]] = {}
        # Called with (org id, collection, document id, field) when a sealed field fails to open.
        self.on_tamper: Callable[[str, str, str, str], Awaitable[None]] | None = None

    async def create_key(self, dek_id: str, org_id: str | None) -> str:
        """Create the data key `dek_id` if it does not exist yet; return its id."""
        dek = self._sealer.new_data_key()
        kek_id, wrapped = self._sealer.wrap(dek, dek_id)
        try:
            await self._store.keys.insert_one({
                "_id": dek_id, "org_id": org_id, "kek_id": kek_id, "wrapped": Binary(wrapped),
                "created_at": self._clock.now(),
            })
            self._cache[dek_id] = (time.monotonic(), dek)
        except DuplicateKeyError:
            pass  # created concurrently; the stored one wins
        return dek_id

    async def org_key(self, org_id: str | None) -> str:
        dek_id = f"org:{org_id}" if org_id else "system"
        if await self._load(dek_id) is None:
            await self.create_key(dek_id, org_id)
        return dek_id

    async def _load(self, dek_id: str) -> bytes | None:
        hit = self._cache.get(dek_id)
        if hit and time.monotonic() - hit[0] < _CACHE_SECONDS:
            return hit[1]
        doc = await self._store.keys.find_one({"_id": dek_id})
        if doc is None or doc.get("destroyed_at"):
            self._cache.pop(dek_id, None)
            return None
        dek = self._sealer.unwrap(doc["kek_id"], bytes(doc["wrapped"]), dek_id)
        self._cache[dek_id] = (time.monotonic(), dek)
        return dek

    async def seal(
        self, dek_id: str, org_id: str, collection: str, doc_id: object, field: str, value: str | bytes
    ) -> Binary:
        dek = await self._load(dek_id)
        if dek is None:
            raise IntegrityError(f"data key {dek_id} does not exist (erased?)")
        return Binary(self._sealer.seal(dek_id, dek, value, aad(org_id, collection, str(doc_id), field)))

    async def open_bytes(
        self, org_id: str, collection: str, doc_id: object, field: str, sealed: bytes
    ) -> bytes:
        try:
            dek_id = self._sealer.dek_id_of(bytes(sealed))
        except IntegrityError:
            await self._tampered(org_id, collection, doc_id, field)
            raise
        dek = await self._load(dek_id)
        if dek is None:  # erased (crypto-shredded): expected, not tampering
            raise KeyErased(f"data key {dek_id} is gone (erased)")
        try:
            return self._sealer.open(dek, bytes(sealed), aad(org_id, collection, str(doc_id), field))
        except IntegrityError:
            await self._tampered(org_id, collection, doc_id, field)
            raise

    async def _tampered(self, org_id: str, collection: str, doc_id: object, field: str) -> None:
        """A sealed field that does not open (altered, or moved to another document): logged, and
        reported to `on_tamper` (the audit log, gateway/runtime/services.py) without masking the error."""
        logger.error("sealed field failed to open", extra={"fields": {
            "collection": collection, "doc_id": str(doc_id), "field": field}})
        if self.on_tamper is not None and org_id and org_id != "-":
            try:
                await self.on_tamper(org_id, collection, str(doc_id), field)
            except Exception:
                logger.exception("integrity failure not recorded")

    async def open(self, org_id: str, collection: str, doc_id: object, field: str, sealed: bytes) -> str:
        raw = await self.open_bytes(org_id, collection, doc_id, field, sealed)
        return raw.decode("utf-8", errors="replace")

    async def destroy(self, dek_id: str) -> None:
        """Crypto-shred: remove the wrapped key so nothing it sealed can be opened again."""
        await self._store.keys.update_one(
            {"_id": dek_id}, {"$set": {"destroyed_at": self._clock.now()}, "$unset": {"wrapped": ""}}
        )
        self._cache.pop(dek_id, None)

    async def rewrap_all(self) -> int:
        """Re-wrap every live data key with the active KEK (after a keyring rotation)."""
        n = 0
        async for doc in self._store.keys.find({"wrapped": {"$exists": True}}):
            dek = self._sealer.unwrap(doc["kek_id"], bytes(doc["wrapped"]), doc["_id"])
            kek_id, wrapped = self._sealer.wrap(dek, doc["_id"])
            await self._store.keys.update_one(
                {"_id": doc["_id"]}, {"$set": {"kek_id": kek_id, "wrapped": Binary(wrapped)}}
            )
            n += 1
        return n
