"""Fixtures for the browser tests: a whole gateway on a real loopback port, and a real Chromium.

The gateway here differs from the `gw` fixture in one way that matters to a browser: its
`public_url` is the address the browser really uses (http://127.0.0.1:<port>), so Origin checks,
links in SMS and status callbacks all point at it. Background workers run (the outbox sends the
link SMS to the Twilio stand-in by itself), and the clock is the frozen one from tests/conftest.py,
moved by the tests that exercise expiry and timeouts.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page

from gateway.clock import FrozenClock
from gateway.runtime.app import Runtime, build_runtime, create_app
from gateway.runtime.services import Services, build_services
from gateway.security.api_keys import ApiKeys
from gateway.security.crypto import Keyring
from gateway.storage.store import Store
from gateway.tenancy.orgs import Org
from outbound.twilio_sms import TwilioSmsSender
from tests.conftest import make_config
from tests.support.browser import PageWatch, chromium, chromium_available
from tests.support.harness import CLIENT_PHONE, LINK_RE, ORG_NUMBER
from tests.support.twilio_standin import TwilioStandIn

PIN = "246810"
WAIT = 10.0  # seconds to wait for background work (outbox → Twilio stand-in)
# Handlers of closed connections (an EventSource stream the browser dropped) are cancelled, and
# shutdown does not wait the default 60 s for any that linger.
RUNNER: dict[str, Any] = {"access_log": None, "shutdown_timeout": 2.0, "handler_cancellation": True}


@dataclass
class LiveGateway:
    """A gateway serving on a real port, as the browser and the org's API client see it."""

    url: str
    http: aiohttp.ClientSession
    services: Services
    runtime: Runtime
    twilio: TwilioStandIn
    clock: FrozenClock
    org: Org
    api_key: str

    @property
    def store(self) -> Store:
        return self.services.store

    def link(self, path: str) -> str:
        return self.url + path

    # -- the org's side, through the public API ---------------------------------------------
    async def api_send(self, body: str, *, pin: str | None = PIN, phone: str = CLIENT_PHONE,
                       secure: bool = True) -> dict[str, Any]:
        payload: dict[str, Any] = {"to": {"phone": phone}, "body": body, "channel": "sms", "secure": secure}
        if pin is not None:
            payload["pin"] = pin
        async with self.http.post("/api/v1/messages", json=payload, headers=self._auth()) as resp:
            data = await resp.json()
            assert resp.status == 201, data
            return dict(data)

    async def thread_messages(self, thread_id: str) -> list[dict[str, Any]]:
        async with self.http.get(f"/api/v1/threads/{thread_id}/messages", headers=self._auth()) as resp:
            data = await resp.json()
            assert resp.status == 200, data
            return list(data["messages"])

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    # -- what the Twilio stand-in was asked to send --------------------------------------------
    def sms_to(self, phone: str = CLIENT_PHONE) -> list[dict[str, Any]]:
        return [m for m in self.twilio.messages if m["to"] == phone]

    def links_sent(self, phone: str = CLIENT_PHONE) -> list[str]:
        return [f.group(1) for m in self.sms_to(phone) if (f := LINK_RE.search(m["body"] or ""))]

    async def next_link(self, already: int, phone: str = CLIENT_PHONE) -> str:
        """Wait for link SMS number `already + 1` to `phone` (sent by the background outbox)."""
        await wait_until(lambda: len(self.links_sent(phone)) > already, what=f"link SMS #{already + 1} to {phone}")
        sent = self.links_sent(phone)
        assert len(sent) == already + 1, sent
        for m in self.sms_to(phone):
            assert m["body"].count(self.url + "/s/") == 1, m["body"]  # the link uses the public URL
        return sent[-1]

    async def send_and_get_link(self, body: str, **kw: Any) -> tuple[dict[str, Any], str]:
        before = len(self.links_sent(kw.get("phone", CLIENT_PHONE)))
        data = await self.api_send(body, **kw)
        return data, await self.next_link(before, kw.get("phone", CLIENT_PHONE))


async def wait_until(predicate: Callable[[], Any], *, what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


def free_socket() -> socket.socket:
    """A listening loopback socket on a free port (kept open, so nothing can take the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock



async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free loopback port; return the runner and the base URL."""
    sock = free_socket()
    runner = web.AppRunner(app, **RUNNER)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def live(store: Store, keyring: Keyring, clock: FrozenClock, twilio: TwilioStandIn) -> AsyncIterator[LiveGateway]:
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = make_config(twilio, public_url=url)
    config = replace(config, inbound_smtp=replace(config.inbound_smtp, enabled=False),
                     outbox=replace(config.outbox, poll_seconds=0.2))
    services = build_services(config, store, keyring, clock)
    sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url, timeout=3)
    runtime = build_runtime(services, sms=sender)
    runner = web.AppRunner(create_app(runtime, workers=True), **RUNNER)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    org = await services.orgs.create("Riverside Clinic", ORG_NUMBER)
    key, _ = await ApiKeys(store, clock).create(org.id, "browser tests")
    async with aiohttp.ClientSession(base_url=url) as http:
        yield LiveGateway(url, http, services, runtime, twilio, clock, org, key)
    await runner.cleanup()  # stops the workers (drain) before the database goes away
    await sender.close()


# -- the browser ------------------------------------------------------------------------------
@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not chromium_available():
        pytest.fail("Chromium is not installed at /usr/bin/chromium: run the suite with ./scripts/test.sh, "
                    "which installs it")
    async with chromium() as b:
        yield b


@dataclass
class Tab:
    """One browser context (its own cookies) with one page, and what the page complained about."""

    context: BrowserContext
    page: Page
    watch: PageWatch


async def open_tab(browser: Browser, *, width: int = 390, height: int = 844) -> Tab:
    context = await browser.new_context(viewport={"width": width, "height": height}, locale="en-GB",
                                        timezone_id="UTC")
    context.set_default_timeout(20_000)
    watch = await PageWatch.attach(context)
    page = await context.new_page()
    return Tab(context, page, watch)


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    t = await open_tab(browser)
    yield t
    await t.context.close()


def no_token_in(url: str) -> bool:
    return re.search(r"/s/[A-Za-z0-9_-]{43}", url) is None
