"""One same-origin check (portal/http.py same_origin) for every surface: a cross-origin form POST
is refused alike by the client portal and the staff portal."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from portal.http import same_origin
from tests.portal.test_client_portal import csrf_of, post_open, send_secure
from tests.portal.test_staff_support import signed_in

PUBLIC = "http://hushlink.test"

REFUSED = [
    {"Origin": "https://evil.example"},
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"},  # the browser's word is not enough
    {"Origin": "http://hushlink.test.evil.example"},
    {"Origin": "null"},  # a sandboxed frame or data: URL, with no browser to vouch for it
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain
    {"Sec-Fetch-Site": "none"},  # a form POST never comes from the address bar
    {"Origin": PUBLIC, "Sec-Fetch-Site": "cross-site"},
]
ACCEPTED = [
    {},  # not a browser: the CSRF token decides
    {"Origin": PUBLIC},
    {"Origin": PUBLIC + "/", "Sec-Fetch-Site": "same-origin"},
    {"Origin": "null", "Sec-Fetch-Site": "same-origin"},  # Referrer-Policy: no-referrer on our pages
    {"Sec-Fetch-Site": "same-origin"},
]


@pytest.mark.parametrize("headers", REFUSED)
def test_cross_origin_headers_are_refused(headers):
    assert not same_origin(make_mocked_request("POST", "/", headers=headers), PUBLIC)


@pytest.mark.parametrize("headers", ACCEPTED)
def test_same_origin_headers_are_accepted(headers):
    assert same_origin(make_mocked_request("POST", "/", headers=headers), PUBLIC)


async def test_client_and_staff_routes_refuse_the_same_cross_origin_posts(gw):
    sent, token = await send_secure(gw, pin=None)
    csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
    browser, _ = await signed_in(gw)
    url = f"/staff/threads/{sent['thread_id']}"
    async with browser as b:
        for headers in REFUSED:
            client = await post_open(gw, token, csrf, headers=headers)
            staff = await b.post(url + "/status", {"status": "closed"}, csrf_from=url, headers=headers)
            assert (client.status, staff.status) == (403, 403), headers
        assert (await gw.store.threads.find_one({"_id": sent["thread_id"]}))["status"] == "open"
        assert await gw.store.sessions.count_documents({"kind": "client"}) == 0
        same = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
        assert (await post_open(gw, token, csrf, headers=same)).status == 303
        assert (await b.post(url + "/status", {"status": "closed"}, csrf_from=url, headers=same)).status == 303
