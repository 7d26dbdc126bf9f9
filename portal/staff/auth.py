"""Staff sign-in and sessions: login (password, throttling, TOTP), logout, account, first-run setup.

Sessions are server-side (gateway.security.sessions, kind "staff"): the cookie holds a 256-bit id whose
SHA-256 is the session's key. A new id is issued at every sign-in and privilege change (the
pre-login cookie, which only binds the login form's CSRF token, is never promoted). Idle and
absolute limits come from the org policy (staff_idle_seconds, staff_absolute_seconds). When a
member is disabled, every one of their sessions is deleted, and a session whose member is
disabled or gone is refused anyway.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.errors import NotFound, ValidationError
from gateway.messaging.phone import normalize_e164
from gateway.security.audit import Actor, AuditLog
from gateway.security.pins import hash_secret, verify_secret
from gateway.security.sessions import Sessions
from gateway.security.staff_auth import LoginThrottle, SetupTokens, Totp, totp_uri
from gateway.security.tokens import csrf_token, new_token
from gateway.storage.store import Doc
from gateway.tenancy.orgs import Org, Orgs, validate_email, validate_name
from gateway.tenancy.staff import Staff, validate_password
from portal.qr import qr_svg
from portal.render import render
from portal.staff.common import STAFF, Shell, StaffContext, form_fields, redirect, safe_next
from portal.staff.policy import ANY_STAFF, policy

logger = logging.getLogger(__name__)

MFA_SECONDS = 300  # a password-checked sign-in waits this long for its TOTP code
MFA_TRIES = 5
MAX_PASSWORD_INPUT = 1024
_dummy_hash: str | None = None

BAD_LOGIN = "Email or password is not right."
BAD_CODE = "That authenticator code is not right, or it was already used. Wait for the next code."
THROTTLED = "Too many failed sign-ins. Try again in {minutes} minutes."
CLEAR_SITE_DATA = '"cache", "cookies", "storage"'


def _dummy() -> str:
    """A hash to verify against when the account does not exist, so timing does not tell."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_secret(new_token())
    return _dummy_hash


class StaffAuth:
    """Sessions and sign-in routes of the staff portal."""

    def __init__(self, shell: Shell, *, sessions: Sessions, staff: Staff, orgs: Orgs, audit: AuditLog, totp: Totp,
                 throttle: LoginThrottle, setup_tokens: SetupTokens) -> None:
        self.d = shell
        self.sessions = sessions
        self.staff = staff
        self.orgs = orgs
        self.audit = audit
        self.totp = totp
        self.throttle = throttle
        self.setup_tokens = setup_tokens

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/login/totp", self.login_totp)
        r.add_post("/logout", self.logout)
        r.add_get("/account", self.account)
        r.add_post("/account/password", self.change_password)
        r.add_post("/account/sessions/end-others", self.end_other_sessions)
        r.add_get("/account/totp", self.totp_page)
        r.add_post("/account/totp/start", self.totp_start)
        r.add_post("/account/totp/confirm", self.totp_confirm)
        r.add_post("/account/totp/disable", self.totp_disable)
        r.add_get("/setup/{token}", self.setup_page)
        r.add_post("/setup/{token}", self.setup)

    # -- sessions -------------------------------------------------------------------------
    async def context(self, request: web.Request, touch: bool) -> StaffContext | None:
        """The signed-in member for this request's cookie, or None."""
        sid = request.cookies.get(self.d.cookie)
        session = await self.sessions.get("staff", sid, touch=touch)
        if session is None or sid is None:
            return None
        try:
            member = await self.staff.get(session["org_id"], str(session.get("user_id")))
        except NotFound:
            member = None
        if member is None or member.disabled:  # disabled behind our back: the session dies too
            await self.sessions.delete(sid)
            return None
        # The org as stored, not Orgs' few-second cache: a policy an admin just changed in another
        # process (require_totp above all) applies from this request on.
        org = await self.orgs.stored(session["org_id"])
        if org.policy.require_totp and not member.has_totp and not session.get("enroll_totp"):
            # Started before the org required an authenticator (or raced the change): the session
            # may only enrol one now (NIST 800-63B 4.2.1: AAL2 once the org asks for it).
            await self.sessions.update(session, enroll_totp=True)
            session = {**session, "enroll_totp": True}
        return StaffContext(member, org, session, sid, csrf_token(self.d.secret, "staff|" + session["_id"]))

    async def _start(self, request: web.Request, doc: Doc, org: Org, *, target: str, mfa: bool,
                     reason: str = "login") -> web.Response:
        """Issue a fresh session id (never reusing the presented cookie) and redirect."""
        old = request.cookies.get(self.d.cookie)
        if old:
            await self.sessions.delete(old)
        enroll = org.policy.require_totp and not doc.get("totp_secret")
        ip = self.d.ip(request)
        sid, _ = await self.sessions.create(
            "staff", org.id, idle_seconds=org.policy.staff_idle_seconds,
            absolute_seconds=org.policy.staff_absolute_seconds, user_id=doc["_id"], ip=ip, mfa=mfa,
            enroll_totp=enroll,
        )
        if reason == "login":
            await self.throttle.succeeded(doc["email_norm"], ip)
            await self.audit.append(org.id, "auth.login", Actor("staff", doc["_id"]), ip=ip, staff_id=doc["_id"],
                                      detail={"mfa": mfa})
        response = redirect("/staff/account/totp" if enroll else target)
        self.d.set_cookie(response, sid)
        return response

    def _public_csrf(self, binding: str) -> str:
        return csrf_token(self.d.secret, "staff-login|" + binding)

    def _binding(self, request: web.Request) -> tuple[str, bool]:
        value = request.cookies.get(self.d.cookie, "")
        if not value or len(value) > 100:
            return new_token(), True
        return value, False

    def _login_form(self, request: web.Request, *, status: int = 200, error: str | None = None,
                    email: str = "", next_: str = "", headers: dict[str, str] | None = None) -> web.Response:
        binding, fresh = self._binding(request)
        response = render(request, "staff/login.html", status=status, error=error, email=email,
                          next=safe_next(next_) if next_ else "", csrf=self._public_csrf(binding), me=None)
        if fresh:
            self.d.set_cookie(response, binding)
        if headers:
            response.headers.update(headers)
        return response

    # -- sign-in ----------------------------------------------------------------------------
    @policy(public=True)
    async def login_page(self, request: web.Request) -> web.Response:
        if await self.context(request, False) is not None:
            return redirect(safe_next(request.query.get("next")))
        return self._login_form(request, next_=request.query.get("next", ""))

    async def _throttled(self, request: web.Request, email_norm: str, ip: str, doc: Doc | None,
                         email: str, next_: str) -> web.Response | None:
        wait = await self.throttle.retry_after(email_norm, ip)
        if wait is None:
            return None
        if doc is not None:
            await self.audit.append(doc["org_id"], "auth.login", Actor("staff", doc["_id"]), outcome="throttled",
                                      ip=ip, staff_id=doc["_id"])
        return self._login_form(request, status=429, error=THROTTLED.format(minutes=max(1, -(-wait // 60))),
                                email=email, next_=next_, headers={"Retry-After": str(wait)})

    async def _failed(self, ip: str, email_norm: str, doc: Doc | None, reason: str) -> None:
        await self.throttle.failed(email_norm, ip)
        if doc is not None:
            await self.audit.append(doc["org_id"], "auth.login", Actor("staff", doc["_id"]), outcome="denied",
                                      ip=ip, staff_id=doc["_id"], detail={"reason": reason})
        else:
            logger.info("staff sign-in for an unknown account", extra={"fields": {"reason": reason}})

    @policy(public=True)
    async def login(self, request: web.Request) -> web.Response:
        form = await form_fields(request)
        email = form.get("email", "").strip()[:320]
        password = form.get("password", "")[:MAX_PASSWORD_INPUT]
        code = form.get("totp", "").strip()[:16]
        next_ = form.get("next", "")
        email_norm, ip = email.lower(), self.d.ip(request)
        doc = await self.staff.find_login(email) if email else None
        if (limited := await self._throttled(request, email_norm, ip, doc, email, next_)) is not None:
            return limited
        ok = verify_secret(doc["password_hash"] if doc else _dummy(), password)
        if doc is None or not ok or doc.get("disabled"):
            await self._failed(ip, email_norm, doc, "disabled" if doc and ok else "password")
            return self._login_form(request, status=401, error=BAD_LOGIN, email=email, next_=next_)
        await self.staff.rehash(doc, password)
        org = await self.orgs.stored(doc["org_id"])  # as stored: a require_totp just turned on applies
        if doc.get("totp_secret"):
            if not code:
                return await self._ask_code(request, doc, next_)
            if not await self.totp.verify(doc, code):
                await self._failed(ip, email_norm, doc, "totp")
                return self._login_form(request, status=401, error=BAD_CODE, email=email, next_=next_)
        return await self._start(request, doc, org, target=safe_next(next_), mfa=bool(doc.get("totp_secret")))

    async def _ask_code(self, request: web.Request, doc: Doc, next_: str) -> web.Response:
        """The password was right and the account has TOTP: hold the sign-in for MFA_SECONDS."""
        old = request.cookies.get(self.d.cookie)
        if old:
            await self.sessions.delete(old)
        sid, _ = await self.sessions.create("staff_mfa", doc["org_id"], idle_seconds=MFA_SECONDS,
                                              absolute_seconds=MFA_SECONDS, user_id=doc["_id"], tries=0,
                                              next=safe_next(next_))
        response = render(request, "staff/login_totp.html", csrf=self._public_csrf(sid), error=None, me=None)
        self.d.set_cookie(response, sid)
        return response

    @policy(public=True)
    async def login_totp(self, request: web.Request) -> web.Response:
        form = await form_fields(request)
        sid = request.cookies.get(self.d.cookie, "")
        held = await self.sessions.get("staff_mfa", sid, touch=False)
        try:
            doc = await self.staff.doc(held["org_id"], str(held["user_id"])) if held else None
        except NotFound:  # deleted while the sign-in waited for its code
            doc = None
        if held is None or doc is None or doc.get("disabled"):
            return self._login_form(request, status=401, error="Your sign-in timed out. Please start again.")
        ip = self.d.ip(request)
        if (limited := await self._throttled(request, doc["email_norm"], ip, doc, doc["email"], "")) is not None:
            await self.sessions.delete(sid)
            return limited
        if not await self.totp.verify(doc, form.get("totp", "")[:16]):
            await self._failed(ip, doc["email_norm"], doc, "totp")
            tries = int(held.get("tries", 0)) + 1
            if tries >= MFA_TRIES:
                await self.sessions.delete(sid)
                return self._login_form(request, status=401, error=BAD_CODE)
            await self.sessions.update(held, tries=tries)
            return render(request, "staff/login_totp.html", status=401, csrf=self._public_csrf(sid),
                          error=BAD_CODE, me=None)
        org = await self.orgs.stored(doc["org_id"])
        return await self._start(request, doc, org, target=safe_next(held.get("next")), mfa=True)

    @policy(*ANY_STAFF, enrolling=True)
    async def logout(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        await self.sessions.delete(ctx.sid)
        await self.audit.append(ctx.org.id, "auth.logout", ctx.actor, ip=self.d.ip(request), staff_id=ctx.member.id)
        response = render(request, "staff/signed_out.html", reason="signed_out")
        self.d.clear_cookie(response)
        response.headers["Clear-Site-Data"] = CLEAR_SITE_DATA
        return response

    # -- account ----------------------------------------------------------------------------
    @policy(*ANY_STAFF)
    async def account(self, request: web.Request) -> web.Response:
        return await self._account_page(request)

    async def _account_page(self, request: web.Request, *, status: int = 200, message: str | None = None,
                            error: str | None = None) -> web.Response:
        ctx = request[STAFF]
        sessions = [{"current": d["_id"] == ctx.session["_id"], "created_at": d["created_at"],
                     "last_seen_at": d["last_seen_at"], "ip": d.get("ip"), "mfa": d.get("mfa")}
                    for d in await self.sessions.of_user("staff", ctx.member.id, 50)]
        return await self.d.page(request, "staff/account.html", status=status, sessions=sessions,
                                 message=message, error=error)

    @policy(*ANY_STAFF)
    async def change_password(self, request: web.Request) -> web.Response:
        """Re-authenticate with the current password (ASVS 5.0 7.5.1), then end every other session."""
        ctx = request[STAFF]
        form = await form_fields(request)
        doc = await self.staff.doc(ctx.org.id, ctx.member.id)
        if not verify_secret(doc["password_hash"], form.get("current", "")[:MAX_PASSWORD_INPUT]):
            await self.throttle.failed(doc["email_norm"], self.d.ip(request))
            return await self._account_page(request, status=401, error="The current password is not right.")
        try:
            await self.staff.set_password(ctx.org.id, ctx.member.id, form.get("new", ""))
        except ValidationError as err:
            return await self._account_page(request, status=422, error=f"New password {err.message}.")
        await self.sessions.delete_where(kind="staff", user_id=ctx.member.id)
        await self.audit.append(ctx.org.id, "auth.password_changed", ctx.actor, ip=self.d.ip(request),
                                  staff_id=ctx.member.id)
        return await self._start(request, doc, ctx.org, target="/staff/account", mfa=bool(ctx.session.get("mfa")),
                                 reason="password")

    @policy(*ANY_STAFF)
    async def end_other_sessions(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        ended = await self.sessions.delete_where(kind="staff", user_id=ctx.member.id,
                                                 _id={"$ne": ctx.session["_id"]})
        await self.audit.append(ctx.org.id, "auth.sessions_ended", ctx.actor, ip=self.d.ip(request),
                                staff_id=ctx.member.id, detail={"count": ended})
        return redirect("/staff/account")

    # -- TOTP enrolment -----------------------------------------------------------------------
    @policy(*ANY_STAFF, enrolling=True)
    async def totp_page(self, request: web.Request) -> web.Response:
        return await self._totp_page(request)

    async def _totp_page(self, request: web.Request, *, status: int = 200, secret: str | None = None,
                         error: str | None = None) -> web.Response:
        ctx = request[STAFF]
        uri = totp_uri(secret, ctx.member.email) if secret else ""
        return await self.d.page(request, "staff/totp.html", status=status, secret=secret,
                                 grouped=" ".join(secret[i:i + 4] for i in range(0, len(secret), 4)) if secret else "",
                                 uri=uri, qr=qr_svg(uri) if uri else None, error=error,
                                 required=ctx.org.policy.require_totp, enrolling=bool(ctx.session.get("enroll_totp")))

    @policy(*ANY_STAFF, enrolling=True)
    async def totp_start(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        if ctx.member.has_totp:
            return redirect("/staff/account/totp")
        secret = await self.totp.begin(ctx.org.id, ctx.member.id)
        return await self._totp_page(request, secret=secret)

    @policy(*ANY_STAFF, enrolling=True)
    async def totp_confirm(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        form = await form_fields(request)
        doc = await self.staff.doc(ctx.org.id, ctx.member.id)
        if not await self.totp.confirm(doc, form.get("totp", "")[:16]):
            secret = await self.totp.pending_secret(doc)
            if secret is None:
                return redirect("/staff/account/totp")
            return await self._totp_page(request, status=422, secret=secret, error=BAD_CODE)
        await self.audit.append(ctx.org.id, "auth.totp_enabled", ctx.actor, ip=self.d.ip(request),
                                  staff_id=ctx.member.id)
        doc = await self.staff.doc(ctx.org.id, ctx.member.id)
        # A new factor is a privilege change: a new session id (OWASP ASVS 5.0 7.2.4).
        return await self._start(request, doc, ctx.org, target="/staff/account", mfa=True, reason="totp")

    @policy(*ANY_STAFF)
    async def totp_disable(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        form = await form_fields(request)
        if ctx.org.policy.require_totp:
            return await self._totp_page(request, status=403, error="Your organization requires an authenticator.")
        doc = await self.staff.doc(ctx.org.id, ctx.member.id)
        if not verify_secret(doc["password_hash"], form.get("password", "")[:MAX_PASSWORD_INPUT]):
            return await self._totp_page(request, status=401, error="The password is not right.")
        await self.totp.reset(ctx.org.id, ctx.member.id)
        await self.audit.append(ctx.org.id, "auth.totp_disabled", ctx.actor, ip=self.d.ip(request),
                                  staff_id=ctx.member.id)
        return redirect("/staff/account/totp")

    # -- first run --------------------------------------------------------------------------
    def _setup_form(self, request: web.Request, token: str, *, status: int = 200, error: str | None = None,
                    values: dict[str, Any] | None = None) -> web.Response:
        binding, fresh = self._binding(request)
        response = render(request, "staff/setup.html", status=status, token=token, error=error,
                          values=values or {}, csrf=self._public_csrf(binding), me=None)
        if fresh:
            self.d.set_cookie(response, binding)
        return response

    def _setup_gone(self, request: web.Request) -> web.Response:
        return render(request, "error.html", status=404,
                      message="This setup link can't be used: it expired, was used, or the gateway is set up.")

    @policy(public=True)
    async def setup_page(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not await self.setup_tokens.usable(token):
            return self._setup_gone(request)
        return self._setup_form(request, token)

    @policy(public=True)
    async def setup(self, request: web.Request) -> web.Response:
        """Create the organization and its first admin, then sign the admin in."""
        token = request.match_info["token"]
        if not await self.setup_tokens.usable(token):
            return self._setup_gone(request)
        form = await form_fields(request)
        values = {k: form.get(k, "")[:320] for k in ("org_name", "sms_number", "email")}
        try:
            name = validate_name(values["org_name"])
            number = normalize_e164(values["sms_number"], field="sms_number") if values["sms_number"].strip() else None
            email = validate_email(values["email"])
            password = validate_password(form.get("password", ""))
        except ValidationError as err:
            return self._setup_form(request, token, status=422, error=f"{err.field}: {err.message}", values=values)
        if not await self.setup_tokens.claim(token):
            return self._setup_gone(request)
        try:
            org = await self.orgs.create(name, number)
        except ValidationError as err:
            await self.setup_tokens.release(token)
            return self._setup_form(request, token, status=422, error=f"{err.field}: {err.message}", values=values)
        member = await self.staff.create(org.id, email, "admin", password)
        actor = Actor("staff", member.id)
        ip = self.d.ip(request)
        await self.audit.append(org.id, "org.created", actor, ip=ip, detail={"via": "setup"})
        await self.audit.append(org.id, "staff.created", actor, ip=ip, staff_id=member.id,
                                  detail={"role": "admin", "via": "setup"})
        doc = await self.staff.doc(org.id, member.id)
        return await self._start(request, doc, org, target="/staff/", mfa=False)
