"""The link lifecycle as a state machine (docs/security-model.md, Links and PINs): whatever the
order of wrong PINs, right PINs, new links to the same thread, time passing, revocation, unlocking
and a client over the per-address limit, an expired, revoked or locked link never gives the
conversation, and a usable one with the right PIN always does (unless the client is throttled,
which then learns nothing).

Wrong PINs count per thread and contact, over all of its links (a fresh link brings no fresh
guesses); the right PIN starts the count again (NIST 800-63B §5.2.2); a throttled attempt is
neither counted nor able to open.

Hypothesis drives the rules against the real client portal over HTTP (aiohttp test server, the
test database). Its state machines are synchronous, so the machine runs in a thread with an event
loop of its own, where its gateway, database client and HTTP client live.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from gateway.clock import FrozenClock
from gateway.runtime.app import build_runtime, create_app
from gateway.runtime.services import build_services
from gateway.security.audit import Actor
from gateway.security.crypto import Keyring
from gateway.security.pins import hash_secret
from gateway.storage.store import Store, make_client
from tests.conftest import make_config

SECRET = "canary-k3a9 the biopsy shows nothing to worry about"
PIN = "482913"
TTL_HOURS = 24
THRESHOLD = 5  # the org default: consecutive wrong PINs before the thread's links lock
IP_LIMIT = 20  # failures per address the client portal allows in its window
MAX_LINKS = 4
STAFF = Actor("staff", "k3-staff")


class Portal:
    """A gateway on the test database, in the calling thread's own event loop, behind a proxy
    (the loopback peer is trusted, so each request names its client address)."""

    def __init__(self, mongo_uri: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = FrozenClock()
        self.run(self._start(mongo_uri))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self, mongo_uri: str) -> None:
        self.mongo = make_client(mongo_uri, 5)
        self.store = Store(self.mongo, "t_" + uuid.uuid4().hex[:16])
        await self.store.ensure_indexes()
        config = make_config(None, trusted_proxies=("127.0.0.1",))
        self.services = build_services(config, self.store, Keyring.generate(), self.clock)
        self.http = TestClient(TestServer(create_app(build_runtime(self.services), workers=False)))
        await self.http.start_server()
        self.org = await self.services.orgs.create("K3 Clinic", "+15005550006")
        self.phones = 0

    async def new_thread(self) -> dict[str, Any]:
        """A fresh thread (a new client) for each run of the machine, so runs do not share a lock."""
        self.phones += 1
        sent = await self.services.conversations.send(self.org, channel="sms", body=SECRET, actor=STAFF,
                                                       to_phone=f"+1555777{self.phones:04d}", secure=True)
        return sent.thread

    async def new_link(self, thread: dict[str, Any]) -> tuple[str, str]:
        doc, token = self.services.links.new(
            org_id=self.org.id, thread_id=thread["_id"], contact_id=thread["contact_id"],
            message_id=None, ttl_seconds=TTL_HOURS * 3600, pin_hash=hash_secret(PIN))
        await self.services.links.insert(doc)
        return doc["_id"], token

    async def submit(self, token: str, pin: str, ip: str) -> tuple[int, int, str]:
        """The link page's form, as a browser posts it; then the conversation page, if sent there.
        Returns (status of the link page, status of the answer to the form, its HTML)."""
        self.http.session.cookie_jar.clear()
        headers = {"X-Forwarded-For": ip}
        page = await self.http.get(f"/s/{token}", headers=headers)
        html = await page.text()
        assert SECRET not in html  # the link page itself never shows content
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        if page.status != 200 or csrf is None:  # unavailable (or throttled): no form to post
            return page.status, page.status, html
        resp = await self.http.post(f"/s/{token}", data={"csrf": csrf.group(1), "pin": pin}, headers=headers,
                                    allow_redirects=False)
        if resp.status != 303:
            assert "hl_client" not in (resp.headers.get("Set-Cookie") or "")
            return page.status, resp.status, await resp.text()
        thread = await self.http.get(resp.headers["Location"], headers=headers)
        return page.status, thread.status, await thread.text()

    async def probe(self, ip: str) -> int:
        """An unknown token, as someone guessing links would try one."""
        resp = await self.http.get(f"/s/{secrets.token_urlsafe(32)}", headers={"X-Forwarded-For": ip})
        return resp.status

    async def close(self) -> None:
        await self.http.close()
        await self.store.drop()
        await self.mongo.close()


def fresh_address() -> str:
    """An address no earlier run used (the portal's limiter outlives one run of the machine)."""
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) | secrets.randbits(64)))


@dataclass
class LinkModel:
    id: str
    token: str
    expires_at: datetime
    revoked: bool = False
    marked_locked: bool = False  # locked_at on the link itself (links that existed when the thread locked)
    failures: int = 0  # wrong PINs entered through it since the count last started again


class LinkLifecycle(RuleBasedStateMachine):
    portal: Portal

    def __init__(self) -> None:
        super().__init__()
        self.thread = self.portal.run(self.portal.new_thread())
        self.links: list[LinkModel] = []
        self.failures = 0  # the thread's consecutive wrong PINs
        self.locked = False
        self.ip = fresh_address()
        self.ip_failures = 0
        self.add_link()

    def add_link(self) -> None:
        link_id, token = self.portal.run(self.portal.new_link(self.thread))
        self.links.append(LinkModel(link_id, token, self.portal.clock.now() + timedelta(hours=TTL_HOURS)))

    def usable(self, link: LinkModel) -> bool:
        return not (self.locked or link.revoked or link.marked_locked) and self.portal.clock.now() < link.expires_at

    def pick(self, data: st.DataObject) -> LinkModel:
        return self.links[data.draw(st.integers(min_value=0, max_value=len(self.links) - 1))]

    def throttled(self) -> bool:
        return self.ip_failures >= IP_LIMIT

    @precondition(lambda self: len(self.links) < MAX_LINKS)
    @rule()
    def another_link_to_the_thread(self) -> None:
        self.add_link()

    @rule(hours=st.integers(min_value=0, max_value=30))
    def time_passes(self, hours: int) -> None:
        self.portal.clock.advance(hours=hours)

    @rule(n=st.integers(min_value=1, max_value=12))
    def unknown_links_probed(self, n: int) -> None:
        for _ in range(n):
            status = self.portal.run(self.portal.probe(self.ip))
            self.ip_failures += 1
            assert status == (429 if self.ip_failures > IP_LIMIT else 404)

    @rule()
    def another_network(self) -> None:
        self.ip = fresh_address()
        self.ip_failures = 0

    @rule(data=st.data(), guess=st.text(alphabet="0123456789", min_size=6, max_size=8).filter(lambda g: g != PIN))
    def wrong_pin(self, data: st.DataObject, guess: str) -> None:
        link = self.pick(data)
        page, status, html = self.portal.run(self.portal.submit(link.token, guess, self.ip))
        assert SECRET not in html
        if not self.usable(link):
            self.ip_failures += 1  # the unavailable page counts against the address
            assert page == status == (429 if self.ip_failures > IP_LIMIT else 404)
            return
        assert page == 200
        if self.throttled():
            assert status == 429  # answered before the PIN is looked at: not counted
            return
        self.ip_failures += 1
        self.failures += 1
        link.failures += 1
        if self.failures >= THRESHOLD:
            self.locked = True
            for other in self.links:
                other.marked_locked = True
            assert status == 404
        else:
            assert status == 401 and f"locks: {THRESHOLD - self.failures}." in html

    @rule(data=st.data())
    def right_pin(self, data: st.DataObject) -> None:
        link = self.pick(data)
        page, status, html = self.portal.run(self.portal.submit(link.token, PIN, self.ip))
        if not self.usable(link):
            self.ip_failures += 1
            assert SECRET not in html, (self.locked, link, self.portal.clock.now())
            assert page == status == (429 if self.ip_failures > IP_LIMIT else 404)
        elif self.throttled():
            assert status == 429 and SECRET not in html
        else:
            assert status == 200 and SECRET in html, (status, html[:200])
            self.failures = 0  # the right PIN starts the count again, on every link of the thread
            for other in self.links:
                other.failures = 0

    @rule(data=st.data())
    def staff_revoke(self, data: st.DataObject) -> None:
        link = self.pick(data)
        self.portal.run(self.portal.services.links.revoke(self.portal.org.id, link.id, STAFF))
        link.revoked = True

    @precondition(lambda self: self.locked)
    @rule(data=st.data())
    def staff_unlock(self, data: st.DataObject) -> None:
        link = self.pick(data)  # from any of its links: the thread unlocks
        self.portal.run(self.portal.services.links.unlock(self.portal.org.id, link.id, STAFF))
        self.locked = False
        self.failures = 0
        for other in self.links:
            other.marked_locked = False
            other.failures = 0

    @invariant()
    def stored_state_matches(self) -> None:
        guard = self.portal.run(self.portal.store.link_guards.find_one(
            {"org_id": self.portal.org.id, "thread_id": self.thread["_id"]}))
        if guard is None:
            assert self.failures == 0 and not self.locked
        else:
            assert guard["failures"] == self.failures
            assert (guard["locked_at"] is not None) == self.locked
        for model in self.links:
            link = self.portal.run(self.portal.store.links.find_one({"_id": model.id}))
            assert (link["locked_at"] is not None) == model.marked_locked
            assert (link["revoked_at"] is not None) == model.revoked
            assert link["failures"] == model.failures


def run_machine(mongo_uri: str) -> None:
    portal = Portal(mongo_uri)
    try:
        LinkLifecycle.portal = portal
        run_state_machine_as_test(LinkLifecycle, settings=settings(
            max_examples=25, stateful_step_count=20, deadline=None, database=None, derandomize=True,
            suppress_health_check=list(HealthCheck)))
    finally:
        portal.run(portal.close())
        portal.loop.close()


async def test_expired_revoked_or_locked_links_never_give_the_conversation(mongo_uri: str) -> None:
    await asyncio.to_thread(run_machine, mongo_uri)
