"""Default-deny route policy for /staff: every handler declares who may call it, or nobody can.

    @policy("admin")                    admins only
    @policy("admin", "agent")           any signed-in staff member
    @policy(public=True)                no session (sign-in, first-run setup)

The guard middleware refuses (403) any staff route whose handler carries no policy, signs the
request's staff member in from the session cookie, checks the role, and checks every state
change (anything but GET/HEAD) for the synchronizer CSRF token *and* a same-site Sec-Fetch-Site /
Origin (OWASP ASVS 5.0 8.2.1, 3.5.1; docs/security-model.md, 'Staff access'). Authorization fails
closed: an exception is a 5xx with no
page data.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from gateway.security.audit import AuditLog
from gateway.security.tokens import csrf_ok
from gateway.tenancy.staff import ROLES
from portal.http import Handler, same_origin
from portal.render import render
from portal.staff.common import STAFF, Shell, StaffContext, form_fields

logger = logging.getLogger(__name__)

POLICY_ATTR = "__staff_policy__"
ANY_STAFF = ROLES  # ("admin", "agent")
SAFE_METHODS = ("GET", "HEAD")
BACKGROUND_HEADER = "X-Hushlink-Background"  # set by staff.js: refreshes are not user activity

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Policy:
    roles: frozenset[str]
    public: bool = False
    touch: bool = True  # a request extends the idle timeout (not SSE, not background refreshes)
    enrolling: bool = False  # reachable while the org requires TOTP and the member has none yet


def policy(*roles: str, public: bool = False, touch: bool = True, enrolling: bool = False) -> Callable[[F], F]:
    """Declare who may use a staff route."""
    if public == bool(roles) or set(roles) - set(ROLES):
        raise ValueError("a policy names roles (admin, agent) or is public, not both")

    def mark(fn: F) -> F:
        setattr(fn, POLICY_ATTR, Policy(frozenset(roles), public, touch, enrolling))
        return fn

    return mark


def policy_of(handler: Any) -> Policy | None:
    found = getattr(handler, POLICY_ATTR, None)
    return found if isinstance(found, Policy) else None


ContextLoader = Callable[[web.Request, bool], Awaitable[StaffContext | None]]


def staff_guard(shell: Shell, audit: AuditLog, load: ContextLoader) -> Any:
    """The middleware of the staff sub-application."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = request.match_info
        if match.http_exception is not None:
            return await handler(request)  # 404 / 405: nothing to guard
        pol = policy_of(match.handler)
        if pol is None:
            logger.error("staff route without a policy refused", extra={"fields": {"path": request.path}})
            return render(request, "error.html", status=403, message="Not allowed")
        mutating = request.method not in SAFE_METHODS
        if mutating and not same_origin(request, shell.public_url):
            return _expired(request)
        if pol.public:
            if mutating:
                binding = request.cookies.get(shell.cookie, "")
                form = await form_fields(request)
                if not binding or not csrf_ok(shell.secret, "staff-login|" + binding, form.get("csrf", "")):
                    return _expired(request)
            return await handler(request)
        touch = pol.touch and request.headers.get(BACKGROUND_HEADER) != "1"
        ctx = await load(request, touch)
        if ctx is None:
            if request.method in SAFE_METHODS and pol.touch and request.headers.get(BACKGROUND_HEADER) != "1":
                target = request.path_qs if len(request.path_qs) <= 500 else request.path
                return web.Response(status=303, headers={"Location": "/staff/login?next=" + quote(target, safe="/")})
            return render(request, "staff/signed_out.html", status=401, reason="expired")
        if ctx.session.get("enroll_totp") and not pol.enrolling:
            if request.method in SAFE_METHODS:
                return web.Response(status=303, headers={"Location": "/staff/account/totp"})
            return render(request, "error.html", status=403, message="Set up your authenticator app first")
        request[STAFF] = ctx
        if ctx.member.role not in pol.roles:
            await audit.append(ctx.org.id, "authz.deny", ctx.actor, outcome="denied", ip=shell.ip(request),
                               detail={"reason": "role", "route": request.path[:200]})
            return await shell.page(request, "error.html", status=403, message="Not allowed")
        if mutating:
            form = await form_fields(request)
            if not csrf_ok(shell.secret, "staff|" + ctx.session["_id"], form.get("csrf", "")):
                return _expired(request)
        return await handler(request)

    return guard


def _expired(request: web.Request) -> web.Response:
    return render(request, "error.html", status=403, message="This form expired. Reload the page and try again.")


def unguarded_routes(app: web.Application) -> list[str]:
    """Routes of a (staff) application whose handler declares no policy (a test asserts none)."""
    out = []
    for route in app.router.routes():
        if policy_of(route.handler) is None:
            info = route.resource.canonical if route.resource is not None else "?"
            out.append(f"{route.method} {info}")
    return out
