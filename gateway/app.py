"""The composition root: builds the services, providers, workers and HTTP app, and wires them.

This is the only module that knows every package. Each surface (webhooks, API, portals) is a
small class given exactly the services it uses; background workers run in cleanup contexts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway.ports import SmsSender
from gateway.services import Services
from inbound.events import InboundEvents
from inbound.processor import InboundProcessor
from inbound.sms import SmsReplyHandler
from inbound.twilio_webhooks import TwilioWebhooks, record_delivery_event
from outbound.dispatcher import OutboxDispatcher
from outbound.sandbox import SandboxSmsSender
from outbound.twilio_sms import TwilioSmsSender
from portal.api import ApiV1
from portal.client import ClientPortal
from portal.http import error_mapping, security_headers
from portal.render import error_page
from portal.sandbox import SandboxPortal

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "portal" / "static"
ROLES = ("all", "web", "worker", "smtp")


@dataclass
class Runtime:
    """Everything with a lifecycle, built once per process."""

    services: Services
    events: InboundEvents
    sms: SmsSender
    sandbox: SandboxSmsSender | None
    processor: InboundProcessor
    dispatcher: OutboxDispatcher
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_dispatcher(self) -> None:
        self.dispatcher.wake.set()

    async def close(self) -> None:
        closer = getattr(self.sms, "close", None)
        if closer is not None:
            await closer()


def build_runtime(services: Services, *, sms: SmsSender | None = None) -> Runtime:
    s = services
    owner = f"{socket.gethostname()}:{os.getpid()}"
    events = InboundEvents(s.store, s.vault, s.clock)
    sandbox = None
    if sms is None:
        tw = s.config.twilio
        if tw.sandbox:
            sandbox = SandboxSmsSender(s.store, s.vault, s.clock)
            sms = sandbox
        else:
            sms = TwilioSmsSender(tw.account_sid, tw.auth_token, api_base=tw.api_base or None,
                                  timeout=tw.timeout_seconds)
    elif isinstance(sms, SandboxSmsSender):
        sandbox = sms
    handlers = {"sms": SmsReplyHandler(s.store, events, s.orgs, s.contacts, s.conversations, s.outbox, s.audit)}
    dispatcher = OutboxDispatcher(s, sms, owner=owner)
    processor = InboundProcessor(s.store, s.clock, handlers, events.wake, owner=owner,  # type: ignore[arg-type]
                                 poll_seconds=s.config.outbox.poll_seconds, after_event=dispatcher.wake.set)
    if sandbox is not None:
        async def sandbox_status(sid: str, status: str) -> None:
            await record_delivery_event(s, sid, status, None)
        sandbox.on_status = sandbox_status
    return Runtime(s, events, sms, sandbox, processor, dispatcher)


def create_app(rt: Runtime, *, role: str = "all", workers: bool = True) -> web.Application:
    s = rt.services
    app = web.Application(
        client_max_size=s.config.server.max_body_bytes,
        middlewares=[security_headers(s.config.server.is_https), error_mapping(error_page)],
    )
    if role in ("all", "web"):
        TwilioWebhooks(s, rt.events).add_routes(app)
        ApiV1(s, rt.wake_dispatcher).add_routes(app)
        ClientPortal(s, rt.wake_dispatcher).add_routes(app)
        if rt.sandbox is not None:
            SandboxPortal(s, rt.sandbox, rt.events).add_routes(app)
        app.router.add_static("/static/", STATIC_DIR, append_version=False)
        app.router.add_get("/robots.txt", robots)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", _readyz(s))
    if workers and role in ("all", "worker"):
        app.cleanup_ctx.append(_workers(rt))
    return app


async def robots(request: web.Request) -> web.Response:
    return web.Response(text="User-agent: *\nDisallow: /s/\nDisallow: /staff/\nDisallow: /api/\n")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _readyz(s: Services):  # type: ignore[no-untyped-def]
    async def readyz(request: web.Request) -> web.Response:
        if await s.store.ping():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "database unavailable"}, status=503)
    return readyz


def _workers(rt: Runtime):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        workers = rt.services.config.outbox.concurrency
        tasks = [
            asyncio.create_task(rt.processor.run(rt.stop, workers), name="inbound-processor"),
            asyncio.create_task(rt.dispatcher.run(rt.stop, workers), name="outbox-dispatcher"),
        ]
        yield
        rt.stop.set()
        rt.events.wake.set()
        # Drain: the loops finish the job in hand, then return.
        _, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
    return ctx
