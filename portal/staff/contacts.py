"""Contacts (/staff/contacts): list, detail with consent per channel, opt-out history, PIN status.

Names and addresses are sealed: the list opens the names of the page's rows only; search is an
exact phone or email match through the blind indexes (gateway.contacts).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.contacts import Contact
from gateway.errors import NotFound, ValidationError
from gateway.ids import is_id
from gateway.phone import normalize_e164
from gateway.pins import generate_pin
from portal.staff.common import STAFF, Deps, form_fields, redirect
from portal.staff.inbox import fmt_time
from portal.staff.policy import ANY_STAFF, policy

PAGE = 50
CHANNELS = ("sms", "email")


async def load_contact(deps: Deps, request: web.Request, contact_id: str) -> Contact:
    """The org's contact, or an audited denial (404) for any other id."""
    ctx = request[STAFF]
    try:
        if not is_id(contact_id):
            raise NotFound("contact")
        return await deps.s.contacts.get(ctx.org.id, contact_id)
    except NotFound:
        raise await deps.deny(request, "contact", contact_id) from None


async def pin_action(deps: Deps, request: web.Request, contact: Contact, form: dict[str, str]) -> str | None:
    """Set, generate or clear the contact's PIN; returns a generated PIN (shown once) or None."""
    ctx = request[STAFF]
    action = form.get("action", "")
    generated = None
    if action == "clear":
        await deps.s.contacts.set_pin(ctx.org.id, contact.id, None)
        await deps.s.audit.append(ctx.org.id, "contact.pin_cleared", ctx.actor, ip=deps.ip(request),
                                  contact_id=contact.id)
        return None
    if action == "generate":
        generated = generate_pin()
        pin = generated
    elif action == "set":
        pin = form.get("pin", "")
    else:
        raise ValidationError("action", "must be set, generate or clear")
    await deps.s.contacts.set_pin(ctx.org.id, contact.id, pin)
    await deps.s.audit.append(ctx.org.id, "contact.pin_set", ctx.actor, ip=deps.ip(request), contact_id=contact.id,
                              detail={"generated": generated is not None})
    return generated


class ContactPages:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self.s = deps.s

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/contacts", self.list)
        app.router.add_get("/contacts/{id}", self.detail)
        app.router.add_post("/contacts/{id}/pin", self.pin)

    @policy(*ANY_STAFF)
    async def list(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        org_id = ctx.org.id
        q = request.query.get("q", "").strip()[:100]
        cursor = request.query.get("cursor") or None
        if cursor is not None and not is_id(cursor):
            raise ValidationError("cursor", "is not a cursor from a previous page")
        query: dict[str, Any] = {"org_id": org_id, "erased_at": None}
        if q:
            found = None
            if "@" in q:
                found = await self.s.contacts.by_email(org_id, q)
            else:
                try:
                    found = await self.s.contacts.by_phone(org_id, normalize_e164(q, field="q"))
                except ValidationError:
                    found = None
            query["_id"] = found.id if found else "none"
        elif cursor:
            query["_id"] = {"$lt": cursor}
        docs = [d async for d in self.s.store.contacts.find(query).sort("_id", -1).limit(PAGE + 1)]
        page, more = docs[:PAGE], len(docs) > PAGE
        labels = await self.d.contact_labels(org_id, [d["_id"] for d in page])
        rows = [{
            "id": d["_id"], "name": labels.get(d["_id"], {}).get("name"),
            "phone_hint": d.get("phone_hint"), "email_hint": d.get("email_hint"),
            "consent": {ch: (d.get("consent", {}).get(ch) or {}).get("state", "—") for ch in CHANNELS},
            "pin": bool(d.get("pin_hash")), "created": fmt_time(d.get("created_at")),
        } for d in page]
        return await self.d.page(request, "staff/contacts.html", rows=rows, q=q,
                                 next_url="/staff/contacts?" + urlencode({"cursor": page[-1]["_id"]})
                                 if more and page and not q else None)

    @policy(*ANY_STAFF)
    async def detail(self, request: web.Request) -> web.Response:
        contact = await load_contact(self.d, request, request.match_info["id"])
        return await self._detail(request, contact)

    async def _detail(self, request: web.Request, contact: Contact, *, generated_pin: str | None = None
                      ) -> web.Response:
        ctx = request[STAFF]
        doc = await self.s.store.contacts.find_one({"_id": contact.id, "org_id": ctx.org.id})
        assert doc is not None
        info = await self.s.contacts.reveal(contact)
        thread = await self.s.store.threads.find_one({"org_id": ctx.org.id, "contact_id": contact.id},
                                                     projection={"_id": 1, "secure": 1, "status": 1})
        await self.s.audit.append(ctx.org.id, "contact.viewed", ctx.actor, ip=self.d.ip(request), contact_id=contact.id)
        consent = [{"channel": ch, "state": (contact.consent.get(ch) or {}).get("state", "not recorded"),
                    "at": fmt_time((contact.consent.get(ch) or {}).get("at")),
                    "source": (contact.consent.get(ch) or {}).get("source", "")} for ch in CHANNELS]
        history = [{"channel": e.get("channel"), "state": e.get("state"), "at": fmt_time(e.get("at")),
                    "source": e.get("source")} for e in reversed(doc.get("consent_log", []))]
        return await self.d.page(request, "staff/contact.html", contact=contact, info=info, thread=thread,
                                 consent=consent, history=history, generated_pin=generated_pin,
                                 created=fmt_time(contact.created_at))

    @policy(*ANY_STAFF)
    async def pin(self, request: web.Request) -> web.Response:
        contact = await load_contact(self.d, request, request.match_info["id"])
        generated = await pin_action(self.d, request, contact, await form_fields(request))
        if generated:
            return await self._detail(request, await self.s.contacts.get(contact.org_id, contact.id),
                                      generated_pin=generated)
        return redirect(f"/staff/contacts/{contact.id}")
