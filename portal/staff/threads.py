"""One thread (/staff/threads/<id>): the conversation, per-message timeline, and staff actions.

The page opens every message body (rendered escaped by jinja2), resets the thread's unread
counter and records one `thread.read` audit entry. The timeline of a message merges its delivery
history (queued → accepted → sent → delivered / failed with the provider's error code) with the
audit entries that carry its id (link opened, PIN failed, link locked, viewed, ...), and the
client's next reply.

Actions (POST, CSRF-checked by the policy middleware): reply (POST to the thread's own URL; a
secure thread stays secure), assign, close/reopen, unlock / revoke / re-issue a link, set or
clear the contact's PIN. Every id is looked up within the org; another org's id is a 404 and an
audited denial.

Under the org policy agent_scope "assigned", a thread assigned to another staff member is, for an
agent, an audited 403 on every one of these routes: a page that offers break-glass emergency
access (a reason, then the thread for the org's break_glass_minutes; gateway/security/access.py). Under a
grant every route opens but assign: the agent can't assign the thread (to themselves or to nobody it
would stay open to them after the grant ends); an admin must reassign it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from aiohttp import web

from gateway.errors import NotFound, OptedOut, PinRequired, SensitiveContent, ValidationError
from gateway.ids import is_id
from gateway.messaging.attachments import Attachments
from gateway.messaging.contacts import Contact, Contacts
from gateway.messaging.conversations import Conversations
from gateway.messaging.delivery import problem_of, reason_code, reason_text
from gateway.ports import Clock
from gateway.rules.pin import PinDecision
from gateway.rules.reply_route import reply_route
from gateway.rules.secure import decide_outbound, describe
from gateway.security.access import REASON_MAX, BreakGlass, in_scope
from gateway.security.audit import AuditLog
from gateway.security.links import Links
from gateway.storage.store import Doc
from gateway.tenancy.staff import Staff
from portal import attachments
from portal.staff.common import STAFF, Shell, form_fields, redirect
from portal.staff.contacts import ContactAccess
from portal.staff.inbox import fmt_time
from portal.staff.policy import ANY_STAFF, policy

MESSAGES = 50  # the newest page; "Earlier messages" pages back (?before=<message id>)
LINKS = 20
AUDIT_LIMIT = 2000

STATUS_LABELS = {
    "queued": "Queued", "accepted": "Accepted by the provider", "scheduled": "Scheduled", "sending": "Sending",
    "sent": "Sent", "delivered": "Delivered", "undelivered": "Not delivered", "failed": "Failed",
    "read": "Read", "received": "Received",
}
AUDIT_LABELS = {
    "link.issued": "New link issued", "link.undelivered": "New link not delivered",
    "link.reissued": "Link re-issued by staff", "link.opened": "Link opened",
    "link.pin_failed": "Wrong PIN entered", "link.locked": "Link locked (too many wrong PINs)",
    "link.unlocked": "Link unlocked by staff", "link.revoked": "Link revoked",
    "link.renewal_requested": "Client asked for a new link", "message.viewed": "Viewed by the client",
    "message.bounced": "Bounced", "attachment.viewed": "Attachment downloaded",
    "link.open_refused": "Link refused: a PIN is required and none is set",
}
THREAD_LABELS = {
    "thread.assigned": "Assigned", "thread.closed": "Closed", "thread.reopened": "Reopened",
    "thread.viewed": "Client opened the conversation", "contact.pin_set": "PIN set",
    "contact.pin_cleared": "PIN cleared",
    "consent.opt_out": "Opted out", "consent.opt_in": "Opted in",
    "thread.delivery_problem_dismissed": "Delivery problem dismissed",
    # Client-side link events that name no message (a renewal names the link it came from).
    "link.open_refused": "Link refused: a PIN is required and none is set",
    "link.renewal_refused": "New link refused",
}
# Why a client's "send me a new link" was refused (portal/client.py), in plain words.
RENEWAL_REFUSALS = {"revoked": "the link was revoked or replaced", "locked": "locked by wrong PINs",
                    "daily_limit": "the day's new links are used up"}
# The break-glass grant this request opens its thread under (set by ThreadPages._thread), if any.
EMERGENCY = web.RequestKey("break_glass_grant", dict)
PIN_REQUIRED = "This organization requires a PIN for secure messages; set one for this contact first."
SENSITIVE_LABELS = {"ssn": "a Social Security number", "card": "a card number", "date_of_birth": "a date of birth",
                    "record_number": "a record number", "term": "a term your organization marks as sensitive"}


def pin_sentence(pin: PinDecision, thread: Doc) -> str:
    """Which PIN the thread's next link asks for, and where it comes from, in plain words."""
    if pin.source == "thread":
        by = {"api": "by API", "staff": "by staff", "system": "by the system"}.get(thread.get("pin_set_by") or "api",
                                                                                 "by API")
        if thread.get("pin_message_id"):
            return f"Next link asks for the PIN given with message {thread['pin_message_id']} ({by})."
        if thread.get("pin_set_by") == "staff":
            return "Next link asks for the PIN staff set for this conversation."
        return "Next link asks for the PIN given with an earlier message (by API)."
    if pin.source == "contact":
        return "Next link asks for the contact's PIN."
    if pin.required:
        return "PIN required by policy but none set: secure messages can't be sent until you set one."
    return "Next link asks for no PIN."


def link_state(link: Doc, now: datetime, thread_locked: bool = False) -> str:
    """`thread_locked`: the thread's PIN guard is locked for the contact, which locks every one of
    its links, also those issued after the lock (gateway/security/links.py)."""
    if link.get("revoked_at"):
        return "revoked"
    if link.get("locked_at") or thread_locked:
        return "locked"
    if now >= link["expires_at"]:
        return "expired"
    return "active"


class ThreadPages:
    def __init__(self, shell: Shell, access: ContactAccess, *, conversations: Conversations, contacts: Contacts,
                 links: Links, break_glass: BreakGlass, attachments: Attachments, audit: AuditLog, staff: Staff,
                 clock: Clock, on_queued: Callable[[], None]) -> None:
        self.d = shell
        self.access = access
        self.conversations = conversations
        self.contacts = contacts
        self.links = links
        self.grants = break_glass
        self.files = attachments
        self.audit = audit
        self.staff = staff
        self.clock = clock
        self.on_queued = on_queued

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/threads/{id}", self.view)
        r.add_post("/threads/{id}", self.reply)
        r.add_post("/threads/{id}/assign", self.assign)
        r.add_post("/threads/{id}/status", self.status)
        r.add_post("/threads/{id}/links/{link_id}/{action}", self.link_action)
        r.add_post("/threads/{id}/pin", self.pin)
        r.add_get("/threads/{id}/attachments/{attachment_id}", self.attachment)
        r.add_post("/threads/{id}/break-glass", self.break_glass)

    async def _lookup(self, request: web.Request) -> Doc:
        """The org's thread named in the URL; any other id is an audited 404."""
        ctx = request[STAFF]
        tid = request.match_info["id"]
        try:
            return await self.conversations.get_thread(ctx.org.id, tid)
        except NotFound:
            raise await self.d.deny(request, "thread", tid) from None

    async def _thread(self, request: web.Request) -> Doc:
        """The thread named in the URL, if the member may open it (every thread route asks here).

        A thread outside the member's scope opens only under an unexpired break-glass grant,
        looked up on every request, so a grant's end closes the thread to views and actions alike.
        """
        ctx = request[STAFF]
        thread = await self._lookup(request)
        if in_scope(ctx.org.policy, ctx.member, thread):
            return thread
        grant = await self.grants.active(ctx.org.id, ctx.member.id, thread["_id"])
        if grant is None:
            raise await self._refuse(request, thread)
        request[EMERGENCY] = grant
        return thread

    async def _refuse(self, request: web.Request, thread: Doc) -> web.HTTPException:
        """Audit the out-of-scope request; return the 403 (the break-glass page) to raise."""
        ctx = request[STAFF]
        await self.audit.append(ctx.org.id, "authz.deny", ctx.actor, outcome="denied", ip=self.d.ip(request),
                                  thread_id=thread["_id"],
                                  detail={"object": "thread", "reason": "scope", "route": request.path[:200]})
        page = await self._break_glass_page(request, thread, status=403)
        # Raised, not returned, so every handler is refused by the one lookup it already makes.
        return web.HTTPForbidden(text=page.text, content_type="text/html")

    async def _refuse_assign(self, request: web.Request, thread: Doc) -> web.HTTPException:
        """Audit an assignment attempted under a break-glass grant; return the 403 to raise."""
        ctx = request[STAFF]
        await self.audit.append(ctx.org.id, "authz.deny", ctx.actor, outcome="denied", ip=self.d.ip(request),
                                  thread_id=thread["_id"], detail={"object": "thread", "reason": "breakglass_assign",
                                                                   "route": request.path[:200]})
        page = await self.d.page(request, "staff/break_glass_assign.html", status=403, thread_id=thread["_id"])
        return web.HTTPForbidden(text=page.text, content_type="text/html")

    async def _break_glass_page(self, request: web.Request, thread: Doc, *, status: int, reason: str = "",
                                error: str | None = None) -> web.Response:
        """"Assigned to someone else", with the break-glass form. Nothing of the thread but its id."""
        return await self.d.page(request, "staff/break_glass.html", status=status, thread_id=thread["_id"],
                                 minutes=request[STAFF].org.policy.break_glass_minutes, reason=reason,
                                 reason_max=REASON_MAX, error=error)

    # -- break-glass ----------------------------------------------------------------------------
    @policy(*ANY_STAFF)
    async def break_glass(self, request: web.Request) -> web.Response:
        """Open a thread outside the member's scope for the org's break_glass_minutes (HIPAA 164.312(a)(2)(ii))."""
        ctx = request[STAFF]
        thread = await self._lookup(request)
        url = f"/staff/threads/{thread['_id']}"
        if in_scope(ctx.org.policy, ctx.member, thread) or \
                await self.grants.active(ctx.org.id, ctx.member.id, thread["_id"]):
            return redirect(url)  # open to them already: no emergency, no grant
        reason = (await form_fields(request)).get("reason", "")
        try:
            await self.grants.grant(ctx.org, ctx.actor, thread, reason, ip=self.d.ip(request))
        except ValidationError as err:
            return await self._break_glass_page(request, thread, status=422, reason=reason[:REASON_MAX * 2],
                                                error=err.message)
        return redirect(url)

    async def _contact(self, request: web.Request, thread: Doc) -> Contact:
        return await self.contacts.get(request[STAFF].org.id, thread["contact_id"])

    # -- view -------------------------------------------------------------------------------
    @policy(*ANY_STAFF)
    async def view(self, request: web.Request) -> web.Response:
        return await self._render(request, await self._thread(request))

    async def _render(self, request: web.Request, thread: Doc, *, status: int = 200, draft: str = "",
                      warning: list[str] | None = None, generated_pin: str | None = None,
                      draft_secure: bool | None = None, error: str | None = None) -> web.Response:
        ctx = request[STAFF]
        org = ctx.org
        grant = request.get(EMERGENCY)
        before = request.query.get("before") if request.method == "GET" else None
        before = before if before and is_id(before) else None
        # The reads that need only the thread go out together (each is a round trip to the
        # database; the page waits for the slowest instead of their sum).
        (contact, info), docs, links, staff, activity_entries, pin_locked = await asyncio.gather(
            self.contacts.get_revealed(org.id, thread["contact_id"], ("name", "phone", "email")),
            self.conversations.latest_messages(org.id, thread["_id"], limit=MESSAGES + 1, before=before),
            self.links.newest_in_thread(org.id, thread["_id"], LINKS),
            self.staff.directory(org.id),
            # Thread-level activity only: not the thread's message events and staff reads, whose
            # number grows with every message and every view.
            self.audit.thread_actions(org.id, thread["_id"], list(THREAD_LABELS), AUDIT_LIMIT),
            self.links.thread_locked_for(org.id, thread["_id"], thread["contact_id"]),
        )
        earlier = docs[1]["_id"] if len(docs) > MESSAGES else None
        docs = docs[-MESSAGES:]
        emails = {m.id: m.email for m in staff}
        ids = [d["_id"] for d in docs]
        # Then those that need the messages; the view is audited before the page goes out.
        message_entries, files, _ = await asyncio.gather(
            self.audit.for_messages(org.id, ids, AUDIT_LIMIT),
            attachments.for_messages(self.files, org.id, attachments.may_have_files(docs)),
            self.conversations.mark_read(org.id, thread["_id"], ctx.actor, self.d.ip(request), count=len(docs),
                                           unread=int(thread.get("unread_staff") or 0),
                                           grant_id=grant["_id"] if grant else None),
        )
        timeline, activity = self._timeline(docs, [*message_entries, *activity_entries], emails, org.zone)
        now = self.clock.now()
        name = info.get("name") or contact.phone_hint or contact.email_hint or "Contact"
        messages = [{
            "id": d["_id"], "text": d["text"], "inbound": d["direction"] == "inbound",
            "who": name if d["direction"] == "inbound" else self._author(d, emails),
            "channel": d["channel"], "secure": bool(d.get("secure")), "status": d.get("status"),
            "secure_source": describe(bool(d.get("secure")), d.get("secure_source")),
            "error_code": d.get("error_code"), "flags": d.get("flags", []), "at": fmt_time(d["created_at"], org.zone),
            "at_iso": d["created_at"].isoformat(timespec="seconds"), "events": timeline.get(d["_id"], []),
            "attachments": files.get(d["_id"], []),
        } for d in docs]
        link_rows = [{
            "id": lk["_id"], "state": link_state(lk, now, pin_locked and lk.get("contact_id") == thread["contact_id"]),
            "created": fmt_time(lk["created_at"], org.zone),
            "expires": fmt_time(lk["expires_at"], org.zone), "opened": fmt_time(lk.get("opened_at"), org.zone),
            "failures": int(lk.get("failures", 0)), "channel": lk.get("channel", "sms"),
            "pin": bool(lk.get("pin_hash")),
            # A link whose notice never reached the client is not shown as sent (gateway/messaging/delivery.py).
            "undelivered": reason_text(lk["undelivered"].get("reason_code")) if lk.get("undelivered") else None,
        } for lk in links]
        # What the reply box starts at, by the same rule the send will apply (gateway/rules/secure.py).
        secure_now = decide_outbound(org.policy, message=draft_secure, thread_secure=bool(thread.get("secure")))
        pin = self.conversations.pin_in_force(org, thread, contact)
        return await self.d.page(
            request, "staff/thread.html", status=status, thread=thread, contact=contact, info=info, name=name,
            messages=messages, links=link_rows, staff=[m for m in staff if not m.disabled],
            assignee=emails.get(thread.get("assignee") or ""), activity=activity, draft=draft,
            warning=[SENSITIVE_LABELS.get(k, k) for k in warning] if warning else None,
            secure_checked=secure_now.secure,
            secure_forced=org.policy.secure_forced, generated_pin=generated_pin, error=error,
            pin_sentence=pin_sentence(pin, thread), pin_clearable=pin.source != "none",
            last_id=docs[-1]["_id"] if docs else "",
            earlier_url=f"/staff/threads/{thread['_id']}?before={earlier}" if earlier else None,
            emergency_until=fmt_time(grant["expires_at"], org.zone) if grant else None,
            delivery_problem=problem_of(thread),
        )

    @staticmethod
    def _author(d: Doc, emails: dict[str, str]) -> str:
        author = d.get("author") or {}
        if author.get("kind") == "staff":
            return emails.get(author.get("id") or "", "Staff")
        return {"api": "Integration (API)", "system": "System"}.get(author.get("kind", ""), "Staff")

    def _timeline(self, docs: list[Doc], audit_entries: list[Doc], emails: dict[str, str], zone: tzinfo
                  ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
        """Per-message events (delivery history + audit entries with that message id) and thread activity."""
        ids = [d["_id"] for d in docs]
        entries = {e["seq"]: e for e in audit_entries}
        by_message: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        activity: list[dict[str, Any]] = []
        for d in docs:
            for h in d.get("status_history", []):
                label = STATUS_LABELS.get(h["status"], h["status"])
                if h.get("error_code"):
                    label += f" (error {h['error_code']})"
                    if h["status"] in ("failed", "undelivered"):  # and what it means (gateway/messaging/delivery.py)
                        label += f" — {reason_text(reason_code(h['error_code']))}"
                by_message[d["_id"]].append({"at": h["at"], "label": label,
                                             "bad": h["status"] in ("failed", "undelivered")})
        for e in sorted(entries.values(), key=lambda x: x["seq"]):
            mid = e.get("message_id")
            action = e["action"]
            if mid in by_message and action in AUDIT_LABELS:
                label = AUDIT_LABELS[action]
                if action == "link.pin_failed" and e.get("detail", {}).get("failures"):
                    label += f" ({e['detail']['failures']})"
                if action == "link.undelivered":
                    label += f" ({reason_text(e.get('detail', {}).get('reason'))})"
                by_message[mid].append({"at": e["at"], "label": label, "bad": action in (
                    "link.pin_failed", "link.locked", "message.bounced", "link.undelivered", "link.open_refused")})
            elif action in THREAD_LABELS and not mid:
                who = e["actor"].get("kind")
                if who == "staff":
                    who = emails.get(e["actor"].get("id") or "", "staff")
                label = THREAD_LABELS[action]
                if action == "link.renewal_refused":
                    reason = e.get("detail", {}).get("reason")
                    label += f" ({RENEWAL_REFUSALS.get(reason, 'for a policy reason')})"
                if action == "thread.assigned":
                    label = "Assigned to " + emails.get(e.get("staff_id") or "", "nobody")
                activity.append({"at": fmt_time(e["at"], zone), "label": label, "who": who})
        # "Replied": the client's first message after each outbound message.
        for i, d in enumerate(docs):
            if d["direction"] != "outbound":
                continue
            nxt = next((x for x in docs[i + 1:] if x["direction"] == "inbound"), None)
            if nxt is not None:
                by_message[d["_id"]].append({"at": nxt["created_at"], "label": "Client replied", "bad": False})
        out = {}
        for mid, events in by_message.items():
            events.sort(key=lambda ev: ev["at"])
            out[mid] = [{**ev, "at": fmt_time(ev["at"], zone)} for ev in events]
        activity.reverse()
        return out, activity[:50]

    # -- attachments --------------------------------------------------------------------------
    @policy(*ANY_STAFF)
    async def attachment(self, request: web.Request) -> web.Response:
        """A file the client attached to an email reply, as a download (this org's, this thread's)."""
        ctx = request[STAFF]
        thread = await self._thread(request)
        aid = request.match_info["attachment_id"]
        doc = await self.files.find(ctx.org.id, thread["_id"], aid)
        if doc is None:
            raise await self.d.deny(request, "attachment", aid)
        response = await attachments.download(self.files, doc)
        await self.audit.append(ctx.org.id, "attachment.viewed", ctx.actor, ip=self.d.ip(request),
                                  thread_id=thread["_id"], message_id=doc["message_id"],
                                  contact_id=thread["contact_id"], detail={"attachment_id": doc["_id"]})
        return response

    # -- reply ------------------------------------------------------------------------------
    @policy(*ANY_STAFF)
    async def reply(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        thread = await self._thread(request)
        form = await form_fields(request)
        body = form.get("body", "")
        # The checkbox is the sender's explicit choice; the rule (gateway/rules/secure.py) decides
        # whether a secure thread or the org's always-secure policy overrides it.
        chosen = form.get("secure") == "1"
        confirmed = form.get("confirm_sensitive") == "1"
        try:
            sent = await self.conversations.reply_staff(ctx.org, thread["_id"], body=body, actor=ctx.actor,
                                                          secure=chosen, allow_sensitive=confirmed)
        except SensitiveContent as err:
            return await self._render(request, thread, status=422, draft=body, warning=err.kinds, draft_secure=False)
        except PinRequired:
            return await self._render(request, thread, status=422, draft=body, draft_secure=chosen,
                                      error=PIN_REQUIRED)
        except OptedOut as err:
            channel = "SMS" if err.args and err.args[0] == "sms" else "email"
            return await self._render(request, thread, status=422, draft=body, draft_secure=chosen,
                                      error=f"This contact has opted out of {channel}.")
        self.on_queued()
        return redirect(f"/staff/threads/{thread['_id']}#m-{sent.message['_id']}")

    # -- thread actions -----------------------------------------------------------------------
    @policy(*ANY_STAFF)
    async def assign(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        thread = await self._thread(request)
        if request.get(EMERGENCY) is not None:
            # Under a grant the agent may not touch the assignment: to themselves or to nobody it
            # would stay in their scope after the grant ends, and any change moves a thread they
            # are not entitled to. An admin reassigns it (admins never need a grant).
            raise await self._refuse_assign(request, thread)
        value = (await form_fields(request)).get("assignee", "")
        assignee: str | None
        if value == "me":
            assignee = ctx.member.id
        elif value in ("", "none"):
            assignee = None
        else:
            try:
                if not is_id(value) or (await self.staff.get(ctx.org.id, value)).disabled:
                    raise NotFound("staff")
            except NotFound:
                raise await self.d.deny(request, "staff", value) from None
            assignee = value
        updated = await self.conversations.assign(ctx.org.id, thread["_id"], assignee, ctx.actor)
        if not in_scope(ctx.org.policy, ctx.member, updated):
            return redirect("/staff/")  # handed to a colleague: no longer theirs to open
        return redirect(f"/staff/threads/{thread['_id']}")

    @policy(*ANY_STAFF)
    async def status(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        thread = await self._thread(request)
        value = (await form_fields(request)).get("status", "")
        await self.conversations.set_status(ctx.org.id, thread["_id"], value, ctx.actor)
        return redirect(f"/staff/threads/{thread['_id']}")

    @policy(*ANY_STAFF)
    async def link_action(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        thread = await self._thread(request)
        link_id, action = request.match_info["link_id"], request.match_info["action"]
        if action not in ("unlock", "revoke", "reissue"):
            raise web.HTTPNotFound()
        link = await self.links.in_thread(ctx.org.id, thread["_id"], link_id) if is_id(link_id) else None
        if link is None:
            raise await self.d.deny(request, "link", link_id)
        if action == "unlock":
            await self.links.unlock(ctx.org.id, link_id, ctx.actor)
        elif action == "revoke":
            await self.links.revoke(ctx.org.id, link_id, ctx.actor)
        else:
            await self._reissue(request, thread, link)
        return redirect(f"/staff/threads/{thread['_id']}#links")

    async def _reissue(self, request: web.Request, thread: Doc, link: Doc) -> None:
        """Revoke the link (if still usable) and send the contact a fresh one, link-only."""
        ctx = request[STAFF]
        contact = await self._contact(request, thread)
        # Asked before the old link is revoked: a refused re-issue leaves the client what they had.
        channel = reply_route(contact, thread_channel=thread.get("channel")).channel
        permission = await self.conversations.notice_permission(ctx.org, contact, thread["_id"], channel)
        if permission.reason == "pin_required":
            raise ValidationError("link", PIN_REQUIRED + " No new link was sent", code="pin_required")
        if self.links.usable(link):
            await self.links.revoke(ctx.org.id, link["_id"], ctx.actor)
        new_id = await self.conversations.send_link_notice(
            ctx.org, contact, thread["_id"], channel=channel, template="link_renewal",
            message_id=link.get("message_id"))
        if new_id is None:
            raise ValidationError("link", f"the contact has opted out of {channel}; no new link was sent")
        await self.audit.append(ctx.org.id, "link.reissued", ctx.actor, ip=self.d.ip(request),
                                  thread_id=thread["_id"], link_id=new_id, message_id=link.get("message_id"),
                                  contact_id=contact.id, detail={"replaces": link["_id"]})
        self.on_queued()

    @policy(*ANY_STAFF)
    async def pin(self, request: web.Request) -> web.Response:
        thread = await self._thread(request)
        contact = await self._contact(request, thread)
        generated = await self.access.pin_action(request, contact, await form_fields(request), thread=thread)
        if generated:
            return await self._render(request, thread, generated_pin=generated)
        return redirect(f"/staff/threads/{thread['_id']}#pin")

