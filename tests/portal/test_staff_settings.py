"""Settings (admin): org policy, staff management, API keys."""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import UTC, datetime

import pyotp

from gateway.tenancy.orgs import DetailChanges, OrgPolicy
from gateway.tenancy.staff import Staff
from tests.portal.test_staff_auth import re_secret
from tests.portal.test_staff_support import (
    PASSWORD,
    Browser,
    audit_entries,
    csrf_of,
    enable_totp,
    make_staff,
    signed_in,
)

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


async def test_admin_sets_every_policy_field_the_cli_can_from_the_form(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        html = await (await b.get("/staff/settings")).text()
        resp = await b.post("/staff/settings/policy", {
            **POLICY_FORM, "secure_forced": "1", "pin_required": "1", "provider_redaction": "1",
            "link_renewals_per_day": "1", "agent_scope": "assigned", "break_glass_minutes": "15",
            "retention_days": "90", "link_ttl_seconds": "3600"}, csrf=csrf_of(html))
        assert resp.status == 303
    p = (await gw.services.orgs.get(gw.org.id)).policy
    assert (p.secure_forced, p.pin_required, p.provider_redaction, p.link_renewals_per_day) == (True, True, True, 1)
    assert (p.agent_scope, p.break_glass_minutes, p.retention_days, p.link_ttl_seconds) == ("assigned", 15, 90, 3600)
    # Every policy field has its control on the page (one only the CLI could set would be out of sight).
    in_form_units = {"client_idle_seconds": "client_idle_minutes", "staff_idle_seconds": "staff_idle_minutes",
                     "staff_absolute_seconds": "staff_absolute_hours"}
    for f in fields(OrgPolicy):
        assert f'name="{in_form_units.get(f.name, f.name)}"' in html, f.name


async def test_a_link_lifetime_set_from_the_cli_is_kept_when_the_form_is_saved(gw):
    await gw.services.orgs.update_policy(gw.org.id, link_ttl_seconds=2 * 86400)
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        html = await (await b.get("/staff/settings")).text()
        assert '<option value="172800" selected>' in html
        assert (await b.post("/staff/settings/policy", {**POLICY_FORM, "link_ttl_seconds": "172800"},
                             csrf=csrf_of(html))).status == 303
    assert (await gw.services.orgs.get(gw.org.id)).policy.link_ttl_seconds == 2 * 86400


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
    # Turning off MFA needs re-authentication (docs/security-model.md); the admin reset skips the password.
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


# -- organization details (issue 9) -------------------------------------------------------------
SECOND_NUMBER = "+15005550007"
SERVICE_SID = "MG" + "ab12" * 8
NY_DETAILS = {"name": "Riverside Family Clinic", "add_number": SECOND_NUMBER, "messaging_service_sid": SERVICE_SID,
              "email_from": "hello@riverside.test", "reply_domain": "mail.riverside.test",
              "timezone": "America/New_York"}


async def _routed_to(gw, *, to: str, service: str | None = None, frm: str = "+15551239876") -> int:
    """Send an inbound SMS as Twilio would; the number of this org's threads with that sender afterwards."""
    params = gw.sms_params(frm=frm, to=to, body="Is my appointment still on?")
    if service:
        params["MessagingServiceSid"] = service
    assert (await gw.post_signed("/webhooks/twilio/sms", params)).status == 200
    await gw.drain()
    contact = await gw.services.contacts.by_phone(gw.org.id, frm)
    return 0 if contact is None else await gw.store.threads.count_documents({"org_id": gw.org.id,
                                                                              "contact_id": contact.id})


async def test_admin_edits_the_org_details_and_every_number_routes_to_the_org(gw):
    browser, member = await signed_in(gw, "admin")
    async with browser as b:
        resp = await b.post("/staff/settings/org", NY_DETAILS, csrf_from="/staff/settings")
        assert resp.status == 303, await resp.text()
        page = await (await b.get("/staff/settings")).text()
        assert SECOND_NUMBER in page and SERVICE_SID in page and 'value="America/New_York"' in page
    org = await gw.services.orgs.get(gw.org.id)
    assert (org.name, org.email_from, org.reply_domain, org.timezone) == (
        "Riverside Family Clinic", "hello@riverside.test", "mail.riverside.test", "America/New_York")
    assert org.sms_numbers == ("+15005550006", SECOND_NUMBER) and org.messaging_service_sids == (SERVICE_SID,)
    # Inbound SMS to the first number, the added one, or the Messaging Service all reach this org.
    assert await _routed_to(gw, to="+15005550006", frm="+15551239801") == 1
    assert await _routed_to(gw, to=SECOND_NUMBER, frm="+15551239802") == 1
    assert await _routed_to(gw, to="+15559990000", service=SERVICE_SID, frm="+15551239803") == 1
    # Audited with the names of what changed, never the values.
    entry = (await audit_entries(gw, "org.updated"))[0]
    assert entry["actor"]["id"] == member.id
    assert entry["detail"]["changed"] == "email_from,messaging_service_sids,name,reply_domain,sms_numbers,timezone"
    assert not any(v in repr(entry) for v in (SECOND_NUMBER, SERVICE_SID, "hello@riverside.test", "New_York"))


async def test_admin_chooses_the_number_messages_are_sent_from_and_removes_one(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        assert (await b.post("/staff/settings/org", {"add_number": SECOND_NUMBER},
                             csrf_from="/staff/settings")).status == 303
        assert (await b.post("/staff/settings/org", {"send_from": SECOND_NUMBER},
                             csrf_from="/staff/settings")).status == 303
        await gw.api_send(body="Your appointment is confirmed.")
        await gw.drain()
        assert gw.sms_to()[-1]["from"] == SECOND_NUMBER
        # The remove button of the first number: it no longer routes.
        assert (await b.post("/staff/settings/org", {"remove_number": "+15005550006"},
                             csrf_from="/staff/settings")).status == 303
    assert (await gw.services.orgs.get(gw.org.id)).sms_numbers == (SECOND_NUMBER,)
    assert await _routed_to(gw, to="+15005550006", frm="+15551239804") == 0
    assert await gw.store.inbound_events.count_documents({"state": "unroutable"}) == 1


async def test_a_number_of_another_org_cannot_be_added(gw):
    other = await gw.services.orgs.create("Harbor Therapy", SECOND_NUMBER, messaging_service_sid=SERVICE_SID)
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        for field, value in (("add_number", SECOND_NUMBER), ("messaging_service_sid", SERVICE_SID)):
            resp = await b.post("/staff/settings/org", {field: value}, csrf_from="/staff/settings")
            assert resp.status == 422
            assert f"{field}: {value} is already used by another organization" in await resp.text()
    assert (await gw.services.orgs.get(gw.org.id)).sms_numbers == ("+15005550006",)
    assert await _routed_to(gw, to=SECOND_NUMBER, frm="+15551239805") == 0  # still the other org's
    assert await gw.store.threads.count_documents({"org_id": other.id}) == 1


async def test_bad_org_details_are_refused_with_the_field_named(gw):
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        for field, value in (("timezone", "Mars/Olympus_Mons"), ("timezone", "../../etc/passwd"),
                             ("email_from", "not an address"), ("reply_domain", "reply_domain!"),
                             ("add_number", "555-1234"), ("messaging_service_sid", "MG123"),
                             ("send_from", "+15559990000"), ("name", "")):
            resp = await b.post("/staff/settings/org", {field: value}, csrf_from="/staff/settings")
            assert resp.status == 422, (field, value)
            assert f"{field}: " in await resp.text(), field
    org = await gw.services.orgs.get(gw.org.id)
    assert (org.timezone, org.email_from, org.name) == ("UTC", "care@riverside.test", "Riverside Clinic")
    assert await audit_entries(gw, "org.updated") == []


async def test_agents_cannot_change_the_org_details(gw):
    browser, _ = await signed_in(gw, "agent")
    async with browser as b:
        page = await b.get("/staff/")
        resp = await b.post("/staff/settings/org", {"name": "Taken over"}, csrf=csrf_of(await page.text()))
        assert resp.status == 403
    assert (await gw.services.orgs.get(gw.org.id)).name == "Riverside Clinic"


# -- require TOTP ends the sessions of members without one (issue 9) -----------------------------
async def test_turning_on_require_totp_signs_out_members_without_an_authenticator(gw):
    admin = await make_staff(gw, "admin@riverside.test", "admin")
    secret = await enable_totp(gw, admin)
    agent_browser, agent = await signed_in(gw, "agent")
    async with Browser(gw) as b, agent_browser:
        await b.login(admin.email, totp=pyotp.TOTP(secret).at(gw.clock.now()))
        assert (await agent_browser.get("/staff/")).status == 200
        resp = await b.post("/staff/settings/policy", {**POLICY_FORM, "require_totp": "1"},
                            csrf_from="/staff/settings")
        assert resp.status == 303 and resp.headers["Location"] == "/staff/settings?saved=1"
        # The agent's next request is signed out; the admin (with an authenticator) carries on.
        assert (await agent_browser.get("/staff/")).status == 303
        assert (await agent_browser.get("/staff/")).headers["Location"].startswith("/staff/login")
        assert (await b.get("/staff/settings")).status == 200
        # Signing in again leads the agent to enrolment (the existing flow).
        await agent_browser.login(agent.email)
        assert (await agent_browser.get("/staff/")).headers["Location"] == "/staff/account/totp"
    ended = await audit_entries(gw, "auth.sessions_ended")
    assert [(e["staff_id"], e["detail"]["sessions_ended"], e["actor"]["id"]) for e in ended] == [
        (agent.id, 1, admin.id)]


async def test_an_admin_without_an_authenticator_who_requires_one_is_sent_to_enrol_not_locked_out(gw):
    browser, admin = await signed_in(gw, "admin")
    async with browser as b, Browser(gw) as elsewhere:
        await elsewhere.login(admin.email)  # the same admin, signed in on another device
        resp = await b.post("/staff/settings/policy", {**POLICY_FORM, "require_totp": "1"},
                            csrf_from="/staff/settings")
        assert resp.status == 303 and resp.headers["Location"] == "/staff/account/totp"
        # This session is kept, but only for enrolment; the other device is signed out.
        assert (await b.get("/staff/settings")).headers["Location"] == "/staff/account/totp"
        assert (await b.get("/staff/account/totp")).status == 200
        assert (await elsewhere.get("/staff/")).headers["Location"].startswith("/staff/login")
        # Enrolling from the kept session gives the org back.
        start = await b.post("/staff/account/totp/start", csrf_from="/staff/account/totp")
        confirm = await b.post("/staff/account/totp/confirm",
                               {"totp": pyotp.TOTP(re_secret(await start.text())).at(gw.clock.now())},
                               csrf=csrf_of(await start.text()))
        assert confirm.status == 303
        assert (await b.get("/staff/settings")).status == 200
    assert (await gw.services.orgs.get(gw.org.id)).policy.require_totp is True
    ended = await audit_entries(gw, "auth.sessions_ended")
    assert [(e["staff_id"], e["detail"]["sessions_ended"], e["detail"]["kept_to_enrol"]) for e in ended] == [
        (admin.id, 1, True)]


# -- times in the org's time zone (issue 9) -----------------------------------------------------
async def test_staff_pages_show_times_in_the_org_time_zone(gw):
    # The frozen clock reads 2026-01-05 09:00 UTC: 04:00 in New York (EST).
    await gw.services.orgs.update_details(gw.org.id, DetailChanges(timezone="America/New_York"))
    sent = await gw.api_send(body="Your appointment is confirmed.")
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        for path in ("/staff/", f"/staff/threads/{sent['thread_id']}", "/staff/audit", "/staff/settings/api-keys",
                     "/staff/account"):
            html = await (await b.get(path)).text()
            assert "05 Jan 2026 04:00 EST" in html, path
            assert "09:00 UTC" not in html, path


async def test_the_client_portal_shows_times_in_the_org_time_zone(gw):
    await gw.services.orgs.update_details(gw.org.id, DetailChanges(timezone="America/New_York"))
    await gw.api_send(body="Your results are ready.", secure=True)
    await gw.drain()
    assert (await gw.open_link(gw.last_link_token())).status == 303
    page = await (await gw.client.get("/s/thread")).text()
    assert "05 Jan 2026, 04:00 EST" in page and "UTC" not in page
    updates = await (await gw.client.get("/s/thread/updates")).json()
    assert [m["at_human"] for m in updates["messages"]] == ["05 Jan 2026, 04:00 EST"]


async def test_the_audit_log_date_filter_uses_the_org_days(gw):
    from gateway.security.audit import SYSTEM

    await gw.services.orgs.update_details(gw.org.id, DetailChanges(timezone="America/New_York"))
    gw.clock.set(datetime(2026, 1, 5, 3, 0, tzinfo=UTC))  # 4 Jan, 22:00 in New York
    await gw.services.audit.append(gw.org.id, "test.evening_before", SYSTEM)
    gw.clock.set(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))  # 5 Jan, 04:00 in New York
    await gw.services.audit.append(gw.org.id, "test.that_morning", SYSTEM)
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        html = await (await b.get("/staff/audit?from=2026-01-05&to=2026-01-05")).text()
    assert "test.that_morning" in html and "test.evening_before" not in html


async def test_a_stored_zone_this_system_does_not_know_shows_utc_rather_than_failing(gw):
    await gw.store.orgs.update_one({"_id": gw.org.id}, {"$set": {"timezone": "Atlantis/Lost_City"}})
    org = await gw.services.orgs.stored(gw.org.id)
    assert org.timezone == "Atlantis/Lost_City" and org.zone.key == "UTC"
