"""Staff sign-in, sessions and sign-out (issue 3; docs/security-model.md, 'Staff authentication'),
over HTTP on a whole gateway."""

from __future__ import annotations

from dataclasses import replace

import pyotp
from aiohttp import web

from gateway.runtime.app import staff_collaborators
from gateway.security.staff_auth import DEFAULT_RULES, LoginThrottle
from gateway.tenancy.orgs import Orgs
from gateway.tenancy.staff import Staff
from portal.staff import staff_shell
from tests.portal.test_staff_support import (
    COOKIE,
    PASSWORD,
    Browser,
    audit_entries,
    csrf_of,
    enable_totp,
    make_staff,
    set_cookies,
    signed_in,
)

PAIR_LIMIT = next(r for r in DEFAULT_RULES if r.scope == "pair")


async def test_login_page_has_the_stable_form(gw):
    async with Browser(gw) as b:
        page = await b.get("/staff/login")
        html = await page.text()
    assert page.status == 200
    assert '<form method="post" action="/staff/login"' in html
    for name in ("email", "password", "totp", "csrf"):
        assert f'name="{name}"' in html


async def test_login_success_redirects_to_inbox_with_a_strict_httponly_cookie(gw):
    member = await make_staff(gw)
    async with Browser(gw) as b:
        resp = await b.login(member.email)
        assert resp.headers["Location"] == "/staff/"
        cookie = set_cookies(resp)[COOKIE]
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/"
        assert "domain" not in cookie
        assert "secure" not in cookie  # the test gateway is on http://; https gets __Host- and Secure
        inbox = await b.get("/staff/")
        assert inbox.status == 200
        assert "Inbox" in await inbox.text()
    assert [e["outcome"] for e in await audit_entries(gw, "auth.login")] == ["ok"]


async def test_https_gateway_uses_a_host_prefixed_secure_cookie(gw):
    config = gw.services.config
    https = replace(config, server=replace(config.server, public_url="https://hushlink.example"))
    shell = staff_shell(staff_collaborators(replace(gw.services, config=https), gw.runtime.delivery))
    assert shell.cookie == "__Host-hl_staff" and shell.secure_cookie is True
    response = web.Response()
    shell.set_cookie(response, "value")
    raw = response.cookies["__Host-hl_staff"].output(header="")
    assert raw.strip().startswith("__Host-hl_staff=value;")
    for attribute in ("HttpOnly", "Path=/", "SameSite=Strict", "Secure"):
        assert attribute in raw
    assert "Domain" not in raw


async def test_wrong_password_is_refused_and_audited(gw):
    member = await make_staff(gw)
    async with Browser(gw) as b:
        resp = await b.login(member.email, "not-the-password-at-all", expect=401)
        assert "not right" in await resp.text()
        assert b.sid is None or (await b.get("/staff/")).status == 303
    denied = await audit_entries(gw, "auth.login")
    assert [(e["outcome"], e["detail"]["reason"]) for e in denied] == [("denied", "password")]


async def test_unknown_email_gets_the_same_answer_as_a_wrong_password(gw):
    await make_staff(gw)
    async with Browser(gw) as b:
        unknown = await b.login("nobody@riverside.test", "whatever-password-1", expect=401)
        wrong = await b.login("agent@riverside.test", "whatever-password-1", expect=401)
        assert "not right" in await unknown.text() and "not right" in await wrong.text()


async def test_login_without_csrf_token_or_from_another_site_is_refused(gw):
    member = await make_staff(gw)
    async with Browser(gw) as b:
        await b.get("/staff/login")
        no_token = await b.session.post(b.url("/staff/login"), data={"email": member.email, "password": PASSWORD},
                                        allow_redirects=False)
        assert no_token.status == 403
        cross = await b.post("/staff/login", {"email": member.email, "password": PASSWORD},
                             headers={"Origin": "https://evil.example"})
        assert cross.status == 403
        cross_site = await b.post("/staff/login", {"email": member.email, "password": PASSWORD},
                                  headers={"Sec-Fetch-Site": "cross-site"})
        assert cross_site.status == 403


async def test_throttling_refuses_even_the_right_password_until_the_window_passes(gw):
    member = await make_staff(gw)
    async with Browser(gw) as b:
        for _ in range(PAIR_LIMIT.limit):
            await b.login(member.email, "wrong-password-guess", expect=401)
        blocked = await b.login(member.email, "wrong-password-guess", expect=429)
        assert int(blocked.headers["Retry-After"]) > 0
        right = await b.login(member.email, PASSWORD, expect=429)
        assert (await b.get("/staff/")).status == 303  # still signed out
        assert "Too many" in await right.text()
        gw.clock.advance(PAIR_LIMIT.window_seconds)
        await b.login(member.email, PASSWORD, expect=303)
        assert (await b.get("/staff/")).status == 200
    outcomes = [e["outcome"] for e in await audit_entries(gw, "auth.login")]
    assert outcomes == ["denied"] * PAIR_LIMIT.limit + ["throttled", "throttled", "ok"]


async def test_throttling_of_one_address_does_not_lock_out_the_user_elsewhere(gw):
    """The low limit is per (account, IP): failures from another address don't block the real user."""
    member = await make_staff(gw)
    throttle = LoginThrottle(gw.store, gw.clock)
    for _ in range(PAIR_LIMIT.limit + 3):
        await throttle.failed(member.email.lower(), "203.0.113.9")
    assert await throttle.retry_after(member.email.lower(), "203.0.113.9") is not None
    async with Browser(gw) as b:
        await b.login(member.email, PASSWORD, expect=303)


async def test_throttle_counters_live_in_the_database_without_emails_or_addresses(gw):
    member = await make_staff(gw)
    async with Browser(gw) as b:
        await b.login(member.email, "wrong-password-guess", expect=401)
    docs = [d async for d in gw.store.login_throttle.find({})]
    assert {d["_id"].split(":")[0] for d in docs} == {"pair", "account", "ip"}
    dump = repr(docs)
    assert member.email not in dump and "127.0.0.1" not in dump


async def test_totp_account_needs_the_code_and_a_code_works_only_once(gw):
    member = await make_staff(gw)
    secret = await enable_totp(gw, member)
    code = pyotp.TOTP(secret).at(gw.clock.now())
    async with Browser(gw) as b:
        # Password only: no session, a code page instead.
        held = await b.login(member.email, expect=200)
        assert 'name="totp"' in await held.text()
        assert (await b.get("/staff/")).status == 303
        resp = await b.post("/staff/login/totp", {"totp": code}, csrf=csrf_of(await held.text()))
        assert resp.status == 303 and resp.headers["Location"] == "/staff/"
        assert (await b.get("/staff/")).status == 200
    async with Browser(gw) as other:
        replay = await other.login(member.email, totp=code, expect=401)
        assert "already used" in await replay.text()
        assert (await other.get("/staff/")).status == 303
        gw.clock.advance(30)
        await other.login(member.email, totp=pyotp.TOTP(secret).at(gw.clock.now()), expect=303)
    assert [e["detail"].get("mfa") for e in await audit_entries(gw, "auth.login") if e["outcome"] == "ok"] == [
        True, True]


async def test_wrong_totp_code_is_refused(gw):
    member = await make_staff(gw)
    secret = await enable_totp(gw, member)
    good = pyotp.TOTP(secret).at(gw.clock.now())
    bad = f"{(int(good) + 1) % 1000000:06d}"
    async with Browser(gw) as b:
        await b.login(member.email, totp=bad, expect=401)
        assert (await b.get("/staff/")).status == 303


async def test_org_requiring_totp_sends_members_without_one_to_enrolment_first(gw):
    await gw.services.orgs.update_policy(gw.org.id, require_totp=True)
    member = await make_staff(gw)
    async with Browser(gw) as b:
        resp = await b.login(member.email)
        assert resp.headers["Location"] == "/staff/account/totp"
        assert (await b.get("/staff/")).headers["Location"] == "/staff/account/totp"
        started = await b.post("/staff/account/totp/start", csrf_from="/staff/account/totp")
        assert started.status == 200
        secret = re_secret(await started.text())
        before = b.sid
        done = await b.post("/staff/account/totp/confirm", {"totp": pyotp.TOTP(secret).at(gw.clock.now())},
                            csrf=csrf_of(await started.text()))
        assert done.status == 303
        assert b.sid != before  # a new factor is a privilege change: new session id
        assert (await b.get("/staff/")).status == 200
    assert (await Staff(gw.store, gw.clock).get(gw.org.id, member.id)).has_totp


async def test_require_totp_turned_on_by_another_process_applies_to_the_next_sign_in(gw):
    # This process has the org's policy cached (require_totp off); another process turns it on.
    await gw.services.orgs.get(gw.org.id)
    await Orgs(gw.store, gw.clock).update_policy(gw.org.id, require_totp=True)
    member = await make_staff(gw)
    async with Browser(gw) as b:
        resp = await b.login(member.email)
        assert resp.headers["Location"] == "/staff/account/totp"
        assert (await b.get("/staff/")).headers["Location"] == "/staff/account/totp"


async def test_open_session_must_enrol_once_another_process_requires_totp(gw):
    member = await make_staff(gw)
    async with Browser(gw) as b:
        await b.login(member.email)
        assert (await b.get("/staff/")).status == 200
        await Orgs(gw.store, gw.clock).update_policy(gw.org.id, require_totp=True)
        assert (await b.get("/staff/")).headers["Location"] == "/staff/account/totp"
        refused = await b.post("/staff/threads/000000000000000000000000/status", {"status": "closed"},
                               csrf_from="/staff/account/totp")
        assert refused.status == 403


async def test_turning_off_the_authenticator_needs_the_password(gw):
    # Re-authentication before changing an authenticator (OWASP ASVS 5.0 7.5.1): a wrong or missing
    # password leaves the authenticator on.
    member = await make_staff(gw)
    secret = await enable_totp(gw, member)
    async with Browser(gw) as b:
        await b.login(member.email, totp=pyotp.TOTP(secret).at(gw.clock.now()))
        for form in ({"password": "wrong-password-here"}, {"password": ""}, {}):
            resp = await b.post("/staff/account/totp/disable", form, csrf_from="/staff/account/totp")
            assert resp.status == 401, form
            assert "password is not right" in await resp.text()
        assert (await Staff(gw.store, gw.clock).get(gw.org.id, member.id)).has_totp
        assert await audit_entries(gw, "auth.totp_disabled") == []
        ok = await b.post("/staff/account/totp/disable", {"password": PASSWORD}, csrf_from="/staff/account/totp")
        assert ok.status == 303
    assert not (await Staff(gw.store, gw.clock).get(gw.org.id, member.id)).has_totp
    assert len(await audit_entries(gw, "auth.totp_disabled")) == 1


def re_secret(html: str) -> str:
    import re

    found = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', html)
    assert found, html
    return found.group(1).replace(" ", "")


async def test_session_id_is_rotated_at_sign_in(gw):
    member = await make_staff(gw)
    async with Browser(gw) as b:
        await b.get("/staff/login")
        pre = b.sid
        assert pre
        await b.login(member.email)
        post = b.sid
        assert post and post != pre
        async with Browser(gw) as attacker:
            attacker.use_cookie(pre)
            assert (await attacker.get("/staff/")).status == 303


async def test_idle_timeout_ends_the_session(gw):
    browser, _ = await signed_in(gw)
    async with browser as b:
        gw.clock.advance(14 * 60)
        assert (await b.get("/staff/")).status == 200  # activity moves the idle deadline
        gw.clock.advance(14 * 60)
        assert (await b.get("/staff/")).status == 200
        gw.clock.advance(15 * 60 + 1)
        resp = await b.get("/staff/")
        assert resp.status == 303 and resp.headers["Location"].startswith("/staff/login")
        assert (await b.session.post(b.url("/staff/logout"), data={}, allow_redirects=False)).status == 401


async def test_absolute_timeout_ends_even_an_active_session(gw):
    browser, _ = await signed_in(gw)
    async with browser as b:
        elapsed, step, limit = 0, 14 * 60, 12 * 3600
        while elapsed + step < limit:  # active every 14 minutes: the idle limit never bites
            gw.clock.advance(step)
            elapsed += step
            assert (await b.get("/staff/")).status == 200, elapsed
        gw.clock.advance(limit - elapsed + 1)  # less than the idle limit since the last request
        resp = await b.get("/staff/")
        assert resp.status == 303 and resp.headers["Location"].startswith("/staff/login")


async def test_logout_kills_the_server_session_and_clears_site_data(gw):
    browser, _ = await signed_in(gw)
    async with browser as b:
        sid = b.sid
        resp = await b.post("/staff/logout", csrf_from="/staff/")
        assert resp.status == 200
        assert resp.headers["Clear-Site-Data"] == '"cache", "cookies", "storage"'
        async with Browser(gw) as replay:
            replay.use_cookie(sid)
            assert (await replay.get("/staff/")).status == 303
            late = await replay.session.get(replay.url("/staff/live"), allow_redirects=False)
            assert late.status == 401
    assert await gw.store.sessions.count_documents({"kind": "staff"}) == 0
    assert len(await audit_entries(gw, "auth.logout")) == 1


async def test_disabling_a_member_ends_all_their_sessions(gw):
    admin, _ = await signed_in(gw, "admin")
    member = await make_staff(gw)
    async with admin, Browser(gw) as one, Browser(gw) as two:
        await one.login(member.email)
        await two.login(member.email)
        assert (await one.get("/staff/")).status == 200 and (await two.get("/staff/")).status == 200
        resp = await admin.post(f"/staff/settings/staff/{member.id}/disable", csrf_from="/staff/settings/staff")
        assert resp.status == 303
        assert (await one.get("/staff/")).status == 303
        assert (await two.get("/staff/")).status == 303
        await one.login(member.email, expect=401)
    entry = (await audit_entries(gw, "staff.disabled"))[0]
    assert entry["detail"]["sessions_ended"] == 2 and entry["staff_id"] == member.id


async def test_a_session_of_a_member_disabled_behind_the_portals_back_is_refused(gw):
    browser, member = await signed_in(gw)
    async with browser as b:
        await Staff(gw.store, gw.clock).set_disabled(gw.org.id, member.id, True)
        assert (await b.get("/staff/")).status == 303


async def test_change_password_needs_the_current_one_and_rotates_the_session(gw):
    browser, member = await signed_in(gw)
    async with browser as b:
        bad = await b.post("/staff/account/password", {"current": "wrong-password-here", "new": "a-new-passphrase-77"},
                           csrf_from="/staff/account")
        assert bad.status == 401
        before = b.sid
        ok = await b.post("/staff/account/password", {"current": PASSWORD, "new": "a-new-passphrase-77"},
                          csrf_from="/staff/account")
        assert ok.status == 303 and b.sid != before
    async with Browser(gw) as b2:
        await b2.login(member.email, PASSWORD, expect=401)
        await b2.login(member.email, "a-new-passphrase-77", expect=303)


async def test_next_parameter_only_returns_inside_the_staff_portal(gw):
    member = await make_staff(gw)
    async with Browser(gw) as b:
        first = await b.get("/staff/contacts")
        assert first.status == 303 and first.headers["Location"] == "/staff/login?next=/staff/contacts"
        page = await b.get(first.headers["Location"])
        resp = await b.post("/staff/login", {"email": member.email, "password": PASSWORD, "next": "/staff/contacts"},
                            csrf=csrf_of(await page.text()))
        assert resp.headers["Location"] == "/staff/contacts"
    async with Browser(gw) as b:
        resp = await b.post("/staff/login", {"email": member.email, "password": PASSWORD,
                                             "next": "//evil.example/staff/"}, csrf_from="/staff/login")
        assert resp.headers["Location"] == "/staff/"
