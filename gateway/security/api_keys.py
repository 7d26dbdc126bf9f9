"""API keys for integrators: shown once, stored as SHA-256 only."""

from __future__ import annotations

from gateway.ids import new_id
from gateway.ports import Clock
from gateway.security.tokens import new_api_key, token_hash
from gateway.storage.store import Doc, Store
from gateway.tenancy.orgs import validate_name


class ApiKeys:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create(self, org_id: str, name: str) -> tuple[str, Doc]:
        """Return (the key, to show once; its stored document)."""
        key, digest = new_api_key()
        doc: Doc = {"_id": new_id(), "org_id": org_id, "name": validate_name(name), "key_hash": digest,
                    "prefix": key[:8], "created_at": self._clock.now(), "revoked_at": None}
        await self._store.api_keys.insert_one(doc)
        return key, doc

    async def revoke(self, org_id: str, key_id: str) -> bool:
        res = await self._store.api_keys.update_one({"_id": key_id, "org_id": org_id, "revoked_at": None},
                                                    {"$set": {"revoked_at": self._clock.now()}})
        return res.modified_count == 1

    async def list(self, org_id: str) -> list[Doc]:
        return [d async for d in self._store.api_keys.find({"org_id": org_id}, projection={"key_hash": 0})]

    async def find_live(self, key: str) -> Doc | None:
        """The stored key (not revoked) that this presented key is, or None."""
        return await self._store.api_keys.find_one({"key_hash": token_hash(key), "revoked_at": None})
