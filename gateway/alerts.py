"""Staff alerts, stored: the default StaffAlerts, and what the staff portal's admin banner reads.

An alert is a durable record in `alerts` (ids only, see gateway.ports.StaffAlerts) that stays
open until an admin of the org marks it reviewed. The staff portal shows every admin a banner
while any alert of their org is open, so an alert reaches the admins on their next page view
whichever process wrote it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gateway.ids import new_id
from gateway.ports import Clock
from gateway.store import Store

logger = logging.getLogger(__name__)


class StoredStaffAlerts:
    """Records alerts in the `alerts` collection; counts and closes the open ones."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def alert(self, org_id: str, kind: str, ids: Mapping[str, str], *, severity: str = "high") -> None:
        """Record an open alert for the org's admins."""
        await self._store.alerts.insert_one({
            "_id": new_id(), "org_id": org_id, "kind": kind, "severity": severity, "ids": dict(ids),
            "created_at": self._clock.now(), "reviewed": False, "reviewed_at": None, "reviewed_by": None,
        })
        # Ops see it too (ids only; the log redaction step never sees content here).
        logger.warning("staff alert", extra={"fields": {"org_id": org_id, "kind": kind, "severity": severity,
                                                        **dict(ids)}})

    async def open_count(self, org_id: str) -> int:
        """How many of the org's alerts no admin has reviewed yet (the banner's number)."""
        return int(await self._store.alerts.count_documents({"org_id": org_id, "reviewed": False}))

    async def mark_reviewed(self, org_id: str, staff_id: str) -> int:
        """Close every open alert of the org; returns how many were open."""
        res = await self._store.alerts.update_many(
            {"org_id": org_id, "reviewed": False},
            {"$set": {"reviewed": True, "reviewed_at": self._clock.now(), "reviewed_by": staff_id}})
        return int(res.modified_count)
