"""Portal page benchmark: staff inbox and thread pages, and the client thread page, small and big.

`hushlink serve` runs on a fresh data directory (embedded SecantusDB). Three organizations share
the database: a small one (10 threads; its newest has 10 messages), a big one (10,000 threads; its
newest has 5,000 messages over a year) and, for a like-for-like comparison, one whose pages are
exactly full (60 threads; its newest has 250 messages). They are seeded with bulk inserts of the
documents the app itself writes (contacts with their data keys, threads, sealed messages, links, a
valid audit chain), sealed with the gateway's own keyring through its Sealer, so every page opens
what it renders; the organizations are dated back to before that history. Staff accounts come
from `hushlink admin create-staff` and sign in through the login form; client sessions are the
ones opening a link creates.

In the same run, a baseline: a separate bare aiohttp + jinja2 process (this module with
--baseline-server) that renders the same 50 inbox rows from one indexed query on the same
database server.

Requests are sent one at a time (latency, not throughput), round-robin across the pages, and
each response is checked (row / message count, newest message present).

    .venv/bin/python -m bench.portal [--requests 200] [--threads 10000] [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from bson import Binary, ObjectId
from yarl import URL

from bench.common import BIN, Gateway, LoadResult, free_port

PASSWORD = "violet-kayak-harbor-1987"
SMALL_NUMBER, BIG_NUMBER = "+15005550011", "+15005550012"
BASELINE_DB = "bench_baseline"
PAGE = 50
STAFF_MESSAGES = 50  # portal/staff/threads.py MESSAGES
CLIENT_MESSAGES = 50  # portal/client.py PAGE
TARGET_VS_BASELINE = 3.0
TARGET_FLAT = 1.5
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ROW = re.compile(r'data-thread="([0-9a-f]{24})"')
MSG = re.compile(r'id="m-([0-9a-f]{24})"')

WORDS = ("appointment confirmed results ready please call clinic tomorrow morning thank you for your "
         "message we received the form see you tuesday reminder bring insurance card questions reply").split()


# -- seeding ------------------------------------------------------------------------------------
def oid_at(at: datetime) -> str:
    """An ObjectId hex for a creation time in the past (unique: 8 random bytes after the time)."""
    return str(ObjectId(struct.pack(">I", int(at.timestamp())) + os.urandom(8)))


def ms(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


class Seeder:
    """Bulk-writes the documents the app writes, sealed with the app's own keyring."""

    def __init__(self, services: Any, rng: random.Random, now: datetime) -> None:
        from gateway.security.crypto import aad

        self.s = services
        self.sealer = services.sealer
        self.aad = aad
        self.rng = rng
        self.now = now
        self.buf: dict[str, list[dict[str, Any]]] = {}
        self.audit: dict[str, list[dict[str, Any]]] = {}

    def add(self, coll: str, doc: dict[str, Any]) -> None:
        self.buf.setdefault(coll, []).append(doc)

    def seal(self, dek_id: str, dek: bytes, org_id: str, coll: str, doc_id: str, field: str, value: str) -> Binary:
        return Binary(self.sealer.seal(dek_id, dek, value, self.aad(org_id, coll, doc_id, field)))

    def contact(self, org_id: str, phone: str, name: str, created: datetime) -> tuple[str, str, bytes]:
        from gateway.messaging.phone import mask_phone

        cid = oid_at(created)
        dek_id = f"contact:{cid}"
        dek = self.sealer.new_data_key()
        kek_id, wrapped = self.sealer.wrap(dek, dek_id)
        self.add("keys", {"_id": dek_id, "org_id": org_id, "kek_id": kek_id, "wrapped": Binary(wrapped),
                          "created_at": ms(created)})
        self.add("contacts", {
            "_id": cid, "org_id": org_id, "dek_id": dek_id, "consent": {}, "consent_log": [],
            "created_at": ms(created), "last_channel": "sms",
            "phone": self.seal(dek_id, dek, org_id, "contacts", cid, "phone", phone),
            "phone_bidx": self.sealer.blind_index(org_id, "phone", phone), "phone_hint": mask_phone(phone),
            "name": self.seal(dek_id, dek, org_id, "contacts", cid, "name", name),
            "email_bidx": "none:" + cid,
        })
        return cid, dek_id, dek

    def thread(self, org_id: str, n_messages: int, index: int, span: timedelta, last_at: datetime,
               secure: bool) -> dict[str, Any]:
        """A contact, its thread and n_messages alternating outbound/inbound, the last at last_at."""
        first_at = last_at - span if n_messages > 1 else last_at
        phone = f"+1555{index:07d}"
        cid, dek_id, dek = self.contact(org_id, phone, f"Client {index:05d} {self.rng.choice(WORDS).title()}",
                                        first_at - timedelta(minutes=5))
        tid = oid_at(first_at)
        times = sorted(first_at + (last_at - first_at) * self.rng.random() for _ in range(n_messages - 1))
        times.append(last_at)
        last_dir = "outbound"
        for i, at in enumerate(times):
            direction = "outbound" if i % 2 == 0 else "inbound"
            last_dir = direction
            mid = oid_at(at)
            body = text(self.rng, self.rng.randint(8, 30))
            doc: dict[str, Any] = {
                "_id": mid, "org_id": org_id, "thread_id": tid, "contact_id": cid, "direction": direction,
                "channel": "sms", "secure": secure,
                "body": self.seal(dek_id, dek, org_id, "messages", mid, "body", body),
                "preview": "Message sent" if direction == "outbound" else "New reply",
                "link_id": None, "created_at": ms(at), "idempotency_key": "none:" + mid,
            }
            if direction == "outbound":
                doc.update(author={"kind": "api", "id": None}, status="delivered", provider_id="SM" + mid + "0" * 8,
                           status_history=[{"status": s, "at": ms(at + timedelta(seconds=k))}
                                           for k, s in enumerate(("queued", "accepted", "sent", "delivered"))])
                if secure:
                    lid = oid_at(at)
                    doc["link_id"] = lid
                    self.add("links", {
                        "_id": lid, "org_id": org_id, "thread_id": tid, "contact_id": cid, "message_id": mid,
                        "token_hash": os.urandom(32).hex(), "channel": "sms", "created_at": ms(at),
                        "expires_at": ms(at + timedelta(days=7)), "revoked_at": None, "locked_at": None,
                        "failures": 0, "pin_hash": None, "opened_at": None,
                    })
                self.audit_entry(org_id, at, "message.send", {"kind": "api", "id": None}, thread_id=tid,
                                 message_id=mid, contact_id=cid, link_id=doc["link_id"],
                                 detail={"secure": secure, "channel": "sms"})
            else:
                doc.update(author={"kind": "contact", "id": cid}, status="received", provider_id="SM" + mid,
                           status_history=[{"status": "received", "at": ms(at)}], flags=[], files=0)
                self.audit_entry(org_id, at, "message.received", {"kind": "client", "id": cid}, thread_id=tid,
                                 message_id=mid, contact_id=cid, detail={"channel": "sms", "secure": secure})
            self.add("messages", doc)
        unread = 1 if last_dir == "inbound" and self.now - last_at < timedelta(days=7) else 0
        thread = {"_id": tid, "org_id": org_id, "contact_id": cid, "secure": secure, "status": "open",
                  "assignee": None, "created_at": ms(first_at), "last_activity_at": ms(last_at),
                  "unread_staff": unread, "preview": "Message sent" if last_dir == "outbound" else "New reply",
                  "channel": "sms"}
        self.add("threads", thread)
        return thread

    def audit_entry(self, org_id: str, at: datetime, action: str, actor: dict[str, Any], *,
                    detail: dict[str, Any], **ids: Any) -> None:
        self.audit.setdefault(org_id, []).append({
            "org_id": org_id, "at": ms(at), "action": action, "actor": actor, "outcome": "ok", "ip": None,
            "detail": detail, **{k: v for k, v in ids.items() if v is not None}})

    async def flush(self) -> None:
        from gateway.security.audit import _canonical

        for org_id, entries in self.audit.items():  # one valid hash chain per org, in time order
            entries.sort(key=lambda e: e["at"])
            head = await self.s.store.audit.find({"org_id": org_id}).sort("seq", -1).limit(1).to_list(None)
            start, prev = (int(head[0]["seq"]), str(head[0]["mac"])) if head else (0, "0" * 64)
            for seq, e in enumerate(entries, start + 1):
                ids = {k: v for k, v in e.items() if k.endswith("_id") and k != "org_id"}
                entry = {"org_id": org_id, "seq": seq, "at": e["at"], "action": e["action"], "actor": e["actor"],
                         "outcome": "ok", "ip": None, "detail": e["detail"], **ids, "prev": prev}
                entry["mac"] = prev = self.sealer.mac(_canonical(entry))
                self.add("audit", entry)
            await self.s.store.audit_heads.replace_one({"_id": org_id}, {"_id": org_id, "seq": start + len(entries),
                                                                         "mac": prev}, upsert=True)
        for coll, docs in self.buf.items():
            for i in range(0, len(docs), 1000):
                await self.s.store.collection(coll).insert_many(docs[i:i + 1000], ordered=False)
        self.buf.clear()
        self.audit.clear()


@dataclass(frozen=True)
class OrgSpec:
    key: str
    name: str
    number: str
    threads: int
    big_thread: int  # messages in its newest thread (the others have 1-2, or 10 in the small org)
    days: int  # activity spread over this many days


async def seed(env: dict[str, str], orgs: dict[str, str], specs: list[OrgSpec]) -> dict[str, Any]:
    from gateway.runtime.cli import open_services
    from gateway.runtime.config import load_config

    rng = random.Random(7)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    out: dict[str, Any] = {"thread": {}, "unread": {}, "client_sids": {}}
    made: dict[str, list[dict[str, Any]]] = {}
    async with open_services(load_config(None, env)) as s:
        sd = Seeder(s, rng, now)
        for n, spec in enumerate(specs):
            org_id, base = orgs[spec.key], 100_000 * (n + 1)
            # The newest thread holds spec.big_thread messages over the whole period; the others
            # had their last activity at random moments of it.
            ts = [sd.thread(org_id, spec.big_thread, base, timedelta(days=spec.days), now, secure=True)]
            for i in range(1, spec.threads):
                count = 10 if spec.threads <= 10 else 1 + (i % 3 == 0)
                ts.append(sd.thread(org_id, count, base + i, timedelta(days=2 if count < 10 else 3),
                                    now - timedelta(seconds=rng.randint(60, spec.days * 86400)),
                                    secure=rng.random() < 0.7))
            made[spec.key] = ts
            out["thread"][spec.key] = ts[0]
            out["unread"][spec.key] = sum(1 for t in ts if t["unread_staff"])
        await sd.flush()
        # The organizations have been around for the history seeded into them.
        await s.store.orgs.update_many({"_id": {"$in": list(orgs.values())}},
                                       {"$set": {"created_at": now - timedelta(days=400)}})
        out["counts"] = {c: await s.store.collection(c).estimated_document_count()
                         for c in ("contacts", "threads", "messages", "links", "audit")}
        # Client sessions, as opening a link makes them (viewed: the first view is not what we time).
        for key, t in out["thread"].items():
            link = await s.store.links.find_one({"org_id": t["org_id"], "thread_id": t["_id"]})
            sid, _ = await s.sessions.create("client", t["org_id"], idle_seconds=3600, absolute_seconds=12 * 3600,
                                             thread_id=t["_id"], contact_id=t["contact_id"],
                                             link_id=link["_id"] if link else None, viewed=True)
            out["client_sids"][key] = sid
        # The baseline's 50 rows: the fields the inbox renders, of the big org's newest 50 threads.
        big_org = orgs[specs[-1].key]
        rows = sorted(made[specs[-1].key], key=lambda t: (t["last_activity_at"], t["_id"]), reverse=True)[:PAGE]
        names = {d["_id"]: d for d in await s.store.contacts.find(
            {"org_id": big_org, "_id": {"$in": [t["contact_id"] for t in rows]}}).to_list(None)}
        base_rows = s.store.client[BASELINE_DB].rows
        await base_rows.drop()
        await base_rows.create_index([("org_id", 1), ("at", -1)])
        await base_rows.insert_many([{
            "_id": t["_id"], "org_id": "bench", "at": t["last_activity_at"],
            "name": await s.vault.open(big_org, "contacts", t["contact_id"], "name", names[t["contact_id"]]["name"]),
            "hint": names[t["contact_id"]]["phone_hint"], "secure": t["secure"], "status": t["status"],
            "assignee": None, "unread": t["unread_staff"], "preview": t["preview"],
        } for t in rows])
    return out


# -- the baseline server --------------------------------------------------------------------------
BASELINE_TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Inbox</title></head><body>
<table class="inbox"><thead><tr><th>Contact</th><th>Kind</th><th>Activity</th><th>Assigned</th><th>Status</th>
<th>Last activity</th></tr></thead><tbody>
{% for r in rows %}<tr class="{{ 'unread' if r.unread else '' }}" data-thread="{{ r._id }}">
<td><a href="/staff/threads/{{ r._id }}">{{ r.name }}</a> <span class="hint">{{ r.hint }}</span></td>
<td>{{ "Secure" if r.secure else "Standard" }}</td>
<td>{{ r.preview }}{% if r.unread %} {{ r.unread }} unread{% endif %}</td>
<td>{{ r.assignee or "—" }}</td><td>{{ r.status }}</td>
<td><time datetime="{{ r.at.isoformat(timespec='seconds') }}">{{ r.at.strftime("%d %b %Y %H:%M UTC") }}</time></td></tr>
{% endfor %}</tbody></table></body></html>"""


def baseline_server(uri: str, port: int) -> None:
    """A bare aiohttp + jinja2 handler: one indexed query for 50 rows, rendered autoescaped."""
    import jinja2
    from aiohttp import web
    from pymongo import AsyncMongoClient

    template = jinja2.Environment(autoescape=True).from_string(BASELINE_TEMPLATE)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    rows = client[BASELINE_DB].rows

    async def handle(request: web.Request) -> web.Response:
        docs = await rows.find({"org_id": "bench"}).sort("at", -1).limit(PAGE).to_list(None)
        return web.Response(text=template.render(rows=docs), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- clients ---------------------------------------------------------------------------------------
async def staff_session(url: str, email: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.get(url + "/staff/login") as r:
        found = CSRF.search(await r.text())
        assert found, "no csrf token on /staff/login"
    async with session.post(url + "/staff/login", data={"email": email, "password": PASSWORD, "csrf": found.group(1)},
                            allow_redirects=False) as r:
        assert r.status == 303 and r.headers.get("Location") == "/staff/", (r.status, await r.text())
    return session


def client_session(url: str, sid: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    session.cookie_jar.update_cookies({"hl_client": sid}, URL(url))
    return session


Check = Callable[[str], None]


def getter(session: aiohttp.ClientSession, url: str, check: Check) -> Callable[[], Awaitable[int]]:
    async def get() -> int:
        async with session.get(url, allow_redirects=False) as r:
            body = await r.text()
        if r.status == 200:
            check(body)
        return r.status
    return get


def rows_exactly(n: int) -> Check:
    def check(html: str) -> None:
        assert len(ROW.findall(html)) == n, f"expected {n} rows, got {len(ROW.findall(html))}"
    return check


def messages_exactly(n: int, newest: str) -> Check:
    def check(html: str) -> None:
        found = MSG.findall(html)
        assert len(found) == n and found[-1] == newest, f"expected {n} messages ending with {newest}, got {len(found)}"
    return check


async def measure(pages: dict[str, Callable[[], Awaitable[int]]], n: int, warm: int) -> dict[str, LoadResult]:
    """Send n requests to each page, one at a time, round-robin (so drift hits every page alike)."""
    lat: dict[str, list[float]] = {k: [] for k in pages}
    errors = dict.fromkeys(pages, 0)
    for i in range(warm + n):
        for name, get in pages.items():
            t = time.perf_counter()
            status = await get()
            if i >= warm:
                lat[name].append(time.perf_counter() - t)
                errors[name] += status != 200
            elif status != 200:
                raise RuntimeError(f"{name}: HTTP {status} during warm-up")
    return {k: LoadResult(k, n, sum(v), v, errors[k]) for k, v in lat.items()}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200, help="timed requests per page")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=10_000, help="threads in the big organization")
    ap.add_argument("--messages", type=int, default=5_000, help="messages in the big thread")
    ap.add_argument("--only", default="", help="measure only the pages whose name starts with this (profiling)")
    ap.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return ap.parse_args()


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    specs = [OrgSpec("small", "Small Clinic", "+15005550011", 10, 10, 10),
             OrgSpec("full", "Full-page Clinic", "+15005550013", 60, 250, 60),
             OrgSpec("big", "Big Clinic", "+15005550012", args.threads, args.messages, 365)]
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(Path(tmp) / "data", {"HUSHLINK_INBOUND_SMTP__ENABLED": "false"})
        gw.data_dir.mkdir(parents=True)
        gw.start()
        baseline = None
        sessions: list[aiohttp.ClientSession] = []
        try:
            orgs = {sp.key: gw.admin("create-org", "--name", sp.name, "--sms-number", sp.number)["id"] for sp in specs}
            for key, org in orgs.items():
                subprocess.run([str(BIN / "hushlink"), "admin", "create-staff", "--org", org, "--email",
                                f"{key}@bench.test", "--role", "agent", "--password-stdin", "--json"], env=gw.env,
                               check=True, input=PASSWORD + "\n", capture_output=True, text=True)
            t0 = time.perf_counter()
            info = await seed(gw.env, orgs, specs)
            seeded = time.perf_counter() - t0
            bport = free_port()
            baseline = subprocess.Popen([sys.executable, "-m", "bench.portal", "--baseline-server",
                                         "--uri", gw.database_uri(), "--port", str(bport)])
            staff = {sp.key: await staff_session(gw.url, f"{sp.key}@bench.test") for sp in specs}
            client = {sp.key: client_session(gw.url, info["client_sids"][sp.key]) for sp in specs}
            plain = aiohttp.ClientSession()
            sessions = [*staff.values(), *client.values(), plain]
            await wait_for(plain, f"http://127.0.0.1:{bport}/")
            pages: dict[str, Callable[[], Awaitable[int]]] = {
                "baseline (50 rows)": getter(plain, f"http://127.0.0.1:{bport}/", rows_exactly(PAGE))}
            for sp in specs:
                pages[f"inbox @ {sp.threads:,} threads"] = getter(staff[sp.key], gw.url + "/staff/",
                                                                  rows_exactly(min(sp.threads, PAGE)))
            for kind, path, shown in (("thread", "/staff/threads/{id}", STAFF_MESSAGES),
                                      ("client thread", "/s/thread", CLIENT_MESSAGES)):
                for sp in specs:
                    t = info["thread"][sp.key]
                    who = staff[sp.key] if kind == "thread" else client[sp.key]
                    newest = await newest_message(gw.env, t)
                    pages[f"{kind} @ {sp.big_thread:,} msgs"] = getter(
                        who, gw.url + path.format(id=t["_id"]), messages_exactly(min(sp.big_thread, shown), newest))
            if args.only:
                pages = {k: v for k, v in pages.items() if k.startswith(("baseline", args.only))}
            results = await measure(pages, args.requests, args.warmup)
        finally:
            for sess in sessions:
                await sess.close()
            if baseline is not None:
                baseline.terminate()
                baseline.wait(30)
            gw.stop()
    if args.only:
        for name, r in results.items():
            print(f"{name:<32} p50 {r.pct(50):8.2f} ms  p95 {r.pct(95):8.2f} ms")
        return
    report(args, specs, info, results, seeded, time.perf_counter() - started)


async def wait_for(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("baseline server did not start")
        await asyncio.sleep(0.2)


async def newest_message(env: dict[str, str], thread: dict[str, Any]) -> str:
    from pymongo import AsyncMongoClient

    from gateway.runtime.embedded import EmbeddedDatabase

    uri = EmbeddedDatabase(Path(env["HUSHLINK_SERVER__DATA_DIR"])).state_uri()  # with serve's credentials (--auth)
    assert uri is not None, "no embedded database is running"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        docs = await client.hushlink.messages.find({"org_id": thread["org_id"], "thread_id": thread["_id"]},
                                                   projection={"_id": 1}).to_list(None)
        return str(max(d["_id"] for d in docs))
    finally:
        await client.close()


def report(args: argparse.Namespace, specs: list[OrgSpec], info: dict[str, Any], results: dict[str, LoadResult],
           seeded: float, total: float) -> None:
    small, full, big = specs
    base = results["baseline (50 rows)"]
    c = info["counts"]
    print(f"portal page benchmark: embedded SecantusDB, {args.requests} sequential requests per page "
          f"(after {args.warmup} warm-up), pages interleaved")
    print(f"seeded in {seeded:.1f} s: {c['threads']:,} threads, {c['messages']:,} messages, "
          f"{c['contacts']:,} contacts, {c['links']:,} links, {c['audit']:,} audit entries; unread threads: "
          + ", ".join(f"{sp.threads:,}-thread org {info['unread'][sp.key]}" for sp in specs))
    print(f"first pages: inbox {PAGE} rows, staff thread {STAFF_MESSAGES} messages, client thread "
          f"{CLIENT_MESSAGES} messages (fewer when there are fewer)")
    print(f"{'page':<32} {'p50 ms':>8} {'p95 ms':>8}  {'p50/baseline':>12}  {'p95/baseline':>12}  errors")
    for name, r in results.items():
        print(f"{name:<32} {r.pct(50):8.2f} {r.pct(95):8.2f}  {r.pct(50) / base.pct(50):11.2f}x  "
              f"{r.pct(95) / base.pct(95):11.2f}x  {r.errors}")

    def p95(name: str) -> float:
        return results[name].pct(95)

    ok = all(r.errors == 0 for r in results.values())
    print(f"targets (issue 3): first-page p95 <= {TARGET_VS_BASELINE:.0f}x the baseline's; "
          f"{big.threads:,} vs {small.threads} threads and {big.big_thread:,} vs {small.big_thread} messages "
          f"<= {TARGET_FLAT}x (p95)")
    for name in results:
        if name.startswith("baseline") or f"@ {full.threads} " in name or f"@ {full.big_thread} " in name:
            continue
        ratio = p95(name) / base.pct(95)
        ok &= ratio <= TARGET_VS_BASELINE
        print(f"  {name:<32} vs baseline {ratio:6.2f}x  {'met' if ratio <= TARGET_VS_BASELINE else 'NOT MET'}")
    pairs = [(f"inbox @ {small.threads:,} threads", f"inbox @ {big.threads:,} threads"),
             (f"thread @ {small.big_thread:,} msgs", f"thread @ {big.big_thread:,} msgs"),
             (f"client thread @ {small.big_thread:,} msgs", f"client thread @ {big.big_thread:,} msgs")]
    for lo, hi in pairs:
        ratio = p95(hi) / p95(lo)
        ok &= ratio <= TARGET_FLAT
        print(f"  {hi:<32} vs {lo:<26} {ratio:5.2f}x  {'met' if ratio <= TARGET_FLAT else 'NOT MET'}")
    print("same page size, different history (for information: both render a full first page):")
    for lo, hi in [(f"inbox @ {full.threads:,} threads", f"inbox @ {big.threads:,} threads"),
                   (f"thread @ {full.big_thread:,} msgs", f"thread @ {big.big_thread:,} msgs"),
                   (f"client thread @ {full.big_thread:,} msgs", f"client thread @ {big.big_thread:,} msgs")]:
        print(f"  {hi:<32} vs {lo:<26} {p95(hi) / p95(lo):5.2f}x")
    print(f"all targets {'met' if ok else 'NOT met'}; run took {total:.0f} s")


if __name__ == "__main__":
    cli = parse_args()
    if cli.baseline_server:
        baseline_server(cli.uri, cli.port)
    else:
        asyncio.run(main(cli))
