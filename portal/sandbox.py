"""/sandbox: what the sandbox SMS and mail providers delivered, and forms to answer as the contact.

Only mounted when a provider is in sandbox mode. Answers go through the same durable inbound
path as real ones (stored event → processor), so the quick start shows the real loop.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol

from aiohttp import web

from gateway.errors import ValidationError
from gateway.messaging.contacts import Contacts
from gateway.messaging.phone import normalize_e164
from gateway.messaging.reply_address import parse_reply_address
from gateway.messaging.reply_tokens import ReplyTokens
from gateway.security.tokens import csrf_ok, csrf_token, token_hash
from gateway.tenancy.orgs import Orgs
from portal.http import same_origin
from portal.render import render


# What the page needs from its collaborators, which the composition root (gateway/runtime/app.py) hands
# it: the sandbox providers (outbound/sandbox.py) and the durable intake (gateway/storage/intake.py). Named
# here as roles so that portal/ imports neither package (docs/architecture.md, layers).
class SandboxPhone(Protocol):
    async def messages(self, limit: int = 200) -> list[dict[str, str | bool]]: ...
    async def record_reply(self, *, from_number: str, to_number: str, body: str) -> None: ...


class SandboxMailbox(Protocol):
    async def messages(self, limit: int = 200) -> list[dict[str, str]]: ...


class EventIntake(Protocol):
    async def store_event(
        self, *, provider: str, provider_id: str, org_id: str | None, kind: str,
        payload: dict[str, Any] | None = None, raw: bytes | None = None, state: str = "pending",
        meta: dict[str, Any] | None = None, sender: str | None = None,
    ) -> tuple[str, bool]: ...


class SandboxPortal:
    def __init__(self, *, sms: SandboxPhone | None, mail: SandboxMailbox | None, events: EventIntake, orgs: Orgs,
                 contacts: Contacts, reply_tokens: ReplyTokens, csrf_secret: bytes, public_url: str) -> None:
        self._sms = sms
        self._mail = mail
        self._events = events
        self._orgs = orgs
        self._contacts = contacts
        self._reply_tokens = reply_tokens
        self._secret = csrf_secret
        self._public_url = public_url

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/sandbox", self.page)
        app.router.add_post("/sandbox/reply", self.reply)
        app.router.add_post("/sandbox/mail-reply", self.mail_reply)

    async def page(self, request: web.Request) -> web.Response:
        phones: dict[str, dict[str, Any]] = defaultdict(lambda: {"messages": []})
        for m in reversed(await self._sms.messages() if self._sms else []):
            p = phones[str(m["to"])]
            p["number"] = m["to"]
            if not m["mine"]:
                p["org_number"] = m["from"]
            p["messages"].append(m)
        mails = await self._mail.messages() if self._mail else []
        return render(request, "sandbox.html", phones=[p for p in phones.values() if "org_number" in p],
                      mails=mails, csrf=csrf_token(self._secret, "sandbox"))

    async def _fields(self, request: web.Request) -> dict[str, str]:
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not same_origin(request, self._public_url) or not csrf_ok(self._secret, "sandbox", fields.get("csrf", "")):
            raise web.HTTPForbidden(text="form expired")
        return fields

    async def reply(self, request: web.Request) -> web.Response:
        fields = await self._fields(request)
        body = fields.get("body", "").strip()
        if not body or len(body) > 1600:
            raise ValidationError("body", "must be 1 to 1600 characters")
        frm = normalize_e164(fields.get("from", ""), field="from")
        to = fields.get("to", "")
        org = await self._orgs.by_recipient(to, to if to.startswith("MG") else None)
        sid = "SM" + secrets.token_hex(16)
        if self._sms is not None:
            await self._sms.record_reply(from_number=frm, to_number=to, body=body)
        await self._events.store_event(
            provider="sandbox", provider_id=sid, org_id=org.id if org else None, kind="sms",
            payload={"MessageSid": sid, "From": frm, "To": to, "Body": body, "NumMedia": "0"},
            state="pending" if org else "unroutable",
            # One sender's texts are processed in arrival order (inbound/processor.py), as real ones.
            sender=self._contacts.phone_index(org.id, frm) if org else None,
        )
        raise web.HTTPSeeOther("/sandbox")

    async def mail_reply(self, request: web.Request) -> web.Response:
        """Answer a sandbox mail as the contact: a real RFC 5322 message through the email path."""
        fields = await self._fields(request)
        body = fields.get("body", "").strip()
        if not body or len(body) > 20_000:
            raise ValidationError("body", "must be 1 to 20000 characters")
        reply_to = fields.get("reply_to", "")
        token = parse_reply_address(reply_to, reply_to.rpartition("@")[2])
        scope = await self._reply_tokens.find_live(token) if token else None
        if scope is None:
            raise ValidationError("reply_to", "is not a live reply address")
        contact = await self._contacts.reveal(scope["contact_id"], scope["org_id"])
        mail = EmailMessage()
        mail["From"] = contact["email"] or "client@example.invalid"
        mail["To"] = reply_to
        mail["Subject"] = "Re: " + fields.get("subject", "")[:200]
        mail["Message-ID"] = make_msgid(domain="sandbox.invalid")
        mail.set_content(body)
        await self._events.store_event(
            provider="sandbox-mail", provider_id=mail["Message-ID"], org_id=scope["org_id"], kind="email",
            raw=bytes(mail), payload={"mail_from": mail["From"], "token_hash": token_hash(token or "")},
            sender=f"contact:{scope['contact_id']}",
        )
        raise web.HTTPSeeOther("/sandbox")
