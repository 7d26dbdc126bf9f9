"""Settings (admin): org policy, staff management, API keys."""

from __future__ import annotations

import re

import pyotp

from gateway.staff import Staff
from tests.portal.test_staff_support import PASSWORD, Browser, audit_entries, enable_totp, make_staff, signed_in

POLICY_FORM = {
    "secure_default": "1", "link_ttl_seconds": "604800", "lock_threshold": "3",
    "client_idle_minutes": "10", "staff_idle_minutes": "5", "staff_absolute_hours": "8",
    "sensitive_terms": "oncology\nbiopsy\n",
}


async def test_admin_updates_the_org_policy(gw):
    browser, member = await signed_in(gw, "admin")
    async with browser as b:
        resp = await b.post("/staff/settings/policy", {**POLICY_FORM, "require_totp": "1"},
                            csrf_from="/staff/settings")
        assert resp.status == 303
    org = await gw.services.orgs.get(gw.org.id)
    p = org.policy
    assert (p.secure_default, p.pin_required, p.link_ttl_seconds, p.lock_threshold) == (True, False, 604800, 3)
    assert (p.client_idle_seconds, p.staff_idle_seconds, p.staff_absolute_seconds) == (600, 300, 8 * 3600)
    assert p.sensitive_terms == ("oncology", "biopsy") and p.require_totp is True
    entry = (await audit_entries(gw, "org.policy_updated"))[0]
    assert entry["actor"]["id"] == member.id and "lock_threshold" in entry["detail"]["changed"]


async def test_invalid_policy_is_refused_with_the_field_named(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        for field, value in (("lock_threshold", "0"), ("staff_idle_minutes", "abc"), ("link_ttl_seconds", "5")):
            resp = await b.post("/staff/settings/policy", {**POLICY_FORM, field: value}, csrf_from="/staff/settings")
            assert resp.status == 422, field
            assert field in await resp.text()
    assert (await gw.services.orgs.get(gw.org.id)).policy.lock_threshold == 5


async def test_new_sessions_use_the_new_idle_timeout(gw):
    await gw.services.orgs.update_policy(gw.org.id, staff_idle_seconds=300)
    browser, _ = await signed_in(gw)
    async with browser as b:
        gw.clock.advance(301)
        assert (await b.get("/staff/")).status == 303


async def test_admin_adds_a_staff_member_who_can_sign_in(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        weak = await b.post("/staff/settings/staff", {"email": "new@riverside.test", "role": "agent",
                                                     "password": "password1234"})
        assert weak.status == 422 and "too common" in await weak.text()
        ok = await b.post("/staff/settings/staff", {"email": "new@riverside.test", "role": "agent",
                                                   "password": PASSWORD})
        assert ok.status == 303
        dup = await b.post("/staff/settings/staff", {"email": "NEW@riverside.test", "role": "agent",
                                                    "password": PASSWORD})
        assert dup.status == 422
    async with Browser(gw) as newcomer:
        await newcomer.login("new@riverside.test")
        assert (await newcomer.get("/staff/settings")).status == 403
    assert len(await audit_entries(gw, "staff.created")) == 1


async def test_role_change_ends_the_members_sessions(gw):
    admin, _ = await signed_in(gw, "admin")
    agent, member = await signed_in(gw, "agent")
    async with admin, agent:
        resp = await admin.post(f"/staff/settings/staff/{member.id}/role", {"role": "admin"},
                                csrf_from="/staff/settings/staff")
        assert resp.status == 303
        assert (await agent.get("/staff/")).status == 303
        await agent.login(member.email)
        assert (await agent.get("/staff/settings")).status == 200


async def test_admins_cannot_lock_themselves_out(gw):
    browser, me = await signed_in(gw, "admin")
    async with browser as b:
        resp = await b.post(f"/staff/settings/staff/{me.id}/disable", csrf_from="/staff/settings/staff")
        assert resp.status == 409
        assert (await b.get("/staff/settings")).status == 200
    other = await make_staff(gw, "second@riverside.test", "admin")
    async with Browser(gw) as b2:
        await b2.login(other.email)
        assert (await b2.post(f"/staff/settings/staff/{me.id}/disable",
                              csrf_from="/staff/settings/staff")).status == 303
        # `other` is now the last enabled admin: it can't be demoted (by itself or anyone).
        assert (await b2.post(f"/staff/settings/staff/{other.id}/role", {"role": "agent"},
                              csrf_from="/staff/settings/staff")).status == 409


async def _has_totp(gw, member) -> bool:
    return (await Staff(gw.store, gw.clock).get(gw.org.id, member.id)).has_totp


async def test_admin_cannot_reset_their_own_authenticator_without_the_password(gw):
    # SECURITY.md C11: turning off MFA needs re-authentication; the admin reset skips the password.
    me = await make_staff(gw, "admin@riverside.test", "admin")
    secret = await enable_totp(gw, me)
    async with Browser(gw) as b:
        await b.login(me.email, totp=pyotp.TOTP(secret).at(gw.clock.now()))
        page = await (await b.get("/staff/settings/staff")).text()
        assert f"/staff/settings/staff/{me.id}/reset-totp" not in page
        resp = await b.post(f"/staff/settings/staff/{me.id}/reset-totp", csrf_from="/staff/settings/staff")
        assert resp.status == 403
        assert "Account → Authenticator app" in await resp.text()
        assert (await b.get("/staff/settings")).status == 200  # still signed in
    assert await _has_totp(gw, me)
    assert await audit_entries(gw, "auth.totp_reset") == []
    denied = [e for e in await audit_entries(gw, "authz.deny") if e["detail"].get("reason") == "self_reset"]
    assert len(denied) == 1 and denied[0]["actor"]["id"] == me.id and denied[0]["outcome"] == "denied"


async def test_admin_resets_another_members_authenticator_and_ends_their_sessions(gw):
    admin, me = await signed_in(gw, "admin")
    member = await make_staff(gw)
    secret = await enable_totp(gw, member)
    async with admin, Browser(gw) as agent:
        await agent.login(member.email, totp=pyotp.TOTP(secret).at(gw.clock.now()))
        assert (await agent.get("/staff/")).status == 200
        resp = await admin.post(f"/staff/settings/staff/{member.id}/reset-totp", csrf_from="/staff/settings/staff")
        assert resp.status == 303
        assert (await agent.get("/staff/")).status == 303
        await agent.login(member.email)  # password alone again
        assert (await agent.get("/staff/")).status == 200
    assert not await _has_totp(gw, member)
    entry = (await audit_entries(gw, "auth.totp_reset"))[0]
    assert entry["actor"]["id"] == me.id and entry["detail"]["sessions_ended"] == 1


async def test_api_key_is_shown_once_works_and_can_be_revoked(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        resp = await b.post("/staff/settings/api-keys", {"name": "EHR bridge"})
        assert resp.status == 200
        key = re.search(r'<code class="secret" id="new-key">(hlk_[A-Za-z0-9_-]+)</code>', await resp.text()).group(1)
        listing = await (await b.get("/staff/settings/api-keys")).text()
        assert key not in listing and key[:8] in listing and "EHR bridge" in listing
        ok = await gw.client.get("/api/v1/openapi.json")
        assert ok.status == 200
        sent = await gw.client.post("/api/v1/messages", json={"to": {"phone": "+15551230002"}, "body": "hi"},
                                    headers=gw.auth(key))
        assert sent.status == 201
        doc = await gw.store.api_keys.find_one({"org_id": gw.org.id, "name": "EHR bridge"})
        assert key not in repr(doc)
        revoke = await b.post(f"/staff/settings/api-keys/{doc['_id']}/revoke", csrf_from="/staff/settings/api-keys")
        assert revoke.status == 303
    refused = await gw.client.post("/api/v1/messages", json={"to": {"phone": "+15551230002"}, "body": "hi"},
                                   headers=gw.auth(key))
    assert refused.status == 401
    assert [len(await audit_entries(gw, a)) for a in ("api_key.created", "api_key.revoked")] == [1, 1]
