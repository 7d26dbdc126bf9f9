"""Helpers for the staff portal tests (no tests here): a browser with its own cookie jar, sign-in."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import aiohttp

from gateway.tenancy.staff import Staff, StaffMember
from tests.support.harness import Gateway

PASSWORD = "violet-kayak-harbor-1987"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
COOKIE = "hl_staff"  # the test gateway's public URL is http://, so no __Host- prefix


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:2000]
    return found.group(1)


def set_cookies(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The raw Set-Cookie headers, parsed (attributes included)."""
    out: dict[str, Any] = {}
    for header in resp.headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            out[name] = {"value": morsel.value, "raw": header, **{k: v for k, v in morsel.items() if v}}
    return out


async def make_staff(gw: Gateway, email: str = "agent@riverside.test", role: str = "agent",
                     org_id: str | None = None, password: str = PASSWORD) -> StaffMember:
    return await Staff(gw.store, gw.clock).create(org_id or gw.org.id, email, role, password)


class Browser:
    """One browser: its own cookie jar, talking to the test gateway over loopback."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.session.close()

    def url(self, path: str) -> str:
        return self.gw.server_url + path

    @property
    def sid(self) -> str | None:
        for c in self.session.cookie_jar:
            if c.key == COOKIE:
                return c.value
        return None

    def use_cookie(self, value: str) -> None:
        """Present exactly this session cookie from now on (e.g. an old, stolen one)."""
        self.session.cookie_jar.clear()
        self.session.cookie_jar.update_cookies({COOKIE: value}, aiohttp.client.URL(self.gw.server_url))

    async def get(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        kw.setdefault("allow_redirects", False)
        resp = await self.session.get(self.url(path), **kw)
        await resp.read()
        return resp

    async def post(self, path: str, data: dict[str, str] | None = None, *, csrf_from: str | None = None,
                   csrf: str | None = None, **kw: Any) -> aiohttp.ClientResponse:
        """POST a form with the CSRF token of the page at `csrf_from` (default: the same path)."""
        form = dict(data or {})
        if csrf is None:
            page = await self.get(csrf_from or path)
            assert page.status == 200, (page.status, await page.text())
            csrf = csrf_of(await page.text())
        form.setdefault("csrf", csrf)
        kw.setdefault("allow_redirects", False)
        resp = await self.session.post(self.url(path), data=form, **kw)
        await resp.read()
        return resp

    async def login(self, email: str, password: str = PASSWORD, totp: str | None = None,
                    expect: int | None = 303) -> aiohttp.ClientResponse:
        data = {"email": email, "password": password}
        if totp is not None:
            data["totp"] = totp
        resp = await self.post("/staff/login", data, csrf_from="/staff/login")
        if expect is not None:
            assert resp.status == expect, (resp.status, await resp.text())
        return resp


async def signed_in(gw: Gateway, role: str = "agent", email: str | None = None) -> tuple[Browser, StaffMember]:
    member = await make_staff(gw, email or f"{role}@riverside.test", role)
    browser = Browser(gw)
    await browser.login(member.email)
    return browser, member


async def audit_entries(gw: Gateway, action: str, org_id: str | None = None) -> list[dict[str, Any]]:
    return [d async for d in gw.store.audit.find({"org_id": org_id or gw.org.id, "action": action}).sort("seq", 1)]


async def enable_totp(gw: Gateway, member: StaffMember) -> str:
    """Enrol `member` in an authenticator app; return its secret."""
    import pyotp

    from gateway.security.staff_auth import Totp

    totp = Totp(gw.store, gw.services.vault, gw.clock)
    secret = await totp.begin(gw.org.id, member.id)
    doc = await Staff(gw.store, gw.clock).doc(gw.org.id, member.id)
    assert await totp.confirm(doc, pyotp.TOTP(secret).at(gw.clock.now()))
    gw.clock.advance(30)  # the enrolment code's step is used up
    return secret
