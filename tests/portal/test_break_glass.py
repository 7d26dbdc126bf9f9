"""Agent scope and break-glass emergency access (HIPAA 164.312(a)(2)(ii); docs/security-model.md, 'Staff access').

With agent_scope "assigned" an agent opens only their own and unassigned threads; another's is a
403 offering break-glass: a reason opens it for the org's break_glass_minutes, with a high-severity
audit entry (ids only) and an alert to the admins; the reason is sealed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bson
import pytest

from gateway.ids import new_id
from gateway.runtime.services import build_services
from gateway.security.audit import SYSTEM
from tests.portal.test_staff_live import read_event
from tests.portal.test_staff_settings import POLICY_FORM
from tests.portal.test_staff_support import Browser, audit_entries, csrf_of, make_staff, signed_in

SECRET = "canary-b7g1: the biopsy shows a benign cyst"
CLIENT_NAME = "Robin Quillfeather"
REASON = "canary-r3as0n Robin called in distress, Sam is off sick"
MINE, FREE, THEIRS, OTHER = "+15551230011", "+15551230012", "+15551230013", "+15551230014"
MINUTES = 10


def thread_ids(html: str) -> list[str]:
    return re.findall(r'data-thread="([0-9a-f]{24})"', html)


async def send(gw, phone: str, body: str = "Your appointment is confirmed.", name: str | None = None) -> str:
    sent = await gw.services.conversations.send(gw.org, channel="sms", body=body, actor=SYSTEM, to_phone=phone,
                                                name=name, secure=True, allow_sensitive=True)
    return str(sent.thread["_id"])


@dataclass
class Scene:
    browser: Browser
    agent: Any
    colleague: Any
    mine: str  # assigned to the agent
    free: str  # assigned to nobody
    theirs: str  # assigned to the colleague: holds SECRET


async def scene(gw, *, scope: str = "assigned") -> Scene:
    await gw.services.orgs.update_policy(gw.org.id, agent_scope=scope, break_glass_minutes=MINUTES)
    colleague = await make_staff(gw, "colleague@riverside.test")
    browser, agent = await signed_in(gw)
    mine, free = await send(gw, MINE), await send(gw, FREE)
    theirs = await send(gw, THEIRS, SECRET, name=CLIENT_NAME)
    await gw.services.conversations.assign(gw.org.id, mine, agent.id, SYSTEM)
    await gw.services.conversations.assign(gw.org.id, theirs, colleague.id, SYSTEM)
    return Scene(browser, agent, colleague, mine, free, theirs)


async def break_glass(b: Browser, thread_id: str, reason: str = REASON) -> Any:
    return await b.post(f"/staff/threads/{thread_id}/break-glass", {"reason": reason}, csrf_from="/staff/")


def assert_refused(status: int, html: str) -> None:
    """The 403 page: the break-glass form, nothing of the conversation."""
    assert status == 403, html[:500]
    assert "assigned to someone else" in html
    assert re.search(r'<form method="post" action="/staff/threads/[0-9a-f]{24}/break-glass"', html)
    assert re.search(r'<textarea[^>]*name="reason"[^>]*required', html) and 'name="csrf"' in html
    for leak in (SECRET, "canary-b7g1", CLIENT_NAME, "0013"):
        assert leak not in html, leak


def review_form(html: str) -> dict[str, str]:
    """The hidden fields of the emergency access page's "Mark all as reviewed" form (csrf included)."""
    form = re.search(r'<form method="post" action="/staff/settings/emergency-access/reviewed".*?</form>', html, re.S)
    assert form, html[:2000]
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form.group(0)))


def no_canary(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        raw = bson.encode(d)
        assert b"canary-r3as0n" not in raw and b"distress" not in raw, d


# -- scope ------------------------------------------------------------------------------------------
async def test_agent_with_assigned_scope_lists_only_own_and_unassigned_threads(gw):
    s = await scene(gw)
    await gw.store.threads.update_one({"_id": s.theirs}, {"$set": {"unread_staff": 2}})
    async with s.browser as b:
        html = await (await b.get("/staff/")).text()
        assert set(thread_ids(html)) == {s.mine, s.free}
        assert 'id="unread-badge"' not in html  # the colleague's unread thread is not counted
        assert thread_ids(await (await b.get("/staff/?view=mine")).text()) == [s.mine]
        assert thread_ids(await (await b.get("/staff/?view=unassigned")).text()) == [s.free]
        assert thread_ids(await (await b.get("/staff/?q=%2B15551230013")).text()) == []
        assert thread_ids(await (await b.get("/staff/?q=Robin")).text()) == []
        assert thread_ids(await (await b.get("/staff/?unread=1")).text()) == []
    admin, _ = await signed_in(gw, "admin")
    async with admin:
        html = await (await admin.get("/staff/")).text()
        assert set(thread_ids(html)) == {s.mine, s.free, s.theirs} and 'id="unread-badge"' in html


async def test_anothers_thread_is_refused_on_every_route_with_the_break_glass_form(gw):
    s = await scene(gw)
    before = await gw.store.threads.find_one({"_id": s.theirs})
    messages = await gw.store.messages.count_documents({"thread_id": s.theirs})
    t = f"/staff/threads/{s.theirs}"
    async with s.browser as b:
        view = await b.get(t)
        assert_refused(view.status, await view.text())
        assert view.headers["Content-Type"].startswith("text/html") and "Content-Security-Policy" in view.headers
        for path, data in ((t, {"body": "hello"}), (t + "/assign", {"assignee": "me"}),
                           (t + "/status", {"status": "closed"}), (t + "/pin", {"action": "generate"}),
                           (t + f"/links/{new_id()}/revoke", {})):
            resp = await b.post(path, data, csrf_from="/staff/")
            assert_refused(resp.status, await resp.text())
        download = await b.get(t + f"/attachments/{new_id()}")
        assert_refused(download.status, await download.text())
        assert (await b.get(f"/staff/threads/{s.free}")).status == 200
        assert (await b.get(f"/staff/threads/{s.mine}")).status == 200
    after = await gw.store.threads.find_one({"_id": s.theirs})
    assert (after["assignee"], after["status"]) == (before["assignee"], before["status"]) == (s.colleague.id, "open")
    assert await gw.store.messages.count_documents({"thread_id": s.theirs}) == messages
    denials = await audit_entries(gw, "authz.deny")
    assert len(denials) == 7
    assert all(d["thread_id"] == s.theirs and d["detail"]["reason"] == "scope" and d["outcome"] == "denied"
               and d["actor"] == {"kind": "staff", "id": s.agent.id} for d in denials)
    assert not [e for e in await audit_entries(gw, "thread.read") if e["thread_id"] == s.theirs]


# -- break-glass --------------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", ["too short", "          x          ", "x" * 501, "ten chars\x00!"])
async def test_an_invalid_reason_is_refused_and_grants_nothing(gw, reason):
    s = await scene(gw)
    async with s.browser as b:
        resp = await break_glass(b, s.theirs, reason)
        html = await resp.text()
        assert resp.status == 422
        assert 'role="alert"' in html and "Reason must be" in html
        assert SECRET not in html and CLIENT_NAME not in html
        assert (await b.get(f"/staff/threads/{s.theirs}")).status == 403
    assert await gw.store.break_glass.count_documents({}) == 0
    assert await gw.store.alerts.count_documents({}) == 0
    assert await audit_entries(gw, "breakglass.grant") == []


async def test_break_glass_opens_the_thread_for_the_policy_minutes_then_closes_it(gw):
    s = await scene(gw)
    t = f"/staff/threads/{s.theirs}"
    async with s.browser as b:
        refused = await b.get(t)
        csrf = csrf_of(await refused.text())
        granted = await b.post(t + "/break-glass", {"reason": REASON}, csrf=csrf)
        assert granted.status == 303 and granted.headers["Location"] == t
        page = await b.get(t)
        html = await page.text()
        assert page.status == 200 and SECRET in html and CLIENT_NAME in html
        assert 'id="emergency"' in html
        # Actions too, not only the view.
        reply = await b.post(t, {"body": "We are looking into it now."}, csrf=csrf)
        assert reply.status == 303

        grant = await gw.store.break_glass.find_one({"org_id": gw.org.id})
        assert (grant["staff_id"], grant["thread_id"]) == (s.agent.id, s.theirs)
        assert (grant["expires_at"] - grant["created_at"]).total_seconds() == MINUTES * 60
        # The reason is sealed: not in the stored document, opened only through the vault.
        assert isinstance(grant["reason"], bytes) and b"canary-r3as0n" not in bson.encode(grant)
        assert await gw.services.vault.open(gw.org.id, "break_glass", grant["_id"], "reason", grant["reason"]) == REASON

        entries = await audit_entries(gw, "breakglass.grant")
        assert len(entries) == 1
        entry = entries[0]
        assert entry["actor"] == {"kind": "staff", "id": s.agent.id} and entry["thread_id"] == s.theirs
        assert entry["detail"] == {"grant_id": grant["_id"], "severity": "high", "minutes": MINUTES}
        reads = [e for e in await audit_entries(gw, "thread.read") if e["thread_id"] == s.theirs]
        assert reads and reads[0]["detail"]["grant_id"] == grant["_id"]
        no_canary([d async for d in gw.store.audit.find({})])

        alerts = [d async for d in gw.store.alerts.find({})]
        assert len(alerts) == 1
        assert (alerts[0]["org_id"], alerts[0]["kind"], alerts[0]["severity"]) == (
            gw.org.id, "breakglass.grant", "high")
        assert alerts[0]["ids"] == {"grant_id": grant["_id"], "thread_id": s.theirs, "staff_id": s.agent.id}
        no_canary(alerts)

        gw.clock.advance(minutes=MINUTES - 1)  # T-1 minute: still open
        assert (await b.get(t)).status == 200
        gw.clock.advance(minutes=2)  # T+1 minute: closed again, to views and actions alike
        closed = await b.get(t)
        assert_refused(closed.status, await closed.text())
        messages = await gw.store.messages.count_documents({"thread_id": s.theirs})
        late_reply = await b.post(t, {"body": "one more thing"}, csrf=csrf)
        assert_refused(late_reply.status, await late_reply.text())
        assert await gw.store.messages.count_documents({"thread_id": s.theirs}) == messages
        late_status = await b.post(t + "/status", {"status": "closed"}, csrf=csrf)
        assert late_status.status == 403
        assert (await gw.store.threads.find_one({"_id": s.theirs}))["status"] == "open"
    assert await gw.services.audit.verify(gw.org.id) is None


async def test_an_agent_who_hands_a_thread_to_a_colleague_goes_back_to_the_inbox(gw):
    s = await scene(gw)
    async with s.browser as b:
        resp = await b.post(f"/staff/threads/{s.mine}/assign", {"assignee": s.colleague.id}, csrf_from="/staff/")
        assert resp.status == 303 and resp.headers["Location"] == "/staff/"
        assert (await b.get(f"/staff/threads/{s.mine}")).status == 403


async def test_an_agent_cannot_change_the_assignment_under_a_grant(gw):
    """Assigning the thread to themselves or to nobody would keep it in their scope after the grant."""
    s = await scene(gw)
    third = await make_staff(gw, "third@riverside.test")
    t = f"/staff/threads/{s.theirs}"
    async with s.browser as b:
        assert (await break_glass(b, s.theirs)).status == 303
        csrf = csrf_of(await (await b.get("/staff/")).text())
        for value in ("me", "none", "", third.id, s.colleague.id):
            resp = await b.post(t + "/assign", {"assignee": value}, csrf=csrf)
            html = await resp.text()
            assert resp.status == 403, (value, resp.status)
            assert "only be reassigned by an admin" in html and SECRET not in html and CLIENT_NAME not in html
            assert (await gw.store.threads.find_one({"_id": s.theirs}))["assignee"] == s.colleague.id
        page = await (await b.get(t)).text()  # nor does the page offer it
        assert f'action="{t}/assign"' not in page and "only an admin can reassign" in page
        gw.clock.advance(minutes=MINUTES + 1)  # the grant is over: the thread is closed to them again
        closed = await b.get(t)
        assert_refused(closed.status, await closed.text())
        assert s.theirs not in thread_ids(await (await b.get("/staff/")).text())
        # An admin (who needs no grant) may reassign it, to the agent too.
        admin, _ = await signed_in(gw, "admin")
        async with admin:
            assert (await admin.post(t + "/assign", {"assignee": s.agent.id}, csrf_from=t)).status == 303
        assert (await b.get(t)).status == 200
    denials = [d for d in await audit_entries(gw, "authz.deny") if d["detail"]["reason"] == "breakglass_assign"]
    assert len(denials) == 5
    assert all(d["thread_id"] == s.theirs and d["outcome"] == "denied"
               and d["actor"] == {"kind": "staff", "id": s.agent.id} for d in denials)
    assigned = [e for e in await audit_entries(gw, "thread.assigned") if e["thread_id"] == s.theirs]
    assert [e["actor"]["kind"] for e in assigned] == ["system", "staff"]  # the scene's, then the admin's


async def test_a_grant_opens_one_thread_for_one_member(gw):
    s = await scene(gw)
    other = await send(gw, OTHER, SECRET)
    await gw.services.conversations.assign(gw.org.id, other, s.colleague.id, SYSTEM)
    async with s.browser as b:
        assert (await break_glass(b, s.theirs)).status == 303
        assert (await b.get(f"/staff/threads/{s.theirs}")).status == 200
        refused = await b.get(f"/staff/threads/{other}")
        assert_refused(refused.status, await refused.text())
        # Asking again while the grant runs makes no second grant.
        assert (await break_glass(b, s.theirs)).status == 303
    second, _ = await signed_in(gw, email="second@riverside.test")
    async with second:
        refused = await second.get(f"/staff/threads/{s.theirs}")
        assert_refused(refused.status, await refused.text())
    assert await gw.store.break_glass.count_documents({}) == 1


async def test_admins_and_the_all_scope_open_every_thread_without_break_glass(gw):
    s = await scene(gw)
    admin, _ = await signed_in(gw, "admin")
    async with admin:
        page = await admin.get(f"/staff/threads/{s.theirs}")
        assert page.status == 200 and SECRET in await page.text()
        assert (await break_glass(admin, s.theirs)).status == 303  # nothing to break: no grant
    async with s.browser as b:
        await gw.services.orgs.update_policy(gw.org.id, agent_scope="all")
        page = await b.get(f"/staff/threads/{s.theirs}")
        assert page.status == 200 and SECRET in await page.text()
        assert set(thread_ids(await (await b.get("/staff/")).text())) == {s.mine, s.free, s.theirs}
    assert await gw.store.break_glass.count_documents({}) == 0
    assert await audit_entries(gw, "authz.deny") == []


async def test_another_orgs_thread_is_still_a_404(gw):
    s = await scene(gw)
    other_org = await gw.services.orgs.create("Hillside Clinic", "+15005550009")
    sent = await gw.services.conversations.send(other_org, channel="sms", body=SECRET, actor=SYSTEM,
                                                to_phone=THEIRS, secure=True)
    foreign = str(sent.thread["_id"])
    async with s.browser as b:
        assert (await b.get(f"/staff/threads/{foreign}")).status == 404
        assert (await break_glass(b, foreign)).status == 404
    assert await gw.store.break_glass.count_documents({}) == 0
    denials = await audit_entries(gw, "authz.deny")
    assert [d["detail"]["requested"] for d in denials] == [foreign, foreign]


# -- what the admins see --------------------------------------------------------------------------------
async def test_admins_get_a_banner_and_read_the_reason_escaped(gw):
    s = await scene(gw)
    xss = "<script>alert('bg')</script> urgent: " + REASON
    async with s.browser as b:
        assert (await break_glass(b, s.theirs, xss)).status == 303
        assert 'id="alert-banner"' not in await (await b.get("/staff/")).text()  # agents get no banner
    admin, me = await signed_in(gw, "admin")
    async with admin:
        inbox = await (await admin.get("/staff/")).text()
        assert 'id="alert-banner"' in inbox and "Emergency access was used 1 time " in inbox
        review = await (await admin.get("/staff/settings/emergency-access")).text()
        assert "&lt;script&gt;alert(&#39;bg&#39;)&lt;/script&gt; urgent: canary-r3as0n" in review
        assert "<script>alert(" not in review and "agent@riverside.test" in review
        form = review_form(review)
        assert (await admin.post("/staff/settings/emergency-access/reviewed", form, csrf=form["csrf"])).status == 303
        assert 'id="alert-banner"' not in await (await admin.get("/staff/")).text()
    assert [e["actor"]["id"] for e in await audit_entries(gw, "breakglass.reasons_viewed")] == [me.id]
    alert = await gw.store.alerts.find_one({})
    assert alert["reviewed"] and alert["reviewed_by"] == me.id
    assert [e["detail"] for e in await audit_entries(gw, "alert.reviewed")] == [{"alerts": 1, "upto": alert["_id"]}]
    no_canary([d async for d in gw.store.audit.find({})])


async def test_mark_all_as_reviewed_closes_only_the_alerts_the_page_showed(gw):
    s = await scene(gw)
    other = await send(gw, OTHER, SECRET)
    await gw.services.conversations.assign(gw.org.id, other, s.colleague.id, SYSTEM)
    admin, me = await signed_in(gw, "admin")
    async with s.browser as b, admin:
        assert (await break_glass(b, s.theirs)).status == 303  # alert A
        shown = review_form(await (await admin.get("/staff/settings/emergency-access")).text())
        assert (await break_glass(b, other)).status == 303  # alert B, raised after the admin loaded the page
        resp = await admin.post("/staff/settings/emergency-access/reviewed", shown, csrf=shown["csrf"])
        assert resp.status == 303
        alerts = {d["ids"]["thread_id"]: d async for d in gw.store.alerts.find({})}
        assert alerts[s.theirs]["reviewed"] and alerts[s.theirs]["reviewed_by"] == me.id
        assert not alerts[other]["reviewed"] and alerts[other]["reviewed_by"] is None
        inbox = await (await admin.get("/staff/")).text()
        assert 'id="alert-banner"' in inbox and "Emergency access was used 1 time " in inbox
        # Reloaded, the page shows B, and its form closes B.
        again = review_form(await (await admin.get("/staff/settings/emergency-access")).text())
        assert again["upto"] == alerts[other]["_id"] != shown["upto"]
        assert (await admin.post("/staff/settings/emergency-access/reviewed", again, csrf=again["csrf"])).status == 303
        assert 'id="alert-banner"' not in await (await admin.get("/staff/")).text()
    assert [e["detail"] for e in await audit_entries(gw, "alert.reviewed")] == [
        {"alerts": 1, "upto": alerts[s.theirs]["_id"]}, {"alerts": 1, "upto": alerts[other]["_id"]}]


async def test_mark_all_as_reviewed_refuses_a_form_without_a_valid_alert_id(gw):
    s = await scene(gw)
    admin, _ = await signed_in(gw, "admin")
    async with s.browser as b, admin:
        assert (await break_glass(b, s.theirs)).status == 303
        form = review_form(await (await admin.get("/staff/settings/emergency-access")).text())
        upto = form.pop("upto")
        for bad in (None, "", "all", upto.upper(), upto + "0", upto[:-1]):
            data = form if bad is None else {**form, "upto": bad}
            resp = await admin.post("/staff/settings/emergency-access/reviewed", data, csrf=form["csrf"])
            html = await resp.text()
            assert resp.status == 422 and 'role="alert"' in html, (bad, resp.status)
            assert 'id="alert-banner"' in html
    assert await gw.store.alerts.count_documents({"reviewed": False}) == 1
    assert await audit_entries(gw, "alert.reviewed") == []


async def test_live_updates_skip_threads_outside_the_agents_scope(gw):
    s = await scene(gw)
    async with s.browser as b:
        resp = await b.session.get(b.url("/staff/live"))
        await read_event(resp, "ready")
        await gw.services.conversations.set_status(gw.org.id, s.theirs, "closed", SYSTEM)
        await gw.services.conversations.set_status(gw.org.id, s.mine, "closed", SYSTEM)
        assert (await read_event(resp, "thread"))["thread_id"] == s.mine
        resp.close()


async def test_admin_sets_the_agent_scope_and_break_glass_minutes(gw):
    admin, _ = await signed_in(gw, "admin")
    async with admin as b:
        page = await (await b.get("/staff/settings")).text()
        assert 'name="agent_scope"' in page and 'name="break_glass_minutes"' in page
        for field, value in (("break_glass_minutes", "4"), ("break_glass_minutes", "241"), ("agent_scope", "some")):
            form = {**POLICY_FORM, "agent_scope": "assigned", "break_glass_minutes": "15", field: value}
            resp = await b.post("/staff/settings/policy", form, csrf_from="/staff/settings")
            assert resp.status == 422 and field in await resp.text(), (field, value)
        ok = await b.post("/staff/settings/policy", {**POLICY_FORM, "agent_scope": "assigned",
                                                     "break_glass_minutes": "15"}, csrf_from="/staff/settings")
        assert ok.status == 303
    policy = (await gw.services.orgs.get(gw.org.id)).policy
    assert (policy.agent_scope, policy.break_glass_minutes) == ("assigned", 15)
    changed = (await audit_entries(gw, "org.policy_updated"))[0]["detail"]["changed"].split(",")
    assert {"agent_scope", "break_glass_minutes"} <= set(changed)


# -- the notifier port --------------------------------------------------------------------------------
class RecordingAlerts:
    """A StaffAlerts that keeps every alert it is given (the fake notifier)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def alert(self, org_id: str, kind: str, ids: Mapping[str, str], *, severity: str = "high") -> None:
        self.received.append({"org_id": org_id, "kind": kind, "ids": dict(ids), "severity": severity})


class TestWithAFakeNotifier:
    @pytest.fixture
    def notifier(self) -> RecordingAlerts:
        return RecordingAlerts()

    @pytest.fixture
    def services(self, config, store, keyring, clock, notifier):  # the gateway is built on these
        return build_services(config, store, keyring, clock, alerts=notifier)

    async def test_the_notifier_receives_a_high_severity_alert_with_ids_only(self, gw, notifier):
        s = await scene(gw)
        async with s.browser as b:
            assert (await break_glass(b, s.theirs, "too short")).status == 422
            assert notifier.received == []
            assert (await break_glass(b, s.theirs)).status == 303
        grant = await gw.store.break_glass.find_one({})
        assert notifier.received == [{"org_id": gw.org.id, "kind": "breakglass.grant", "severity": "high",
                                      "ids": {"grant_id": grant["_id"], "thread_id": s.theirs,
                                              "staff_id": s.agent.id}}]
