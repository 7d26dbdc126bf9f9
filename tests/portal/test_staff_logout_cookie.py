"""Signing out clears the __Host- session cookie with the attributes it was set with (issue 9).

A browser ignores a Set-Cookie for a __Host- name that lacks Secure or Path=/, even one that
deletes it, so a deletion without them would leave the cookie in the browser (RFC 6265bis).
"""

from __future__ import annotations

import aiohttp

from gateway.runtime.services import build_services
from tests.conftest import make_config, running_gateway
from tests.portal.test_staff_support import Browser, make_staff, set_cookies

HTTPS_URL = "https://hushlink.test"
COOKIE = "__Host-hl_staff"


def attributes(cookie: dict[str, object]) -> dict[str, object]:
    raw = str(cookie["raw"]).lower()
    return {"path": cookie.get("path"), "secure": "; secure" in raw, "httponly": "; httponly" in raw,
            "samesite": str(cookie.get("samesite", "")).lower(), "domain": cookie.get("domain")}


async def test_staff_logout_expires_the_host_cookie_with_its_original_attributes(
        twilio, store, keyring, clock, aiohttp_client):  # type: ignore[no-untyped-def]
    services = build_services(make_config(twilio, public_url=HTTPS_URL), store, keyring, clock)
    async with running_gateway(services, twilio, clock, aiohttp_client) as gw:
        member = await make_staff(gw)
        async with Browser(gw) as b:
            # The test server speaks http on loopback; let the jar send Secure cookies to it.
            await b.session.close()
            b.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(
                unsafe=True, treat_as_secure_origin=[gw.server_url]))
            signed_in = await b.login(member.email)
            issued = set_cookies(signed_in)[COOKIE]
            out = await b.post("/staff/logout", csrf_from="/staff/")
            assert out.status == 200
            cleared = set_cookies(out)[COOKIE]
    assert attributes(issued) == {"path": "/", "secure": True, "httponly": True, "samesite": "strict",
                                  "domain": None}
    assert attributes(cleared) == attributes(issued)
    assert cleared["value"] == "" and str(cleared["max-age"]) == "0"
