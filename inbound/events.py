"""Durable intake: every provider delivery is sealed and stored once before it is acknowledged."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from gateway.errors import StoreUnavailable
from gateway.ids import new_id
from gateway.ports import Clock
from gateway.store import Doc, Store
from gateway.vault import Vault

logger = logging.getLogger(__name__)


class InboundEvents:
    """Stores raw provider events (sealed, unique per provider id) and wakes the processor."""

    def __init__(self, store: Store, vault: Vault, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._clock = clock
        # Called with an event id and document once it is stored: the local processor's fast path.
        self.listeners: list[Callable[[str, Doc], None]] = []

    async def accept(
        self, *, provider: str, provider_id: str, org_id: str | None, kind: str,
        payload: dict[str, Any] | None = None, raw: bytes | None = None, state: str = "pending",
        meta: dict[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """Store the event; returns (event id, newly stored). Raises StoreUnavailable."""
        eid = new_id()
        now = self._clock.now()
        try:
            dek_id = await self._vault.org_key(org_id)
            seal_org = org_id or "-"
            doc: Doc = {
                "_id": eid, "provider": provider, "provider_id": provider_id, "org_id": org_id,
                "kind": kind, "received_at": now, "state": state, "attempts": 0,
                "next_attempt_at": now, "lease_until": now, "meta": meta or {},
            }
            if payload is not None:
                doc["payload"] = await self._vault.seal(
                    dek_id, seal_org, "inbound_events", eid, "payload", json.dumps(payload)
                )
            if raw is not None:
                doc["raw"] = await self._vault.seal(dek_id, seal_org, "inbound_events", eid, "raw", raw)
            await self._store.inbound_events.insert_one(doc)
        except DuplicateKeyError:
            existing = await self._store.inbound_events.find_one(
                {"provider": provider, "provider_id": provider_id}, projection={"_id": 1}
            )
            return (existing["_id"] if existing else eid), False
        except PyMongoError as err:
            logger.warning("inbound event not stored: database unavailable",
                           extra={"fields": {"provider": provider, "error": type(err).__name__}})
            raise StoreUnavailable("database unavailable") from err
        if state == "pending":
            for listener in self.listeners:
                listener(eid, doc)
        return eid, True

    async def open_payload(self, event: Doc) -> dict[str, Any]:
        org = event.get("org_id") or "-"
        text = await self._vault.open(org, "inbound_events", event["_id"], "payload", event["payload"])
        data = json.loads(text)
        assert isinstance(data, dict)
        return data

    async def open_raw(self, event: Doc) -> bytes:
        org = event.get("org_id") or "-"
        return await self._vault.open_bytes(org, "inbound_events", event["_id"], "raw", event["raw"])
