"""Settings (admin only): org policy, staff accounts, API keys, emergency (break-glass) access review.

Disabling a member, changing their role or resetting their authenticator ends all their sessions
at once (OWASP ASVS 5.0 7.4.2; a privilege change never keeps an old session id). An admin can't
disable or demote themselves, and the last enabled admin stays an admin, so nobody locks the
organization out of its own settings. Nor can an admin reset their own authenticator here: that
would turn off their MFA without the password the Account page asks for (docs/security-model.md,
Staff authentication).

The emergency access page lists the org's break-glass grants with their reasons (opened here,
escaped by the template; reading them is audited) and closes the open alerts that put the banner
on every admin's pages: those the page showed, never one raised since (gateway/security/access.py,
gateway/messaging/alerts.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import NotFound, ValidationError
from gateway.ids import is_id
from gateway.messaging.alerts import StoredStaffAlerts
from gateway.ports import Clock
from gateway.security.access import BreakGlass
from gateway.security.api_keys import ApiKeys
from gateway.security.audit import AuditLog
from gateway.security.sessions import Sessions
from gateway.security.staff_auth import Totp
from gateway.tenancy.org_settings import OrgSettings
from gateway.tenancy.orgs import LINK_TTL_CHOICES, DetailChanges, Orgs, zone_names
from gateway.tenancy.staff import ROLES, Staff, StaffMember
from portal.staff.common import STAFF, Shell, form_fields, redirect
from portal.staff.inbox import fmt_time
from portal.staff.policy import policy

TTL_LABELS = {3600: "1 hour", 86400: "24 hours", 7 * 86400: "7 days", 10 * 86400: "10 days",
              180 * 86400: "180 days", 365 * 86400: "365 days"}
# Checkboxes: an unticked box is absent from the post, so these are set False when absent.
FLAGS = ("secure_default", "secure_forced", "pin_required", "provider_redaction", "require_totp")
SCOPE_LABELS = {"all": "Every conversation of the organization",
                "assigned": "Only conversations assigned to them or to nobody"}
# Details fields a post may carry; absent ones stay as they are (the remove buttons post one each).
DETAIL_FIELDS = ("name", "email_from", "reply_domain", "timezone", "send_from")


def _int(form: dict[str, str], name: str, field: str) -> int:
    value = form.get(name, "").strip()
    if not value.isdigit() or len(value) > 7:
        raise ValidationError(field, "must be a whole number")
    return int(value)


def policy_changes(form: dict[str, str]) -> dict[str, Any]:
    """The settings form as OrgPolicy fields: the form's units (minutes, hours, one term per line)
    converted; OrgPolicy.with_changes parses and validates the rest, as for the CLI."""
    changes: dict[str, Any] = {flag: form.get(flag) == "1" for flag in FLAGS}
    changes["link_ttl_seconds"] = form.get("link_ttl_seconds", "")
    changes["lock_threshold"] = form.get("lock_threshold", "")
    changes["staff_idle_seconds"] = _int(form, "staff_idle_minutes", "staff_idle_minutes") * 60
    changes["staff_absolute_seconds"] = _int(form, "staff_absolute_hours", "staff_absolute_hours") * 3600
    changes["client_idle_seconds"] = _int(form, "client_idle_minutes", "client_idle_minutes") * 60
    changes["sensitive_terms"] = form.get("sensitive_terms", "").splitlines()
    # Added after the rest of the form: a form that predates them (or a script) leaves them as they are.
    for name in ("agent_scope", "break_glass_minutes", "retention_days", "link_renewals_per_day"):
        if name in form:
            changes[name] = form[name]
    return changes


def detail_changes(form: dict[str, str]) -> DetailChanges:
    """The org details form (or one of its remove buttons) as the edits to make."""
    def one(name: str) -> tuple[str, ...]:
        value = form.get(name, "").strip()
        return (value,) if value else ()

    present = {name: form[name] for name in DETAIL_FIELDS if name in form}
    if not present.get("send_from"):
        present.pop("send_from", None)
    return DetailChanges(add_numbers=one("add_number"), remove_numbers=one("remove_number"),
                         add_messaging_services=one("messaging_service_sid"),
                         remove_messaging_services=one("remove_messaging_service_sid"), **present)


class Settings:
    def __init__(self, shell: Shell, *, orgs: Orgs, staff: Staff, sessions: Sessions, audit: AuditLog,
                 api_keys: ApiKeys, break_glass: BreakGlass, org_settings: OrgSettings, alerts: StoredStaffAlerts,
                 totp: Totp, clock: Clock) -> None:
        self.d = shell
        self.totp = totp
        self.orgs = orgs
        self.staff = staff
        self.sessions = sessions
        self.audit = audit
        self.api_keys = api_keys
        self.break_glass = break_glass
        self.org_settings = org_settings
        self.alerts = alerts
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/settings", self.org_page)
        r.add_post("/settings/policy", self.update_policy)
        r.add_post("/settings/org", self.update_details)
        r.add_get("/settings/staff", self.staff_page)
        r.add_post("/settings/staff", self.create_staff)
        r.add_post("/settings/staff/{id}/{action}", self.staff_action)
        r.add_get("/settings/api-keys", self.keys_page)
        r.add_post("/settings/api-keys", self.create_key)
        r.add_post("/settings/api-keys/{id}/revoke", self.revoke_key)
        r.add_get("/settings/emergency-access", self.emergency_page)
        r.add_post("/settings/emergency-access/reviewed", self.emergency_reviewed)

    # -- org policy -------------------------------------------------------------------------
    @policy("admin")
    async def org_page(self, request: web.Request) -> web.Response:
        return await self._org_page(request, saved=request.query.get("saved") == "1")

    async def _org_page(self, request: web.Request, *, status: int = 200, error: str | None = None,
                        saved: bool = False, values: dict[str, str] | None = None) -> web.Response:
        ctx = request[STAFF]
        org = await self.orgs.get(ctx.org.id)
        ttls = sorted({*LINK_TTL_CHOICES, org.policy.link_ttl_seconds})  # a value set by the CLI stays offered
        return await self.d.page(request, "staff/settings.html", status=status, policy=org.policy, details=org,
                                 ttl_choices=[(s, TTL_LABELS.get(s, f"{s} s")) for s in ttls],
                                 scope_choices=list(SCOPE_LABELS.items()), zones=zone_names(),
                                 values=values or {}, error=error, saved=saved, section="org")

    @policy("admin")
    async def update_policy(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        form = await form_fields(request)
        try:
            result = await self.org_settings.change_policy(ctx.org.id, policy_changes(form), ctx.actor,
                                                           ip=self.d.ip(request), session_id=ctx.session["_id"])
        except ValidationError as err:
            return await self._org_page(request, status=422, error=f"{err.field}: {err.message}")
        if result.enrol_now:  # they turned on require_totp without an authenticator themselves
            return redirect("/staff/account/totp")
        return redirect("/staff/settings?saved=1")

    @policy("admin")
    async def update_details(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        form = await form_fields(request)
        try:
            await self.org_settings.change_details(ctx.org.id, detail_changes(form), ctx.actor, ip=self.d.ip(request))
        except ValidationError as err:
            shown = (*DETAIL_FIELDS, "add_number", "messaging_service_sid")
            values = {k: v[:320] for k, v in form.items() if k in shown}
            return await self._org_page(request, status=422, error=f"{err.field}: {err.message}", values=values)
        return redirect("/staff/settings?saved=1")

    # -- staff -------------------------------------------------------------------------------
    @policy("admin")
    async def staff_page(self, request: web.Request) -> web.Response:
        return await self._staff_page(request)

    async def _staff_page(self, request: web.Request, *, status: int = 200, error: str | None = None,
                          values: dict[str, str] | None = None) -> web.Response:
        ctx = request[STAFF]
        members = await self.staff.list(ctx.org.id)
        counts = await self.sessions.live_per_user("staff", ctx.org.id)
        return await self.d.page(request, "staff/settings_staff.html", status=status, members=members,
                                 sessions=counts, roles=ROLES, error=error, values=values or {}, section="staff")

    @policy("admin")
    async def create_staff(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        form = await form_fields(request)
        values = {"email": form.get("email", "")[:320], "role": form.get("role", "agent")}
        try:
            member = await self.staff.create(ctx.org.id, values["email"], values["role"], form.get("password", ""))
        except ValidationError as err:
            return await self._staff_page(request, status=422, error=f"{err.field}: {err.message}", values=values)
        await self.audit.append(ctx.org.id, "staff.created", ctx.actor, ip=self.d.ip(request), staff_id=member.id,
                                  detail={"role": member.role})
        return redirect("/staff/settings/staff")

    async def _member(self, request: web.Request) -> StaffMember:
        ctx = request[STAFF]
        sid = request.match_info["id"]
        try:
            if not is_id(sid):
                raise NotFound("staff")
            return await self.staff.get(ctx.org.id, sid)
        except NotFound:
            raise await self.d.deny(request, "staff", sid) from None

    async def end_sessions(self, staff_id: str) -> int:
        """Every session of the member, staff and half-signed-in alike."""
        return await self.sessions.delete_where(user_id=staff_id)

    @policy("admin")
    async def staff_action(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        member = await self._member(request)
        action = request.match_info["action"]
        if action not in ("disable", "enable", "role", "reset-totp"):
            raise web.HTTPNotFound()
        form = await form_fields(request)
        ip = self.d.ip(request)
        last_admin = (member.role == "admin" and not member.disabled
                      and await self.staff.enabled_admins(ctx.org.id) <= 1)
        if action == "disable":
            if member.id == ctx.member.id or last_admin:
                return await self._staff_page(request, status=409,
                                              error="You can't disable yourself or the last admin.")
            await self.staff.set_disabled(ctx.org.id, member.id, True)
            ended = await self.end_sessions(member.id)
            await self.audit.append(ctx.org.id, "staff.disabled", ctx.actor, ip=ip, staff_id=member.id,
                                      detail={"sessions_ended": ended})
        elif action == "enable":
            await self.staff.set_disabled(ctx.org.id, member.id, False)
            await self.audit.append(ctx.org.id, "staff.enabled", ctx.actor, ip=ip, staff_id=member.id)
        elif action == "role":
            role = form.get("role", "")
            if role != member.role:
                if member.id == ctx.member.id or last_admin:
                    return await self._staff_page(request, status=409,
                                                  error="You can't change your own role or demote the last admin.")
                await self.staff.set_role(ctx.org.id, member.id, role)
                ended = await self.end_sessions(member.id)
                await self.audit.append(ctx.org.id, "staff.role_changed", ctx.actor, ip=ip, staff_id=member.id,
                                          detail={"role": role, "sessions_ended": ended})
        else:
            if member.id == ctx.member.id:
                # Turning off one's own MFA needs the password (docs/security-model.md): the Account page asks for it.
                await self.audit.append(ctx.org.id, "authz.deny", ctx.actor, outcome="denied", ip=ip,
                                          staff_id=member.id,
                                          detail={"object": "staff", "reason": "self_reset",
                                                  "route": request.path[:200]})
                return await self._staff_page(
                    request, status=403,
                    error="To turn off your own authenticator app, use Account → Authenticator app "
                          "(it asks for your password).")
            await self.totp.reset(ctx.org.id, member.id)
            ended = await self.end_sessions(member.id)
            await self.audit.append(ctx.org.id, "auth.totp_reset", ctx.actor, ip=ip, staff_id=member.id,
                                      detail={"sessions_ended": ended})
        return redirect("/staff/settings/staff")

    # -- API keys -----------------------------------------------------------------------------
    @policy("admin")
    async def keys_page(self, request: web.Request) -> web.Response:
        return await self._keys_page(request)

    async def _keys_page(self, request: web.Request, *, status: int = 200, new_key: str | None = None,
                         error: str | None = None) -> web.Response:
        ctx = request[STAFF]
        keys = sorted(await self.api_keys.list(ctx.org.id), key=lambda k: k["_id"], reverse=True)
        zone = ctx.org.zone
        rows = [{"id": k["_id"], "name": k["name"], "prefix": k.get("prefix", ""),
                 "created": fmt_time(k["created_at"], zone), "revoked": fmt_time(k.get("revoked_at"), zone)}
                for k in keys]
        return await self.d.page(request, "staff/settings_keys.html", status=status, keys=rows, new_key=new_key,
                                 error=error, section="keys")

    @policy("admin")
    async def create_key(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        form = await form_fields(request)
        try:
            key, doc = await self.api_keys.create(ctx.org.id, form.get("name", ""))
        except ValidationError as err:
            return await self._keys_page(request, status=422, error=f"{err.field}: {err.message}")
        await self.audit.append(ctx.org.id, "api_key.created", ctx.actor, ip=self.d.ip(request),
                                  detail={"key_id": doc["_id"]})
        return await self._keys_page(request, new_key=key)

    @policy("admin")
    async def revoke_key(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        kid = request.match_info["id"]
        if not is_id(kid) or not await self.api_keys.revoke(ctx.org.id, kid):
            exists = is_id(kid) and any(k["_id"] == kid for k in await self.api_keys.list(ctx.org.id))
            if not exists:
                raise await self.d.deny(request, "api_key", kid)
            return redirect("/staff/settings/api-keys")  # already revoked
        await self.audit.append(ctx.org.id, "api_key.revoked", ctx.actor, ip=self.d.ip(request),
                                  detail={"key_id": kid})
        return redirect("/staff/settings/api-keys")

    # -- emergency (break-glass) access -----------------------------------------------------------
    @policy("admin")
    async def emergency_page(self, request: web.Request) -> web.Response:
        return await self._emergency_page(request, reviewed=request.query.get("reviewed") == "1")

    async def _emergency_page(self, request: web.Request, *, status: int = 200, error: str | None = None,
                              reviewed: bool = False) -> web.Response:
        """The org's newest break-glass grants, reasons included, and the open alerts to close."""
        ctx = request[STAFF]
        # The newest open alert, read before the grants and the banner's count: "Mark all as
        # reviewed" closes the alerts up to this one, so one raised after this read stays open.
        upto = await self.alerts.newest_open(ctx.org.id)
        grants = await self.break_glass.recent(ctx.org.id)
        emails = {m.id: m.email for m in await self.staff.list(ctx.org.id)}
        now = self.clock.now()
        zone = ctx.org.zone
        rows = [{"id": g["_id"], "at": fmt_time(g["created_at"], zone), "until": fmt_time(g["expires_at"], zone),
                 "active": g["expires_at"] > now, "who": emails.get(g["staff_id"], g["staff_id"]),
                 "staff_id": g["staff_id"], "thread_id": g["thread_id"], "reason": g["reason"]} for g in grants]
        # The reasons may name a client or their condition: reading them is itself recorded.
        await self.audit.append(ctx.org.id, "breakglass.reasons_viewed", ctx.actor, ip=self.d.ip(request),
                                  detail={"grants": len(rows)})
        return await self.d.page(request, "staff/settings_emergency.html", status=status, grants=rows,
                                 upto=upto, error=error, reviewed=reviewed, section="emergency")

    @policy("admin")
    async def emergency_reviewed(self, request: web.Request) -> web.Response:
        """Close the open alerts the admin's page showed (the banner goes away unless a newer one came)."""
        ctx = request[STAFF]
        upto = (await form_fields(request)).get("upto", "")
        if not is_id(upto):
            return await self._emergency_page(request, status=422,
                                              error="That form was not recognized. Review the page and try again.")
        closed = await self.alerts.mark_reviewed(ctx.org.id, ctx.member.id, upto)
        await self.audit.append(ctx.org.id, "alert.reviewed", ctx.actor, ip=self.d.ip(request),
                                  detail={"alerts": closed, "upto": upto})
        return redirect("/staff/settings/emergency-access?reviewed=1")
