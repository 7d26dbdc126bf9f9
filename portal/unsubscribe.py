"""The one-click unsubscribe endpoint, /u/<token> (RFC 8058), linked from every mail to a client.

POST with the body `List-Unsubscribe=One-Click` opts the token's contact out of email: no sign-in
and no CSRF token (RFC 8058 section 3.1: the mail provider POSTs the link as it is, without
cookies), and an answer that names nobody. GET only shows a page with a button that makes that
POST: it changes nothing, since mail scanners and link previews follow every link in a mail.
The token rules live in gateway/messaging/unsubscribe.py.
"""

from __future__ import annotations

from aiohttp import web

from gateway.messaging.unsubscribe import Unsubscribe
from gateway.security.tokens import looks_like_token
from gateway.tenancy.orgs import Orgs
from portal.http import client_ip
from portal.render import render

ONE_CLICK = "One-Click"  # the value RFC 8058 section 3.1 requires for List-Unsubscribe


class UnsubscribePage:
    def __init__(self, unsubscribe: Unsubscribe, orgs: Orgs, trusted_proxies: tuple[str, ...]) -> None:
        self._unsubscribe = unsubscribe
        self._orgs = orgs
        self._trusted_proxies = trusted_proxies

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/u/{token}", self.confirm)
        app.router.add_post("/u/{token}", self.one_click)

    async def confirm(self, request: web.Request) -> web.Response:
        """The confirmation page (changes nothing)."""
        token = request.match_info["token"]
        scope = await self._unsubscribe.scope(token) if looks_like_token(token) else None
        if scope is None:
            return render(request, "unsubscribe.html", status=404, unknown=True, done=False)
        org = await self._orgs.get(scope["org_id"])
        return render(request, "unsubscribe.html", token=token, org_name=org.name, unknown=False, done=False)

    async def one_click(self, request: web.Request) -> web.Response:
        """Opt out of email (RFC 8058 one-click; also the confirmation page's button)."""
        token = request.match_info["token"]
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise web.HTTPUnsupportedMediaType(text="expected a form: List-Unsubscribe=One-Click")
        form = await request.post()
        if form.get("List-Unsubscribe") != ONE_CLICK:
            raise web.HTTPBadRequest(text="expected List-Unsubscribe=One-Click")
        if not await self._unsubscribe.opt_out(token, ip=client_ip(request, self._trusted_proxies)):
            return render(request, "unsubscribe.html", status=404, unknown=True, done=False)
        return render(request, "unsubscribe.html", done=True, unknown=False)
