"""Changing an organization's policy and details: the one service behind the staff Settings page
and `hushlink admin set-policy` / `update-org`, so every edge parses, validates and audits alike.

Every change is an audit entry naming the fields that changed, never their values (numbers,
addresses and terms stay out of the log). Turning on require_totp ends the sessions of members
without an authenticator app: a session signed in on a password alone must not outlive the rule
that it is no longer enough (docs/security-model.md, Staff authentication). They enrol at their
next sign-in. The acting admin is not locked out of their own org: if they have no authenticator
either, their current session is kept but may only enrol (the portal sends them there) — their
other sessions end like everyone's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.security.audit import Actor, AuditLog
from gateway.security.sessions import Sessions
from gateway.tenancy.orgs import DetailChanges, Org, Orgs
from gateway.tenancy.staff import Staff


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    org: Org
    changed: list[str]  # field names
    sessions_ended: int = 0
    enrol_now: bool = False  # the acting session was kept but must enrol an authenticator first


class OrgSettings:
    def __init__(self, orgs: Orgs, staff: Staff, sessions: Sessions, audit: AuditLog) -> None:
        self._orgs = orgs
        self._staff = staff
        self._sessions = sessions
        self._audit = audit

    async def change_policy(self, org_id: str, raw: Mapping[str, object], actor: Actor, *, ip: str | None = None,
                            session_id: str | None = None) -> PolicyChanged:
        """Apply `raw` (field name -> value or text; OrgPolicy.with_changes parses and validates).
        `session_id` is the stored id of the acting staff session, kept if require_totp turns on."""
        org, changed = await self._orgs.change_policy(org_id, raw)
        if not changed:
            return PolicyChanged(org, [])
        await self._audit.append(org_id, "org.policy_updated", actor, ip=ip, detail={"changed": ",".join(changed)})
        if "require_totp" in changed and org.policy.require_totp:
            ended, enrol_now = await self._end_sessions_without_totp(org_id, actor, ip, session_id)
            return PolicyChanged(org, changed, ended, enrol_now)
        return PolicyChanged(org, changed)

    async def _end_sessions_without_totp(self, org_id: str, actor: Actor, ip: str | None,
                                         session_id: str | None) -> tuple[int, bool]:
        total, enrol_now = 0, False
        for member in await self._staff.without_totp(org_id):
            acting = actor.kind == "staff" and actor.id == member.id and session_id is not None
            ended = await self._sessions.end_for_user(member.id, keep=session_id if acting else None)
            if acting and session_id is not None:
                await self._sessions.update({"_id": session_id}, enroll_totp=True)
                enrol_now = True
            total += ended
            await self._audit.append(org_id, "auth.sessions_ended", actor, ip=ip, staff_id=member.id,
                                     detail={"reason": "require_totp", "sessions_ended": ended,
                                             "kept_to_enrol": acting})
        return total, enrol_now

    async def change_details(self, org_id: str, changes: DetailChanges, actor: Actor, *,
                             ip: str | None = None) -> Org:
        org, changed = await self._orgs.update_details(org_id, changes)
        if changed:
            await self._audit.append(org_id, "org.updated", actor, ip=ip, detail={"changed": ",".join(changed)})
        return org
