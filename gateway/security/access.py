"""Which threads a staff member may open: the org's agent scope, and break-glass emergency access.

With the org policy `agent_scope = "assigned"` an agent opens only the threads assigned to them or
to nobody (HIPAA minimum necessary, 164.502(b)); admins, and every agent under "all", open
every thread of the org. An agent who must open another's thread in an emergency asks for
break-glass access (docs/security-model.md, 'Staff access'; HIPAA 164.312(a)(2)(ii)): a written reason, granting that
one member that one thread for the org's `break_glass_minutes`, then nothing more.

Every grant is a high-severity `breakglass.grant` audit entry and an alert to the org's admins,
both written BEFORE the grant itself, so no emergency access exists without them. The reason is
free text typed by staff and may name the client or their condition: it is sealed with the org's
data key in the grant document (admins read it in the portal); the audit entry and the alert
carry only the grant's id.
"""

from __future__ import annotations

from datetime import timedelta

from gateway.errors import IntegrityError, ValidationError
from gateway.ids import new_id
from gateway.ports import Clock, StaffAlerts
from gateway.security.audit import Actor, AuditLog
from gateway.security.vault import Vault
from gateway.storage.store import Doc, Store
from gateway.tenancy.orgs import Org, OrgPolicy
from gateway.tenancy.staff import StaffMember

REASON_MIN, REASON_MAX = 10, 500
GRANT_KIND = "breakglass.grant"  # the audit action and the alert kind
_COLLECTION = "break_glass"  # the sealed reason is bound to this collection (AAD)


def thread_assignees(policy: OrgPolicy, member: StaffMember) -> tuple[str | None, ...] | None:
    """The assignees whose threads the member may list and open; None: every thread."""
    if member.role == "admin" or policy.agent_scope == "all":
        return None
    return (member.id, None)


def in_scope(policy: OrgPolicy, member: StaffMember, thread: Doc) -> bool:
    """May the member open the thread without break-glass?"""
    assignees = thread_assignees(policy, member)
    return assignees is None or thread.get("assignee") in assignees


def validate_reason(reason: str) -> str:
    """The reason for an emergency access: REASON_MIN..REASON_MAX printable characters."""
    text = (reason or "").strip()
    if not REASON_MIN <= len(text) <= REASON_MAX:
        raise ValidationError("reason", f"must be {REASON_MIN} to {REASON_MAX} characters: "
                                        "say why you need this conversation now")
    if any(ord(c) < 32 and c not in "\n\r\t" for c in text):
        raise ValidationError("reason", "must be plain text")
    return text


class BreakGlass:
    """Grants, checks and lists emergency access to threads outside a member's scope."""

    def __init__(self, store: Store, vault: Vault, audit: AuditLog, alerts: StaffAlerts, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._audit = audit
        self._alerts = alerts
        self._clock = clock

    async def grant(self, org: Org, actor: Actor, thread: Doc, reason: str, *, ip: str | None = None) -> Doc:
        """Open `thread` to the staff member `actor` for the org's break_glass_minutes."""
        text = validate_reason(reason)
        assert actor.kind == "staff" and actor.id, "break-glass is for signed-in staff"
        now = self._clock.now()
        minutes = org.policy.break_glass_minutes
        grant_id = new_id()
        doc: Doc = {
            "_id": grant_id, "org_id": org.id, "staff_id": actor.id, "thread_id": thread["_id"],
            "contact_id": thread["contact_id"], "created_at": now, "expires_at": now + timedelta(minutes=minutes),
            "ip": ip, "reason": await self._vault.seal(await self._vault.org_key(org.id), org.id, _COLLECTION,
                                                       grant_id, "reason", text),
        }
        # Audit and alert first: if either fails, no grant exists and the thread stays closed.
        await self._audit.append(org.id, GRANT_KIND, actor, ip=ip, thread_id=thread["_id"],
                                 contact_id=thread["contact_id"],
                                 detail={"grant_id": grant_id, "severity": "high", "minutes": minutes})
        await self._alerts.alert(org.id, GRANT_KIND, {"grant_id": grant_id, "thread_id": thread["_id"],
                                                      "staff_id": actor.id}, severity="high")
        await self._store.break_glass.insert_one(doc)
        return doc

    async def active(self, org_id: str, staff_id: str, thread_id: str) -> Doc | None:
        """The member's unexpired grant for the thread, if any (checked on every request)."""
        return await self._store.break_glass.find_one({
            "org_id": org_id, "staff_id": staff_id, "thread_id": thread_id,
            "expires_at": {"$gt": self._clock.now()},
        })

    async def recent(self, org_id: str, limit: int = 100) -> list[Doc]:
        """The org's newest grants, each with its reason opened ("reason": None if it can't be)."""
        docs = await self._store.break_glass.find({"org_id": org_id}).sort("_id", -1).limit(limit).to_list(None)
        for doc in docs:
            try:
                doc["reason"] = await self._vault.open(org_id, _COLLECTION, doc["_id"], "reason", doc["reason"])
            except IntegrityError:
                doc["reason"] = None
        return docs
