"""Inbound SMS benchmark: signed Twilio webhooks against `hushlink serve` on the embedded database.

In the same run, a baseline: a bare aiohttp handler doing one insert_one per request on the same
database server. Prints ack throughput and p50/p99 for both, their ratio, and end-to-end
throughput until every message is sealed in its thread (processor included).

    .venv/bin/python -m bench.inbound_sms [--requests 2000] [--concurrency 32] [--rounds 3]

Baseline and Hushlink take turns (--rounds); each side's median round is reported and compared.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.common import (
    BIN,
    Gateway,
    LoadResult,
    free_port,
    report_rounds,
    run_load,
    wait_until_processed,
    wait_until_quiet,
)
from tests.support.twilio_standin import TwilioStandIn, inbound_sms_params, new_sid, sign

ORG_NUMBER = "+15005550006"


def signed_requests(url_base: str, public_url: str, account_sid: str, token: str, n: int, senders: int):  # type: ignore[no-untyped-def]
    reqs = []
    for i in range(n):
        params = inbound_sms_params(frm=f"+1555{(i % senders):07d}", to=ORG_NUMBER,
                                    body=f"Reply number {i}: see you Tuesday.", account_sid=account_sid,
                                    sid=new_sid("SM"))
        sig = sign(public_url + "/webhooks/twilio/sms", params, token)

        async def send(session: aiohttp.ClientSession, params=params, sig=sig) -> int:  # type: ignore[no-untyped-def]
            async with session.post(url_base + "/webhooks/twilio/sms", data=params,
                                    headers={"X-Twilio-Signature": sig}) as r:
                await r.read()
                return r.status
        reqs.append(send)
    return reqs


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000, help="webhooks per round, for each side")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--senders", type=int, default=200, help="distinct client phone numbers")
    ap.add_argument("--rounds", type=int, default=3,
                    help="baseline and Hushlink take turns this many times; medians are compared")
    args = ap.parse_args()

    bases: list[LoadResult] = []
    acks: list[LoadResult] = []
    e2es: list[LoadResult] = []
    async with TwilioStandIn() as twilio:
        with tempfile.TemporaryDirectory() as tmp:
            gw = Gateway(Path(tmp) / "data", {
                "HUSHLINK_TWILIO__ACCOUNT_SID": twilio.account_sid, "HUSHLINK_TWILIO__AUTH_TOKEN": twilio.auth_token,
                "HUSHLINK_TWILIO__API_BASE": twilio.base_url, "HUSHLINK_INBOUND_SMTP__ENABLED": "false",
            })
            gw.data_dir.mkdir(parents=True)
            gw.start()
            try:
                gw.admin("create-org", "--name", "Bench Clinic", "--sms-number", ORG_NUMBER)
                uri = gw.database_uri()
                bport = free_port()
                baseline = subprocess.Popen([sys.executable, "-m", "bench.baseline_server", "--uri", uri,
                                             "--port", str(bport)])
                await asyncio.sleep(1.5)
                try:
                    warm = signed_requests(gw.url, gw.url, twilio.account_sid, twilio.auth_token, 50, 10)
                    await run_load("warm-up", warm, 8)
                    stored = 50
                    # Taking turns spreads the machine's drift (other load, caches, growing
                    # collections) over both sides instead of charging it to one.
                    for _ in range(args.rounds):
                        bases.append(await run_load("baseline insert_one", signed_requests(
                            f"http://127.0.0.1:{bport}", gw.url, twilio.account_sid, twilio.auth_token,
                            args.requests, args.senders), args.concurrency))
                        reqs = signed_requests(gw.url, gw.url, twilio.account_sid, twilio.auth_token,
                                               args.requests, args.senders)
                        started_at = datetime.now(UTC)
                        ack = await run_load("hushlink webhook ack", reqs, args.concurrency)
                        stored += args.requests
                        e2e_s = await wait_until_processed(uri, "hushlink", {"direction": "inbound"}, stored,
                                                           started_at)
                        acks.append(ack)
                        e2es.append(LoadResult("hushlink end-to-end", args.requests, e2e_s, ack.latencies, 0))
                        await wait_until_quiet(uri, "hushlink")
                finally:
                    baseline.terminate()
                    baseline.wait(30)
            finally:
                gw.stop()
    print(f"inbound SMS benchmark: {args.requests} signed webhooks per round, {args.rounds} rounds taking turns, "
          f"concurrency {args.concurrency}, {args.senders} senders, embedded SecantusDB")
    base, ack, e2e = report_rounds({"baseline": bases, "ack": acks, "end-to-end": e2es})
    print(base.line())
    print(ack.line())
    print(f"{'hushlink end-to-end':<28} {e2e.throughput:8.1f} msg/s  (all {args.requests} sealed in threads "
          f"after {e2e.seconds:.2f} s)")
    print(f"ratio ack/baseline        {ack.throughput / base.throughput:6.2f}x   (target >= 0.8x)")
    print(f"ratio end-to-end/baseline {e2e.throughput / base.throughput:6.2f}x   (target >= 0.4x)")


if __name__ == "__main__":
    _ = BIN
    asyncio.run(main())
