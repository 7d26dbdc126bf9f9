"""Live updates for the inbox and thread pages over Server-Sent Events (/staff/live).

Fed by a MongoDB change stream on the org's threads (every new message, status change, read or
assignment touches its thread); where change streams are unavailable (a standalone server), the
stream polls threads by last_activity_at instead. Events carry ids and counters, never content:
the page fetches itself again to show what changed. An agent who sees only their own and
unassigned threads (agent_scope "assigned") gets events for those, and for a thread they hold an
unexpired break-glass grant for, not for their colleagues' threads (gateway/security/access.py).

A stream never extends the session's idle timeout (its policy has touch=False): the session is
re-checked at every heartbeat and the stream ends with `event: signed_out` once it is gone. Each
stream also ends after MAX_SECONDS; EventSource reconnects on its own.

A session may hold at most MAX_STREAMS_PER_SESSION streams at once in this process (one per open
tab is plenty): each holds a connection and a change stream, so one signed-in member must not be
able to pin the server's connections or the database's cursors. The next one gets 429.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any

from aiohttp import web
from pymongo.errors import OperationFailure, PyMongoError

from gateway.messaging.inbox_queries import InboxQueries
from gateway.ports import Clock
from gateway.security.access import BreakGlass, in_scope
from gateway.security.sessions import Sessions
from gateway.storage.store import Doc
from portal.staff.common import STAFF, Shell
from portal.staff.policy import ANY_STAFF, policy

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 3.0
MAX_SECONDS = 300.0
MAX_STREAMS_PER_SESSION = 5


def thread_event(doc: Doc) -> dict[str, Any]:
    at = doc.get("last_activity_at")
    return {"thread_id": doc["_id"], "unread": int(doc.get("unread_staff", 0)), "status": doc.get("status"),
            "secure": bool(doc.get("secure")), "assignee": doc.get("assignee"),
            "last_activity_at": at.isoformat(timespec="milliseconds") if isinstance(at, datetime) else None}


class LiveUpdates:
    def __init__(self, shell: Shell, *, queries: InboxQueries, break_glass: BreakGlass, sessions: Sessions,
                 clock: Clock, change_streams: bool = True, heartbeat: float = HEARTBEAT_SECONDS,
                 poll: float = POLL_SECONDS, max_seconds: float = MAX_SECONDS) -> None:
        self.d = shell
        self.queries = queries
        self.break_glass = break_glass
        self.sessions = sessions
        self.clock = clock
        self.change_streams = change_streams
        self.heartbeat = heartbeat
        self.poll = poll
        self.max_seconds = max_seconds
        self._open: dict[str, int] = {}  # streams open per session id, in this process

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/live", self.stream)

    @policy(*ANY_STAFF, touch=False)
    async def stream(self, request: web.Request) -> web.StreamResponse:
        sid = request[STAFF].sid
        if self._open.get(sid, 0) >= MAX_STREAMS_PER_SESSION:
            return web.Response(status=429, text="too many live-update streams for this session\n",
                                headers={"Retry-After": "30"})
        self._open[sid] = self._open.get(sid, 0) + 1
        try:
            return await self._stream(request)
        finally:
            self._open[sid] -= 1
            if not self._open[sid]:
                del self._open[sid]

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        ctx = request[STAFF]
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_seconds
        try:
            await response.write(b"retry: 5000\n\n")
            if self.change_streams:
                try:
                    await self._watch(request, response, ctx.org.id, deadline)
                    return response
                except OperationFailure as err:
                    logger.info("change streams unavailable; polling", extra={"fields": {"code": err.code}})
            await self._poll(request, response, ctx.org.id, deadline)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except PyMongoError as err:
            logger.warning("live updates: database unavailable", extra={"fields": {"error": type(err).__name__}})
        return response

    async def _send(self, response: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
        await response.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

    async def _visible(self, request: web.Request, doc: Doc) -> bool:
        """May this stream's member hear of the thread (in scope, or under a break-glass grant)?"""
        ctx = request[STAFF]
        if in_scope(ctx.org.policy, ctx.member, doc):
            return True
        return await self.break_glass.active(ctx.org.id, ctx.member.id, doc["_id"]) is not None

    async def _alive(self, request: web.Request, response: web.StreamResponse) -> bool:
        ctx = request[STAFF]
        session = await self.sessions.get("staff", ctx.sid, touch=False)
        if session is None:
            await self._send(response, "signed_out", {})
            return False
        await response.write(b": ping\n\n")
        return True

    async def _watch(self, request: web.Request, response: web.StreamResponse, org_id: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        async with self.queries.watch(org_id, int(self.heartbeat * 1000)) as changes:
            await self._send(response, "ready", {"mode": "stream"})
            while loop.time() < deadline:
                change = await changes.try_next()
                if change is None:
                    if not await self._alive(request, response):
                        return
                    continue
                doc = change.get("fullDocument")
                if doc is not None and await self._visible(request, doc):
                    await self._send(response, "thread", thread_event(doc))

    async def _poll(self, request: web.Request, response: web.StreamResponse, org_id: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        since = self.clock.now()
        await self._send(response, "ready", {"mode": "poll"})
        quiet = 0.0
        while loop.time() < deadline:
            await asyncio.sleep(self.poll)
            changed = await self.queries.changed_since(org_id, since)
            for doc in changed:
                if await self._visible(request, doc):
                    await self._send(response, "thread", thread_event(doc))
                since = max(since, doc["last_activity_at"])
            quiet = 0.0 if changed else quiet + self.poll
            if quiet >= self.heartbeat:
                quiet = 0.0
                if not await self._alive(request, response):
                    return
