"""Default-deny route policy, roles, org scoping and CSRF on the staff portal (docs/security-model.md,
'Staff access' and 'Browser hardening')."""

from __future__ import annotations

import pytest
from aiohttp import web

from gateway.ids import new_id
from gateway.runtime.app import staff_collaborators
from gateway.security.api_keys import ApiKeys
from gateway.security.audit import SYSTEM
from portal.staff import PREFIX, staff_shell
from portal.staff.policy import policy, policy_of, staff_guard, unguarded_routes
from tests.portal.test_staff_support import Browser, audit_entries, csrf_of, make_staff, signed_in
from tests.support.harness import CLIENT_PHONE

OTHER_NUMBER = "+15005550009"


def staff_subapp(app: web.Application) -> web.Application:
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if sub is not None and resource.canonical == PREFIX:
            return sub
    raise AssertionError("the staff portal is not mounted at /staff")


async def test_every_staff_route_declares_a_policy(gw):
    app = gw.client.app
    sub = staff_subapp(app)
    routes = list(sub.router.routes())
    assert len(routes) > 20
    assert unguarded_routes(sub) == []
    for route in routes:
        assert route.resource is not None and route.resource.canonical.startswith("/staff/"), route
    # Nothing under /staff is mounted on the main app directly (it would bypass the guard).
    guarded = {id(r) for r in routes}
    for route in app.router.routes():
        if id(route) in guarded:
            continue
        if route.resource is not None and route.resource.canonical.startswith("/staff"):
            raise AssertionError(f"{route.method} {route.resource.canonical} bypasses the staff guard")


async def test_guard_refuses_a_route_without_policy(gw, aiohttp_client):
    """A route someone forgot to annotate is refused, even for a signed-in admin."""
    shell = staff_shell(staff_collaborators(gw.services, gw.runtime.delivery))

    async def ctx_loader(request, touch):
        raise AssertionError("never consulted for an unannotated route")

    async def forgot(request):
        return web.Response(text="secret data")

    @policy("admin", "agent")
    async def declared(request):
        return web.Response(text="ok")

    app = web.Application(middlewares=[staff_guard(shell, gw.services.audit, ctx_loader)])
    app.router.add_get("/forgot", forgot)
    async def sign_in_page(request):
        return web.Response(text="public page")

    app.router.add_get("/public", policy(public=True)(sign_in_page))
    client = await aiohttp_client(app)
    resp = await client.get("/forgot")
    assert resp.status == 403 and "secret data" not in await resp.text()
    assert (await client.get("/public")).status == 200
    assert policy_of(declared) is not None and sorted(unguarded_routes(app)) == ["GET /forgot", "HEAD /forgot"]


def test_policy_decorator_rejects_nonsense():
    with pytest.raises(ValueError):
        policy()
    with pytest.raises(ValueError):
        policy("admin", public=True)
    with pytest.raises(ValueError):
        policy("superuser")


@pytest.mark.parametrize("path", ["/staff/settings", "/staff/settings/staff", "/staff/settings/api-keys",
                                  "/staff/audit", "/staff/audit/export"])
async def test_agent_cannot_reach_admin_pages(gw, path):
    browser, member = await signed_in(gw, "agent")
    async with browser as b:
        resp = await b.get(path)
        assert resp.status == 403
    denied = await audit_entries(gw, "authz.deny")
    assert [(e["actor"]["id"], e["detail"]["reason"]) for e in denied] == [(member.id, "role")]


async def test_agent_cannot_post_admin_actions(gw):
    browser, _ = await signed_in(gw, "agent")
    target = await make_staff(gw, "victim@riverside.test")
    async with browser as b:
        resp = await b.post(f"/staff/settings/staff/{target.id}/disable", csrf_from="/staff/")
        assert resp.status == 403
    assert not (await gw.services.store.staff.find_one({"_id": target.id}))["disabled"]


async def test_admin_reaches_admin_pages(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        for path in ("/staff/settings", "/staff/settings/staff", "/staff/settings/api-keys", "/staff/audit"):
            assert (await b.get(path)).status == 200, path


async def test_signed_out_requests_are_sent_to_sign_in_or_refused(gw):
    async with Browser(gw) as b:
        page = await b.get("/staff/threads/" + new_id())
        assert page.status == 303 and page.headers["Location"].startswith("/staff/login?next=/staff/threads/")
        post = await b.session.post(b.url("/staff/compose"), data={"body": "x"}, allow_redirects=False)
        assert post.status in (401, 403)


async def _foreign_thread(gw) -> str:
    other = await gw.services.orgs.create("Lakeside Dental", OTHER_NUMBER)
    sent = await gw.services.conversations.send(other, channel="sms", body="their message", actor=SYSTEM,
                                                to_phone=CLIENT_PHONE)
    return str(sent.thread["_id"])


async def test_another_orgs_thread_is_a_404_and_an_audited_denial(gw):
    foreign = await _foreign_thread(gw)
    browser, member = await signed_in(gw, "admin")
    async with browser as b:
        view = await b.get(f"/staff/threads/{foreign}")
        assert view.status == 404 and "their message" not in await view.text()
        reply = await b.post(f"/staff/threads/{foreign}", {"body": "hello"}, csrf_from="/staff/")
        assert reply.status == 404
        unknown = await b.get(f"/staff/threads/{new_id()}")
        assert unknown.status == 404
        malformed = await b.get("/staff/threads/not-an-id")
        assert malformed.status == 404
    denials = await audit_entries(gw, "authz.deny")
    assert len(denials) == 4
    assert all(d["actor"] == {"kind": "staff", "id": member.id} and d["outcome"] == "denied" for d in denials)
    assert [d["detail"]["requested"] for d in denials][:2] == [foreign, foreign]
    assert denials[3]["detail"]["requested"] == "malformed"
    # Nothing about the foreign thread changed, and its org's audit has no trace of us.
    assert await gw.store.messages.count_documents({"thread_id": foreign}) == 1


@pytest.mark.parametrize("path", ["/staff/contacts/{c}", "/staff/compose?contact={c}"])
async def test_another_orgs_contact_is_a_404_and_an_audited_denial(gw, path):
    foreign = await _foreign_thread(gw)
    contact_id = (await gw.store.threads.find_one({"_id": foreign}))["contact_id"]
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        assert (await b.get(path.format(c=contact_id))).status == 404
    assert [d["detail"]["object"] for d in await audit_entries(gw, "authz.deny")] == ["contact"]


async def test_another_orgs_staff_member_and_api_key_are_404(gw):
    other = await gw.services.orgs.create("Lakeside Dental", OTHER_NUMBER)
    stranger = await make_staff(gw, "someone@lakeside.test", "admin", org_id=other.id)
    _, key = await ApiKeys(gw.store, gw.clock).create(other.id, "theirs")
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        assert (await b.post(f"/staff/settings/staff/{stranger.id}/disable",
                             csrf_from="/staff/settings/staff")).status == 404
        assert (await b.post(f"/staff/settings/api-keys/{key['_id']}/revoke",
                             csrf_from="/staff/settings/api-keys")).status == 404
    assert not (await gw.store.staff.find_one({"_id": stranger.id}))["disabled"]
    assert (await gw.store.api_keys.find_one({"_id": key["_id"]}))["revoked_at"] is None
    assert [d["detail"]["object"] for d in await audit_entries(gw, "authz.deny")] == ["staff", "api_key"]


async def test_state_changes_need_the_session_csrf_token_and_same_origin(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        missing = await b.session.post(b.url("/staff/settings/api-keys"), data={"name": "x"}, allow_redirects=False)
        assert missing.status == 403
        wrong = await b.post("/staff/settings/api-keys", {"name": "x"}, csrf="0" * 64)
        assert wrong.status == 403
        cross = await b.post("/staff/settings/api-keys", {"name": "x"}, csrf_from="/staff/settings/api-keys",
                             headers={"Origin": "https://evil.example"})
        assert cross.status == 403
        site = await b.post("/staff/settings/api-keys", {"name": "x"}, csrf_from="/staff/settings/api-keys",
                            headers={"Sec-Fetch-Site": "cross-site"})
        assert site.status == 403
        ok = await b.post("/staff/settings/api-keys", {"name": "x"}, csrf_from="/staff/settings/api-keys",
                          headers={"Origin": "http://hushlink.test", "Sec-Fetch-Site": "same-origin"})
        assert ok.status == 200
    assert await gw.store.api_keys.count_documents({"org_id": gw.org.id, "name": "x"}) == 1


async def test_a_token_from_another_session_is_refused(gw):
    one, _ = await signed_in(gw, "admin", "one@riverside.test")
    two, _ = await signed_in(gw, "admin", "two@riverside.test")
    async with one, two:
        page = await one.get("/staff/settings/api-keys")
        stolen = csrf_of(await page.text())
        assert (await two.post("/staff/settings/api-keys", {"name": "x"}, csrf=stolen)).status == 403


async def test_get_on_a_mutating_route_is_405(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        assert (await b.get("/staff/logout")).status == 405


async def test_staff_pages_carry_the_security_headers(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        for path in ("/staff/", "/staff/settings", "/staff/audit", "/staff/contacts",
                     "/staff/compose", "/staff/account"):
            resp = await b.get(path)
            assert resp.status == 200, path
            h = resp.headers
            assert h["Cache-Control"] == "no-store", path
            assert h["Referrer-Policy"] == "no-referrer"
            assert h["X-Content-Type-Options"] == "nosniff"
            csp = h["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
            html = await resp.text()
            assert "<script>" not in html and " style=" not in html and "onclick" not in html
            nonce = csp.split("'nonce-")[1].split("'")[0]
            assert f'<script src="/static/staff.js" nonce="{nonce}"' in html

    async with Browser(gw) as anonymous:
        login = await anonymous.get("/staff/login")
        assert "Content-Security-Policy" in login.headers and login.headers["Cache-Control"] == "no-store"
