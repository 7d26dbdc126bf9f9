"""Live updates over SSE: change stream (and the polling fallback); ids only, never content."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from gateway.runtime.app import staff_collaborators
from portal.staff import staff_auth, staff_shell
from portal.staff.live import LiveUpdates
from portal.staff.policy import staff_guard
from tests.portal.test_staff_support import COOKIE, signed_in

BODY = "canary-l1ve: scan results attached"


async def read_event(resp, name: str, within: float = 10.0) -> dict:
    """Read SSE frames until one named `name`; return its data."""
    async def loop() -> dict:
        event = None
        while True:
            line = (await resp.content.readline()).decode()
            if not line:
                raise AssertionError("stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == name:
                return json.loads(line[6:])
            elif line == "":
                event = None

    return await asyncio.wait_for(loop(), within)


async def test_inbox_stream_reports_new_activity_without_content(gw):
    browser, _ = await signed_in(gw)
    async with browser as b:
        resp = await b.session.get(b.url("/staff/live"))
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-store"
        ready = await read_event(resp, "ready")
        assert ready["mode"] == "stream"
        data = await gw.api_send(body=BODY)
        events = [await read_event(resp, "thread")]
        while not events[-1]["secure"]:  # the thread is created, then the secure message lands on it
            events.append(await read_event(resp, "thread"))
        assert {e["thread_id"] for e in events} == {data["thread_id"]}
        assert "canary" not in json.dumps(events)
        resp.close()


async def test_stream_does_not_extend_the_idle_timeout(gw):
    browser, _ = await signed_in(gw)
    async with browser as b:
        session = await gw.store.sessions.find_one({"kind": "staff"})
        gw.clock.advance(600)
        resp = await b.session.get(b.url("/staff/live"))
        await read_event(resp, "ready")
        resp.close()
        after = await gw.store.sessions.find_one({"_id": session["_id"]})
        assert after["expires_at"] == session["expires_at"]
        gw.clock.advance(301)
        assert (await b.get("/staff/")).status == 303


async def _poll_app(gw, aiohttp_client, **kw):
    c = staff_collaborators(gw.services, gw.runtime.delivery)
    shell = staff_shell(c)
    app = web.Application(middlewares=[staff_guard(shell, c.audit, staff_auth(c, shell).context)])
    LiveUpdates(shell, queries=c.queries, break_glass=c.break_glass, sessions=c.sessions, clock=c.clock,
                change_streams=False, **kw).add_routes(app)
    return await aiohttp_client(app)


async def test_polling_fallback_reports_activity_and_ends_when_signed_out(gw, aiohttp_client):
    browser, _ = await signed_in(gw)
    async with browser as b:
        client = await _poll_app(gw, aiohttp_client, poll=0.05, heartbeat=0.2)
        headers = {"Cookie": f"{COOKIE}={b.sid}"}
        resp = await client.get("/live", headers=headers)
        assert resp.status == 200
        assert (await read_event(resp, "ready"))["mode"] == "poll"
        gw.clock.advance(1)
        data = await gw.api_send(body=BODY)
        assert (await read_event(resp, "thread"))["thread_id"] == data["thread_id"]
        await gw.store.sessions.delete_many({"kind": "staff"})
        assert await read_event(resp, "signed_out") == {}
        resp.close()
        assert (await client.get("/live", headers=headers)).status == 401
