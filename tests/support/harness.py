"""A whole gateway for tests: real database, Twilio stand-in through the real library, frozen clock."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.clock import FrozenClock
from gateway.runtime.app import Runtime
from gateway.runtime.services import Services
from gateway.tenancy.orgs import Org
from tests.support.twilio_standin import TwilioStandIn, inbound_sms_params, new_sid, sign

PUBLIC_URL = "http://hushlink.test"
ORG_NUMBER = "+15005550006"
ORG_EMAIL = "care@riverside.test"
REPLY_DOMAIN = "reply.riverside.test"
CLIENT_EMAIL = "alex@client.test"
REPLY_RE = re.compile(r"reply\+([A-Za-z0-9_-]{43})@")
CLIENT_PHONE = "+15551230001"
LINK_RE = re.compile(r"/s/([A-Za-z0-9_-]{43})")


@dataclass
class Gateway:
    client: TestClient
    services: Services
    runtime: Runtime
    twilio: TwilioStandIn
    clock: FrozenClock
    org: Org
    api_key: str
    extra: dict[str, Any] = field(default_factory=dict)
    mail: Any = None  # the SmtpSink that receives outbound mail
    smtp_server: Any = None

    @property
    def store(self) -> Any:
        return self.services.store

    @property
    def server_url(self) -> str:
        return str(self.client.make_url("/")).rstrip("/")

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    async def api_send(self, *, key: str | None = None, expect: int | None = 201, **payload: Any) -> Any:
        payload.setdefault("to", {"phone": CLIENT_PHONE})
        payload.setdefault("body", "Your appointment is confirmed.")
        payload.setdefault("channel", "sms")
        resp = await self.client.post("/api/v1/messages", json=payload, headers=self.auth(key))
        data = await resp.json()
        if expect is not None:
            assert resp.status == expect, data
        return data

    def sms_params(self, *, frm: str = CLIENT_PHONE, body: str, to: str = ORG_NUMBER, sid: str | None = None,
                   **extra: str) -> dict[str, str]:
        params = inbound_sms_params(frm=frm, to=to, body=body, account_sid=self.twilio.account_sid, sid=sid)
        params.update(extra)
        return params

    async def post_signed(self, path: str, params: dict[str, str], *, token: str | None = None,
                          signature: str | None = None) -> Any:
        sig = signature if signature is not None else sign(PUBLIC_URL + path, params, token or self.twilio.auth_token)
        return await self.client.post(path, data=params, headers={"X-Twilio-Signature": sig})

    async def inbound_sms(self, body: str, *, frm: str = CLIENT_PHONE, sid: str | None = None,
                          to: str = ORG_NUMBER) -> Any:
        params = self.sms_params(frm=frm, body=body, to=to, sid=sid or new_sid("SM"))
        resp = await self.post_signed("/webhooks/twilio/sms", params)
        assert resp.status == 200, await resp.text()
        return params

    async def drain(self) -> None:
        """Run the processor and dispatcher until neither has anything due."""
        for _ in range(20):
            n = await self.runtime.processor.run_once()
            n += await self.runtime.dispatcher.run_once()
            if n == 0:
                return
        raise AssertionError("work kept appearing")

    def sms_to(self, phone: str = CLIENT_PHONE) -> list[dict[str, Any]]:
        return [m for m in self.twilio.messages if m["to"] == phone]

    def last_link_token(self, phone: str = CLIENT_PHONE) -> str:
        for m in reversed(self.sms_to(phone)):
            found = LINK_RE.search(m["body"] or "")
            if found:
                return found.group(1)
        raise AssertionError("no link was sent to that phone")

    async def status(self, sid: str, status: str, error_code: str | None = None) -> int:
        return await self.twilio.send_status(sid, status, error_code=error_code, deliver_to=self.server_url)

    async def open_link(self, token: str, pin: str | None = None) -> Any:
        """GET the link page, then POST its form (as a browser would). Returns the POST response."""
        page = await self.client.get(f"/s/{token}")
        html = await page.text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        assert csrf, html
        data = {"csrf": csrf.group(1)}
        if pin is not None:
            data["pin"] = pin
        return await self.client.post(f"/s/{token}", data=data, allow_redirects=False)

    def mail_to(self, address: str = CLIENT_EMAIL) -> list[Any]:
        """Parsed messages (email.message.EmailMessage) the relay received for this address."""
        return [m["message"] for m in self.mail.messages if address in m["rcpt_tos"]]

    async def start_smtp(self, **overrides: Any) -> int:
        """Start the gateway's SMTP listener on a free loopback port; returns the port."""
        import asyncio
        from dataclasses import replace

        from gateway.messaging.reply_context import ReplyContext
        from gateway.storage.mail_quota import ThreadMailQuota
        from inbound.smtp_server import ReplyHandler, make_smtp

        s = self.services
        cfg = replace(s.config.inbound_smtp, reply_domain=REPLY_DOMAIN, **overrides)
        quota = ThreadMailQuota(s.store, s.clock, messages_per_day=cfg.thread_messages_per_day,
                                bytes_per_day=cfg.thread_bytes_per_day)
        handler = ReplyHandler(cfg, s.orgs, s.reply_tokens, self.runtime.events, quota, ReplyContext(s.store))
        loop = asyncio.get_running_loop()
        self.smtp_server = await loop.create_server(lambda: make_smtp(handler, cfg, REPLY_DOMAIN), "127.0.0.1", 0)
        return int(self.smtp_server.sockets[0].getsockname()[1])

    async def stop_smtp(self) -> None:
        if self.smtp_server is not None:
            self.smtp_server.close()
            await self.smtp_server.wait_closed()
            self.smtp_server = None

    async def audit_actions(self) -> list[str]:
        return [d["action"] async for d in self.store.audit.find({"org_id": self.org.id}).sort("seq", 1)]


def point_cli_at(gw: Gateway, monkeypatch: Any, mongo_uri: str, tmp_path: Path) -> None:
    """Make `hushlink admin ...` (gateway.runtime.cli.main) use this gateway's database and keyring."""
    from gateway.security.crypto import write_keyring

    keyring = tmp_path / "keyring.json"
    write_keyring(keyring, gw.services.sealer.keyring)
    for key, value in {"HUSHLINK_DATABASE__URI": mongo_uri, "HUSHLINK_DATABASE__NAME": gw.store.db.name,
                       "HUSHLINK_KEYS__KEYRING_FILE": str(keyring),
                       "HUSHLINK_SERVER__DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HUSHLINK_CONFIG", raising=False)


async def run_cli(argv: list[str]) -> int:
    """gateway.runtime.cli.main in a thread: it runs its own event loop."""
    from gateway.runtime.cli import main

    return await asyncio.to_thread(main, argv)
