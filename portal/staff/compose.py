"""Compose (/staff/compose): a new SMS or email to an existing or new contact, secure or standard.

The secure toggle starts where gateway/rules/secure.py puts a message with no choice of its own
(the org default, or always secure under the org's always-secure policy); the composed message's
own setting then wins unless the policy forces secure or the contact's thread is secure already.
A standard message whose text looks sensitive is not sent (the same rule): the form comes back
with a warning and an explicit "send it as standard anyway" checkbox. Under the org's
pin_required, a secure message to a contact with no PIN is refused with a form error (the draft
is kept).

Under the org policy agent_scope "assigned" an agent composes only to contacts whose conversation
is in their scope (assigned to them or to nobody), to contacts with no conversation yet, and to new
ones: an existing contact of another's conversation, named by id or found by the number or address
typed in, is the audited 403 of that conversation (portal.staff.contacts.ContactAccess.check_scope), before
anything of the contact is shown or anything is sent. Under a break-glass grant for the
conversation, composing to its contact is allowed, as replying in it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.errors import OptedOut, PinRequired, SensitiveContent, ValidationError
from gateway.messaging.contacts import Contact, Contacts
from gateway.messaging.conversations import Conversations
from gateway.messaging.phone import normalize_e164
from gateway.rules.secure import decide_outbound
from gateway.security.access import thread_assignees
from gateway.tenancy.orgs import validate_email
from portal.staff.common import STAFF, Shell, form_fields, redirect
from portal.staff.contacts import ContactAccess
from portal.staff.policy import ANY_STAFF, policy
from portal.staff.threads import PIN_REQUIRED, SENSITIVE_LABELS


class Compose:
    def __init__(self, shell: Shell, access: ContactAccess, *, contacts: Contacts, conversations: Conversations,
                 on_queued: Callable[[], None]) -> None:
        self.d = shell
        self.access = access
        self.contacts = contacts
        self.conversations = conversations
        self.on_queued = on_queued

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/compose", self.page)
        app.router.add_post("/compose", self.send)

    async def _form(self, request: web.Request, *, contact: Contact | None, status: int = 200,
                    values: dict[str, Any] | None = None, warning: list[str] | None = None,
                    error: str | None = None) -> web.Response:
        ctx = request[STAFF]
        label = None
        if contact is not None:
            info = await self.contacts.reveal(contact)
            label = info.get("name") or contact.phone_hint or contact.email_hint
        channel = (contact.last_channel if contact is not None else None) or "sms"
        start = decide_outbound(ctx.org.policy, message=None, thread_secure=False)
        v = {"phone": "", "email": "", "name": "", "body": "", "channel": channel, "secure": start.secure,
             **(values or {})}
        return await self.d.page(request, "staff/compose.html", status=status, contact=contact, label=label,
                                 values=v, warning=[SENSITIVE_LABELS.get(k, k) for k in warning] if warning else None,
                                 error=error, secure_forced=ctx.org.policy.secure_forced)

    async def _existing(self, org_id: str, phone: str | None, email: str | None) -> Contact | None:
        """The existing contact a message to this number / address goes to: as Contacts.find_or_create
        finds it (by phone, else by email). None when new, or when either is invalid (nothing is sent)."""
        try:
            e164 = normalize_e164(phone, field="to.phone") if phone else None
            addr = validate_email(email, "to.email") if email else None
        except ValidationError:
            return None
        return (await self.contacts.by_phone(org_id, e164) if e164 else None) or (
            await self.contacts.by_email(org_id, addr) if addr else None)

    @policy(*ANY_STAFF)
    async def page(self, request: web.Request) -> web.Response:
        cid = request.query.get("contact")
        contact = (await self.access.load_scoped(request, cid))[0] if cid else None
        return await self._form(request, contact=contact)

    @policy(*ANY_STAFF)
    async def send(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        form = await form_fields(request)
        cid = form.get("contact", "")
        contact = (await self.access.load_scoped(request, cid))[0] if cid else None
        phone, name, body = form.get("phone", "")[:40], form.get("name", "")[:120], form.get("body", "")
        email = form.get("email", "")[:254]
        if contact is None and thread_assignees(ctx.org.policy, ctx.member) is not None:
            existing = await self._existing(ctx.org.id, phone or None, email or None)
            if existing is not None:
                await self.access.check_scope(request, existing.id)
        channel = form.get("channel", "sms")
        if channel not in ("sms", "email"):
            channel = "sms"
        secure = form.get("secure") == "1"
        values: dict[str, Any] = {"phone": phone, "email": email, "name": name, "body": body, "secure": secure,
                                  "channel": channel}
        confirmed = form.get("confirm_sensitive") == "1"
        try:
            sent = await self.conversations.send(
                ctx.org, channel=channel, body=body, actor=ctx.actor, contact=contact,
                to_phone=None if contact else phone or None, to_email=None if contact else email or None,
                name=None if contact else name or None,
                secure=secure, allow_sensitive=confirmed,
            )
        except SensitiveContent as err:
            return await self._form(request, contact=contact, status=422, values=values, warning=err.kinds)
        except PinRequired:
            return await self._form(request, contact=contact, status=422, values=values, error=PIN_REQUIRED)
        except ValidationError as err:
            return await self._form(request, contact=contact, status=422, values=values,
                                    error=f"{err.field}: {err.message}")
        except OptedOut:
            return await self._form(request, contact=contact, status=422, values=values,
                                    error=f"This contact has opted out of {'SMS' if channel == 'sms' else 'email'}.")
        self.on_queued()
        return redirect(f"/staff/threads/{sent.thread['_id']}")
