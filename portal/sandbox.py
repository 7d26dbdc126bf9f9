"""/sandbox: what the sandbox SMS provider delivered, and a box to answer as the contact.

Only mounted when no SMS provider is configured. Replies go through the same durable inbound
path as Twilio webhooks (stored event → processor), so the quick start shows the real loop.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from typing import Any

from aiohttp import web

from gateway.errors import ValidationError
from gateway.phone import normalize_e164
from gateway.services import Services
from gateway.tokens import csrf_ok, csrf_token
from inbound.events import InboundEvents
from outbound.sandbox import SandboxSmsSender
from portal.client import same_origin
from portal.render import render


class SandboxPortal:
    def __init__(self, services: Services, sender: SandboxSmsSender, events: InboundEvents) -> None:
        self._s = services
        self._sender = sender
        self._events = events
        self._secret = services.sealer.keyring.mac_key

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/sandbox", self.page)
        app.router.add_post("/sandbox/reply", self.reply)

    async def page(self, request: web.Request) -> web.Response:
        sent = await self._sender.messages()
        replies: list[dict[str, Any]] = []
        phones: dict[str, dict[str, Any]] = defaultdict(lambda: {"messages": []})
        for m in reversed(sent + replies):
            p = phones[m["to"]]
            p["number"], p["org_number"] = m["to"], m["from"]
            p["messages"].append({**m, "mine": False})
        return render(request, "sandbox.html", phones=list(phones.values()), csrf=csrf_token(self._secret, "sandbox"))

    async def reply(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not same_origin(request, self._s.public_url) or not csrf_ok(self._secret, "sandbox", fields.get("csrf", "")):
            raise web.HTTPForbidden(text="form expired")
        body = fields.get("body", "").strip()
        if not body or len(body) > 1600:
            raise ValidationError("body", "must be 1 to 1600 characters")
        frm = normalize_e164(fields.get("from", ""), field="from")
        to = fields.get("to", "")
        org = await self._s.orgs.by_recipient(to, to if to.startswith("MG") else None)
        sid = "SM" + secrets.token_hex(16)
        await self._events.accept(
            provider="sandbox", provider_id=sid, org_id=org.id if org else None, kind="sms",
            payload={"MessageSid": sid, "From": frm, "To": to, "Body": body, "NumMedia": "0"},
            state="pending" if org else "unroutable",
        )
        raise web.HTTPSeeOther("/sandbox")
