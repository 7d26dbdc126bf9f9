"""The link lifecycle as a state machine (SECURITY.md K3): whatever the order of wrong PINs, right
PINs, time passing, revocation and unlocking, an expired, revoked or locked link never gives the
conversation, and a usable one with the right PIN always does.

Hypothesis drives the rules against the real client portal over HTTP (aiohttp test server, the
test database). Its state machines are synchronous, so the machine runs in a thread with an event
loop of its own, where its gateway, database client and HTTP client live.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from gateway.app import build_runtime, create_app
from gateway.audit import Actor
from gateway.clock import FrozenClock
from gateway.crypto import Keyring
from gateway.pins import hash_secret
from gateway.services import build_services
from gateway.store import Store, make_client
from tests.conftest import make_config

SECRET = "canary-k3a9 the biopsy shows nothing to worry about"
PIN = "482913"
TTL_HOURS = 24
THRESHOLD = 5  # the org default: wrong PINs before the link locks
STAFF = Actor("staff", "k3-staff")


class Portal:
    """A gateway on the test database, in the calling thread's own event loop."""

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
        self.services = build_services(make_config(None), self.store, Keyring.generate(), self.clock)
        self.http = TestClient(TestServer(create_app(build_runtime(self.services), workers=False)))
        await self.http.start_server()
        self.org = await self.services.orgs.create("K3 Clinic", "+15005550006")
        sent = await self.services.conversations.send(self.org, channel="sms", body=SECRET, actor=STAFF,
                                                       to_phone="+15557770300", secure=True)
        self.thread = sent.thread

    async def new_link(self) -> tuple[str, str]:
        doc, token = self.services.links.new(
            org_id=self.org.id, thread_id=self.thread["_id"], contact_id=self.thread["contact_id"],
            message_id=None, ttl_seconds=TTL_HOURS * 3600, pin_hash=hash_secret(PIN))
        await self.services.links.insert(doc)
        self.http.session.cookie_jar.clear()
        return doc["_id"], token

    async def submit(self, token: str, pin: str) -> tuple[int, str]:
        """The link page's form, as a browser posts it; then the conversation page, if sent there."""
        page = await self.http.get(f"/s/{token}")
        html = await page.text()
        assert SECRET not in html  # the link page itself never shows content
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        if csrf is None:  # the one page for unknown, expired, revoked and locked links: no form
            return page.status, ""
        resp = await self.http.post(f"/s/{token}", data={"csrf": csrf.group(1), "pin": pin}, allow_redirects=False)
        if resp.status != 303:
            return resp.status, await resp.text()
        thread = await self.http.get(resp.headers["Location"])
        return thread.status, await thread.text()

    async def close(self) -> None:
        await self.http.close()
        await self.store.drop()
        await self.mongo.close()


class LinkLifecycle(RuleBasedStateMachine):
    portal: Portal

    def __init__(self) -> None:
        super().__init__()
        self.link_id, self.token = self.portal.run(self.portal.new_link())
        self.expires_at = self.portal.clock.now() + timedelta(hours=TTL_HOURS)
        self.failures = 0
        self.locked = self.revoked = False

    def usable(self) -> bool:
        return not (self.locked or self.revoked) and self.portal.clock.now() < self.expires_at

    @rule(hours=st.integers(min_value=0, max_value=30))
    def time_passes(self, hours: int) -> None:
        self.portal.clock.advance(hours=hours)

    @rule(guess=st.text(alphabet="0123456789", min_size=6, max_size=8).filter(lambda g: g != PIN))
    def wrong_pin(self, guess: str) -> None:
        status, html = self.portal.run(self.portal.submit(self.token, guess))
        assert SECRET not in html
        if self.usable():
            self.failures += 1
            self.locked = self.failures >= THRESHOLD
        self.portal.http.session.cookie_jar.clear()

    @rule()
    def right_pin(self) -> None:
        status, html = self.portal.run(self.portal.submit(self.token, PIN))
        if self.usable():
            assert status == 200 and SECRET in html, (status, html[:200])
            self.failures = 0  # the right PIN does not count against the link
        else:
            assert SECRET not in html, (self.locked, self.revoked, self.portal.clock.now(), self.expires_at)
        self.portal.http.session.cookie_jar.clear()

    @rule()
    def staff_revoke(self) -> None:
        self.portal.run(self.portal.services.links.revoke(self.portal.org.id, self.link_id, STAFF))
        self.revoked = True

    @precondition(lambda self: self.locked)
    @rule()
    def staff_unlock(self) -> None:
        self.portal.run(self.portal.services.links.unlock(self.portal.org.id, self.link_id, STAFF))
        self.locked = False
        self.failures = 0

    @invariant()
    def stored_state_matches(self) -> None:
        link = self.portal.run(self.portal.store.links.find_one({"_id": self.link_id}))
        assert (link["locked_at"] is not None) == self.locked
        assert (link["revoked_at"] is not None) == self.revoked
        assert link["failures"] == self.failures


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
