"""Staff alerts, stored: the default StaffAlerts, and what the staff portal's admin banner reads.

An alert is a durable record in `alerts` (ids only, see gateway.ports.StaffAlerts) that stays
open until an admin of the org marks it reviewed (from the review page, which closes the alerts
it showed and no newer one). The staff portal shows every admin a banner while any alert of their
org is open, so an alert reaches the admins on their next page view whichever process wrote it.

Given the outbox, an alert is also mailed to every admin of the org whose account is enabled at
that moment: one outbox job of kind STAFF_ALERT per admin, written with the alert (in one
transaction where the server has them), so the mail survives a crash and is retried like any
other. A job names the alert and the staff member and nothing else: the dispatcher reads the
admin's address when it sends (and fails the job if the account was disabled or deleted since),
and the mail itself says only that the org needs an admin's review (outbound/compose_email.py).
Its id is derived from (alert, staff member), so there is at most one job per admin and alert,
and a job once sent is never claimed again: re-running the dispatcher mails nobody twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gateway.ids import new_id
from gateway.messaging.outbox import Outbox
from gateway.ports import Clock
from gateway.storage.store import Doc, Store
from gateway.tenancy.staff import Staff

logger = logging.getLogger(__name__)

STAFF_ALERT = "staff_alert"  # the outbox job kind: one alert mailed to one staff member


def staff_alert_job_id(alert_id: str, staff_id: str) -> str:
    """The outbox job id of `alert_id`'s mail to `staff_id` (one mail per pair, ever)."""
    return f"{alert_id}:alert:{staff_id}"


class StoredStaffAlerts:
    """Records alerts in the `alerts` collection (and mails them, given an outbox); counts and
    closes the open ones."""

    def __init__(self, store: Store, clock: Clock, *, outbox: Outbox | None = None,
                 staff: Staff | None = None) -> None:
        assert (outbox is None) == (staff is None), "mailing alerts needs both the outbox and the staff"
        self._store = store
        self._clock = clock
        self._outbox = outbox
        self._staff = staff

    async def alert(self, org_id: str, kind: str, ids: Mapping[str, str], *, severity: str = "high") -> None:
        """Record an open alert for the org's admins, and queue its mail to each enabled admin."""
        alert: Doc = {
            "_id": new_id(), "org_id": org_id, "kind": kind, "severity": severity, "ids": dict(ids),
            "created_at": self._clock.now(), "reviewed": False, "reviewed_at": None, "reviewed_by": None,
        }
        jobs = await self._mail_jobs(alert)
        async with self._store.transaction() as session:
            # Without transactions: the alert first, then its mail. A failure or crash in between
            # leaves an alert without mail but no grant: gateway/security/access.py writes the grant last.
            await self._store.alerts.insert_one(alert, session=session)
            if jobs:
                await self._store.outbox.insert_many(jobs, session=session)
        if self._outbox is not None:
            for job in jobs:
                self._outbox.announce(job["_id"])
        # Ops see it too (ids only; the log redaction step never sees content here).
        logger.warning("staff alert", extra={"fields": {"org_id": org_id, "kind": kind, "severity": severity,
                                                        **dict(ids)}})

    async def _mail_jobs(self, alert: Doc) -> list[Doc]:
        """One pending STAFF_ALERT job per enabled admin of the alert's org (ids only, no address)."""
        if self._outbox is None or self._staff is None:
            return []
        return [await self._outbox.job(
            kind=STAFF_ALERT, org_id=alert["org_id"], template=alert["kind"], contact_id=None,
            job_id=staff_alert_job_id(alert["_id"], member.id), staff_id=member.id, alert_id=alert["_id"],
        ) for member in await self._staff.active_admins(alert["org_id"])]

    async def open_count(self, org_id: str) -> int:
        """How many of the org's alerts no admin has reviewed yet (the banner's number)."""
        return int(await self._store.alerts.count_documents({"org_id": org_id, "reviewed": False}))

    async def newest_open(self, org_id: str) -> str | None:
        """The id of the org's newest open alert (what a review page shows the admin up to), if any."""
        docs = await self._store.alerts.find({"org_id": org_id, "reviewed": False}, projection={"_id": 1}
                                             ).sort("_id", -1).limit(1).to_list(None)
        return str(docs[0]["_id"]) if docs else None

    async def mark_reviewed(self, org_id: str, staff_id: str, upto: str) -> int:
        """Close the org's open alerts up to and including `upto` (an alert id); returns how many.

        Only those the admin's page was showing: ids are ObjectId hex and sort by creation, so an
        alert raised after the page was loaded has a greater id and stays open (and the banner with it).
        """
        res = await self._store.alerts.update_many(
            {"org_id": org_id, "reviewed": False, "_id": {"$lte": upto}},
            {"$set": {"reviewed": True, "reviewed_at": self._clock.now(), "reviewed_by": staff_id}})
        return int(res.modified_count)
