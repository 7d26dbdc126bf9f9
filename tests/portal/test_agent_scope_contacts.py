"""Agent scope on the Contacts pages and Compose (HIPAA minimum necessary, 164.502(b);
docs/security-model.md, 'Staff access').

With agent_scope "assigned" an agent sees only the contacts of conversations assigned to them or to
nobody, and contacts with no conversation yet. The contact of a colleague's conversation is, on its
page, its PIN action and in Compose, the same audited 403 as the conversation (the break-glass
page); a break-glass grant for the conversation opens the contact too. Admins, and every agent
under "all", see every contact.
"""

from __future__ import annotations

import re
from typing import Any

from bson import ObjectId

from gateway.security.audit import SYSTEM
from portal.staff.contacts import PAGE, SCAN
from tests.portal.test_break_glass import CLIENT_NAME, FREE, MINE, MINUTES, THEIRS, Scene, break_glass, scene
from tests.portal.test_page_scaling import capture, examined, reads
from tests.portal.test_page_scaling import store as store  # noqa: F401 (the store whose commands capture() sees)
from tests.portal.test_staff_support import Browser, audit_entries, csrf_of, signed_in

NEW_CONTACT = "Quinn Nothreadyet"
NEW_PHONE = "+15551230021"
UNKNOWN_PHONE = "+15551230099"
LEAKS = (CLIENT_NAME, "Robin", "0013", THEIRS)


def contact_ids(html: str) -> list[str]:
    return re.findall(r'<a href="/staff/contacts/([0-9a-f]{24})">', html)


def next_url(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">', html)
    return found.group(1).replace("&amp;", "&") if found else None


async def contact_of(gw: Any, thread_id: str) -> str:
    return str((await gw.store.threads.find_one({"_id": thread_id}))["contact_id"])


class Contacts:
    """The scene's contacts: the thread-holding ones, and one with no conversation yet."""

    def __init__(self, s: Scene, mine: str, free: str, theirs: str, new: str) -> None:
        self.scene, self.mine, self.free, self.theirs, self.new = s, mine, free, theirs, new


async def contacts_scene(gw: Any, *, scope: str = "assigned") -> Contacts:
    s = await scene(gw, scope=scope)
    new, _ = await gw.services.contacts.find_or_create(gw.org.id, phone=NEW_PHONE, name=NEW_CONTACT)
    await gw.drain()  # the scene's own messages go out now, not during a test's "nothing sent" window
    return Contacts(s, await contact_of(gw, s.mine), await contact_of(gw, s.free), await contact_of(gw, s.theirs),
                    new.id)


def assert_refused(status: int, html: str, thread_id: str) -> None:
    """The break-glass page of the contact's conversation, and nothing of the contact."""
    assert status == 403, html[:500]
    assert "assigned to someone else" in html
    assert f'<form method="post" action="/staff/threads/{thread_id}/break-glass"' in html
    assert re.search(r'<textarea[^>]*name="reason"[^>]*required', html) and 'name="csrf"' in html
    for leak in LEAKS:
        assert leak not in html, leak


async def outbound_state(gw: Any, thread_id: str) -> tuple[int, int, int, int]:
    """(outbox jobs, messages in the thread, links, SMS the colleague's client received)."""
    await gw.drain()
    return (await gw.store.outbox.count_documents({}),
            await gw.store.messages.count_documents({"thread_id": thread_id}),
            await gw.store.links.count_documents({"thread_id": thread_id}), len(gw.sms_to(THEIRS)))


# -- the list -----------------------------------------------------------------------------------------
async def test_a_scoped_agents_list_leaves_out_a_colleagues_client(gw):
    c = await contacts_scene(gw)
    async with c.scene.browser as b:
        html = await (await b.get("/staff/contacts")).text()
        assert set(contact_ids(html)) == {c.mine, c.free, c.new}
        assert NEW_CONTACT in html
        for leak in LEAKS:
            assert leak not in html, leak
        # An exact search finds nobody either; the agent's own contacts are still found.
        searched = await (await b.get("/staff/contacts?q=%2B15551230013")).text()
        assert contact_ids(searched) == [] and "No contacts found" in searched
        assert contact_ids(await (await b.get("/staff/contacts?q=%2B15551230011")).text()) == [c.mine]
        assert contact_ids(await (await b.get("/staff/contacts?q=%2B15551230021")).text()) == [c.new]


async def seed(gw: Any, n: int, assignee: Any) -> list[str]:
    """n contacts, each with a conversation assigned to `assignee` (bulk, like the app writes them)."""
    now = gw.clock.now()
    contacts, threads = [], []
    for i in range(n):
        cid = str(ObjectId())
        contacts.append({"_id": cid, "org_id": gw.org.id, "dek_id": "none", "consent": {}, "consent_log": [],
                         "created_at": now, "last_channel": "sms", "phone_hint": f"•••{i:04d}",
                         "phone_bidx": "none:" + cid, "email_bidx": "none:" + cid})
        threads.append({"_id": str(ObjectId()), "org_id": gw.org.id, "contact_id": cid, "secure": True,
                        "status": "open", "assignee": assignee, "created_at": now, "last_activity_at": now,
                        "unread_staff": 0, "preview": "New reply", "channel": "sms"})
    await gw.store.contacts.insert_many(contacts)
    await gw.store.threads.insert_many(threads)
    return [c["_id"] for c in contacts]


async def walk(b: Browser, limit: int = 30) -> tuple[list[list[str]], list[str]]:
    """Every page of the contact list: (the ids of each page, the pages' html)."""
    pages, htmls = [], []
    url: str | None = "/staff/contacts"
    while url and len(pages) < limit:
        resp = await b.get(url)
        assert resp.status == 200
        html = await resp.text()
        pages.append(contact_ids(html))
        htmls.append(html)
        url = next_url(html)
    return pages, htmls


async def test_a_scoped_agents_list_pages_through_only_their_contacts(gw):
    c = await contacts_scene(gw)
    # Interleaved, newest last: a colleague's, an unassigned one, the agent's own, ...
    ids: dict[str, list[str]] = {"theirs": [], "free": [], "mine": []}
    for _ in range(40):
        ids["theirs"] += await seed(gw, 1, c.scene.colleague.id)
        ids["free"] += await seed(gw, 1, None)
        ids["mine"] += await seed(gw, 1, c.scene.agent.id)
    visible = {c.mine, c.free, c.new, *ids["free"], *ids["mine"]}
    async with c.scene.browser as b:
        pages, _ = await walk(b)
    assert [len(p) for p in pages] == [PAGE, len(visible) - PAGE]
    seen = [cid for p in pages for cid in p]
    assert len(seen) == len(set(seen)) and set(seen) == visible
    assert seen == sorted(seen, reverse=True)  # newest first, as ever


async def test_the_scan_stops_at_its_cap_and_the_next_page_goes_on(gw):
    c = await contacts_scene(gw)
    older = await seed(gw, 3, None)
    mine = await seed(gw, 1, c.scene.agent.id)  # the agent's own, behind more than SCAN of a colleague's
    await seed(gw, SCAN + 20, c.scene.colleague.id)
    async with c.scene.browser as b:
        pages, htmls = await walk(b)
    # The first page looked at SCAN of the colleague's contacts: none to show, and "more" from there.
    assert pages[0] == [] and 'id="partial"' in htmls[0] and next_url(htmls[0])
    assert pages[1:] == [[*mine, *reversed(older), c.new, c.free, c.mine]]
    assert 'id="partial"' not in htmls[1] and next_url(htmls[1]) is None


async def test_a_scoped_page_costs_a_bounded_number_of_indexed_reads(gw):
    c = await contacts_scene(gw)
    await seed(gw, SCAN + 20, c.scene.colleague.id)
    async with c.scene.browser as b:
        html = await (await b.get("/staff/contacts")).text()
        assert contact_ids(html) == [] and 'id="partial"' in html
        commands = await capture(lambda: b.get("/staff/contacts"))
    found = [(coll, flt) for name, coll, flt, _ in reads(commands) if name == "find"]
    # Batches of PAGE + 1, then twice what was read so far, up to SCAN: four, each with one $in read
    # of their conversations (answered by the unique (org_id, contact_id) index).
    assert [coll for coll, _ in found].count("contacts") <= 4
    threads = [flt for coll, flt in found if coll == "threads" and "contact_id" in flt]
    assert len(threads) <= 4 and all(set(flt["contact_id"]) == {"$in"} for flt in threads)
    assert await examined(gw.store, [cmd for cmd in commands if cmd[0] == "find" and cmd[1]["find"] == "threads"
                                     and "contact_id" in (cmd[1].get("filter") or {})]) <= SCAN


# -- the detail and its actions ------------------------------------------------------------------------
async def test_a_colleagues_client_is_an_audited_403_with_the_break_glass_form(gw):
    c = await contacts_scene(gw)
    async with c.scene.browser as b:
        resp = await b.get(f"/staff/contacts/{c.theirs}")
        assert_refused(resp.status, await resp.text(), c.scene.theirs)
        for cid in (c.mine, c.free, c.new):
            assert (await b.get(f"/staff/contacts/{cid}")).status == 200
    [denial] = await audit_entries(gw, "authz.deny")
    assert denial["thread_id"] == c.scene.theirs and denial["contact_id"] == c.theirs
    assert denial["outcome"] == "denied" and denial["actor"] == {"kind": "staff", "id": c.scene.agent.id}
    assert denial["detail"]["reason"] == "scope" and denial["detail"]["object"] == "contact"
    assert c.theirs not in [e["contact_id"] for e in await audit_entries(gw, "contact.viewed")]


async def test_the_pin_of_a_colleagues_client_cannot_be_changed(gw):
    c = await contacts_scene(gw)
    await gw.services.contacts.set_pin(gw.org.id, c.theirs, "246810")
    before = (await gw.store.contacts.find_one({"_id": c.theirs}))["pin_hash"]
    async with c.scene.browser as b:
        csrf = csrf_of(await (await b.get("/staff/")).text())
        for form in ({"action": "clear"}, {"action": "generate"}, {"action": "set", "pin": "135791"}):
            resp = await b.post(f"/staff/contacts/{c.theirs}/pin", form, csrf=csrf)
            assert_refused(resp.status, await resp.text(), c.scene.theirs)
        assert (await b.post(f"/staff/contacts/{c.mine}/pin", {"action": "clear"}, csrf=csrf)).status == 303
    assert (await gw.store.contacts.find_one({"_id": c.theirs}))["pin_hash"] == before
    assert await audit_entries(gw, "contact.pin_set") == [] and await audit_entries(gw, "contact.pin_cleared") != []
    assert [d["detail"]["reason"] for d in await audit_entries(gw, "authz.deny")] == ["scope"] * 3


async def test_a_break_glass_grant_opens_the_contact_until_it_ends(gw):
    c = await contacts_scene(gw)
    async with c.scene.browser as b:
        assert (await break_glass(b, c.scene.theirs)).status == 303
        page = await b.get(f"/staff/contacts/{c.theirs}")
        html = await page.text()
        assert page.status == 200 and CLIENT_NAME in html and THEIRS in html and 'id="emergency"' in html
        resp = await b.post(f"/staff/contacts/{c.theirs}/pin", {"action": "generate"}, csrf=csrf_of(html))
        assert resp.status == 200 and "New PIN" in await resp.text()
        grant = await gw.store.break_glass.find_one({})
        viewed = [e for e in await audit_entries(gw, "contact.viewed") if e["contact_id"] == c.theirs]
        assert viewed and all(e["detail"] == {"grant_id": grant["_id"]} for e in viewed)
        gw.clock.advance(minutes=MINUTES + 1)
        closed = await b.get(f"/staff/contacts/{c.theirs}")
        assert_refused(closed.status, await closed.text(), c.scene.theirs)


# -- compose ------------------------------------------------------------------------------------------------
async def test_compose_to_a_colleagues_client_is_refused_and_sends_nothing(gw):
    c = await contacts_scene(gw)
    before = await outbound_state(gw, c.scene.theirs)
    contact_before = await gw.store.contacts.find_one({"_id": c.theirs})
    async with c.scene.browser as b:
        form = await b.get(f"/staff/compose?contact={c.theirs}")
        assert_refused(form.status, await form.text(), c.scene.theirs)
        csrf = csrf_of(await (await b.get("/staff/compose")).text())
        for data in ({"contact": c.theirs, "body": "hello", "secure": "1"},
                     {"contact": c.theirs, "body": "hello"},
                     {"phone": THEIRS, "body": "hello", "secure": "1"},
                     {"phone": "+1 (555) 123-0013", "email": "robin@client.test", "name": "Rob", "body": "hello"}):
            resp = await b.post("/staff/compose", data, csrf=csrf)
            assert_refused(resp.status, await resp.text(), c.scene.theirs)
    assert await outbound_state(gw, c.scene.theirs) == before
    after = await gw.store.contacts.find_one({"_id": c.theirs})
    assert (after["name"], after["email_bidx"]) == (contact_before["name"], contact_before["email_bidx"])
    denials = await audit_entries(gw, "authz.deny")
    assert len(denials) == 5 and all(d["detail"]["reason"] == "scope" and d["thread_id"] == c.scene.theirs
                                     for d in denials)


async def test_a_scoped_agent_composes_to_new_own_and_unassigned_contacts_but_not_a_colleagues(gw):
    c = await contacts_scene(gw)
    async with c.scene.browser as b:
        csrf = csrf_of(await (await b.get("/staff/compose")).text())
        for data in ({"phone": UNKNOWN_PHONE, "name": "Brand New", "body": "welcome", "secure": "1"},
                     {"contact": c.new, "body": "hello", "secure": "1"},
                     {"contact": c.mine, "body": "hello", "secure": "1"},
                     {"phone": FREE, "body": "hello", "secure": "1"},
                     {"phone": MINE, "body": "hello", "secure": "1"}):
            resp = await b.post("/staff/compose", data, csrf=csrf)
            assert resp.status == 303, (data, resp.status)
        assert (await b.get(f"/staff/compose?contact={c.new}")).status == 200
        refused = await b.post("/staff/compose", {"phone": THEIRS, "body": "hello", "secure": "1"}, csrf=csrf)
        assert_refused(refused.status, await refused.text(), c.scene.theirs)
    await gw.drain()
    assert len(gw.sms_to(UNKNOWN_PHONE)) == 1 and len(gw.sms_to(NEW_PHONE)) == 1
    assert len(gw.sms_to(THEIRS)) == 1  # the scene's message only
    assert len(await audit_entries(gw, "authz.deny")) == 1


async def test_compose_under_a_break_glass_grant_is_allowed(gw):
    c = await contacts_scene(gw)
    data = {"contact": c.theirs, "body": "We are on it.", "secure": "1"}
    async with c.scene.browser as b:
        csrf = csrf_of(await (await b.get("/staff/compose")).text())
        assert (await b.post("/staff/compose", data, csrf=csrf)).status == 403
        assert (await break_glass(b, c.scene.theirs)).status == 303
        page = await b.get(f"/staff/compose?contact={c.theirs}")
        assert page.status == 200 and CLIENT_NAME in await page.text()
        resp = await b.post("/staff/compose", data, csrf=csrf)
        assert resp.status == 303 and resp.headers["Location"] == f"/staff/threads/{c.scene.theirs}"
    assert await gw.store.messages.count_documents({"thread_id": c.scene.theirs}) == 2


# -- admins and the "all" scope ---------------------------------------------------------------------------------
async def check_unrestricted(gw: Any, b: Browser, c: Contacts) -> None:
    html = await (await b.get("/staff/contacts")).text()
    assert set(contact_ids(html)) == {c.mine, c.free, c.theirs, c.new} and CLIENT_NAME in html
    page = await b.get(f"/staff/contacts/{c.theirs}")
    assert page.status == 200 and CLIENT_NAME in await page.text()
    csrf = csrf_of(await page.text())
    assert (await b.post(f"/staff/contacts/{c.theirs}/pin", {"action": "clear"}, csrf=csrf)).status == 303
    resp = await b.post("/staff/compose", {"contact": c.theirs, "body": "hello", "secure": "1"}, csrf=csrf)
    assert resp.status == 303
    assert (await b.post("/staff/compose", {"phone": THEIRS, "body": "again", "secure": "1"}, csrf=csrf)).status == 303


async def test_the_scope_binds_agents_only_and_only_under_assigned(gw):
    c = await contacts_scene(gw)
    async with c.scene.browser as b:
        assert c.theirs not in contact_ids(await (await b.get("/staff/contacts")).text())
        assert (await b.get(f"/staff/contacts/{c.theirs}")).status == 403
    denials = len(await audit_entries(gw, "authz.deny"))
    admin, _ = await signed_in(gw, "admin")
    async with admin:
        await check_unrestricted(gw, admin, c)
    await gw.services.orgs.update_policy(gw.org.id, agent_scope="all")
    async with Browser(gw) as b:
        await b.login(c.scene.agent.email)
        await check_unrestricted(gw, b, c)
    assert len(await audit_entries(gw, "authz.deny")) == denials == 1
    assert await gw.store.break_glass.count_documents({}) == 0


async def test_a_reassigned_client_comes_back_into_the_list(gw):
    c = await contacts_scene(gw)
    async with c.scene.browser as b:
        assert c.theirs not in contact_ids(await (await b.get("/staff/contacts")).text())
        await gw.services.conversations.assign(gw.org.id, c.scene.theirs, c.scene.agent.id, SYSTEM)
        assert c.theirs in contact_ids(await (await b.get("/staff/contacts")).text())
        assert (await b.get(f"/staff/contacts/{c.theirs}")).status == 200
