"""Limits of the HTTP edge (issue 9): connections that hold the server, and input it cannot parse.

The connection tests speak raw HTTP/1.1 over loopback to the listener `serve` runs
(portal/listener.py), with the limits shortened to about a second so they run fast.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from gateway.runtime.app import create_app
from portal.listener import start_http
from tests.support.harness import Gateway

GET = b"GET /healthz HTTP/1.1\r\nHost: hushlink.test\r\n\r\n"


@contextlib.asynccontextmanager
async def listening(gw: Gateway, *, header_timeout: float, keepalive_timeout: float) -> AsyncIterator[int]:
    """The gateway's app behind serve's listener on a free loopback port; yields the port."""
    runner, site = await start_http(create_app(gw.runtime, workers=False), "127.0.0.1", 0,
                                    header_timeout=header_timeout, keepalive_timeout=keepalive_timeout)
    try:
        yield site.port
    finally:
        await runner.cleanup()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection (EOF or reset), failing after `limit`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with contextlib.suppress(ConnectionResetError):
        data = await asyncio.wait_for(reader.read(), limit)
        assert data == b"", data  # closed without an answer
    return loop.time() - start


async def trickle(writer: asyncio.StreamWriter, until: asyncio.Event) -> None:
    """Send a header line a few bytes at a time, never ending the head (slowloris)."""
    n = 0
    while not until.is_set():
        with contextlib.suppress(ConnectionError):
            writer.write(b"X-Slow-%d: y\r\n" % n)
            await writer.drain()
        n += 1
        await asyncio.sleep(0.2)


async def closed_while_trickling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    """Seconds until the server closes a connection whose head keeps trickling in a header at a time."""
    done = asyncio.Event()
    sender = asyncio.create_task(trickle(writer, done))
    try:
        return await closed_after(reader, 5.0)
    finally:
        done.set()
        await sender
        writer.close()


async def test_a_request_head_that_trickles_in_is_cut_at_the_header_timeout(gw):
    async with listening(gw, header_timeout=1.0, keepalive_timeout=10.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: hushlink.test\r\n")
        waited = await closed_while_trickling(reader, writer)
        assert 0.8 <= waited < 2.5  # the header timeout, not the 10 s keep-alive limit


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(gw):
    async with listening(gw, header_timeout=1.0, keepalive_timeout=10.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        waited = await closed_after(reader, 5.0)
        writer.close()
        assert 0.8 <= waited < 2.5


async def test_an_idle_keep_alive_connection_lives_past_the_header_timeout_then_closes(gw):
    async with listening(gw, header_timeout=0.5, keepalive_timeout=2.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.0)  # idle: longer than the header timeout, shorter than keep-alive
        writer.write(GET)
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        waited = await closed_after(reader, 6.0)
        writer.close()
        assert 1.5 <= waited < 3.5  # the keep-alive limit


async def test_a_slow_head_after_an_idle_spell_is_timed_from_its_first_byte(gw):
    async with listening(gw, header_timeout=1.0, keepalive_timeout=10.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        await read_response(reader)
        await asyncio.sleep(0.5)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        waited = await closed_while_trickling(reader, writer)
        assert 0.8 <= waited < 2.5


def test_the_default_limits_are_30_and_75_seconds():
    from gateway.runtime.config import ServerConfig

    assert (ServerConfig().header_timeout_seconds, ServerConfig().keepalive_timeout_seconds) == (30.0, 75.0)


# -- live-update streams ------------------------------------------------------------------------


async def test_a_staff_session_gets_five_live_streams_and_the_sixth_is_429(gw):
    from tests.portal.test_staff_live import read_event
    from tests.portal.test_staff_support import signed_in

    first, _ = await signed_in(gw)
    other, _ = await signed_in(gw, "admin")
    async with first as b, other as o:
        streams = []
        for _ in range(5):
            resp = await b.session.get(b.url("/staff/live"))
            assert resp.status == 200
            await read_event(resp, "ready")
            streams.append(resp)
        sixth = await b.session.get(b.url("/staff/live"))
        assert sixth.status == 429 and sixth.headers["Retry-After"]
        # The limit is per session: another member (another session) still gets a stream.
        theirs = await o.session.get(o.url("/staff/live"))
        assert theirs.status == 200
        for resp in [*streams, theirs]:
            resp.close()


async def test_a_closed_live_stream_frees_its_place(gw, aiohttp_client):
    from tests.portal.test_staff_live import _poll_app, read_event
    from tests.portal.test_staff_support import COOKIE, signed_in

    browser, _ = await signed_in(gw)
    async with browser as b:
        client = await _poll_app(gw, aiohttp_client, poll=0.05, heartbeat=0.1)
        headers = {"Cookie": f"{COOKIE}={b.sid}"}
        streams = [await client.get("/live", headers=headers) for _ in range(5)]
        assert [r.status for r in streams] == [200] * 5
        assert (await client.get("/live", headers=headers)).status == 429
        streams.pop().close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:  # the server notices at its next heartbeat write
            resp = await client.get("/live", headers=headers)
            if resp.status == 200 or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert resp.status == 200
        await read_event(resp, "ready")
        for r in [*streams, resp]:
            r.close()


# -- /metrics -------------------------------------------------------------------------------------

METRICS_TOKEN = "m" * 16 + "0123456789abcdef"


@contextlib.asynccontextmanager
async def metrics_gateway(twilio, store, keyring, clock, aiohttp_client, **server):  # type: ignore[no-untyped-def]
    from gateway.runtime.app import build_runtime, metrics_app
    from gateway.runtime.services import build_services
    from tests.conftest import make_config

    services = build_services(make_config(twilio, **server), store, keyring, clock)
    runtime = build_runtime(services)
    try:
        yield (await aiohttp_client(create_app(runtime, workers=False)),
               await aiohttp_client(metrics_app(services)), services)
    finally:
        await runtime.close()


async def seed_queues(store) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    from gateway.ids import new_id

    now = datetime.now(UTC)
    for state, n in (("pending", 3), ("sent", 2), ("dead", 1)):
        await store.outbox.insert_many([{"_id": new_id(), "state": state, "next_attempt_at": now} for _ in range(n)])
    for state, n in (("done", 4), ("unroutable", 1)):
        await store.inbound_events.insert_many([{"_id": new_id(), "provider": "twilio", "provider_id": new_id(),
                                                 "state": state, "next_attempt_at": now} for _ in range(n)])


async def test_metrics_are_not_on_the_public_site_without_a_token(gw):
    assert (await gw.client.get("/metrics")).status == 404


async def test_public_metrics_need_the_bearer_token_and_count_each_state(twilio, store, keyring, clock,
                                                                         aiohttp_client):
    await seed_queues(store)
    async with metrics_gateway(twilio, store, keyring, clock, aiohttp_client, metrics_token=METRICS_TOKEN) as (
            public, _, _):
        assert (await public.get("/metrics")).status == 401
        wrong = await public.get("/metrics", headers={"Authorization": "Bearer " + "x" * 32})
        assert wrong.status == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
        resp = await public.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert resp.status == 200
        lines = set((await resp.text()).splitlines())
    assert {'hushlink_outbox_jobs{state="pending"} 3', 'hushlink_outbox_jobs{state="sent"} 2',
            'hushlink_outbox_jobs{state="failed"} 0', 'hushlink_outbox_jobs{state="dead"} 1',
            'hushlink_inbound_events{state="done"} 4', 'hushlink_inbound_events{state="unroutable"} 1',
            'hushlink_inbound_events{state="pending"} 0'} <= lines


async def test_the_internal_listener_serves_metrics_alone_without_a_token(twilio, store, keyring, clock,
                                                                         aiohttp_client):
    await seed_queues(store)
    async with metrics_gateway(twilio, store, keyring, clock, aiohttp_client, metrics_port=9464) as (
            public, internal, _):
        assert (await public.get("/metrics")).status == 404
        resp = await internal.get("/metrics")
        assert resp.status == 200 and 'hushlink_outbox_jobs{state="pending"} 3' in await resp.text()
        for path in ("/healthz", "/staff/", "/sandbox", "/api/v1/messages"):
            assert (await internal.get(path)).status == 404


async def test_metrics_read_indexed_counts_per_state_not_the_collections(twilio, mongo_uri, keyring, clock,
                                                                         aiohttp_client):
    import uuid

    from pymongo import AsyncMongoClient

    from gateway.storage.store import Store
    from tests.portal.test_page_scaling import Capture, reads, route

    capture = Capture()
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=5000, tz_aware=True,
                                                event_listeners=[capture])
    store = Store(client, "t_" + uuid.uuid4().hex[:16])
    try:
        await store.ensure_indexes()
        await seed_queues(store)
        async with metrics_gateway(twilio, store, keyring, clock, aiohttp_client, metrics_port=9464) as (
                _, internal, _):
            capture.on = True
            assert (await internal.get("/metrics")).status == 200
            capture.on = False
        commands = reads(capture.commands)
        assert commands and len(commands) == 10  # one count per known state, whatever the collection size
        for name, coll, flt, _cmd in commands:
            assert route(coll, flt) == ("index", flt), (name, coll, flt)
            plan = await store.db.command("explain", {"find": coll, "filter": flt}, verbosity="queryPlanner")
            assert "IXSCAN" in repr(plan["queryPlanner"]["winningPlan"]), (coll, flt)
    finally:
        await store.drop()
        await client.close()


# -- input that cannot be parsed: 400, never 500 ---------------------------------------------------

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
BROKEN_MULTIPART = b'--zz\r\nContent-Disposition: form-data; name="a"\r\n\r\n\xff\xfe\r\n--zz--\r\n'
UNPARSABLE = {
    "JSON nested 100000 deep": ("/api/v1/messages", JSON, b"[" * 100_000),
    "JSON objects nested 200 deep": ("/api/v1/messages", JSON, b'{"a":' * 200 + b"1" + b"}" * 200),
    "JSON not UTF-8": ("/api/v1/messages", JSON, b'{"body": "\xff\xfe"}'),
    "JSON unknown charset": ("/api/v1/messages", JSON + "; charset=x-bogus", b'{"body": "x"}'),
    "JSON lone surrogate": ("/api/v1/messages", JSON, b'{"to": {"phone": "+15551230001"}, "body": "\\ud800"}'),
    "JSON truncated": ("/api/v1/messages", JSON, b'{"to": {"phone": '),
    "webhook form not UTF-8": ("/webhooks/twilio/sms", FORM, b"Body=\xff\xfe&From=%2B15551230001"),
    "webhook form unknown charset": ("/webhooks/twilio/sms", FORM + "; charset=x-bogus", b"Body=x"),
    "webhook multipart without boundary": ("/webhooks/twilio/sms", "multipart/form-data", b"Body=x"),
    "staff form not UTF-8": ("/staff/login", FORM, b"email=\xff\xfe&password=x"),
    "staff form unknown charset": ("/staff/login", FORM + "; charset=x-bogus", b"email=x"),
    "staff multipart broken": ("/staff/login", "multipart/form-data; boundary=zz", BROKEN_MULTIPART),
    "staff multipart without boundary": ("/staff/logout", "multipart/form-data", b"garbage"),
    "client portal form not UTF-8": ("/s/" + "A" * 43, FORM, b"pin=\xff"),
    "client portal multipart broken": ("/s/logout", "multipart/form-data; boundary=zz", BROKEN_MULTIPART),
}


@pytest.mark.parametrize(("path", "content_type", "body"), UNPARSABLE.values(), ids=UNPARSABLE.keys())
async def test_unparsable_input_is_400_never_500(gw, path, content_type, body):
    resp = await gw.client.post(path, data=body, headers={"Content-Type": content_type, **gw.auth()},
                                allow_redirects=False)
    assert resp.status == 400, (resp.status, await resp.text())
    if path.startswith(("/api/", "/webhooks/")):
        error = (await resp.json())["error"]
        assert error["code"] in ("invalid_json", "invalid_body") and error["message"]
    assert await gw.store.inbound_events.count_documents({}) == 0
    assert await gw.store.messages.count_documents({}) == 0


async def test_a_wrong_content_type_on_the_api_is_a_json_error(gw):
    resp = await gw.client.post("/api/v1/messages", data=b'{"body": "x"}',
                                headers={"Content-Type": "text/plain", **gw.auth()})
    assert resp.status == 415  # as documented in the OpenAPI document: the body was not even read
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"
