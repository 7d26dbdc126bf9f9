"""Shared pieces of the benchmarks: starting `hushlink serve`, load generation, percentiles."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoadResult:
    name: str
    count: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def throughput(self) -> float:
        return self.count / self.seconds

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000

    def line(self) -> str:
        return (f"{self.name:<28} {self.throughput:8.1f} req/s   p50 {self.pct(50):7.2f} ms   "
                f"p99 {self.pct(99):7.2f} ms   errors {self.errors}")


async def run_load(name: str, requests: Sequence[Callable[[aiohttp.ClientSession], Awaitable[int]]],
                   concurrency: int) -> LoadResult:
    """Send every request with `concurrency` workers; record per-request latency."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[Callable[[aiohttp.ClientSession], Awaitable[int]]] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while not queue.empty():
            req = queue.get_nowait()
            t = time.perf_counter()
            status = await req(session)
            latencies.append(time.perf_counter() - t)
            if status >= 300:
                errors += 1

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return LoadResult(name, len(requests), elapsed, latencies, errors)


class Gateway:
    """`hushlink serve` in a child process on a fresh data directory (embedded database)."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HUSHLINK_SERVER__DATA_DIR": str(data_dir), "HUSHLINK_SERVER__PORT": str(self.port),
                    "HUSHLINK_SERVER__PUBLIC_URL": self.url, "HUSHLINK_SERVER__LOG_LEVEL": "WARNING", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.data_dir / "serve.log").open("ab")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([str(BIN / "hushlink"), "serve"], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"hushlink serve exited; see {self.data_dir / 'serve.log'}")
                time.sleep(0.3)
        raise RuntimeError("hushlink serve did not start")

    def admin(self, *args: str) -> dict[str, str]:
        out = subprocess.run([str(BIN / "hushlink"), "admin", *args, "--json"], env=self.env, check=True,
                             capture_output=True, text=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def database_uri(self) -> str:
        from gateway.runtime.embedded import EmbeddedDatabase

        uri = EmbeddedDatabase(self.data_dir).state_uri()  # with the credentials serve made (--auth)
        if uri is None:
            raise RuntimeError(f"no embedded database is running for {self.data_dir}")
        return uri

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


async def wait_until_processed(uri: str, db: str, query: dict[str, object], n: int, started_at: datetime,
                               timeout: float = 600) -> float:
    """Seconds from `started_at` until `n` documents match `query` in `messages`, every inbound
    event being processed.

    The watcher must not load the server it measures: a lookup of "any pending event" reads every
    pending entry on SecantusDB (about 6 ms of its CPU with 500 pending), so polling it every 10 ms
    took a large share of the database from the gateway. Instead it polls four times a second and
    then reads the exact moment from the data: the latest `processed_at` the gateway wrote (same
    machine, same wall clock)."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            await asyncio.sleep(0.25)
            if await client[db].inbound_events.find_one({"state": "pending"}, projection={"_id": 1}) is None:
                if await client[db].messages.count_documents(query) >= n:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"messages did not all reach their threads within {timeout:.0f} s")
        last = await client[db].inbound_events.find_one(
            {"received_at": {"$gte": started_at}}, projection={"processed_at": 1}, sort=[("processed_at", -1)])
        assert last is not None and isinstance(last["processed_at"], datetime)
        return (last["processed_at"] - started_at).total_seconds()
    finally:
        await client.close()


async def wait_until_quiet(uri: str, db: str, timeout: float = 600) -> None:
    """Until no inbound event and no outbox job is pending: the work a round left behind (e.g. the
    answers still being mailed) must not run into the next round's baseline."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    deadline = time.monotonic() + timeout
    try:
        while any([await client[db][name].find_one({"state": "pending"}, projection={"_id": 1})
                   for name in ("inbound_events", "outbox")]):
            if time.monotonic() > deadline:
                raise SystemExit(f"work still pending after {timeout:.0f} s")
            await asyncio.sleep(0.05)
    finally:
        await client.close()


def median_run(runs: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r.throughput)[len(runs) // 2]


def report_rounds(series: dict[str, list[LoadResult]]) -> list[LoadResult]:
    """Print each series' throughput per round; return each series' median round, in order."""
    for name, runs in series.items():
        print(f"  rounds, {name:<11} " + "  ".join(f"{r.throughput:7.1f}" for r in runs) + "  /s")
    print("median round:")
    return [median_run(runs) for runs in series.values()]


def median(xs: list[float]) -> float:
    return statistics.median(xs)
