"""The HTTP listener `serve` runs: connection limits, and an access log without query values.

Limits (OWASP ASVS 5.0 V13 resource limits; the slow-header attack known as slowloris):
* a connection must deliver the head of each request (request line and headers) within
  `header_timeout` of its first byte (of the connection, for the first request); a client that
  trickles a header a byte at a time is closed at the deadline;
* an idle keep-alive connection is closed after `keepalive_timeout` (aiohttp's own timer).

aiohttp has no header-read timeout, so the listener makes its connections from a RequestHandler
that adds one. It reads two attributes aiohttp keeps private (`_waiter`: the connection waits for
its next request; `_request_count`: request heads parsed so far), the same state aiohttp's own
keep-alive timer reads; tests/test_http_limits.py drives both limits over raw sockets, so an
aiohttp upgrade that changes them fails there.

The access log names the path and only the names of the query parameters: values (a search for
a phone number or an email address) are personal data and never written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

ACCESS_LOGGER = logging.getLogger("aiohttp.access")


class PathOnlyAccessLogger(AbstractAccessLogger):
    """`remote "METHOD /path?name= HTTP/1.1" status bytes seconds`: no query values, no headers."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            self.logger.info('%s "%s %s HTTP/%d.%d" %s %s %.6fs', request.remote or "-", request.method,
                             loggable_path(request), request.version.major, request.version.minor,
                             response.status, response.body_length, time)
        except Exception:  # a log line must never break a response
            self.logger.exception("access log line failed")


def loggable_path(request: web.BaseRequest) -> str:
    """The raw path, and the query's parameter names with their values removed."""
    url = request.rel_url
    path = url.raw_path
    if not url.raw_query_string:
        return path
    names = dict.fromkeys(url.query.keys())  # once each, in order
    return path + "?" + "&".join(f"{name}=" for name in names)


class _HeadTimeoutHandler(web.RequestHandler):
    """aiohttp's connection handler, closing a connection whose request head is late."""

    def __init__(self, manager: web.Server, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_when_armed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # the first request's head is due within head_timeout of the connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self._request_count != self._heads_when_armed:
            self._disarm()  # a head arrived in time
        # Bytes of a new request while the connection waits for one: its head is now due. (Bytes
        # while a request is handled are its body, or a pipelined request the keep-alive timer bounds.)
        waiting = self._waiter is not None and not self._waiter.done()
        if self._head_timer is None and waiting:
            self._arm()

    def _arm(self) -> None:
        self._heads_when_armed = self._request_count
        self._head_timer = asyncio.get_running_loop().call_later(self._head_timeout, self._head_overdue)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._request_count == self._heads_when_armed:
            self.force_close()


class LimitedTCPSite(web.TCPSite):
    """A TCPSite whose connections have a request-head deadline and a keep-alive limit."""

    __slots__ = ("_head_timeout", "_keepalive_timeout")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, head_timeout: float,
                 keepalive_timeout: float) -> None:
        super().__init__(runner, host, port)
        self._head_timeout = head_timeout
        self._keepalive_timeout = keepalive_timeout

    def _connection(self) -> _HeadTimeoutHandler:
        server = self._runner.server
        assert server is not None  # BaseSite.__init__ checked it
        return _HeadTimeoutHandler(server, loop=asyncio.get_running_loop(), head_timeout=self._head_timeout,
                                   keepalive_timeout=self._keepalive_timeout,
                                   access_log_class=PathOnlyAccessLogger, access_log=ACCESS_LOGGER)

    async def start(self) -> None:
        # TCPSite.start, with this site's connection factory instead of the runner's server.
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, self._host, self._port,
                                                backlog=self._backlog, reuse_address=self._reuse_address,
                                                reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


async def start_http(app: web.Application, host: str, port: int, *, header_timeout: float,
                     keepalive_timeout: float) -> tuple[web.AppRunner, LimitedTCPSite]:
    """Start `app` (its startup and cleanup contexts) listening on host:port with the limits.

    Raises OSError when the port cannot be bound (the runner is cleaned up first).
    """
    runner = web.AppRunner(app, access_log_class=PathOnlyAccessLogger, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    site = LimitedTCPSite(runner, host, port, head_timeout=header_timeout, keepalive_timeout=keepalive_timeout)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, site
