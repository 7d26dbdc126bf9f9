"""The client portal (/s/...): capability links, PIN, sessions, CSRF, headers, escaping.

Everything here is observed the way a client, a mail scanner or an attacker would observe it:
HTTP status, headers and HTML, what the Twilio stand-in was asked to send, and what landed in
the database and the audit log.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any

import pytest
from pymongo.errors import PyMongoError

from gateway.runtime.app import build_runtime, create_app
from gateway.runtime.services import build_services
from gateway.security.api_keys import ApiKeys
from gateway.security.audit import Actor
from outbound.twilio_sms import TwilioSmsSender
from tests.conftest import make_config
from tests.support.harness import CLIENT_PHONE, ORG_NUMBER, Gateway

PIN = "246810"
WRONG = "999999"
BODY = "Your lab results are ready: all values normal."
CSRF_RE = re.compile(r'name="csrf" value="([^"]*)"')
NONCE_RE = re.compile(r"'nonce-([^']+)'")


# -- helpers --------------------------------------------------------------------------------
class Page(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def forms(self) -> list[dict[str, Any]]:
        """Each form's attributes and the names of the fields inside it."""
        out: list[dict[str, Any]] = []
        for tag, attrs in self.tags:
            if tag == "form":
                out.append({**attrs, "fields": {}})
            elif tag in ("input", "textarea", "select", "button") and out and attrs.get("name"):
                out[-1]["fields"][attrs["name"]] = attrs.get("value")
        return out


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, html
    return found.group(1)


def normalized(html: str, *tokens: str) -> str:
    """The page without per-response values (nonce, CSRF) and without the token the caller sent."""
    html = re.sub(r'nonce="[^"]*"', 'nonce=""', html)
    html = CSRF_RE.sub('name="csrf" value=""', html)
    for t in tokens:
        if t:
            html = html.replace(t, "TOKEN")
    return re.sub(r'name="token" value="[^"]*"', 'name="token" value="TOKEN"', html)


def set_cookie(resp: Any) -> SimpleCookie:
    raw = resp.headers.getall("Set-Cookie", [])
    assert raw, "no Set-Cookie header"
    jar: SimpleCookie = SimpleCookie()
    for line in raw:
        jar.load(line)
    return jar


def random_token() -> str:
    return secrets.token_urlsafe(32)


async def send_secure(gw: Gateway, body: str = BODY, pin: str | None = PIN, **extra: Any) -> tuple[dict, str]:
    payload: dict[str, Any] = {"body": body, "secure": True, **extra}
    if pin is not None:
        payload["pin"] = pin
    data = await gw.api_send(**payload)
    await gw.drain()
    return data, gw.last_link_token()


async def link_doc(gw: Gateway, message_id: str) -> dict:
    doc = await gw.store.links.find_one({"message_id": message_id})
    assert doc is not None
    return doc


async def post_open(gw: Gateway, token: str, csrf: str | None, pin: str | None = None,
                    headers: dict[str, str] | None = None) -> Any:
    data: dict[str, str] = {}
    if csrf is not None:
        data["csrf"] = csrf
    if pin is not None:
        data["pin"] = pin
    return await gw.client.post(f"/s/{token}", data=data, headers=headers or {}, allow_redirects=False)


async def open_session(gw: Gateway, token: str, pin: str | None = PIN) -> str:
    """Open the link; return the session cookie value (also kept in the client's jar)."""
    resp = await gw.open_link(token, pin=pin)
    assert resp.status == 303, await resp.text()
    return set_cookie(resp)["hl_client"].value


async def thread_page(gw: Gateway) -> tuple[int, str]:
    resp = await gw.client.get("/s/thread")
    return resp.status, await resp.text()


# -- GET/HEAD are side-effect free ------------------------------------------------------------
async def test_get_and_head_on_a_link_change_nothing(gw):
    data, token = await send_secure(gw)
    before = await gw.audit_actions()
    for _ in range(5):
        resp = await gw.client.get(f"/s/{token}")
        assert resp.status == 200
        html = await resp.text()
    head = await gw.client.head(f"/s/{token}")
    assert head.status == 200

    link = await link_doc(gw, data["id"])
    assert link["opened_at"] is None and link["failures"] == 0 and link["locked_at"] is None
    assert await gw.store.sessions.count_documents({}) == 0
    after = await gw.audit_actions()
    assert after == before
    assert not {"link.opened", "thread.viewed", "message.viewed"} & set(after)
    assert BODY not in html  # the content is behind the POST

    forms = Page(html).forms()
    assert len(forms) == 1
    form = forms[0]
    assert form["method"] == "post" and form["action"] == f"/s/{token}"
    assert "pin" in form["fields"] and "csrf" in form["fields"]
    assert Page(html).find("input", name="pin")[0]["type"] == "password"

    # The same link still opens afterwards (a scanner did not consume it).
    opened = await gw.open_link(token, pin=PIN)
    assert opened.status == 303
    assert (await link_doc(gw, data["id"]))["opened_at"] is not None


async def test_pin_input_only_when_a_pin_is_required_per_message_or_per_contact(gw):
    data, token = await send_secure(gw, pin=None)
    html = await (await gw.client.get(f"/s/{token}")).text()
    assert Page(html).find("input", name="pin") == []
    assert [f["action"] for f in Page(html).forms()] == [f"/s/{token}"]

    link = await link_doc(gw, data["id"])
    await gw.services.contacts.set_pin(gw.org.id, link["contact_id"], "135790")
    html = await (await gw.client.get(f"/s/{token}")).text()
    assert len(Page(html).find("input", name="pin")) == 1
    csrf = csrf_of(html)
    assert (await post_open(gw, token, csrf)).status == 401  # no PIN given
    assert (await post_open(gw, token, csrf, pin=PIN)).status == 401  # another PIN
    assert (await post_open(gw, token, csrf, pin="135790")).status == 303


# -- opening -----------------------------------------------------------------------------------
async def test_right_pin_swaps_the_token_for_a_session_cookie(gw):
    data, token = await send_secure(gw)
    resp = await gw.open_link(token, pin=PIN)
    assert resp.status == 303
    location = resp.headers["Location"]
    assert location == "/s/thread" and token not in location
    raw = " ".join(resp.headers.getall("Set-Cookie"))
    assert token not in raw
    morsel = set_cookie(resp)["hl_client"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # plain-http deployment
    assert not morsel["domain"]
    assert morsel.value != token and len(morsel.value) >= 43

    status, html = await thread_page(gw)
    assert status == 200
    assert BODY in html
    reply = [f for f in Page(html).forms() if f["action"] == "/s/thread/reply"]
    assert len(reply) == 1 and reply[0]["method"] == "post"
    assert Page(html).find("textarea", name="body")
    assert "csrf" in reply[0]["fields"]

    actions = await gw.audit_actions()
    assert actions.count("link.opened") == 1
    link = await link_doc(gw, data["id"])
    assert link["opened_at"] is not None
    # The session id is stored only hashed.
    assert await gw.store.sessions.count_documents({"_id": morsel.value}) == 0
    assert await gw.store.sessions.count_documents({}) == 1


@pytest.fixture
async def https_gw(store, keyring, clock, twilio, aiohttp_client) -> AsyncIterator[Gateway]:
    services = build_services(make_config(twilio, public_url="https://hushlink.test"), store, keyring, clock)
    sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url, timeout=3)
    runtime = build_runtime(services, sms=sender)
    client = await aiohttp_client(create_app(runtime, workers=False))
    org = await services.orgs.create("Riverside Clinic", ORG_NUMBER)
    key, _ = await ApiKeys(services.store, clock).create(org.id, "tests")
    yield Gateway(client, services, runtime, twilio, clock, org, key)
    await sender.close()


async def test_https_deployment_uses_a_host_prefixed_secure_cookie(https_gw):
    gw = https_gw
    _, token = await send_secure(gw)
    assert gw.sms_to()[-1]["body"].count("https://hushlink.test/s/") == 1
    page = await gw.client.get(f"/s/{token}")
    assert page.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    csrf = csrf_of(await page.text())
    downgraded = await post_open(gw, token, csrf, pin=PIN, headers={"Origin": "http://hushlink.test"})
    assert downgraded.status == 403
    resp = await post_open(gw, token, csrf, pin=PIN, headers={"Origin": "https://hushlink.test"})
    assert resp.status == 303 and resp.headers["Location"] == "/s/thread"
    jar = set_cookie(resp)
    assert "hl_client" not in jar
    morsel = jar["__Host-hl_client"]
    assert morsel["secure"] is True and morsel["httponly"] is True
    assert morsel["path"] == "/" and not morsel["domain"] and morsel["samesite"] == "Lax"

    gw.client.session.cookie_jar.clear()
    thread = await gw.client.get("/s/thread", headers={"Cookie": f"__Host-hl_client={morsel.value}"})
    assert thread.status == 200 and BODY in await thread.text()
    # The plain-http cookie name is not accepted on an https deployment.
    other = await gw.client.get("/s/thread", headers={"Cookie": f"hl_client={morsel.value}"})
    assert other.status == 401

    # Signing out clears the cookie with the attributes a browser needs to accept the deletion
    # (a __Host- cookie without Secure is ignored, so it would linger).
    html = await thread.text()
    out = await gw.client.post("/s/logout", data={"csrf": csrf_of(html)},
                               headers={"Cookie": f"__Host-hl_client={morsel.value}"}, allow_redirects=False)
    assert out.status == 200
    cleared = set_cookie(out)["__Host-hl_client"]
    assert cleared.value == "" and str(cleared["max-age"]) == "0"
    assert cleared["secure"] is True and cleared["path"] == "/" and not cleared["domain"]
    assert await gw.store.sessions.count_documents({}) == 0


# -- wrong PINs, lock, unlock ----------------------------------------------------------------
async def test_wrong_pins_lock_the_link_until_staff_unlock_it(gw):
    data, token = await send_secure(gw)
    csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
    for tries_left in (4, 3, 2, 1):
        resp = await post_open(gw, token, csrf, pin=WRONG)
        assert resp.status == 401
        html = await resp.text()
        assert f"Tries left before this link locks: {tries_left}." in html
        assert Page(html).find("input", name="pin")
        assert BODY not in html
    fifth = await post_open(gw, token, csrf, pin=WRONG)
    assert fifth.status == 404
    unknown = await gw.client.get(f"/s/{random_token()}")
    unavailable = normalized(await unknown.text())

    # Locked: even the right PIN is refused, with the page every unusable link gets.
    right = await post_open(gw, token, csrf, pin=PIN)
    assert right.status == 404
    right_html = await right.text()
    assert BODY not in right_html
    assert normalized(right_html, token) == unavailable
    assert "hl_client" not in (right.headers.get("Set-Cookie") or "")
    assert await gw.store.sessions.count_documents({}) == 0
    get_locked = await gw.client.get(f"/s/{token}")
    assert get_locked.status == 404

    link = await link_doc(gw, data["id"])
    assert link["failures"] == 5 and link["locked_at"] is not None and link["opened_at"] is None
    actions = await gw.audit_actions()
    assert actions.count("link.pin_failed") == 5
    assert actions.count("link.locked") == 1
    assert "link.opened" not in actions
    thread = await gw.store.threads.find_one({"_id": data["thread_id"]})
    assert thread["attention"] == "link_locked"
    assert await gw.services.audit.verify(gw.org.id) is None

    await gw.services.links.unlock(gw.org.id, link["_id"], Actor("staff", "x"))
    assert (await gw.audit_actions()).count("link.unlocked") == 1
    thread = await gw.store.threads.find_one({"_id": data["thread_id"]})
    assert thread.get("attention") != "link_locked"
    again = await post_open(gw, token, csrf, pin=PIN)
    assert again.status == 303
    status, html = await thread_page(gw)
    assert status == 200 and BODY in html


async def test_operator_shaped_pins_do_not_open_the_link(gw):
    data, token = await send_secure(gw)
    csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
    for form in ({"csrf": csrf, "pin[$ne]": ""}, {"csrf": csrf, "pin": '{"$ne": ""}'},
                 {"csrf": csrf, "pin": "x" * 65}):
        resp = await gw.client.post(f"/s/{token}", data=form, allow_redirects=False)
        assert resp.status == 401, form
    as_json = await gw.client.post(f"/s/{token}", json={"csrf": csrf, "pin": {"$ne": ""}},
                                   allow_redirects=False)
    assert as_json.status in (400, 403, 415)
    assert (await link_doc(gw, data["id"]))["opened_at"] is None
    assert await gw.store.sessions.count_documents({}) == 0


async def test_concurrent_wrong_pins_never_count_past_the_threshold(gw):
    data, token = await send_secure(gw)
    csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
    responses = await asyncio.gather(*(post_open(gw, token, csrf, pin=f"{100000 + i}") for i in range(30)))
    statuses = [r.status for r in responses]
    assert 303 not in statuses and 200 not in statuses
    assert statuses.count(401) <= 4
    link = await link_doc(gw, data["id"])
    assert link["failures"] == 5
    assert link["locked_at"] is not None
    actions = await gw.audit_actions()
    assert 1 <= actions.count("link.pin_failed") <= 5
    assert actions.count("link.locked") == 1
    assert await gw.services.audit.verify(gw.org.id) is None
    # And the right PIN is refused afterwards.
    assert (await post_open(gw, token, csrf, pin=PIN)).status in (404, 429)


# -- unusable links all look the same ------------------------------------------------------
async def test_the_lock_counts_consecutive_wrong_pins_the_right_one_starts_again(gw):
    """NIST 800-63B §5.2.2: N *consecutive* failures lock the link."""
    data, token = await send_secure(gw)
    csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
    for _ in range(4):
        assert (await post_open(gw, token, csrf, pin=WRONG)).status == 401
    assert (await post_open(gw, token, csrf, pin=PIN)).status == 303
    assert (await link_doc(gw, data["id"]))["failures"] == 0
    gw.client.session.cookie_jar.clear()
    csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
    for tries_left in (4, 3, 2, 1):  # four more typos later: still open, and counted from zero
        resp = await post_open(gw, token, csrf, pin=WRONG)
        assert resp.status == 401 and f"Tries left before this link locks: {tries_left}." in await resp.text()
    assert (await post_open(gw, token, csrf, pin=WRONG)).status == 404
    assert (await link_doc(gw, data["id"]))["locked_at"] is not None


async def test_expired_revoked_locked_unknown_and_malformed_links_are_indistinguishable(gw):
    expired_msg, expired = await send_secure(gw, pin=None)
    expired_csrf = csrf_of(await (await gw.client.get(f"/s/{expired}")).text())
    gw.clock.advance(seconds=86400 + 1)
    revoked_msg, revoked = await send_secure(gw, pin=None)
    locked_msg, locked = await send_secure(gw, pin=PIN)
    revoked_csrf = csrf_of(await (await gw.client.get(f"/s/{revoked}")).text())
    locked_csrf = csrf_of(await (await gw.client.get(f"/s/{locked}")).text())

    await gw.services.links.revoke(gw.org.id, (await link_doc(gw, revoked_msg["id"]))["_id"],
                                   Actor("staff", "x"))
    for _ in range(5):
        await post_open(gw, locked, locked_csrf, pin=WRONG)
    assert (await link_doc(gw, locked_msg["id"]))["locked_at"] is not None
    assert (await link_doc(gw, expired_msg["id"]))["expires_at"] <= gw.clock.now()

    cases = {
        "expired": expired, "revoked": revoked, "locked": locked, "unknown": random_token(),
        "short": "abc", "long": "A" * 44, "bad-char": "A" * 42 + "!",
    }
    pages: dict[str, tuple[int, str]] = {}
    for name, token in cases.items():
        resp = await gw.client.get(f"/s/{token}")
        if name in ("expired", "revoked", "locked"):  # (each unusable hit counts toward the rate limit)
            head = await gw.client.head(f"/s/{token}")
            assert head.status == resp.status == 404, name
        pages[name] = (resp.status, normalized(await resp.text(), token))
    reference = pages["unknown"]
    assert reference[0] == 404
    for name, page in pages.items():
        assert page == reference, name
    html = reference[1]
    assert "Riverside" not in html and BODY not in html
    renew = [f for f in Page(html).forms() if f["action"] == "/s/renew"]
    assert len(renew) == 1 and renew[0]["method"] == "post"
    assert "Send me a new link" in html

    # Opening (POST with the form's own CSRF token) also gets that same page.
    for token, csrf in ((expired, expired_csrf), (revoked, revoked_csrf), (locked, locked_csrf)):
        resp = await post_open(gw, token, csrf, pin=PIN)
        assert resp.status == 404
        assert normalized(await resp.text(), token) == html
    assert await gw.store.sessions.count_documents({}) == 0
    assert "link.opened" not in await gw.audit_actions()


async def renew(gw: Gateway, token: str, **extra: str) -> tuple[int, str]:
    page = await gw.client.get(f"/s/{token}")
    csrf = csrf_of(await page.text())
    resp = await gw.client.post("/s/renew", data={"csrf": csrf, "token": token, **extra},
                                allow_redirects=False)
    html = await resp.text()
    await gw.drain()
    return resp.status, html


async def test_renewal_sends_a_new_link_only_to_the_number_on_file(gw):
    data, old = await send_secure(gw, pin=None)
    other = await gw.api_send(body="Another client's message", secure=True, to={"phone": "+15551239999"})
    await gw.drain()
    gw.clock.advance(seconds=86400 + 60)
    total, mine = len(gw.twilio.messages), len(gw.sms_to())

    status, html = await renew(gw, old, phone="+15551239999", to="+15551239999")
    assert status == 200
    assert len(gw.twilio.messages) == total + 1
    assert len(gw.sms_to()) == mine + 1
    assert len(gw.sms_to("+15551239999")) == 1  # only the earlier message, nothing new
    assert BODY not in gw.sms_to()[-1]["body"]
    new = gw.last_link_token()
    assert new != old
    assert (await gw.client.get(f"/s/{new}")).status == 200
    assert (await gw.client.get(f"/s/{old}")).status == 404
    assert (await gw.audit_actions()).count("link.renewal_requested") == 1
    assert other["thread_id"] != data["thread_id"]

    # The new link opens the same conversation.
    resp = await gw.open_link(new)
    assert resp.status == 303
    status_, page = await thread_page(gw)
    assert status_ == 200 and BODY in page
    done = normalized(html)
    assert "Send me a new link" not in done


async def test_renewal_of_unknown_revoked_or_locked_links_sends_nothing_and_looks_the_same(gw):
    expired_msg, expired = await send_secure(gw, pin=None)
    revoked_msg, revoked = await send_secure(gw, pin=None)
    # Another client's thread: wrong PINs lock every link of a thread, the expired one above included.
    locked_msg, _ = await send_secure(gw, pin=PIN, to={"phone": "+15551239998"})
    locked = gw.last_link_token("+15551239998")
    locked_csrf = csrf_of(await (await gw.client.get(f"/s/{locked}")).text())
    await gw.services.links.revoke(gw.org.id, (await link_doc(gw, revoked_msg["id"]))["_id"],
                                   Actor("staff", "x"))
    for _ in range(5):
        await post_open(gw, locked, locked_csrf, pin=WRONG)
    gw.clock.advance(seconds=86400 + 1)
    sent = len(gw.twilio.messages)

    answers = {}
    for name, token in (("unknown", random_token()), ("revoked", revoked), ("locked", locked),
                        ("malformed", "nope")):
        answers[name] = await renew(gw, token)
    assert len(gw.twilio.messages) == sent
    assert "link.renewal_requested" not in await gw.audit_actions()
    refused = [e async for e in gw.store.audit.find({"action": "link.renewal_refused"}).sort("seq", 1)]
    assert [(e["outcome"], e["detail"]["reason"]) for e in refused] == [("denied", "revoked"), ("denied", "locked")]
    answers["expired"] = await renew(gw, expired)
    assert len(gw.twilio.messages) == sent + 1
    reference = answers["expired"]
    assert reference[0] == 200
    for name, (status, html) in answers.items():
        assert status == reference[0], name
        assert normalized(html) == normalized(reference[1]), name


async def test_a_renewed_link_cannot_be_renewed_again(gw):
    """The renewal replaced (revoked) it: asking again with the old token sends nothing."""
    _, old = await send_secure(gw, pin=None)
    gw.clock.advance(seconds=86400 + 1)
    before = len(gw.sms_to())
    for _ in range(3):
        assert (await renew(gw, old))[0] == 200
    assert len(gw.sms_to()) == before + 1
    assert (await gw.audit_actions()).count("link.renewal_requested") == 1


# -- CSRF --------------------------------------------------------------------------------------
async def test_opening_requires_the_forms_csrf_token_and_a_same_site_request(gw):
    data, token = await send_secure(gw)
    csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
    attempts = [
        await post_open(gw, token, None, pin=PIN),
        await post_open(gw, token, "0" * 64, pin=PIN),
        await post_open(gw, token, csrf, pin=PIN, headers={"Origin": "https://evil.example"}),
        await post_open(gw, token, csrf, pin=PIN, headers={"Origin": "null"}),
        await post_open(gw, token, csrf, pin=PIN, headers={"Sec-Fetch-Site": "cross-site"}),
        await post_open(gw, token, csrf, pin=PIN, headers={"Sec-Fetch-Site": "same-site"}),
        await post_open(gw, token, csrf, pin=WRONG, headers={"Origin": "https://evil.example"}),
    ]
    assert [r.status for r in attempts] == [403] * len(attempts)
    for r in attempts:
        assert "hl_client" not in (r.headers.get("Set-Cookie") or "")
    link = await link_doc(gw, data["id"])
    assert link["opened_at"] is None and link["failures"] == 0
    assert await gw.store.sessions.count_documents({}) == 0
    # Another link's CSRF token does not fit this one.
    _, token2 = await send_secure(gw)
    csrf2 = csrf_of(await (await gw.client.get(f"/s/{token2}")).text())
    assert (await post_open(gw, token, csrf2, pin=PIN)).status == 403
    # The real thing, from our own origin, works.
    ok = await post_open(gw, token, csrf, pin=PIN,
                         headers={"Origin": "http://hushlink.test", "Sec-Fetch-Site": "same-origin"})
    assert ok.status == 303


async def test_reply_and_logout_require_the_session_csrf_token(gw):
    data, token = await send_secure(gw)
    await open_session(gw, token)
    _, html = await thread_page(gw)
    csrf = csrf_of(html)
    before = await gw.store.messages.count_documents({})
    bad = [
        await gw.client.post("/s/thread/reply", data={"body": "hello"}, allow_redirects=False),
        await gw.client.post("/s/thread/reply", data={"body": "hello", "csrf": "x" * 64},
                             allow_redirects=False),
        await gw.client.post("/s/thread/reply", data={"body": "hello", "csrf": csrf},
                             headers={"Origin": "https://evil.example"}, allow_redirects=False),
        await gw.client.post("/s/thread/reply", data={"body": "hello", "csrf": csrf},
                             headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False),
        await gw.client.post("/s/logout", data={}, allow_redirects=False),
    ]
    assert [r.status for r in bad] == [403] * len(bad)
    assert await gw.store.messages.count_documents({}) == before
    assert await gw.store.sessions.count_documents({}) == 1
    # A renewal form post without its token is refused as well.
    r = await gw.client.post("/s/renew", data={"token": token}, allow_redirects=False)
    assert r.status == 403
    # GET on a mutating route does not mutate.
    assert (await gw.client.get("/s/thread/reply")).status in (404, 405)
    assert (await gw.client.get("/s/logout")).status in (404, 405)
    assert await gw.store.sessions.count_documents({}) == 1


# -- replies -----------------------------------------------------------------------------------
async def test_client_reply_lands_in_the_thread_as_a_portal_message(gw):
    data, token = await send_secure(gw)
    await open_session(gw, token)
    _, html = await thread_page(gw)
    csrf = csrf_of(html)
    unread = (await gw.store.threads.find_one({"_id": data["thread_id"]}))["unread_staff"]

    empty = await gw.client.post("/s/thread/reply", data={"csrf": csrf, "body": "   \r\n "},
                                 allow_redirects=False)
    assert empty.status == 422
    resp = await gw.client.post("/s/thread/reply", data={"csrf": csrf, "body": "Thanks, see you Monday"},
                                allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/s/thread"

    api = await gw.client.get(f"/api/v1/threads/{data['thread_id']}/messages", headers=gw.auth())
    messages = (await api.json())["messages"]
    assert [m["body"] for m in messages] == [BODY, "Thanks, see you Monday"]
    assert messages[1]["direction"] == "inbound" and messages[1]["channel"] == "portal"
    assert messages[1]["secure"] is True
    thread = await gw.store.threads.find_one({"_id": data["thread_id"]})
    assert thread["unread_staff"] == unread + 1
    assert (await gw.audit_actions()).count("message.received") == 1
    # Stored sealed, and nothing went out by SMS because of it.
    stored = await gw.store.messages.find_one({"_id": messages[1]["id"]})
    assert b"see you Monday" not in bytes(stored["body"])
    status, page = await thread_page(gw)
    assert status == 200 and "Thanks, see you Monday" in page
    updates = await gw.client.get("/s/thread/updates")
    assert [m["text"] for m in (await updates.json())["messages"]][-1] == "Thanks, see you Monday"


# -- views ---------------------------------------------------------------------------------------
async def test_a_message_that_live_updates_bring_is_recorded_as_viewed(gw):
    data, token = await send_secure(gw)
    await open_session(gw, token)
    assert (await thread_page(gw))[0] == 200
    later = await gw.api_send(body="One more thing: fasting from midnight.", secure=True)
    resp = await gw.client.get(f"/s/thread/updates?after={data['id']}")
    assert [m["id"] for m in (await resp.json())["messages"]] == [later["id"]]
    viewed = [e["message_id"] async for e in gw.store.audit.find({"action": "message.viewed"})]
    assert viewed == [data["id"], later["id"]]
    assert (await gw.store.messages.find_one({"_id": later["id"]}))["viewed_at"] is not None


async def test_updates_without_the_page_still_record_the_view_first(gw):
    """The JSON of live updates carries content too: polled straight after opening the link, it
    records the view (once) before answering, as the thread page would."""
    data, token = await send_secure(gw)
    await open_session(gw, token)
    resp = await gw.client.get("/s/thread/updates")
    assert BODY in await resp.text()
    assert (await gw.audit_actions()).count("thread.viewed") == 1
    assert (await thread_page(gw))[0] == 200
    assert (await gw.audit_actions()).count("thread.viewed") == 1  # still one view per session


async def test_view_is_recorded_once_per_session(gw):
    data, token = await send_secure(gw)
    await open_session(gw, token)
    assert (await thread_page(gw))[0] == 200
    assert (await thread_page(gw))[0] == 200
    entries = [d async for d in gw.store.audit.find({"org_id": gw.org.id}).sort("seq", 1)]
    viewed = [e for e in entries if e["action"] == "thread.viewed"]
    message_viewed = [e for e in entries if e["action"] == "message.viewed"]
    assert len(viewed) == 1 and viewed[0]["thread_id"] == data["thread_id"]
    assert len(message_viewed) == 1 and message_viewed[0]["message_id"] == data["id"]
    assert (await gw.store.messages.find_one({"_id": data["id"]}))["viewed_at"] is not None

    gw.client.session.cookie_jar.clear()
    await open_session(gw, token)
    assert (await thread_page(gw))[0] == 200
    actions = await gw.audit_actions()
    assert actions.count("thread.viewed") == 2
    assert actions.count("message.viewed") == 1
    assert actions.count("link.opened") == 2


async def test_a_view_that_could_not_be_audited_is_not_shown_later_unaudited(gw, monkeypatch):
    data, token = await send_secure(gw)
    await open_session(gw, token)
    append = gw.services.audit.append

    async def audit_down(org_id, action, *args, **kwargs):
        if action == "thread.viewed":
            raise PyMongoError("audit store unavailable")
        return await append(org_id, action, *args, **kwargs)

    monkeypatch.setattr(gw.services.audit, "append", audit_down)
    status, page = await thread_page(gw)
    assert status >= 500 and BODY not in page
    monkeypatch.setattr(gw.services.audit, "append", append)
    status, page = await thread_page(gw)
    assert status == 200 and BODY in page
    assert (await gw.audit_actions()).count("thread.viewed") == 1  # the view that was shown


# -- session lifetime ----------------------------------------------------------------------------
async def test_idle_session_times_out(gw):
    _, token = await send_secure(gw)
    await open_session(gw, token)
    for _ in range(3):  # activity keeps it alive past one idle period in total
        gw.clock.advance(seconds=800)
        assert (await thread_page(gw))[0] == 200
    gw.clock.advance(seconds=901)
    status, html = await thread_page(gw)
    assert status == 401
    assert BODY not in html and "session has ended" in html
    r = await gw.client.post("/s/thread/reply", data={"csrf": "x", "body": "late"}, allow_redirects=False)
    assert r.status == 401
    assert (await gw.client.get("/s/thread/updates")).status == 401


async def test_logout_ends_the_session_for_good(gw):
    _, token = await send_secure(gw)
    sid = await open_session(gw, token)
    _, html = await thread_page(gw)
    logout = [f for f in Page(html).forms() if f["action"] == "/s/logout"]
    assert len(logout) == 1 and logout[0]["method"] == "post"
    resp = await gw.client.post("/s/logout", data={"csrf": csrf_of(html)}, allow_redirects=False)
    assert resp.status == 200
    assert "cookies" in resp.headers["Clear-Site-Data"]
    cleared = set_cookie(resp)["hl_client"]
    assert cleared.value == "" or cleared["max-age"] in ("0", 0)
    assert await gw.store.sessions.count_documents({}) == 0
    gw.client.session.cookie_jar.clear()
    old = await gw.client.get("/s/thread", headers={"Cookie": f"hl_client={sid}"})
    assert old.status == 401 and BODY not in await old.text()


# -- headers ---------------------------------------------------------------------------------------
def check_headers(name: str, resp: Any, html: str) -> str:
    h = resp.headers
    assert h["Content-Type"] == "text/html; charset=utf-8", name
    assert h["Referrer-Policy"] == "no-referrer", name
    assert h["Cache-Control"] == "no-store", name
    assert h["X-Frame-Options"] == "DENY", name
    assert h["X-Content-Type-Options"] == "nosniff", name
    assert "noindex" in h["X-Robots-Tag"], name
    parts = [p.strip() for p in h["Content-Security-Policy"].split(";")]
    directives = {d.split()[0]: d.split()[1:] for d in parts if d}
    assert directives["default-src"] == ["'self'"], name
    assert directives["object-src"] == ["'none'"], name
    assert directives["base-uri"] == ["'none'"], name
    assert directives["frame-ancestors"] == ["'none'"], name
    assert directives["form-action"] == ["'self'"], name
    script = directives["script-src"]
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script, name
    assert not any(s.startswith(("http:", "https:", "*")) or s in ("http:", "https:") for s in script), name
    nonces = NONCE_RE.findall(" ".join(script))
    assert len(nonces) == 1, name
    page = Page(html)
    for tag, attrs in page.tags:
        for attr in ("src", "href", "action", "formaction"):
            value = attrs.get(attr)
            if value is None:
                continue
            assert value.startswith(("/", "#")) and not value.startswith("//"), (name, tag, value)
        if tag == "script":
            assert attrs.get("nonce") == nonces[0], name
    return nonces[0]


async def test_security_headers_on_every_portal_page(gw):
    data, token = await send_secure(gw)
    pages: dict[str, tuple[Any, str]] = {}

    async def grab(name: str, resp: Any) -> str:
        html = await resp.text()
        pages[name] = (resp, html)
        return html

    link_html = await grab("link", await gw.client.get(f"/s/{token}"))
    csrf = csrf_of(link_html)
    await grab("wrong pin", await post_open(gw, token, csrf, pin=WRONG))
    await grab("csrf refused", await post_open(gw, token, None, pin=PIN))
    await grab("unavailable", await gw.client.get(f"/s/{random_token()}"))
    await grab("no session", await gw.client.get("/s/thread"))
    opened = await post_open(gw, token, csrf, pin=PIN)
    assert opened.status == 303
    for header, value in (("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"),
                          ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff")):
        assert opened.headers[header] == value
    thread_html = await grab("thread", await gw.client.get("/s/thread"))
    await grab("reply refused", await gw.client.post("/s/thread/reply", data={"body": "x"}))
    await grab("empty reply", await gw.client.post("/s/thread/reply", data={"body": "", "csrf": csrf_of(thread_html)}))
    await grab("signed out", await gw.client.post("/s/logout", data={"csrf": csrf_of(thread_html)}))
    renew_page = await gw.client.get(f"/s/{random_token()}")
    await grab("renew done", await gw.client.post("/s/renew", data={
        "csrf": csrf_of(await renew_page.text()), "token": random_token()}))

    expected = {"link": 200, "wrong pin": 401, "csrf refused": 403, "unavailable": 404,
                "no session": 401, "thread": 200, "reply refused": 403, "empty reply": 422,
                "signed out": 200, "renew done": 200}
    assert {k: r.status for k, (r, _) in pages.items()} == expected
    nonces = [check_headers(name, resp, html) for name, (resp, html) in pages.items()]
    assert len(set(nonces)) == len(nonces)
    scripts = Page(thread_html).find("script")
    assert [s["src"] for s in scripts] == ["/static/client.js"]
    assert Page(link_html).find("script") == []  # nothing inline anywhere


async def test_rate_limit_on_unknown_links_ignores_spoofed_forwarded_for(gw):
    statuses = []
    for i in range(25):
        resp = await gw.client.get(f"/s/{random_token()}", headers={"X-Forwarded-For": f"203.0.113.{i}"})
        statuses.append(resp.status)
        if resp.status == 429:
            check_headers("429", resp, await resp.text())
    assert statuses[:20] == [404] * 20
    assert statuses[20:] == [429] * 5


async def test_robots_txt_keeps_links_out_of_indexes(gw):
    resp = await gw.client.get("/robots.txt")
    assert resp.status == 200
    lines = [line.strip() for line in (await resp.text()).splitlines()]
    assert "User-agent: *" in lines and "Disallow: /s/" in lines


# -- escaping --------------------------------------------------------------------------------------
XSS = '<script>alert(1)</script><img src=x onerror=alert(1)>'


def assert_inert(html: str, nonce_required: bool = True) -> None:
    page = Page(html)
    for tag, attrs in page.tags:
        assert not [a for a in attrs if a.lower().startswith("on")], (tag, attrs)
        for value in attrs.values():
            assert not (value or "").strip().lower().startswith("javascript:"), (tag, attrs)
        assert tag not in ("img", "iframe", "object", "embed", "svg"), (tag, attrs)
    scripts = page.find("script")
    assert all(s.get("src") == "/static/client.js" and s.get("nonce") for s in scripts), scripts


async def test_hostile_content_and_names_render_escaped(gw):
    await gw.services.orgs.update(gw.org.id, name='Clinic <b onmouseover="alert(2)">X</b><script>alert(3)</script>')
    data, token = await send_secure(gw, body=XSS, to={"phone": CLIENT_PHONE,
                                                      "name": '<svg onload=alert(4)>"Eve"</svg>'})
    link_html = await (await gw.client.get(f"/s/{token}")).text()
    assert_inert(link_html)
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in link_html
    await open_session(gw, token)
    _, html = await thread_page(gw)
    assert_inert(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert len(Page(html).find("script")) == 1

    # The client's own hostile reply is escaped too.
    reply = await gw.client.post("/s/thread/reply", data={
        "csrf": csrf_of(html), "body": '"><script>alert(5)</script><a href="javascript:alert(6)">x</a>'},
        allow_redirects=False)
    assert reply.status == 303
    _, html = await thread_page(gw)
    assert_inert(html)
    assert "alert(5)" in html and len(Page(html).find("script")) == 1
    assert Page(html).find("a", href="javascript:alert(6)") == []


async def test_a_per_message_pin_also_guards_later_links_to_the_same_thread(gw):
    """A renewal or the answer to a texted reply must not open PIN-protected content without the PIN."""
    await gw.api_send(body="Canary-pin-thread-4410", secure=True, pin="246810")
    await gw.drain()
    await gw.inbound_sms("thanks, got it")  # the client texts back: answered with a fresh link
    await gw.drain()
    fresh = gw.last_link_token()
    page = await (await gw.client.get(f"/s/{fresh}")).text()
    assert 'name="pin"' in page
    wrong = await gw.open_link(fresh, pin="000000")
    assert wrong.status == 401
    right = await gw.open_link(fresh, pin="246810")
    assert right.status == 303


async def test_a_long_conversation_shows_the_newest_page_and_links_to_earlier_ones(gw):
    import re

    for n in range(55):
        await gw.api_send(body=f"Note number {n:02d}", secure=True)
    await gw.drain()
    opened = await gw.open_link(gw.last_link_token())
    assert opened.status == 303
    page = await (await gw.client.get("/s/thread")).text()
    assert page.count('<li class="msg ') == 50
    assert "Note number 54" in page and "Note number 04" not in page
    earlier = re.search(r'href="(/s/thread\?before=[0-9a-f]{24})"', page)
    assert earlier, "no link to earlier messages"
    older = await (await gw.client.get(earlier.group(1))).text()
    assert "Note number 00" in older and "Note number 54" not in older
    assert "/static/client.js" not in older  # an older page is not live-updated
