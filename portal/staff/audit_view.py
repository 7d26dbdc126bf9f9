"""The audit log (admin): filter by actor, action, thread and time; export as JSON lines.

Entries carry ids, never content (gateway.security.audit), so the view and the export show them as they
are stored, MAC and chain links included, so an exported file can be checked against the chain.
Every export is itself audited.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from bson import ObjectId

from gateway.errors import ValidationError
from gateway.ids import is_id
from gateway.ports import Clock
from gateway.security.audit import AuditLog
from gateway.storage.store import Doc
from gateway.tenancy.staff import Staff
from portal.staff.common import STAFF, Shell
from portal.staff.inbox import fmt_time
from portal.staff.policy import policy

PAGE = 100
ACTOR_KINDS = ("staff", "api", "client", "provider", "system")
_ACTION = re.compile(r"^[a-z_]{1,40}(\.[a-z_]{0,40})?$")
ID_FIELDS = ("thread_id", "message_id", "link_id", "contact_id", "staff_id", "event_id", "job_id")


def _date(value: str, field: str, zone: tzinfo) -> datetime:
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise ValidationError(field, "must be a date such as 2026-01-31") from None
    return day.replace(tzinfo=zone)


def audit_query(org_id: str, params: dict[str, str], zone: tzinfo = UTC) -> dict[str, Any]:
    """The MongoDB filter for the view's fields (actor, action, thread, from, to); the days are
    the org's (`zone`), like the times the page shows."""
    query: dict[str, Any] = {"org_id": org_id}
    actor = params.get("actor", "").strip()
    if actor:
        if is_id(actor):
            query["actor.id"] = actor
        elif actor in ACTOR_KINDS:
            query["actor.kind"] = actor
        else:
            raise ValidationError("actor", "must be a staff id or one of " + ", ".join(ACTOR_KINDS))
    action = params.get("action", "").strip()
    if action:
        if not _ACTION.match(action):
            raise ValidationError("action", "must look like thread.read, or link. for every link action")
        query["action"] = {"$regex": "^" + re.escape(action)} if action.endswith(".") else action
    thread = params.get("thread", "").strip()
    if thread:
        if not is_id(thread):
            raise ValidationError("thread", "must be a thread id")
        query["thread_id"] = thread
    at: dict[str, datetime] = {}
    if params.get("from"):
        at["$gte"] = _date(params["from"], "from", zone)
    if params.get("to"):
        at["$lt"] = _date(params["to"], "to", zone) + timedelta(days=1)
    if at:
        query["at"] = at
    return query


def entry_json(entry: Doc) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if isinstance(value, ObjectId):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in entry.items() if k != "_id"}


class AuditView:
    def __init__(self, shell: Shell, *, audit: AuditLog, staff: Staff, clock: Clock) -> None:
        self.d = shell
        self.staff = staff
        self.audit = audit
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/audit", self.view)
        app.router.add_get("/audit/export", self.export)

    def _params(self, request: web.Request) -> dict[str, str]:
        return {k: request.query.get(k, "")[:40] for k in ("actor", "action", "thread", "from", "to")}

    @policy("admin")
    async def view(self, request: web.Request) -> web.Response:
        ctx = request[STAFF]
        params = self._params(request)
        error = None
        try:
            query = audit_query(ctx.org.id, params, ctx.org.zone)
        except ValidationError as err:
            query, error = {"org_id": ctx.org.id, "_id": None}, f"{err.field}: {err.message}"
        cursor = request.query.get("cursor", "")
        if cursor:
            if not cursor.isdigit() or len(cursor) > 15:
                raise ValidationError("cursor", "is not a cursor from a previous page")
            query["seq"] = {"$lt": int(cursor)}
        docs = await self.audit.newest(query, PAGE + 1)
        page, more = docs[:PAGE], len(docs) > PAGE
        emails = {m.id: m.email for m in await self.staff.directory(ctx.org.id)}
        rows = [{
            "seq": d["seq"], "at": fmt_time(d["at"], ctx.org.zone), "action": d["action"], "outcome": d.get("outcome"),
            "actor": d["actor"].get("kind"), "actor_id": d["actor"].get("id"),
            "actor_label": emails.get(d["actor"].get("id") or "", "") if d["actor"].get("kind") == "staff" else "",
            "ip": d.get("ip"), "ids": {f: d[f] for f in ID_FIELDS if d.get(f)},
            "detail": json.dumps(d.get("detail") or {}, sort_keys=True) if d.get("detail") else "",
        } for d in page]
        filters = {k: v for k, v in params.items() if v}
        return await self.d.page(
            request, "staff/audit.html", status=422 if error else 200, rows=rows, params=params, error=error,
            staff=sorted(emails.items(), key=lambda kv: kv[1]), actor_kinds=ACTOR_KINDS,
            next_url="/staff/audit?" + urlencode({**filters, "cursor": page[-1]["seq"]}) if more else None,
            export_url="/staff/audit/export" + ("?" + urlencode(filters) if filters else ""),
        )

    @policy("admin")
    async def export(self, request: web.Request) -> web.StreamResponse:
        """Stream the matching entries, oldest first, one JSON object per line."""
        ctx = request[STAFF]
        params = self._params(request)
        query = audit_query(ctx.org.id, params, ctx.org.zone)
        await self.audit.append(ctx.org.id, "audit.export", ctx.actor, ip=self.d.ip(request),
                                  detail={k: v for k, v in params.items() if v} or None)
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%SZ")
        response = web.StreamResponse(headers={
            "Content-Type": "application/x-ndjson; charset=utf-8",
            "Content-Disposition": f'attachment; filename="audit-{ctx.org.id}-{stamp}.jsonl"',
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        })
        await response.prepare(request)
        batch: list[str] = []
        async for entry in self.audit.oldest_first(query):
            batch.append(json.dumps(entry_json(entry), sort_keys=True, separators=(",", ":")))
            if len(batch) >= 500:
                await response.write(("\n".join(batch) + "\n").encode())
                batch = []
        if batch:
            await response.write(("\n".join(batch) + "\n").encode())
        await response.write_eof()
        return response
