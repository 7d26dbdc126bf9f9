"""Inbound email benchmark: replies through real SMTP sessions against `hushlink serve`.

In the same run, a baseline: an aiosmtpd handler doing one insert_one per message on the same
database server. Prints throughput and p50/p99 of SMTP acceptance for both, the ratio, and the
end-to-end throughput until every reply is sealed in its thread (parsing and quote-stripping
included).

    .venv/bin/python -m bench.inbound_email [--messages 500] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import aiosmtplib

from bench.common import Gateway, LoadResult, free_port, report_rounds, wait_until_processed, wait_until_quiet
from tests.support.smtp_sink import SmtpSink

REPLY_DOMAIN = "reply.bench.test"
REPLY = (
    "From: Client {n} <client{n}@bench.test>\r\nTo: {rcpt}\r\nSubject: Re: New secure message\r\n"
    "Message-ID: <r{n}-{i}@bench.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    "Thanks, Tuesday at 3pm works for me.\r\n\r\nOn Mon, 5 Jan 2026 at 09:00, Bench Clinic <care@bench.test> wrote:\r\n"
    "> You have a new secure message. Open it here: https://example.test/s/xyz\r\n"
)


async def smtp_load(name: str, port: int, mails: list[tuple[str, str]], concurrency: int) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for m in mails:
        queue.put_nowait(m)

    async def worker() -> None:
        nonlocal errors
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False)
        await smtp.connect()
        while not queue.empty():
            rcpt, raw = queue.get_nowait()
            t = time.perf_counter()
            try:
                await smtp.sendmail("client@bench.test", [rcpt], raw)
            except aiosmtplib.SMTPException:
                errors += 1
            latencies.append(time.perf_counter() - t)
        await smtp.quit()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(name, len(mails), time.perf_counter() - start, latencies, errors)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--contacts", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3,
                    help="baseline and Hushlink take turns this many times; medians are compared")
    args = ap.parse_args()
    bases: list[LoadResult] = []
    accepts: list[LoadResult] = []
    e2es: list[LoadResult] = []
    async with SmtpSink() as sink:
        with tempfile.TemporaryDirectory() as tmp:
            smtp_port = free_port()
            gw = Gateway(Path(tmp) / "data", {
                "HUSHLINK_SMTP__HOST": sink.host, "HUSHLINK_SMTP__PORT": str(sink.port),
                "HUSHLINK_SMTP__STARTTLS": "false", "HUSHLINK_INBOUND_SMTP__PORT": str(smtp_port),
                "HUSHLINK_INBOUND_SMTP__REPLY_DOMAIN": REPLY_DOMAIN,
                "HUSHLINK_INBOUND_SMTP__MESSAGES_PER_MINUTE_PER_PEER": "1000000",
            })
            gw.data_dir.mkdir(parents=True)
            gw.start()
            try:
                org = gw.admin("create-org", "--name", "Bench Clinic", "--sms-number", "+15005550010",
                               "--email-from", "care@bench.test", "--reply-domain", REPLY_DOMAIN)
                key = gw.admin("create-api-key", "--org", org["id"], "--name", "bench")["key"]
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
                    for n in range(args.contacts):
                        async with http.post(gw.url + "/api/v1/messages", json={
                                "channel": "email", "to": {"email": f"client{n}@bench.test"},
                                "body": "Your appointment is confirmed."}) as r:
                            assert r.status == 201, await r.text()
                deadline = time.monotonic() + 120
                while len(sink.messages) < args.contacts and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                rcpts = [re.search(r"reply\+[A-Za-z0-9_-]{43}@[^>\s]+", str(m["message"]["Reply-To"])).group(0)
                         for m in sink.messages]

                def round_mails(r: int) -> list[tuple[str, str]]:  # fresh Message-IDs every round
                    return [(rcpts[i % len(rcpts)], REPLY.format(n=i % len(rcpts), i=f"{r}-{i}",
                                                                 rcpt=rcpts[i % len(rcpts)]))
                            for i in range(args.messages)]
                uri = gw.database_uri()
                bport = free_port()
                baseline = subprocess.Popen([sys.executable, "-m", "bench.baseline_smtp", "--uri", uri,
                                             "--port", str(bport)])
                await asyncio.sleep(1.5)
                try:
                    expected = 0
                    # Taking turns spreads the machine's drift over both sides (see bench.inbound_sms).
                    for r in range(args.rounds):
                        mails = round_mails(r)
                        bases.append(await smtp_load("baseline insert_one", bport, mails, args.concurrency))
                        started_at = datetime.now(UTC)
                        ours = await smtp_load("hushlink SMTP 250", smtp_port, mails, args.concurrency)
                        expected += args.messages - ours.errors  # refused mail is never stored
                        e2e_s = await wait_until_processed(
                            uri, "hushlink", {"direction": "inbound", "channel": "email"}, expected, started_at)
                        accepts.append(ours)
                        e2es.append(LoadResult("hushlink end-to-end", args.messages, e2e_s, ours.latencies, 0))
                        await wait_until_quiet(uri, "hushlink")
                finally:
                    baseline.terminate()
                    baseline.wait(30)
            finally:
                gw.stop()
    print(f"inbound email benchmark: {args.messages} replies over SMTP per round, {args.rounds} rounds taking "
          f"turns, concurrency {args.concurrency}, {len(rcpts)} conversations, embedded SecantusDB")
    base, ours, e2e = report_rounds({"baseline": bases, "250": accepts, "end-to-end": e2es})
    print(base.line())
    print(ours.line())
    print(f"{'hushlink end-to-end':<28} {e2e.throughput:8.1f} msg/s  (all sealed in threads after {e2e.seconds:.2f} s)")
    print(f"ratio SMTP accept/baseline  {ours.throughput / base.throughput:6.2f}x")
    print(f"ratio end-to-end/baseline   {e2e.throughput / base.throughput:6.2f}x   (target >= 0.5x)")


if __name__ == "__main__":
    asyncio.run(main())
