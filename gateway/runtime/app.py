"""The composition root: builds the services, providers, workers and HTTP app, and wires them.

This is the only module that knows every package. Each surface (webhooks, API, portals) is a
small class given exactly the services it uses; background workers run in cleanup contexts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway.errors import ConfigError
from gateway.messaging.alerts import StoredStaffAlerts
from gateway.messaging.consent import StaffConsent
from gateway.messaging.delivery import Delivery
from gateway.messaging.inbox_queries import InboxQueries
from gateway.messaging.incoming_files import IncomingFiles
from gateway.messaging.reply_context import ReplyContext
from gateway.messaging.sandbox_box import SandboxBox
from gateway.messaging.unsubscribe import Unsubscribe
from gateway.messaging.views import ClientViews
from gateway.ports import EmailSender, SmsSender
from gateway.runtime.services import Services
from gateway.security.api_keys import ApiKeys
from gateway.security.staff_auth import LoginThrottle, SetupTokens, Totp
from gateway.storage.intake import EventIntake, InboundEventQueue
from gateway.storage.mail_quota import ThreadMailQuota
from gateway.tenancy.org_settings import OrgSettings
from inbound.email_reply import EmailReplyHandler
from inbound.processor import InboundProcessor
from inbound.sms import SmsReplyHandler
from inbound.smtp_server import ReplyHandler, make_smtp
from inbound.twilio_webhooks import TwilioWebhooks
from outbound.dispatcher import DispatchSettings, OutboxDispatcher
from outbound.sandbox import SandboxEmailSender, SandboxSmsSender
from outbound.smtp_email import DkimSigner, SmtpEmailSender
from outbound.twilio_sms import TwilioSmsSender
from portal.api import ApiV1
from portal.client import ClientPortal
from portal.http import error_mapping, readable_forms, security_headers
from portal.render import error_page
from portal.sandbox import SandboxPortal
from portal.staff import PREFIX as STAFF_PREFIX
from portal.staff import StaffCollaborators, staff_app
from portal.unsubscribe import UnsubscribePage

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parents[2] / "portal" / "static"
ROLES = ("all", "web", "worker", "smtp")
SMTP_SERVER = web.AppKey("smtp_server", asyncio.AbstractServer)


@dataclass
class Runtime:
    """Everything with a lifecycle, built once per process."""

    services: Services
    events: EventIntake
    sms: SmsSender
    email: EmailSender
    sandbox: SandboxSmsSender | None
    sandbox_mail: SandboxEmailSender | None
    processor: InboundProcessor
    dispatcher: OutboxDispatcher
    delivery: Delivery
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_dispatcher(self) -> None:
        self.dispatcher.wake.set()

    @property
    def sandbox_enabled(self) -> bool:
        """Does /sandbox exist? Its forms inject inbound messages as if a contact sent them, so
        only when no real provider is in use (SMS and mail both sandboxes), or when
        [server] sandbox = true says so (serve then warns in red)."""
        explicit = self.services.config.server.sandbox
        return explicit or (self.sandbox is not None and self.sandbox_mail is not None)

    async def close(self) -> None:
        for sender in (self.sms, self.email):
            closer = getattr(sender, "close", None)
            if closer is not None:
                await closer()


def build_dispatcher(s: Services, sms: SmsSender, email: EmailSender | None = None, *, owner: str,
                     delivery: Delivery | None = None, rng: random.Random | None = None,
                     before_work: Callable[[], Awaitable[None]] | None = None) -> OutboxDispatcher:
    """The outbox dispatcher, handed its collaborators and the config values it reads."""
    cfg = s.config
    settings = DispatchSettings(
        public_url=s.public_url, from_address=cfg.smtp.from_address, reply_domain=cfg.inbound_smtp.reply_domain,
        bounces_to_reply=cfg.smtp.return_path == "reply", outbox=cfg.outbox)
    return OutboxDispatcher(
        outbox=s.outbox, orgs=s.orgs, contacts=s.contacts, staff=s.staff,
        conversations=s.conversations, audit=s.audit,
        delivery=delivery or Delivery(s.store, s.contacts, s.audit, s.clock,
                                      keep_done_days=cfg.outbox.keep_done_days), clock=s.clock,
        sms=sms, email=email, settings=settings, owner=owner, rng=rng, before_work=before_work)


def build_runtime(services: Services, *, sms: SmsSender | None = None, email: EmailSender | None = None) -> Runtime:
    s = services
    owner = f"{socket.gethostname()}:{os.getpid()}"
    events = EventIntake(s.store, s.vault, s.clock)
    sandbox = None
    if sms is None:
        tw = s.config.twilio
        if tw.sandbox:
            sandbox = SandboxSmsSender(SandboxBox(s.store, s.vault, s.clock))
            sms = sandbox
        else:
            sms = TwilioSmsSender(tw.account_sid, tw.auth_token, api_base=tw.api_base or None,
                                  timeout=tw.timeout_seconds)
    elif isinstance(sms, SandboxSmsSender):
        sandbox = sms
    sandbox_mail = None
    if email is None:
        mail = s.config.smtp
        if mail.sandbox:
            email = sandbox_mail = SandboxEmailSender(SandboxBox(s.store, s.vault, s.clock))
        else:
            dkim = DkimSigner(mail.dkim_selector, mail.dkim_domain, mail.dkim_private_key) \
                if mail.dkim_private_key else None
            email = SmtpEmailSender(mail.host, mail.port, username=mail.username, password=mail.password,
                                    starttls=mail.starttls, timeout=mail.timeout_seconds, dkim=dkim)
    elif isinstance(email, SandboxEmailSender):
        sandbox_mail = email
    delivery = Delivery(s.store, s.contacts, s.audit, s.clock, keep_done_days=s.config.outbox.keep_done_days)
    files = IncomingFiles(s.store, s.vault)
    handlers = {
        "sms": SmsReplyHandler(events, s.orgs, s.contacts, s.conversations, s.outbox, s.audit,
                               media=sms, files=files),
        "email": EmailReplyHandler(events, s.orgs, s.contacts, s.conversations, s.reply_tokens, s.audit,
                                   delivery, files, ReplyContext(s.store)),
    }
    # Intake first: processing and sending wait for a lull in incoming deliveries (EventIntake.lull).
    dispatcher = build_dispatcher(s, sms, email, owner=owner, before_work=events.lull, delivery=delivery)
    processor = InboundProcessor(InboundEventQueue(s.store), s.clock, handlers, owner=owner,  # type: ignore[arg-type]
                                 poll_seconds=s.config.outbox.poll_seconds, before_work=events.lull,
                                 keep_done_days=s.config.outbox.keep_done_days)
    events.listeners.append(processor.worker.notify)
    if sandbox is not None:
        async def sandbox_status(sid: str, status: str) -> None:
            await delivery.record(sid, status, None)
        sandbox.on_status = sandbox_status
    return Runtime(s, events, sms, email, sandbox, sandbox_mail, processor, dispatcher, delivery)


def staff_collaborators(s: Services, delivery: Delivery) -> StaffCollaborators:
    """The domain services the staff portal calls (portal/staff/__init__.py hands each handler its own)."""
    alerts = StoredStaffAlerts(s.store, s.clock)  # the admins' banner reads the stored alerts
    return StaffCollaborators(
        orgs=s.orgs, staff=s.staff, sessions=s.sessions, audit=s.audit, contacts=s.contacts,
        conversations=s.conversations, links=s.links, break_glass=s.break_glass, attachments=s.attachments,
        consent=StaffConsent(s.store, s.vault, s.contacts, s.audit, s.clock), delivery=delivery,
        org_settings=OrgSettings(s.orgs, s.staff, s.sessions, s.audit), totp=Totp(s.store, s.vault, s.clock),
        throttle=LoginThrottle(s.store, s.clock), setup_tokens=SetupTokens(s.store, s.clock),
        api_keys=ApiKeys(s.store, s.clock), alerts=alerts, queries=InboxQueries(s.store),
        export_contact=s.subject_data.export_contact,
        clock=s.clock, secret=s.sealer.keyring.mac_key, public_url=s.public_url, https=s.config.server.is_https,
        trusted_proxies=s.config.server.trusted_proxies,
    )


def create_app(rt: Runtime, *, role: str = "all", workers: bool = True) -> web.Application:
    s = rt.services
    app = web.Application(
        client_max_size=s.config.server.max_body_bytes,
        middlewares=[security_headers(s.config.server.is_https), error_mapping(error_page), readable_forms(error_page)],
    )
    if role in ("all", "web"):
        TwilioWebhooks(rt.events, rt.delivery, s.orgs, s.contacts, public_url=s.public_url,
                       auth_token=s.config.twilio.auth_token, account_sid=s.config.twilio.account_sid,
                       ).add_routes(app)
        ApiV1(api_keys=ApiKeys(s.store, s.clock), orgs=s.orgs, conversations=s.conversations, audit=s.audit,
              trusted_proxies=s.config.server.trusted_proxies, on_queued=rt.wake_dispatcher).add_routes(app)
        ClientPortal(
            orgs=s.orgs, contacts=s.contacts, links=s.links, sessions=s.sessions, conversations=s.conversations,
            attachments=s.attachments, views=ClientViews(s.store, s.sessions, s.audit, s.clock), audit=s.audit,
            csrf_secret=s.sealer.keyring.mac_key, public_url=s.public_url,
            trusted_proxies=s.config.server.trusted_proxies, https=s.config.server.is_https,
            on_queued=rt.wake_dispatcher).add_routes(app)
        # One-click email opt-out from the link in every mail to a client (RFC 8058).
        UnsubscribePage(Unsubscribe(s.store, s.contacts, s.audit), s.orgs,
                        s.config.server.trusted_proxies).add_routes(app)
        # Staff portal (issue 3): a sub-app with its own default-deny policy middleware.
        app.add_subapp(STAFF_PREFIX, staff_app(staff_collaborators(s, rt.delivery), rt.wake_dispatcher))
        if rt.sandbox_enabled:
            SandboxPortal(sms=rt.sandbox, mail=rt.sandbox_mail, events=rt.events, orgs=s.orgs, contacts=s.contacts,
                          reply_tokens=s.reply_tokens, csrf_secret=s.sealer.keyring.mac_key,
                          public_url=s.public_url).add_routes(app)
        app.router.add_static("/static/", STATIC_DIR, append_version=False)
        app.router.add_get("/robots.txt", robots)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", _readyz(s))
    if s.config.server.metrics_token:  # else only on the internal listener (metrics_app), if any
        app.router.add_get("/metrics", _metrics(s, token=s.config.server.metrics_token))
    if workers and role in ("all", "worker"):
        app.cleanup_ctx.append(_workers(rt))
    if workers and role in ("all", "smtp") and s.config.inbound_smtp.enabled:
        app.cleanup_ctx.append(_smtp_listener(rt))
    return app


def _smtp_listener(rt: Runtime):  # type: ignore[no-untyped-def]
    """The SMTP listener for email replies, on this event loop (aiosmtpd protocol per connection)."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        s = rt.services
        cfg = s.config.inbound_smtp
        quota = ThreadMailQuota(s.store, s.clock, messages_per_day=cfg.thread_messages_per_day,
                                bytes_per_day=cfg.thread_bytes_per_day)
        handler = ReplyHandler(cfg, s.orgs, s.reply_tokens, rt.events, quota, ReplyContext(s.store))
        hostname = cfg.reply_domain or socket.getfqdn()
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: make_smtp(handler, cfg, hostname), cfg.host, cfg.port)
        except OSError as err:
            raise ConfigError("inbound_smtp.port", f"cannot listen on {cfg.host}:{cfg.port}: {err.strerror}") from None
        app[SMTP_SERVER] = server
        yield
        server.close()
        await server.wait_closed()
    return ctx


async def robots(request: web.Request) -> web.Response:
    return web.Response(text="User-agent: *\nDisallow: /s/\nDisallow: /u/\nDisallow: /staff/\nDisallow: /api/\n")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _readyz(s: Services):  # type: ignore[no-untyped-def]
    async def readyz(request: web.Request) -> web.Response:
        if await s.store.ping():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "database unavailable"}, status=503)
    return readyz


# Every state a job or an event can be in (gateway/messaging/outbox.py; inbound/processor.py and the reply
# handlers): the metrics count each one through the (state, next_attempt_at) index, a bounded
# number of index range counts instead of a pass over the whole collection.
QUEUE_STATES = {
    "outbox": ("hushlink_outbox_jobs", ("pending", "sent", "failed", "dead")),
    "inbound_events": ("hushlink_inbound_events",
                       ("pending", "done", "failed", "unroutable", "bounce", "bounce_unmatched")),
}


def metrics_app(s: Services) -> web.Application:
    """The internal listener's app ([server] metrics_port): /metrics without a token, nothing else."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics(s, token=None))
    return app


def _metrics(s: Services, *, token: str | None):  # type: ignore[no-untyped-def]
    """Prometheus text: queue depths by state (counts only; no ids, no content)."""
    expected = f"Bearer {token}".encode() if token else None

    async def metrics(request: web.Request) -> web.Response:
        if expected is not None and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), expected):
            return web.Response(status=401, text="bearer token required\n",
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        lines = []
        for collection, (metric, states) in QUEUE_STATES.items():
            coll = s.store.collection(collection)
            counts = await asyncio.gather(*(coll.count_documents({"state": state}) for state in states))
            lines.append(f"# TYPE {metric} gauge")
            lines.extend(f'{metric}{{state="{state}"}} {n}' for state, n in zip(states, counts, strict=True))
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
    return metrics


def _workers(rt: Runtime):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        workers = rt.services.config.outbox.concurrency
        tasks = [
            asyncio.create_task(rt.processor.run(rt.stop, workers), name="inbound-processor"),
            asyncio.create_task(rt.dispatcher.run(rt.stop, workers), name="outbox-dispatcher"),
            asyncio.create_task(rt.services.retention.run(rt.stop), name="retention"),
        ]
        yield
        rt.stop.set()
        # Drain: the loops finish the job in hand, then return.
        _, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
    return ctx
