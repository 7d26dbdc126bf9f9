"""The portal's first pages read a bounded number of documents, however long the history (issue 3).

No timings here (bench/portal.py measures). Instead every database command a page render sends is
captured (a pymongo CommandListener on the test gateway's client) and checked the way SecantusDB
will execute it:

* `route()` mirrors how SecantusDB picks the candidate documents of a query
  (secantus/storage.py, `_try_index_id_keys`): an `_id` point lookup; equality on a prefix of an
  index; equality on a prefix plus one range / `$in` on the next key field; else ONE clause alone
  rides an index, in filter order, and the rest is filtered afterwards. It reads every candidate,
  decodes it, sorts in memory and only then limits, so "documents examined" is the number of
  candidates; a hinted query walks the whole index, so no page may send a hint.
* explain() is asked too, but only trusted where it is right: it reports the `_id` fast path of a
  multi-field filter as COLLSCAN, and calls an org-wide scan IXSCAN.

The scaling checks count the candidates of every command of a (warm) first-page render at two
history sizes: they must be the same, give or take a few.
"""

from __future__ import annotations

import os
import random
import struct
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring
from yarl import URL

from gateway.security.audit import SYSTEM
from gateway.storage.store import INDEXES, Doc, Store
from tests.portal.test_staff_support import Browser, make_staff

PAGE = 50
RANGE_OPS = {"$eq", "$gt", "$gte", "$lt", "$lte", "$in"}


# -- capturing the commands of a render ---------------------------------------------------------
class Capture(monitoring.CommandListener):
    def __init__(self) -> None:
        self.on = False
        self.commands: list[tuple[str, Doc]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.database_name.startswith("t_"):
            self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


CAPTURE = Capture()


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[Store]:
    """The conftest store, on a client whose commands this module can see."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=5000, tz_aware=True,
                                                     event_listeners=[CAPTURE])
    name = "t_" + uuid.uuid4().hex[:16]
    st = Store(client, name)
    await st.ensure_indexes()
    yield st
    await st.drop()
    await client.close()


async def capture(get: Any) -> list[tuple[str, Doc]]:
    CAPTURE.commands.clear()
    CAPTURE.on = True
    try:
        await get()
    finally:
        CAPTURE.on = False
    return list(CAPTURE.commands)


# -- how SecantusDB will run a filter -------------------------------------------------------------
def key_fields(coll: str) -> list[list[str]]:
    """Key fields of the declared plain indexes (partial and sparse ones are not planned on)."""
    out = []
    for model in INDEXES.get(coll, []):
        doc = model.document
        if doc.get("partialFilterExpression") or doc.get("sparse"):
            continue
        out.append(list(doc["key"]))
    return out


def is_point(value: Any) -> bool:
    if not isinstance(value, dict):
        return True
    return list(value) == ["$eq"] or (list(value) == ["$in"] and isinstance(value["$in"], list))


def route(coll: str, flt: Doc) -> tuple[str, Doc] | None:
    """("_id" | "index", the part of the filter that selects the candidates), or None: a scan."""
    if not flt or any(k.startswith("$") for k in flt):
        return None
    if list(flt) == ["_id"]:
        return ("_id", flt) if is_point(flt["_id"]) else None
    keys = key_fields(coll)
    if all(not isinstance(v, dict) for v in flt.values()):
        if any(len(k) >= len(flt) and set(k[:len(flt)]) == set(flt) for k in keys):
            return "index", flt
    ops = [f for f, v in flt.items() if isinstance(v, dict)]
    if len(flt) >= 2 and len(ops) == 1 and flt[ops[0]] and set(flt[ops[0]]) <= RANGE_OPS:
        eq = set(flt) - {ops[0]}
        if any(len(k) > len(eq) and set(k[:len(eq)]) == eq and k[len(eq)] == ops[0] for k in keys):
            return "index", flt
    if len(flt) == 1:
        field, value = next(iter(flt.items()))
        if isinstance(value, dict) and not set(value) <= RANGE_OPS:
            return None
        return ("index", flt) if any(k[0] == field for k in keys) else None
    for field, clause in flt.items():  # one clause alone, in filter order
        found = route(coll, {field: clause})
        if found is not None:
            return found
    return None


def inclusive(flt: Doc) -> Doc:
    """The filter with exclusive bounds made inclusive: an exclusive range in SecantusDB starts at
    the first index entry EQUAL to the bound and steps over all of them, so they count as read."""
    swap = {"$gt": "$gte", "$lt": "$lte"}
    return {k: ({swap.get(op, op): b for op, b in v.items()} if isinstance(v, dict) else v) for k, v in flt.items()}


def reads(commands: list[tuple[str, Doc]]) -> list[tuple[str, str, Doc, Doc]]:
    """(command, collection, filter, the whole command) of every command that selects documents."""
    out = []
    for name, cmd in commands:
        if name == "find":
            out.append((name, cmd["find"], dict(cmd.get("filter") or {}), cmd))
        elif name == "aggregate":
            first = (cmd.get("pipeline") or [{}])[0]
            out.append((name, cmd["aggregate"], dict(first.get("$match") or {}), cmd))
        elif name in ("update", "delete"):
            for op in cmd.get(name + "s", []):
                out.append((name, cmd[name], dict(op["q"]), cmd))
        elif name in ("count", "distinct", "findAndModify"):
            out.append((name, cmd[name], dict(cmd.get("query") or {}), cmd))
    return out


async def examined(store: Store, commands: list[tuple[str, Doc]]) -> int:
    """Documents SecantusDB reads to answer these commands (their candidates); asserts each is indexed."""
    total = 0
    for name, coll, flt, cmd in reads(commands):
        assert "hint" not in cmd, f"{name} {coll} sends a hint (SecantusDB walks the whole index): {cmd}"
        found = route(coll, flt)
        assert found is not None, f"{name} on {coll} with {flt} is not served by an index"
        total += await store.collection(coll).count_documents(inclusive(found[1]))
    return total


async def assert_explained_indexed(store: Store, commands: list[tuple[str, Doc]]) -> None:
    """explain() agrees wherever it can be trusted (not for the _id fast path of a multi-field filter)."""
    for name, coll, flt, cmd in reads(commands):
        if name != "find":
            continue
        found = route(coll, flt)
        assert found is not None
        db = store.audit_db if coll == "audit" else store.db
        plan = await db.command("explain", {"find": coll, "filter": flt, **(
            {"sort": cmd["sort"]} if cmd.get("sort") else {})}, verbosity="queryPlanner")
        winning = repr(plan["queryPlanner"]["winningPlan"])
        if found[0] == "_id" and len(flt) > 1:
            continue  # reported as COLLSCAN, run as a primary-key lookup
        assert "IXSCAN" in winning, (coll, flt, winning)


# -- seeding: the documents the app writes, in bulk ------------------------------------------------
def oid_at(at: datetime) -> str:
    return str(ObjectId(struct.pack(">I", int(at.timestamp())) + os.urandom(8)))


async def seed_threads(gw: Any, org_id: str, n: int, *, step: timedelta = timedelta(minutes=5),
                       unread: int = 3) -> list[Doc]:
    """n threads (and their named contacts) with activity `step` apart, newest at the clock's now."""
    s = gw.services
    now = gw.clock.now()
    dek = await s.vault.create_key(f"contact:shared-{org_id}", org_id)
    contacts, threads = [], []
    real_now = datetime.now(UTC)
    for i in range(n):
        cid = oid_at(real_now - step * i)  # contacts come over time too (their ids carry it)
        contacts.append({"_id": cid, "org_id": org_id, "dek_id": dek, "consent": {}, "consent_log": [],
                         "created_at": now, "last_channel": "sms", "phone_hint": f"•••{i:04d}",
                         "name": await s.vault.seal(dek, org_id, "contacts", cid, "name", f"Client {i}"),
                         "phone_bidx": "none:" + cid, "email_bidx": "none:" + cid})
        at = now - step * i
        threads.append({"_id": str(ObjectId()), "org_id": org_id, "contact_id": cid, "secure": i % 2 == 0,
                        "status": "open", "assignee": None, "created_at": at, "last_activity_at": at,
                        "unread_staff": 1 if i < unread else 0, "preview": "New reply", "channel": "sms"})
    await s.store.contacts.insert_many(contacts)
    await s.store.threads.insert_many(threads)
    return threads


async def seed_thread(gw: Any, org_id: str, phone: str, n: int) -> Doc:
    """A thread (a month old) whose n messages are 10 minutes apart, the newest now, bodies sealed."""
    s = gw.services
    contact, _ = await s.contacts.find_or_create(org_id, phone=phone, name="Pat")
    real_now = datetime.now(UTC)
    thread = {"_id": oid_at(real_now - timedelta(days=30)), "org_id": org_id, "contact_id": contact.id,
              "secure": True, "status": "open", "assignee": None, "created_at": gw.clock.now(),
              "last_activity_at": gw.clock.now(), "unread_staff": 0, "preview": "New reply", "channel": "sms"}
    await s.store.threads.insert_one(thread)
    docs = []
    for i in range(n):
        at = real_now - timedelta(minutes=10 * i)
        mid = oid_at(at)
        out = i % 2 == 0
        docs.append({
            "_id": mid, "org_id": org_id, "thread_id": thread["_id"], "contact_id": contact.id,
            "direction": "outbound" if out else "inbound", "channel": "sms", "secure": True,
            "author": {"kind": "api", "id": None} if out else {"kind": "contact", "id": contact.id},
            "body": await s.vault.seal(contact.dek_id, org_id, "messages", mid, "body", f"message {i}"),
            "preview": "Message sent" if out else "New reply", "status": "delivered" if out else "received",
            "status_history": [{"status": "delivered" if out else "received", "at": gw.clock.now()}],
            "provider_id": None, "link_id": None, "created_at": gw.clock.now(), "idempotency_key": "none:" + mid,
        })
    await s.store.messages.insert_many(docs)
    link = {"_id": oid_at(real_now), "org_id": org_id, "thread_id": thread["_id"], "contact_id": contact.id,
            "message_id": docs[0]["_id"], "token_hash": os.urandom(32).hex(), "channel": "sms",
            "created_at": gw.clock.now(), "expires_at": gw.clock.now() + timedelta(days=1), "revoked_at": None,
            "locked_at": None, "failures": 0, "pin_hash": None, "opened_at": None}
    await s.store.links.insert_one(link)
    thread["newest"] = docs[0]["_id"]
    thread["link_id"] = link["_id"]
    return thread


async def staff_browser(gw: Any, org_id: str, email: str) -> Browser:
    member = await make_staff(gw, email, org_id=org_id)
    browser = Browser(gw)
    await browser.login(member.email)
    return browser


async def client_browser(gw: Any, thread: Doc) -> aiohttp.ClientSession:
    sid, _ = await gw.services.sessions.create("client", thread["org_id"], idle_seconds=3600,
                                               absolute_seconds=3600, thread_id=thread["_id"],
                                               contact_id=thread["contact_id"], link_id=thread["link_id"],
                                               viewed=True)
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    session.cookie_jar.update_cookies({"hl_client": sid}, URL(gw.server_url))
    return session


async def two_orgs(gw: Any) -> tuple[str, str]:
    """The test org and a second one, both created well before the history seeded into them."""
    other = await gw.services.orgs.create("Hillside Clinic", "+15005550099")
    gw.clock.advance(days=10)
    return gw.org.id, other.id


# -- the pages -----------------------------------------------------------------------------------------
async def test_inbox_first_page_reads_the_same_at_100_and_1000_threads(gw):
    small_org, big_org = await two_orgs(gw)
    await seed_threads(gw, small_org, 100)
    big = await seed_threads(gw, big_org, 1000)
    small_b = await staff_browser(gw, small_org, "small@riverside.test")
    big_b = await staff_browser(gw, big_org, "big@hillside.test")
    async with small_b, big_b:
        counts = {}
        for key, b in (("small", small_b), ("big", big_b)):
            await b.get("/staff/")  # the first render in a process finds the window; then it is remembered
            async def get(b: Browser = b) -> None:
                page = await b.get("/staff/")
                assert page.status == 200
                assert (await page.text()).count('data-thread="') == PAGE
            commands = await capture(get)
            await assert_explained_indexed(gw.store, commands)
            counts[key] = (len(commands), await examined(gw.store, commands))
        page = await big_b.get("/staff/")
        html = await page.text()
        assert [t["_id"] for t in big[:PAGE]] == [h.split('"')[0] for h in html.split('data-thread="')[1:]]
    assert counts["big"][0] == counts["small"][0]
    # About a page of threads, a page of contacts and the unread ones: not the 1,000.
    assert counts["big"][1] <= counts["small"][1] + 10, counts
    assert counts["big"][1] < 4 * PAGE, counts


async def test_inbox_at_10_threads_reads_what_is_there(gw):
    org, _ = await two_orgs(gw)
    await seed_threads(gw, org, 10)
    b = await staff_browser(gw, org, "few@riverside.test")
    async with b:
        await b.get("/staff/")
        commands = await capture(lambda: b.get("/staff/"))
        assert await examined(gw.store, commands) < 3 * 10 + 10


async def test_inbox_filters_and_later_pages_are_indexed(gw):
    org, _ = await two_orgs(gw)
    threads = await seed_threads(gw, org, 300)
    b = await staff_browser(gw, org, "filters@riverside.test")
    async with b:
        first = await b.get("/staff/")
        cursor = (await first.text()).split("cursor=")[1].split('"')[0].replace("&amp;", "&")
        for query in ("view=mine", "view=unassigned", "kind=secure", "kind=standard", "status=open", "unread=1",
                      "q=%2B15551239999", "q=client", f"cursor={cursor}", f"kind=secure&cursor={cursor}"):
            commands = await capture(lambda q=query: b.get("/staff/?" + q))
            n = await examined(gw.store, commands)
            assert n < len(threads), (query, n)


async def test_thread_pages_read_the_same_at_300_and_1500_messages(gw):
    small = await seed_thread(gw, gw.org.id, "+15551230101", 300)
    big = await seed_thread(gw, gw.org.id, "+15551230102", 1500)
    b = await staff_browser(gw, gw.org.id, "reader@riverside.test")
    counts = {}
    async with b:
        for key, t in (("small", small), ("big", big)):
            await b.get(f"/staff/threads/{t['_id']}")
            async def get(t: Doc = t) -> None:
                page = await b.get(f"/staff/threads/{t['_id']}")
                html = await page.text()
                assert page.status == 200 and html.count('<li class="msg ') == PAGE and f'id="m-{t["newest"]}"' in html
                assert "Earlier messages" in html
            commands = await capture(get)
            await assert_explained_indexed(gw.store, commands)
            counts[key] = (len(commands), await examined(gw.store, commands))
    assert counts["big"][0] == counts["small"][0]
    assert counts["big"][1] <= counts["small"][1] + 10, counts
    assert counts["big"][1] < 8 * PAGE, counts


async def test_client_thread_page_reads_the_same_at_300_and_1500_messages(gw):
    small = await seed_thread(gw, gw.org.id, "+15551230201", 300)
    big = await seed_thread(gw, gw.org.id, "+15551230202", 1500)
    counts = {}
    for key, t in (("small", small), ("big", big)):
        session = await client_browser(gw, t)
        async with session:
            await (await session.get(gw.server_url + "/s/thread")).read()

            async def get(t: Doc = t, session: aiohttp.ClientSession = session) -> None:
                async with session.get(gw.server_url + "/s/thread") as page:
                    html = await page.text()
                assert page.status == 200 and f'id="m-{t["newest"]}"' in html
            commands = await capture(get)
        await assert_explained_indexed(gw.store, commands)
        counts[key] = (len(commands), await examined(gw.store, commands))
    assert counts["big"][0] == counts["small"][0]
    assert counts["big"][1] <= counts["small"][1] + 10, counts
    assert counts["big"][1] < 400, counts


# -- the windowed reads return exactly what one sorted query returns --------------------------------------
async def test_windowed_thread_list_matches_the_plain_sorted_query(gw):
    org, _ = await two_orgs(gw)
    s = gw.services
    rng = random.Random(3)
    now = gw.clock.now()
    created = now - timedelta(days=10)
    # Bursts, equal instants, long gaps, and activity from before the org existed (an import).
    times = [now - timedelta(seconds=rng.choice([0, 1, 1, 7, 60, 3600, 86400 * 3, 86400 * 9]) * rng.random())
             for _ in range(150)] + [now] * 5 + [created - timedelta(days=40)] * 3 + [now - timedelta(hours=2)] * 60
    docs = [{"_id": str(ObjectId()), "org_id": org, "contact_id": str(ObjectId()), "secure": rng.random() < 0.5,
             "status": rng.choice(["open", "closed"]), "assignee": rng.choice([None, None, "s1"]),
             "created_at": at, "last_activity_at": at.replace(microsecond=at.microsecond // 1000 * 1000),
             "unread_staff": rng.choice([0, 0, 1]), "preview": "New reply", "channel": "sms"} for at in times]
    await s.store.threads.insert_many(docs)

    def expected(pred: Any) -> list[str]:
        keep = [d for d in docs if pred(d)]
        keep.sort(key=lambda d: (d["last_activity_at"], d["_id"]), reverse=True)
        return [d["_id"] for d in keep]

    cases = [({}, lambda d: True), ({"assignee": "s1"}, lambda d: d["assignee"] == "s1"),
             ({"assignee": None}, lambda d: d["assignee"] is None), ({"secure": True}, lambda d: d["secure"]),
             ({"status": "closed", "secure": False}, lambda d: d["status"] == "closed" and not d["secure"]),
             ({"unread": True}, lambda d: d["unread_staff"] > 0)]
    for limit in (7, 50):
        for rounds in range(2):  # cold, then with the remembered window
            for kw, pred in cases:
                got: list[str] = []
                before = None
                while True:
                    page = await s.conversations.list_threads(org, limit=limit, before=before, **kw)
                    got += [d["_id"] for d in page]
                    if len(page) < limit:
                        break
                    before = (page[-1]["last_activity_at"], page[-1]["_id"])
                assert got == expected(pred), (kw, limit, rounds)
        s.conversations.recent.forget()


async def test_windowed_latest_messages_match_the_plain_sorted_query(gw):
    s = gw.services
    thread = await seed_thread(gw, gw.org.id, "+15551230301", 400)
    # A burst in one second and messages older than the thread (inbound events queued before it).
    burst = [oid_at(datetime.now(UTC) - timedelta(days=2)) for _ in range(30)]
    old = [oid_at(datetime.now(UTC) - timedelta(days=90)) for _ in range(5)]
    contact = await s.contacts.get(gw.org.id, thread["contact_id"])
    await s.store.messages.insert_many([{
        "_id": mid, "org_id": gw.org.id, "thread_id": thread["_id"], "contact_id": contact.id,
        "direction": "inbound", "channel": "sms", "secure": True, "author": {"kind": "contact", "id": contact.id},
        "body": await s.vault.seal(contact.dek_id, gw.org.id, "messages", mid, "body", "x"), "preview": "New reply",
        "status": "received", "status_history": [], "created_at": gw.clock.now(), "idempotency_key": "none:" + mid,
    } for mid in burst + old])
    everything = sorted([d["_id"] async for d in s.store.messages.find({"thread_id": thread["_id"]})], reverse=True)
    for limit in (1, 51, 200):
        for _ in range(2):
            got: list[str] = []
            before = None
            while True:
                page = await s.conversations.latest_messages(gw.org.id, thread["_id"], limit=limit, before=before)
                got += [d["_id"] for d in reversed(page)]
                if len(page) < limit:
                    break
                before = page[0]["_id"]
            assert got == everything, limit
        s.conversations.recent.forget()


async def test_staff_thread_page_pages_back_through_earlier_messages(gw):
    thread = await seed_thread(gw, gw.org.id, "+15551230401", 120)
    everything = sorted([d["_id"] async for d in gw.store.messages.find({"thread_id": thread["_id"]})])
    b = await staff_browser(gw, gw.org.id, "pager@riverside.test")
    seen: list[str] = []
    async with b:
        path = f"/staff/threads/{thread['_id']}"
        while path:
            html = await (await b.get(path)).text()
            seen = [chunk.split('id="m-')[1].split('"')[0] for chunk in html.split('<li class="msg ')[1:]] + seen
            more = html.split('<li class="earlier"><a href="')
            path = more[1].split('"')[0] if len(more) > 1 else ""
    assert seen == everything


async def test_thread_activity_reads_only_thread_level_events(gw):
    """Staff views and message events of a long thread are not read for the activity panel."""
    thread = await seed_thread(gw, gw.org.id, "+15551230501", 60)
    for _ in range(30):
        await gw.services.conversations.mark_read(gw.org.id, thread["_id"], SYSTEM)
    await gw.services.conversations.assign(gw.org.id, thread["_id"], None, SYSTEM)
    b = await staff_browser(gw, gw.org.id, "activity@riverside.test")
    async with b:
        html = await (await b.get(f"/staff/threads/{thread['_id']}")).text()
        assert "Assigned to nobody" in html
        commands = await capture(lambda: b.get(f"/staff/threads/{thread['_id']}"))
    audit_reads = [(coll, flt) for _, coll, flt, _ in reads(commands) if coll == "audit"]
    for coll, flt in audit_reads:
        found = route(coll, flt)
        assert found is not None
        assert await gw.store.audit.count_documents(inclusive(found[1])) <= PAGE + 5, flt


async def test_contacts_first_page_reads_the_same_at_100_and_1000_contacts(gw):
    small_org, big_org = await two_orgs(gw)
    await seed_threads(gw, small_org, 100)
    await seed_threads(gw, big_org, 1000)
    small_b = await staff_browser(gw, small_org, "small@riverside.test")
    big_b = await staff_browser(gw, big_org, "big@hillside.test")
    async with small_b, big_b:
        counts = {}
        for key, b in (("small", small_b), ("big", big_b)):
            await b.get("/staff/contacts")  # the first render finds the window; then it is remembered
            async def get(b: Browser = b) -> None:
                page = await b.get("/staff/contacts")
                assert page.status == 200
                assert (await page.text()).count('href="/staff/contacts/') >= PAGE
            commands = await capture(get)
            await assert_explained_indexed(gw.store, commands)
            counts[key] = (len(commands), await examined(gw.store, commands))
    assert counts["big"][0] == counts["small"][0]
    # About a page of contacts (and the unread threads of the nav): not the 1,000.
    assert counts["big"][1] <= counts["small"][1] + 10, counts
    assert counts["big"][1] < 4 * PAGE, counts


async def test_thread_pages_look_up_attachments_only_where_messages_have_some(gw):
    """Messages record how many attachments were stored with them; a page of messages without any
    makes no attachment lookup (tests/inbound/test_mms.py and test_email_replies.py show the files)."""
    phone = "+15551230701"
    sent = await gw.api_send(to={"phone": phone}, body="Your results are ready.", secure=True)
    await gw.drain()
    await gw.inbound_sms("Thanks, see you then", frm=phone)
    await gw.drain()
    inbound = await gw.store.messages.find_one({"thread_id": sent["thread_id"], "direction": "inbound"})
    assert inbound is not None and inbound["files"] == 0
    b = await staff_browser(gw, gw.org.id, "files@riverside.test")
    async with b:
        commands = await capture(lambda: b.get(f"/staff/threads/{sent['thread_id']}"))
    collections = [coll for _, coll, _, _ in reads(commands)]
    assert "messages" in collections and "attachments" not in collections


async def test_pages_reuse_the_team_list_briefly_but_never_to_decide_access(gw):
    thread = await seed_thread(gw, gw.org.id, "+15551230801", 4)
    url = f"/staff/threads/{thread['_id']}"
    b = await staff_browser(gw, gw.org.id, "team@riverside.test")
    async with b:
        await b.get(url)
        commands = await capture(lambda: b.get(url))
        assert not [flt for _, coll, flt, _ in reads(commands) if coll == "staff" and "_id" not in flt]
        # A colleague added here shows at once.
        added = await gw.services.staff.create(gw.org.id, "newcolleague@riverside.test", "agent",
                                               "a long enough passphrase")
        assert "newcolleague@riverside.test" in await (await b.get(url)).text()
        # Disabled by another process: the page may list them for a few seconds more, but the
        # assignment reads the member itself and refuses.
        await gw.store.staff.update_one({"_id": added.id}, {"$set": {"disabled": True}})
        assert "newcolleague@riverside.test" in await (await b.get(url)).text()
        resp = await b.post(url + "/assign", {"assignee": added.id}, csrf_from=url)
        assert resp.status == 404
    assert (await gw.store.threads.find_one({"_id": thread["_id"]}))["assignee"] is None
