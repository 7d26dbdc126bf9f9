"""The authenticator enrolment page shows its otpauth:// URI as a QR code (inline SVG, segno).

The code is drawn on the server: no image request, no data: URL, no script, within the CSP. It
encodes this member's own pending secret, and nothing the member or the org typed can break out
of it into the page's markup.
"""

from __future__ import annotations

import html as htmllib
import re
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import segno

from gateway.security.staff_auth import Totp
from tests.portal.test_staff_auth import re_secret
from tests.portal.test_staff_support import Browser, csrf_of, make_staff, signed_in
from tests.support.harness import Gateway

URI = re.compile(r'<code class="uri">([^<]+)</code>')
SVG = re.compile(r"<svg\b[^>]*>.*?</svg>", re.DOTALL)
MODULES = re.compile(r'<path\b[^>]*\bstroke="#000"[^>]*\bd="([^"]+)"')


def page_uri(html: str) -> str:
    found = URI.search(html)
    assert found, html
    return htmllib.unescape(found.group(1))


def modules(svg: str) -> str:
    """The path that draws the dark modules (the same at any scale: the scale is a transform)."""
    [d] = MODULES.findall(svg)
    return d


def only_svg(html: str) -> str:
    assert html.count("<svg") == 1 and html.count("</svg>") == 1, html
    [svg] = SVG.findall(html)
    return svg


def assert_qr_of_own_uri(html: str, secret: str) -> str:
    """The page has exactly one <svg>: a labelled QR code of the page's own URI, for `secret`."""
    uri = page_uri(html)
    assert parse_qs(urlsplit(uri).query)["secret"] == [secret] and re_secret(html) == secret
    svg = only_svg(html)
    assert svg.startswith('<svg role="img" aria-label="QR code for your authenticator app" ')
    assert modules(svg) == modules(segno.make(uri, micro=False).svg_inline())
    # Numbers only: no text in the drawing, no link, no script, nothing fetched.
    assert re.fullmatch(r'<svg [^<>]*><g [^<>]*><path [^<>]*/><path [^<>]*/></g></svg>', svg), svg
    for absent in ("<title", "<desc", "<text", "<image", "<script", "href", "data:", " on", "style="):
        assert absent not in svg, absent
    return uri


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes, as a browser's parser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


async def pending_secret(gw: Gateway, member_id: str) -> str:
    doc = await gw.store.staff.find_one({"_id": member_id})
    secret = await Totp(gw.store, gw.services.vault, gw.clock).pending_secret(doc)
    assert secret
    return secret


async def start(b: Browser) -> str:
    resp = await b.post("/staff/account/totp/start", csrf_from="/staff/account/totp")
    assert resp.status == 200
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp and "img-src 'self' data:" in csp
    return await resp.text()


async def test_enrolment_shows_a_qr_code_of_the_members_own_pending_secret(gw):
    browser, member = await signed_in(gw)
    other_browser, other = await signed_in(gw, email="second@riverside.test")
    async with browser as b, other_browser as o:
        html = await start(b)
        uri = assert_qr_of_own_uri(html, await pending_secret(gw, member.id))
        assert "agent%40riverside.test" in uri
        assert 'class="secret"' in html  # the typed key stays as the alternative
        assert "<img" not in html

        # Another member's page draws their own secret, not this one.
        other_html = await start(o)
        other_uri = assert_qr_of_own_uri(other_html, await pending_secret(gw, other.id))
        assert modules(only_svg(other_html)) != modules(only_svg(html)) and other_uri != uri

        # A wrong code shows the page again with the same pending secret's code.
        wrong = await b.post("/staff/account/totp/confirm", {"totp": "000000"}, csrf=csrf_of(html))
        assert wrong.status == 422
        again = await wrong.text()
        assert assert_qr_of_own_uri(again, await pending_secret(gw, member.id)) == uri

        # Starting over makes a new secret, and the code follows it.
        restarted = await start(b)
        assert assert_qr_of_own_uri(restarted, await pending_secret(gw, member.id)) != uri

        # The account page itself (no enrolment under way) draws nothing.
        assert "<svg" not in await (await b.get("/staff/account/totp")).text()


async def test_markup_in_the_email_or_org_name_cannot_reach_the_page_as_markup(gw):
    await gw.services.orgs.update(gw.org.id, name="<script>alert(1)</script> Clinic")
    member = await make_staff(gw, "quote@riverside.test")
    # The sign-up validator refuses such an address; a stored one (an import, an older version)
    # must still not inject anything.
    evil = 'a"<b>x</b><svg onload=alert(2)>@x.test'
    async with Browser(gw) as b:
        await b.login(member.email)
        await gw.store.staff.update_one({"_id": member.id}, {"$set": {"email": evil}})
        html = await start(b)
        uri = assert_qr_of_own_uri(html, await pending_secret(gw, member.id))
        tags = Tags(html).tags
        assert [t for t, _ in tags].count("svg") == 1 and "b" not in [t for t, _ in tags]
        assert not [(t, a) for t, attrs in tags for a, _ in attrs if a.startswith("on")]
        assert [dict(a).get("src") for t, a in tags if t == "script"] == ["/static/staff.js"]
        assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
        # The address is in the URI, percent-encoded (otpauth label), so the QR carries it as data.
        assert evil not in uri and "%3Cb%3E" in uri
