"""What every staff handler shares: the signed-in context, the cookie, page rendering, denials."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.errors import NotFound
from gateway.ids import is_id
from gateway.messaging.alerts import StoredStaffAlerts
from gateway.messaging.inbox_queries import InboxQueries
from gateway.security.access import thread_assignees
from gateway.security.audit import Actor, AuditLog
from gateway.storage.store import Doc
from gateway.tenancy.orgs import Org
from gateway.tenancy.staff import StaffMember
from portal.http import client_ip
from portal.render import render


@dataclass(frozen=True, slots=True)
class StaffContext:
    """The signed-in staff member of this request (set by the policy middleware)."""

    member: StaffMember
    org: Org
    session: Doc
    sid: str
    csrf: str

    @property
    def actor(self) -> Actor:
        return Actor("staff", self.member.id)

    @property
    def is_admin(self) -> bool:
        return self.member.role == "admin"


STAFF = web.RequestKey("staff_context", StaffContext)


class Shell:
    """What every staff handler shares, and only that: the session cookie, the client's address,
    page rendering (with the nav counters) and the audited 404. Each handler class takes its own
    domain collaborators besides (docs/architecture.md, "The composition root")."""

    def __init__(self, *, https: bool, trusted_proxies: tuple[str, ...], secret: bytes, public_url: str,
                 audit: AuditLog, counts: InboxQueries, alerts: StoredStaffAlerts) -> None:
        self.secret = secret
        self.public_url = public_url
        self.cookie = "__Host-hl_staff" if https else "hl_staff"
        self.secure_cookie = https
        self._trusted_proxies = trusted_proxies
        self._audit = audit
        self._counts = counts
        # The admins' banner reads the stored alerts, whichever StaffAlerts the services deliver through.
        self._alerts = alerts

    def ip(self, request: web.Request) -> str:
        return client_ip(request, self._trusted_proxies)

    def set_cookie(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(self.cookie, value, **self._cookie_attributes())

    def clear_cookie(self, response: web.StreamResponse) -> None:
        """Expire the session cookie with the attributes it was set with: a browser ignores a
        __Host- cookie without Secure and Path=/, even one that deletes (RFC 6265bis 4.1.3.2)."""
        response.del_cookie(self.cookie, **self._cookie_attributes())

    def _cookie_attributes(self) -> dict[str, Any]:
        return {"httponly": True, "secure": self.secure_cookie, "samesite": "Strict", "path": "/"}

    async def unread_threads(self, ctx: StaffContext) -> int:
        """Unread threads the member may open (all of the org's, or their own and unassigned ones)."""
        return await self._counts.unread_threads(ctx.org.id, thread_assignees(ctx.org.policy, ctx.member))

    async def open_alerts(self, ctx: StaffContext) -> int:
        """Alerts waiting for an admin's review (admins only: the banner on every staff page)."""
        return await self._alerts.open_count(ctx.org.id) if ctx.is_admin else 0

    async def page(self, request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
        """Render a staff page: the signed-in member, the nav counters, admin alerts and the CSRF token come along."""
        ctx = request.get(STAFF)
        context.setdefault("csrf", ctx.csrf if ctx else "")
        unread, alerts = await asyncio.gather(self.unread_threads(ctx), self.open_alerts(ctx)) if ctx else (0, 0)
        return render(request, template, status=status, me=ctx.member if ctx else None,
                      org=ctx.org if ctx else None, unread_threads=unread, open_alerts=alerts, **context)

    async def deny(self, request: web.Request, kind: str, requested: str) -> NotFound:
        """Audit a lookup of an id that is not this org's (foreign or unknown); return the 404 to raise."""
        ctx = request[STAFF]
        await self._audit.append(
            ctx.org.id, "authz.deny", ctx.actor, outcome="denied", ip=self.ip(request),
            detail={"object": kind, "requested": requested if is_id(requested) else "malformed",
                    "route": request.path if len(request.path) <= 200 else request.path[:200]},
        )
        return NotFound(kind)


def redirect(location: str) -> web.Response:
    """A 303 See Other (after a POST, so a reload does not resend the form)."""
    return web.Response(status=303, headers={"Location": location})


async def form_fields(request: web.Request) -> dict[str, str]:
    """The posted form's text fields (the first value of each; files are ignored)."""
    form = await request.post()
    out: dict[str, str] = {}
    for k, v in form.items():
        if isinstance(v, str) and k not in out:
            out[k] = v
    return out


def safe_next(value: str | None) -> str:
    """A post-sign-in target: only a path inside the staff portal, never another origin."""
    if not value or len(value) > 500 or not value.startswith("/staff/") or "//" in value or "\\" in value:
        return "/staff/"
    if any(ord(c) < 33 for c in value) or value.startswith(("/staff/login", "/staff/logout", "/staff/setup")):
        return "/staff/"
    return value
