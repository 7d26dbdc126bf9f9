"""Contacts (/staff/contacts): list, detail with consent per channel, opt-out history, PIN status.

Names and addresses are sealed: the list opens the names of the page's rows only; search is an
exact phone or email match through the blind indexes (gateway.messaging.contacts).

Under the org policy agent_scope "assigned" an agent sees only the contacts whose conversation is
in their scope (assigned to them or to nobody) and those with no conversation yet (gateway/security/access.py).
The contact of another's conversation is, on its detail page and every contact action, the same
audited 403 as the conversation: the break-glass page, which opens the conversation, and with it
the contact, for the org's break_glass_minutes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.errors import LegalHold, NotFound, ValidationError
from gateway.ids import is_id
from gateway.messaging.consent import NOTE_MAX, REASONS, StaffConsent
from gateway.messaging.contacts import Contact, Contacts
from gateway.messaging.conversations import Conversations
from gateway.messaging.inbox_queries import InboxQueries
from gateway.messaging.phone import normalize_e164
from gateway.security.access import REASON_MAX, BreakGlass, in_scope, thread_assignees
from gateway.security.audit import AuditLog
from gateway.security.pins import generate_pin
from gateway.storage.store import Doc
from portal.staff.common import STAFF, Shell, form_fields, redirect
from portal.staff.inbox import fmt_time
from portal.staff.policy import ANY_STAFF, policy

PAGE = 50
# A scoped agent's list skips the contacts of others' conversations: at most SCAN contacts are
# looked at per page (then the page offers "more" from where it stopped, even if not full), so
# an agent who may see few of many contacts costs a bounded number of reads per page.
SCAN = 500
CHANNELS = ("sms", "email")
ERASE_WORD = "ERASE"  # typed by the admin to confirm an erasure


class ContactAccess:
    """Which contacts a member may see and change: the org's (else an audited 404), within their
    scope (else the audited 403 of the conversation), and the PIN actions of the contact and thread
    pages. Shared by the contact, compose and thread pages."""

    def __init__(self, shell: Shell, *, contacts: Contacts, queries: InboxQueries, break_glass: BreakGlass,
                 audit: AuditLog, conversations: Conversations) -> None:
        self.d = shell
        self.contacts = contacts
        self.queries = queries
        self.break_glass = break_glass
        self.audit = audit
        self.conversations = conversations

    async def load(self, request: web.Request, contact_id: str) -> Contact:
        """The org's contact, or an audited denial (404) for any other id."""
        ctx = request[STAFF]
        try:
            if not is_id(contact_id):
                raise NotFound("contact")
            return await self.contacts.get(ctx.org.id, contact_id)
        except NotFound:
            raise await self.d.deny(request, "contact", contact_id) from None

    async def check_scope(self, request: web.Request, contact_id: str) -> Doc | None:
        """May the member see this contact? None: yes, in scope; a dict: yes, under this break-glass grant.

        The contact of a conversation outside the member's scope (agent_scope "assigned": assigned to
        another) is an audited 403, raised: the break-glass page of that conversation, nothing of the
        contact. A contact has at most one conversation per org (threads: unique (org_id, contact_id)).
        """
        ctx = request[STAFF]
        if thread_assignees(ctx.org.policy, ctx.member) is None:
            return None
        thread = await self.queries.thread_of_contact(ctx.org.id, contact_id, ("assignee",))
        if thread is None or in_scope(ctx.org.policy, ctx.member, thread):
            return None
        grant = await self.break_glass.active(ctx.org.id, ctx.member.id, thread["_id"])
        if grant is not None:
            return grant
        await self.audit.append(ctx.org.id, "authz.deny", ctx.actor, outcome="denied", ip=self.d.ip(request),
                                thread_id=thread["_id"], contact_id=contact_id,
                                detail={"object": "contact", "reason": "scope", "route": request.path[:200]})
        page = await self.d.page(request, "staff/break_glass.html", status=403, thread_id=thread["_id"],
                                 minutes=ctx.org.policy.break_glass_minutes, reason="", reason_max=REASON_MAX,
                                 error=None)
        # Raised, not returned (as ThreadPages._refuse): every route is refused by the one check it makes.
        raise web.HTTPForbidden(text=page.text, content_type="text/html")

    async def load_scoped(self, request: web.Request, contact_id: str) -> tuple[Contact, Doc | None]:
        """load, then check_scope: the contact and the break-glass grant it opens under, if any."""
        contact = await self.load(request, contact_id)
        return contact, await self.check_scope(request, contact.id)

    async def pin_action(self, request: web.Request, contact: Contact, form: dict[str, str],
                         thread: Doc | None = None) -> str | None:
        """Set, generate or clear the PIN in force; returns a generated PIN (shown once) or None.

        From a thread page (`thread` given) whose links ask for a per-message PIN (an API `pin`, or
        one staff set there), that PIN is the one changed: replaced on the thread and on the links
        carrying it, or removed (gateway/rules/pin.py), so a leaked PIN can be rotated. Otherwise the
        contact's own PIN is changed.
        """
        ctx = request[STAFF]
        action = form.get("action", "")
        on_thread = thread is not None and bool(thread.get("pin_hash"))
        ids: dict[str, Any] = {"contact_id": contact.id}
        if thread is not None:
            ids["thread_id"] = thread["_id"]
        scope: dict[str, str | int | bool | None] = {"pin": "thread" if on_thread else "contact"}
        generated = None
        if action == "clear":
            if on_thread:
                assert thread is not None
                await self.conversations.set_thread_pin(ctx.org.id, thread["_id"], None)
            else:
                await self.contacts.set_pin(ctx.org.id, contact.id, None)
            await self.audit.append(ctx.org.id, "contact.pin_cleared", ctx.actor, ip=self.d.ip(request), **ids,
                                    detail=scope)
            return None
        if action == "generate":
            generated = generate_pin()
            pin = generated
        elif action == "set":
            pin = form.get("pin", "")
        else:
            raise ValidationError("action", "must be set, generate or clear")
        if on_thread:
            assert thread is not None
            await self.conversations.set_thread_pin(ctx.org.id, thread["_id"], pin)
        else:
            await self.contacts.set_pin(ctx.org.id, contact.id, pin)
        await self.audit.append(ctx.org.id, "contact.pin_set", ctx.actor, ip=self.d.ip(request), **ids,
                                detail={"generated": generated is not None, **scope})
        return generated


async def scoped_contacts(contacts: Contacts, queries: InboxQueries, org_id: str, cursor: str | None,
                          assignees: tuple[str | None, ...]) -> tuple[list[Doc], str | None]:
    """Up to PAGE + 1 contacts older than `cursor` (newest first) whose conversation is in scope,
    or who have none.

    Contacts are read in batches as the unscoped list reads them (growing: a page, then twice the
    contacts read so far), each followed by one read of their conversations (assigned_outside). At
    most SCAN contacts are looked at per page: (rows, None) when the page filled or the contacts
    ran out; else (rows, the last contact looked at), where the next page starts.
    """
    rows: list[Doc] = []
    scanned = 0
    last = cursor
    while scanned < SCAN:
        size = min(SCAN - scanned, PAGE + 1 + scanned)
        batch = await contacts.newest(org_id, last, size)
        hidden = await queries.assigned_outside(org_id, [d["_id"] for d in batch], assignees)
        for d in batch:
            scanned += 1
            last = d["_id"]
            if d["_id"] not in hidden:
                rows.append(d)
                if len(rows) > PAGE:
                    return rows, None
        if len(batch) < size:
            return rows, None
    return rows, last


class ContactPages:
    def __init__(self, shell: Shell, access: ContactAccess, *, contacts: Contacts, queries: InboxQueries,
                 consent: StaffConsent, audit: AuditLog,
                 export_contact: Callable[[str, str], Awaitable[dict[str, Any]]]) -> None:
        self.d = shell
        self.access = access
        self.contacts = contacts
        self.queries = queries
        self.consent = consent
        self.audit = audit
        self.export_contact = export_contact

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/contacts", self.list)
        app.router.add_get("/contacts/{id}", self.detail)
        app.router.add_post("/contacts/{id}/consent", self.change_consent)
        app.router.add_post("/contacts/{id}/pin", self.pin)
        app.router.add_post("/contacts/{id}/erase", self.erase)
        app.router.add_post("/contacts/{id}/export", self.export)
        app.router.add_post("/contacts/{id}/hold", self.hold)

    @policy(*ANY_STAFF)
    async def list(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        org_id, zone = ctx.org.id, ctx.org.zone
        q = request.query.get("q", "").strip()[:100]
        cursor = request.query.get("cursor") or None
        if cursor is not None and not is_id(cursor):
            raise ValidationError("cursor", "is not a cursor from a previous page")
        found: Contact | None = None
        if q:
            if "@" in q:
                found = await self.contacts.by_email(org_id, q)
            else:
                try:
                    found = await self.contacts.by_phone(org_id, normalize_e164(q, field="q"))
                except ValidationError:
                    found = None
            cursor = None
        assignees = thread_assignees(ctx.org.policy, ctx.member)
        stopped_at = None  # a scoped scan that reached SCAN: the next page starts after this contact
        if assignees is not None and not q:
            docs, stopped_at = await scoped_contacts(self.contacts, self.queries, org_id, cursor, assignees)
        elif not q:
            docs = await self.contacts.newest(org_id, cursor, PAGE + 1)
        else:  # the one contact the search found (not erased), or none
            record = await self.contacts.record(org_id, found.id) if found else None
            docs = [record] if record is not None and not record.get("erased_at") else []
            if assignees is not None:  # the search's one contact, if in scope
                hidden = await self.queries.assigned_outside(org_id, [d["_id"] for d in docs], assignees)
                docs = [d for d in docs if d["_id"] not in hidden]
        page, more = docs[:PAGE], len(docs) > PAGE or stopped_at is not None
        cursor_next = page[-1]["_id"] if len(docs) > PAGE else stopped_at
        labels = await self.contacts.row_labels(org_id, [d["_id"] for d in page])
        rows = [{
            "id": d["_id"], "name": labels.get(d["_id"], {}).get("name"),
            "phone_hint": d.get("phone_hint"), "email_hint": d.get("email_hint"),
            "consent": {ch: (d.get("consent", {}).get(ch) or {}).get("state", "—") for ch in CHANNELS},
            "pin": bool(d.get("pin_hash")), "created": fmt_time(d.get("created_at"), zone),
        } for d in page]
        return await self.d.page(request, "staff/contacts.html", rows=rows, q=q,
                                 next_url="/staff/contacts?" + urlencode({"cursor": cursor_next})
                                 if more and cursor_next and not q else None,
                                 partial=stopped_at is not None, scan=SCAN)

    @policy(*ANY_STAFF)
    async def detail(self, request: web.Request) -> web.Response:
        contact, grant = await self.access.load_scoped(request, request.match_info["id"])
        return await self._detail(request, contact, grant=grant)

    async def _detail(self, request: web.Request, contact: Contact, *, grant: Doc | None,
                      generated_pin: str | None = None) -> web.Response:
        ctx = request[STAFF]
        zone = ctx.org.zone
        doc = await self.contacts.record(ctx.org.id, contact.id)
        assert doc is not None
        info = await self.contacts.reveal(contact)
        thread = await self.queries.thread_of_contact(ctx.org.id, contact.id, ("secure", "status"))
        await self.audit.append(ctx.org.id, "contact.viewed", ctx.actor, ip=self.d.ip(request), contact_id=contact.id,
                                  detail={"grant_id": grant["_id"]} if grant else None)
        consent = [{"channel": ch, "state": (contact.consent.get(ch) or {}).get("state", "not recorded"),
                    "at": fmt_time((contact.consent.get(ch) or {}).get("at"), zone),
                    "source": (contact.consent.get(ch) or {}).get("source", "")} for ch in CHANNELS]
        history = [{"channel": e.get("channel"), "state": e.get("state"), "at": fmt_time(e.get("at"), zone),
                    "source": e.get("source")} for e in reversed(doc.get("consent_log", []))]
        hold = doc.get("legal_hold")
        notes = [{**n, "at": fmt_time(n["at"], zone)} for n in await self.consent.notes(contact)]  # type: ignore[arg-type]
        return await self.d.page(request, "staff/contact.html", contact=contact, info=info, thread=thread,
                                 consent=consent, history=history, generated_pin=generated_pin,
                                 consent_reasons=REASONS, consent_notes=notes, note_max=NOTE_MAX,
                                 legal_hold=fmt_time(hold["at"], zone) if hold else None,
                                 created=fmt_time(contact.created_at, zone),
                                 emergency_until=fmt_time(grant["expires_at"], zone) if grant else None)

    @policy(*ANY_STAFF)
    async def change_consent(self, request: web.Request) -> web.Response:
        """Opt the contact in or out of a channel by hand, with a reason (gateway/messaging/consent.py; audited)."""
        ctx = request[STAFF]
        contact, _ = await self.access.load_scoped(request, request.match_info["id"])
        form = await form_fields(request)
        await self.consent.change(contact, channel=form.get("channel", ""), state=form.get("state", ""),
                                  reason=form.get("reason", ""), note=form.get("note", ""), actor=ctx.actor,
                                  ip=self.d.ip(request))
        return redirect(f"/staff/contacts/{contact.id}#consent-h")

    @policy(*ANY_STAFF)
    async def pin(self, request: web.Request) -> web.Response:
        contact, grant = await self.access.load_scoped(request, request.match_info["id"])
        generated = await self.access.pin_action(request, contact, await form_fields(request))
        if generated:
            return await self._detail(request, await self.contacts.get(contact.org_id, contact.id),
                                      grant=grant, generated_pin=generated)
        return redirect(f"/staff/contacts/{contact.id}")

    @policy("admin")
    async def erase(self, request: web.Request) -> web.Response:
        """Erase the contact for good (crypto-shredding, GDPR Art. 17): type ERASE to confirm."""
        ctx = request[STAFF]
        contact, _ = await self.access.load_scoped(request, request.match_info["id"])
        form = await form_fields(request)
        if form.get("confirm", "").strip() != ERASE_WORD:
            raise ValidationError("confirm", f"type {ERASE_WORD} to erase this contact; nothing was erased")
        try:
            erased = await self.contacts.erase(ctx.org.id, contact.id)
        except LegalHold:
            await self.audit.append(ctx.org.id, "contact.erase_refused", ctx.actor, outcome="denied",
                                      ip=self.d.ip(request), contact_id=contact.id, detail={"reason": "legal_hold"})
            raise ValidationError("confirm", "blocked: this contact is under a legal hold; release the hold "
                                             "first. Nothing was erased", code="legal_hold") from None
        if erased:
            await self.audit.append(ctx.org.id, "contact.erased", ctx.actor, ip=self.d.ip(request),
                                      contact_id=contact.id)
        return redirect("/staff/contacts")

    @policy("admin")
    async def export(self, request: web.Request) -> web.Response:
        """Everything stored about the contact, opened, as one JSON file (right of access, GDPR
        Art. 15). A POST: a link or prefetch cannot start it, and the CSRF token is checked."""
        ctx = request[STAFF]
        contact, _ = await self.access.load_scoped(request, request.match_info["id"])
        data = await self.export_contact(ctx.org.id, contact.id)
        await self.audit.append(ctx.org.id, "contact.exported", ctx.actor, ip=self.d.ip(request),
                                  contact_id=contact.id)
        return web.json_response(data, headers={
            "Content-Disposition": f'attachment; filename="contact-{contact.id}.json"'})

    @policy("admin")
    async def hold(self, request: web.Request) -> web.Response:
        """Place or release a legal hold: while held, the contact cannot be erased (GDPR Art. 17(3))."""
        ctx = request[STAFF]
        contact, _ = await self.access.load_scoped(request, request.match_info["id"])
        action = (await form_fields(request)).get("action", "")
        if action not in ("place", "release"):
            raise ValidationError("action", "must be place or release")
        if await self.contacts.set_legal_hold(ctx.org.id, contact.id, action == "place", ctx.member.id):
            await self.audit.append(ctx.org.id, f"contact.legal_hold_{'placed' if action == 'place' else 'released'}",
                                      ctx.actor, ip=self.d.ip(request), contact_id=contact.id)
        return redirect(f"/staff/contacts/{contact.id}")
