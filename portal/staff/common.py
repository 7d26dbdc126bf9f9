"""What every staff handler shares: the signed-in context, collaborators, page rendering, denials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.errors import IntegrityError, NotFound
from gateway.ids import is_id
from gateway.messaging.alerts import StoredStaffAlerts
from gateway.runtime.services import Services
from gateway.security.access import thread_assignees
from gateway.security.api_keys import ApiKeys
from gateway.security.audit import Actor
from gateway.security.staff_auth import LoginThrottle, SetupTokens, Totp
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


class Deps:
    """The collaborators of the staff handlers, built once by the staff app."""

    def __init__(self, services: Services, on_queued: Callable[[], None]) -> None:
        self.s = services
        self.on_queued = on_queued
        self.staff = services.staff
        self.totp = Totp(services.store, services.vault, services.clock)
        self.throttle = LoginThrottle(services.store, services.clock)
        self.setup = SetupTokens(services.store, services.clock)
        self.api_keys = ApiKeys(services.store, services.clock)
        # The admins' banner reads the stored alerts, whichever StaffAlerts the services deliver through.
        self.alerts = StoredStaffAlerts(services.store, services.clock)
        self.secret = services.sealer.keyring.mac_key
        https = services.config.server.is_https
        self.cookie = "__Host-hl_staff" if https else "hl_staff"
        self.secure_cookie = https

    def ip(self, request: web.Request) -> str:
        return client_ip(request, self.s.config.server.trusted_proxies)

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
        # $gte 1, not $gt 0: SecantusDB starts an exclusive range at the first entry EQUAL to the bound
        # and steps over every one of them (here: every read thread of the org).
        query = {"org_id": ctx.org.id, "unread_staff": {"$gte": 1}}
        assignees = thread_assignees(ctx.org.policy, ctx.member)
        if assignees is None:
            return int(await self.s.store.threads.count_documents(query))
        # The same indexed read of the unread threads; the assignee is checked here, since no index
        # has both fields (a second range in the filter would read every thread of the org).
        unread = self.s.store.threads.find(query, projection={"assignee": 1})
        return sum([1 async for d in unread if d.get("assignee") in assignees])

    async def open_alerts(self, ctx: StaffContext) -> int:
        """Alerts waiting for an admin's review (admins only: the banner on every staff page)."""
        return await self.alerts.open_count(ctx.org.id) if ctx.is_admin else 0

    async def page(self, request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
        """Render a staff page: the signed-in member, the nav counters, admin alerts and the CSRF token come along."""
        ctx = request.get(STAFF)
        context.setdefault("csrf", ctx.csrf if ctx else "")
        unread, alerts = await asyncio.gather(self.unread_threads(ctx), self.open_alerts(ctx)) if ctx else (0, 0)
        return render(request, template, status=status, me=ctx.member if ctx else None,
                      org=ctx.org if ctx else None, unread_threads=unread, open_alerts=alerts, **context)

    async def contact_labels(self, org_id: str, contact_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Names (opened) and masked address hints of the given contacts, for the rows of one page."""
        out: dict[str, dict[str, Any]] = {}
        if not contact_ids:
            return out
        # Only what a row shows (a contact carries sealed addresses, blind indexes, consent history...).
        async for doc in self.s.store.contacts.find({"org_id": org_id, "_id": {"$in": contact_ids}},
                                                    projection=LABEL_FIELDS):
            name = None
            if doc.get("name") and not doc.get("erased_at"):
                try:
                    name = await self.s.vault.open(org_id, "contacts", doc["_id"], "name", doc["name"])
                except IntegrityError:
                    name = None
            out[doc["_id"]] = {"name": name, "phone_hint": doc.get("phone_hint"), "email_hint": doc.get("email_hint"),
                               "erased": bool(doc.get("erased_at"))}
        return out

    async def deny(self, request: web.Request, kind: str, requested: str) -> NotFound:
        """Audit a lookup of an id that is not this org's (foreign or unknown); return the 404 to raise."""
        ctx = request[STAFF]
        await self.s.audit.append(
            ctx.org.id, "authz.deny", ctx.actor, outcome="denied", ip=self.ip(request),
            detail={"object": kind, "requested": requested if is_id(requested) else "malformed",
                    "route": request.path if len(request.path) <= 200 else request.path[:200]},
        )
        return NotFound(kind)


LABEL_FIELDS = {"name": 1, "phone_hint": 1, "email_hint": 1, "erased_at": 1}


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
