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

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.compliance.subject_data import export_contact
from gateway.errors import LegalHold, NotFound, ValidationError
from gateway.ids import is_id
from gateway.messaging.consent import NOTE_MAX, REASONS, StaffConsent
from gateway.messaging.contacts import Contact
from gateway.messaging.phone import normalize_e164
from gateway.runtime.services import Services
from gateway.security.access import REASON_MAX, in_scope, thread_assignees
from gateway.security.pins import generate_pin
from gateway.storage.recent import FLOOR_MARGIN, oid_at, oid_time
from gateway.storage.store import Doc, Store
from portal.staff.common import STAFF, Deps, form_fields, redirect
from portal.staff.inbox import fmt_time
from portal.staff.policy import ANY_STAFF, policy

PAGE = 50
# A scoped agent's list skips the contacts of others' conversations: at most SCAN contacts are
# looked at per page (then the page offers "more" from where it stopped, even if not full), so
# an agent who may see few of many contacts costs a bounded number of reads per page.
SCAN = 500
CHANNELS = ("sms", "email")
ERASE_WORD = "ERASE"  # typed by the admin to confirm an erasure


async def load_contact(deps: Deps, request: web.Request, contact_id: str) -> Contact:
    """The org's contact, or an audited denial (404) for any other id."""
    ctx = request[STAFF]
    try:
        if not is_id(contact_id):
            raise NotFound("contact")
        return await deps.s.contacts.get(ctx.org.id, contact_id)
    except NotFound:
        raise await deps.deny(request, "contact", contact_id) from None


async def check_scope(deps: Deps, request: web.Request, contact_id: str) -> Doc | None:
    """May the member see this contact? None: yes, in scope; a dict: yes, under this break-glass grant.

    The contact of a conversation outside the member's scope (agent_scope "assigned": assigned to
    another) is an audited 403, raised: the break-glass page of that conversation, nothing of the
    contact. A contact has at most one conversation per org (threads: unique (org_id, contact_id)).
    """
    ctx = request[STAFF]
    if thread_assignees(ctx.org.policy, ctx.member) is None:
        return None
    thread = await deps.s.store.threads.find_one({"org_id": ctx.org.id, "contact_id": contact_id},
                                                 projection={"_id": 1, "assignee": 1})
    if thread is None or in_scope(ctx.org.policy, ctx.member, thread):
        return None
    grant = await deps.s.break_glass.active(ctx.org.id, ctx.member.id, thread["_id"])
    if grant is not None:
        return grant
    await deps.s.audit.append(ctx.org.id, "authz.deny", ctx.actor, outcome="denied", ip=deps.ip(request),
                              thread_id=thread["_id"], contact_id=contact_id,
                              detail={"object": "contact", "reason": "scope", "route": request.path[:200]})
    page = await deps.page(request, "staff/break_glass.html", status=403, thread_id=thread["_id"],
                           minutes=ctx.org.policy.break_glass_minutes, reason="", reason_max=REASON_MAX, error=None)
    # Raised, not returned (as ThreadPages._refuse): every route is refused by the one check it makes.
    raise web.HTTPForbidden(text=page.text, content_type="text/html")


async def load_scoped_contact(deps: Deps, request: web.Request, contact_id: str) -> tuple[Contact, Doc | None]:
    """load_contact, then check_scope: the contact and the break-glass grant it opens under, if any."""
    contact = await load_contact(deps, request, contact_id)
    return contact, await check_scope(deps, request, contact.id)


async def pin_action(deps: Deps, request: web.Request, contact: Contact, form: dict[str, str],
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
            await deps.s.conversations.set_thread_pin(ctx.org.id, thread["_id"], None)
        else:
            await deps.s.contacts.set_pin(ctx.org.id, contact.id, None)
        await deps.s.audit.append(ctx.org.id, "contact.pin_cleared", ctx.actor, ip=deps.ip(request), **ids,
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
        await deps.s.conversations.set_thread_pin(ctx.org.id, thread["_id"], pin)
    else:
        await deps.s.contacts.set_pin(ctx.org.id, contact.id, pin)
    await deps.s.audit.append(ctx.org.id, "contact.pin_set", ctx.actor, ip=deps.ip(request), **ids,
                              detail={"generated": generated is not None, **scope})
    return generated


async def hidden_contacts(store: Store, org_id: str, contact_ids: list[str],
                          assignees: tuple[str | None, ...]) -> set[str]:
    """Those of the contacts whose conversation is assigned outside `assignees`: ONE read, an $in
    on the unique (org_id, contact_id) index (a contact has at most one conversation per org)."""
    if not contact_ids:
        return set()
    threads = store.threads.find({"org_id": org_id, "contact_id": {"$in": contact_ids}},
                                 projection={"_id": 0, "contact_id": 1, "assignee": 1})
    return {t["contact_id"] async for t in threads if t.get("assignee") not in assignees}


async def newest_contacts(s: Services, org_id: str, before: str | None, limit: int) -> list[Doc]:
    """The org's newest `limit` contacts (not erased) older than the contact id `before`.

    Contact ids are ObjectId hex, so they sort by creation: the read is one window of
    (org_id, _id) at a time (gateway/storage/recent.py), and a page costs the same with 50 contacts or
    50,000 (a plain sorted, limited query reads them all on SecantusDB).
    """
    now = datetime.now(UTC)  # ids carry the real time, not the service clock
    created = oid_time(org_id)
    upper_at = oid_time(before) if before else None
    return await s.conversations.recent.newest(
        s.store.contacts, {"org_id": org_id}, "_id", limit=limit, order=[("_id", -1)], key=("contacts", org_id),
        now=now, floor=created - FLOOR_MARGIN if created else None, bound=oid_at,
        at_of=lambda d: oid_time(d["_id"]) or now, upper=("$lt", before) if before else None,
        upper_at=upper_at + timedelta(seconds=1) if upper_at else None, keep=lambda d: not d.get("erased_at"))


async def scoped_contacts(s: Services, org_id: str, cursor: str | None,
                          assignees: tuple[str | None, ...]) -> tuple[list[Doc], str | None]:
    """Up to PAGE + 1 contacts of `query` older than `cursor` (newest first) whose conversation is
    in scope, or who have none.

    Contacts are read in batches as the unscoped list reads them (growing: a page, then twice the
    contacts read so far), each followed by one read of their conversations (hidden_contacts). At
    most SCAN contacts are looked at per page: (rows, None) when the page filled or the contacts
    ran out; else (rows, the last contact looked at), where the next page starts.
    """
    rows: list[Doc] = []
    scanned = 0
    last = cursor
    while scanned < SCAN:
        size = min(SCAN - scanned, PAGE + 1 + scanned)
        batch = await newest_contacts(s, org_id, last, size)
        hidden = await hidden_contacts(s.store, org_id, [d["_id"] for d in batch], assignees)
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
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self.s = deps.s
        self.consent = StaffConsent(deps.s.store, deps.s.vault, deps.s.contacts, deps.s.audit, deps.s.clock)

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
            cursor = None
        assignees = thread_assignees(ctx.org.policy, ctx.member)
        stopped_at = None  # a scoped scan that reached SCAN: the next page starts after this contact
        if assignees is not None and not q:
            docs, stopped_at = await scoped_contacts(self.s, org_id, cursor, assignees)
        elif not q:
            docs = await newest_contacts(self.s, org_id, cursor, PAGE + 1)
        else:  # the one contact the search found, or none
            docs = [d async for d in self.s.store.contacts.find(query)]
            if assignees is not None:  # the search's one contact, if in scope
                hidden = await hidden_contacts(self.s.store, org_id, [d["_id"] for d in docs], assignees)
                docs = [d for d in docs if d["_id"] not in hidden]
        page, more = docs[:PAGE], len(docs) > PAGE or stopped_at is not None
        cursor_next = page[-1]["_id"] if len(docs) > PAGE else stopped_at
        labels = await self.d.contact_labels(org_id, [d["_id"] for d in page])
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
        contact, grant = await load_scoped_contact(self.d, request, request.match_info["id"])
        return await self._detail(request, contact, grant=grant)

    async def _detail(self, request: web.Request, contact: Contact, *, grant: Doc | None,
                      generated_pin: str | None = None) -> web.Response:
        ctx = request[STAFF]
        zone = ctx.org.zone
        doc = await self.s.store.contacts.find_one({"_id": contact.id, "org_id": ctx.org.id})
        assert doc is not None
        info = await self.s.contacts.reveal(contact)
        thread = await self.s.store.threads.find_one({"org_id": ctx.org.id, "contact_id": contact.id},
                                                     projection={"_id": 1, "secure": 1, "status": 1})
        await self.s.audit.append(ctx.org.id, "contact.viewed", ctx.actor, ip=self.d.ip(request), contact_id=contact.id,
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
        contact, _ = await load_scoped_contact(self.d, request, request.match_info["id"])
        form = await form_fields(request)
        await self.consent.change(contact, channel=form.get("channel", ""), state=form.get("state", ""),
                                  reason=form.get("reason", ""), note=form.get("note", ""), actor=ctx.actor,
                                  ip=self.d.ip(request))
        return redirect(f"/staff/contacts/{contact.id}#consent-h")

    @policy(*ANY_STAFF)
    async def pin(self, request: web.Request) -> web.Response:
        contact, grant = await load_scoped_contact(self.d, request, request.match_info["id"])
        generated = await pin_action(self.d, request, contact, await form_fields(request))
        if generated:
            return await self._detail(request, await self.s.contacts.get(contact.org_id, contact.id),
                                      grant=grant, generated_pin=generated)
        return redirect(f"/staff/contacts/{contact.id}")

    @policy("admin")
    async def erase(self, request: web.Request) -> web.Response:
        """Erase the contact for good (crypto-shredding, GDPR Art. 17): type ERASE to confirm."""
        ctx = request[STAFF]
        contact, _ = await load_scoped_contact(self.d, request, request.match_info["id"])
        form = await form_fields(request)
        if form.get("confirm", "").strip() != ERASE_WORD:
            raise ValidationError("confirm", f"type {ERASE_WORD} to erase this contact; nothing was erased")
        try:
            erased = await self.s.contacts.erase(ctx.org.id, contact.id)
        except LegalHold:
            await self.s.audit.append(ctx.org.id, "contact.erase_refused", ctx.actor, outcome="denied",
                                      ip=self.d.ip(request), contact_id=contact.id, detail={"reason": "legal_hold"})
            raise ValidationError("confirm", "blocked: this contact is under a legal hold; release the hold "
                                             "first. Nothing was erased", code="legal_hold") from None
        if erased:
            await self.s.audit.append(ctx.org.id, "contact.erased", ctx.actor, ip=self.d.ip(request),
                                      contact_id=contact.id)
        return redirect("/staff/contacts")

    @policy("admin")
    async def export(self, request: web.Request) -> web.Response:
        """Everything stored about the contact, opened, as one JSON file (right of access, GDPR
        Art. 15). A POST: a link or prefetch cannot start it, and the CSRF token is checked."""
        ctx = request[STAFF]
        contact, _ = await load_scoped_contact(self.d, request, request.match_info["id"])
        data = await export_contact(self.s, ctx.org.id, contact.id)
        await self.s.audit.append(ctx.org.id, "contact.exported", ctx.actor, ip=self.d.ip(request),
                                  contact_id=contact.id)
        return web.json_response(data, headers={
            "Content-Disposition": f'attachment; filename="contact-{contact.id}.json"'})

    @policy("admin")
    async def hold(self, request: web.Request) -> web.Response:
        """Place or release a legal hold: while held, the contact cannot be erased (GDPR Art. 17(3))."""
        ctx = request[STAFF]
        contact, _ = await load_scoped_contact(self.d, request, request.match_info["id"])
        action = (await form_fields(request)).get("action", "")
        if action not in ("place", "release"):
            raise ValidationError("action", "must be place or release")
        if await self.s.contacts.set_legal_hold(ctx.org.id, contact.id, action == "place", ctx.member.id):
            await self.s.audit.append(ctx.org.id, f"contact.legal_hold_{'placed' if action == 'place' else 'released'}",
                                      ctx.actor, ip=self.d.ip(request), contact_id=contact.id)
        return redirect(f"/staff/contacts/{contact.id}")
