"""The staff inbox (/staff/): threads newest first, neutral previews, filters, search, cursor paging.

Lists never show message content, secure or not: a row says who, whether the thread is secure,
its status, assignee, unread count and a neutral preview ("New reply", "Message sent"), and when the
thread's last send failed, why, in plain words (gateway/messaging/delivery.py; staff dismiss the mark from the
thread page, POST /threads/<id>/delivery-problem/dismiss, here). Under the
org policy agent_scope "assigned", an agent's inbox (search included) lists only the threads
assigned to them or to nobody (gateway/security/access.py).

Search: a phone number (E.164) or an email address is matched exactly through the contact's blind
index, across all threads. Names are sealed, so a name is matched by opening the names of the
threads being listed, at most NAME_SCAN threads per page (newest first); the page says so and
offers "search further" with the cursor where the scan stopped.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.errors import NotFound, ValidationError
from gateway.ids import is_id
from gateway.messaging.contacts import Contacts
from gateway.messaging.conversations import NEUTRAL_PREVIEW, AssigneeFilter, Conversations
from gateway.messaging.delivery import Delivery, problem_of
from gateway.messaging.phone import normalize_e164
from gateway.security.access import BreakGlass, in_scope, thread_assignees
from gateway.storage.store import Doc
from gateway.tenancy.staff import Staff
from portal.render import local_time
from portal.staff.common import STAFF, Shell, redirect
from portal.staff.policy import ANY_STAFF, policy

PAGE = 50
NAME_SCAN = 500
VIEWS = {"all": "All", "mine": "Assigned to me", "unassigned": "Unassigned"}
KINDS = {"all": "Secure and standard", "secure": "Secure", "standard": "Standard"}
STATUSES = {"all": "Open and closed", "open": "Open", "closed": "Closed"}


def encode_cursor(thread: Doc) -> str:
    at: datetime = thread["last_activity_at"]
    return f"{int(at.timestamp() * 1000)}.{thread['_id']}"


def decode_cursor(value: str | None) -> tuple[datetime, str] | None:
    if not value:
        return None
    ms, _, tid = value.partition(".")
    if not ms.isdigit() or len(ms) > 15 or not is_id(tid):
        raise ValidationError("cursor", "is not a cursor from a previous page")
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC), tid


def _choice(value: str | None, options: dict[str, str]) -> str:
    return value if value in options else "all"


def neutral(preview: str | None) -> str:
    """Only the known neutral previews are ever shown in a list (never content, secure or not)."""
    return preview if preview is not None and preview in NEUTRAL_PREVIEW.values() else "Activity"


def fmt_time(at: datetime | None, zone: tzinfo) -> str:
    """A time on a staff page, in the org's time zone (pass ctx.org.zone) with its abbreviation."""
    return local_time(at, zone)


class Inbox:
    def __init__(self, shell: Shell, *, conversations: Conversations, contacts: Contacts, break_glass: BreakGlass,
                 delivery: Delivery, staff: Staff) -> None:
        self.d = shell
        self.conversations = conversations
        self.contacts = contacts
        self.break_glass = break_glass
        self.delivery = delivery
        self.staff = staff

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.inbox)
        # The inbox marks threads whose last send failed; staff dismiss the mark from the thread page.
        app.router.add_post("/threads/{id}/delivery-problem/dismiss", self.dismiss_delivery_problem)

    @policy(*ANY_STAFF)
    async def dismiss_delivery_problem(self, request: web.Request) -> web.Response:
        """Staff saw why the last send failed: clear the thread's mark (audited; CSRF by the guard)."""
        ctx = request[STAFF]
        tid = request.match_info["id"]
        try:
            thread = await self.conversations.get_thread(ctx.org.id, tid)
        except NotFound:
            raise await self.d.deny(request, "thread", tid) from None
        # As every thread route: another member's thread under agent_scope "assigned" opens only
        # under a break-glass grant (gateway/security/access.py); otherwise an audited denial.
        if not in_scope(ctx.org.policy, ctx.member, thread) and \
                await self.break_glass.active(ctx.org.id, ctx.member.id, thread["_id"]) is None:
            raise await self.d.deny(request, "thread", tid)
        await self.delivery.dismiss(ctx.org.id, thread["_id"], ctx.actor, ip=self.d.ip(request))
        return redirect(f"/staff/threads/{thread['_id']}")

    async def _search_contacts(self, org_id: str, q: str) -> list[str] | None:
        """Contact ids for an exact phone/email search; None when q is a name (or empty)."""
        if "@" in q:
            c = await self.contacts.by_email(org_id, q)
            return [c.id] if c else []
        if q.startswith("+") or sum(ch.isdigit() for ch in q) >= 7:
            try:
                phone = normalize_e164(q if q.startswith("+") else "+" + q, field="q")
            except ValidationError:
                return []
            c = await self.contacts.by_phone(org_id, phone)
            return [c.id] if c else []
        return None

    @policy(*ANY_STAFF)
    async def inbox(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        org_id = ctx.org.id
        view = _choice(request.query.get("view"), VIEWS)
        kind = _choice(request.query.get("kind"), KINDS)
        status = _choice(request.query.get("status"), STATUSES)
        unread = request.query.get("unread") == "1"
        q = request.query.get("q", "").strip()[:100]
        before = decode_cursor(request.query.get("cursor"))
        filters: dict[str, Any] = {
            "assignee": self._assignee(view, thread_assignees(ctx.org.policy, ctx.member), ctx.member.id),
            "secure": {"all": None, "secure": True, "standard": False}[kind],
            "status": None if status == "all" else status,
            "unread": unread,
        }
        # The staff list (for assignee names) is read while the rows are: one round trip less to wait for.
        (rows, labels, more, before, name_search), members = await asyncio.gather(
            self._rows(org_id, q, before, filters), self.staff.directory(org_id))
        staff = {m.id: m.email for m in members}
        next_cursor = None
        if more:
            next_cursor = encode_cursor(rows[-1]) if not name_search else (
                f"{int(before[0].timestamp() * 1000)}.{before[1]}" if before else None)
        base = {"view": view, "kind": kind, "status": status, "q": q, **({"unread": "1"} if unread else {})}
        return await self.d.page(
            request, "staff/inbox.html",
            rows=[self._row(t, labels.get(t["contact_id"], {}), staff, ctx.org.zone) for t in rows],
            view=view, kind=kind, status_filter=status, unread=unread, q=q, views=VIEWS, kinds=KINDS, statuses=STATUSES,
            name_search=name_search, name_scan=NAME_SCAN,
            next_url=("/staff/?" + urlencode({**base, "cursor": next_cursor})) if next_cursor else None,
            first_url="/staff/?" + urlencode(base) if request.query.get("cursor") else None,
        )

    @staticmethod
    def _assignee(view: str, scope: tuple[str | None, ...] | None, me: str) -> AssigneeFilter:
        """The list_threads assignee filter for the view, within the member's scope (None: all threads)."""
        if view == "mine":
            return me
        if view == "unassigned":
            return None
        return True if scope is None else scope

    async def _rows(self, org_id: str, q: str, before: tuple[datetime, str] | None, filters: dict[str, Any]
                    ) -> tuple[list[Doc], dict[str, dict[str, Any]], bool, tuple[datetime, str] | None, bool]:
        """(rows, their contact labels, more after them, the name scan's position, name search?)."""
        contact_ids = await self._search_contacts(org_id, q) if q else None
        name_search = bool(q) and contact_ids is None
        if contact_ids == []:
            return [], {}, False, before, name_search
        if name_search:
            return (*await self._name_scan(org_id, q.casefold(), before, filters), True)
        found = await self.conversations.list_threads(org_id, limit=PAGE + 1, before=before,
                                                        contact_ids=contact_ids, **filters)
        rows = found[:PAGE]
        return rows, await self.contacts.row_labels(org_id, [t["contact_id"] for t in rows]), len(found) > PAGE, \
            before, False

    async def _name_scan(
        self, org_id: str, needle: str, before: tuple[datetime, str] | None, filters: dict[str, Any]
    ) -> tuple[list[Doc], dict[str, dict[str, Any]], bool, tuple[datetime, str] | None]:
        """Open names of at most NAME_SCAN threads, newest first, keeping those that match."""
        rows: list[Doc] = []
        labels: dict[str, dict[str, Any]] = {}
        scanned = 0
        while len(rows) < PAGE and scanned < NAME_SCAN:
            batch = await self.conversations.list_threads(org_id, limit=50, before=before, **filters)
            if not batch:
                return rows, labels, False, before
            found = await self.contacts.row_labels(org_id, [t["contact_id"] for t in batch])
            for t in batch:
                scanned += 1
                before = (t["last_activity_at"], t["_id"])
                label = found.get(t["contact_id"], {})
                if needle in (label.get("name") or "").casefold():
                    rows.append(t)
                    labels[t["contact_id"]] = label
                    if len(rows) >= PAGE:
                        break
            if len(batch) < 50 and len(rows) < PAGE:
                return rows, labels, False, before
        return rows, labels, True, before

    @staticmethod
    def _row(t: Doc, label: dict[str, Any], staff: dict[str, str], zone: tzinfo) -> dict[str, Any]:
        return {
            "id": t["_id"], "name": label.get("name"),
            "hint": label.get("phone_hint") or label.get("email_hint") or "",
            "secure": bool(t.get("secure")), "status": t.get("status", "open"),
            "assignee": staff.get(t.get("assignee") or "", None), "unread": int(t.get("unread_staff", 0)),
            "preview": neutral(t.get("preview")), "attention": t.get("attention"),
            "delivery_problem": (problem_of(t) or {}).get("reason"),
            "at": fmt_time(t.get("last_activity_at"), zone),
            "at_iso": t["last_activity_at"].isoformat(timespec="seconds") if t.get("last_activity_at") else "",
        }
