"""/sandbox exists only when no real provider is in use, or when [server] sandbox = true says so.

Its forms store inbound events as if a contact had sent them, so on a gateway with a real
provider they would let anyone inject messages into real threads (issue 9).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.clock import FrozenClock
from gateway.runtime.app import build_runtime, create_app
from gateway.runtime.cli import sandbox_warning
from gateway.runtime.config import Config, SmtpConfig
from gateway.runtime.services import build_services
from gateway.security.crypto import Keyring
from gateway.security.tokens import csrf_token
from gateway.storage.store import Store
from tests.conftest import make_config
from tests.support.database import _free_port
from tests.support.harness import ORG_NUMBER, PUBLIC_URL
from tests.support.twilio_standin import TwilioStandIn

SMTP_RELAY = SmtpConfig(host="127.0.0.1", port=2599, starttls=False)


@contextlib.asynccontextmanager
async def client_for(config: Config, store: Store, keyring: Keyring, clock: FrozenClock,
                     aiohttp_client) -> AsyncIterator[tuple[object, object]]:  # type: ignore[no-untyped-def]
    """The web app built by serve's own wiring (build_runtime picks the providers from config)."""
    services = build_services(config, store, keyring, clock)
    runtime = build_runtime(services)
    try:
        client = await aiohttp_client(create_app(runtime, workers=False))
        await services.orgs.create("Riverside Clinic", ORG_NUMBER)
        yield client, services
    finally:
        await runtime.close()


async def inject_reply(client, services) -> int:  # type: ignore[no-untyped-def]
    """Answer as a phone through the sandbox form, as its page would; the HTTP status."""
    csrf = csrf_token(services.sealer.keyring.mac_key, "sandbox")
    resp = await client.post("/sandbox/reply", data={"csrf": csrf, "from": "+15551230001", "to": ORG_NUMBER,
                                                     "body": "injected"},
                             headers={"Origin": PUBLIC_URL}, allow_redirects=False)
    return int(resp.status)


def configs(twilio: TwilioStandIn) -> dict[str, Config]:
    sms_real = make_config(twilio)
    return {
        "real SMS, sandbox mail": sms_real,
        "sandbox SMS, real mail": replace(make_config(None), smtp=SMTP_RELAY),
        "real SMS and mail": replace(sms_real, smtp=SMTP_RELAY),
    }


@pytest.mark.parametrize("case", ["real SMS, sandbox mail", "sandbox SMS, real mail", "real SMS and mail"])
async def test_with_a_real_provider_the_sandbox_is_404_and_injects_nothing(
        case, twilio, store, keyring, clock, aiohttp_client):  # type: ignore[no-untyped-def]
    async with client_for(configs(twilio)[case], store, keyring, clock, aiohttp_client) as (client, services):
        assert (await client.get("/sandbox")).status == 404
        assert await inject_reply(client, services) == 404
        assert (await client.post("/sandbox/mail-reply", data={"body": "x"})).status == 404
        assert await store.inbound_events.count_documents({}) == 0


async def test_with_both_providers_sandboxed_the_sandbox_answers_and_takes_replies(
        store, keyring, clock, aiohttp_client):  # type: ignore[no-untyped-def]
    async with client_for(make_config(None), store, keyring, clock, aiohttp_client) as (client, services):
        assert (await client.get("/sandbox")).status == 200
        assert await inject_reply(client, services) == 303
        assert await store.inbound_events.count_documents({"kind": "sms"}) == 1


async def test_server_sandbox_true_turns_it_on_with_real_providers(
        twilio, store, keyring, clock, aiohttp_client):  # type: ignore[no-untyped-def]
    config = configs(twilio)["real SMS and mail"]
    config = replace(config, server=replace(config.server, sandbox=True))
    async with client_for(config, store, keyring, clock, aiohttp_client) as (client, services):
        assert (await client.get("/sandbox")).status == 200
        assert await inject_reply(client, services) == 303


def test_the_explicit_sandbox_warning_is_red_on_a_terminal_and_plain_in_a_log():
    red = sandbox_warning(tty=True)
    assert red.startswith("\033[1;31mWARNING") and red.endswith("\033[0m")
    plain = sandbox_warning(tty=False)
    assert plain.startswith("WARNING: [server] sandbox = true") and "\033" not in plain


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_serve_with_a_real_provider_and_sandbox_true_prints_the_warning(tmp_path: Path):
    from tests.gateway.test_cli import HUSHLINK, _wait_ready

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HUSHLINK_")},
           "HUSHLINK_SERVER__PORT": str(port), "HUSHLINK_SERVER__PUBLIC_URL": url,
           "HUSHLINK_SERVER__DATA_DIR": str(tmp_path / "data"), "HUSHLINK_INBOUND_SMTP__PORT": str(_free_port()),
           "HUSHLINK_TWILIO__ACCOUNT_SID": "AC" + "0" * 32, "HUSHLINK_TWILIO__AUTH_TOKEN": "not-used-here",
           "HUSHLINK_SERVER__SANDBOX": "true"}
    proc = subprocess.Popen([HUSHLINK, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(url, proc)
        assert _get(url + "/sandbox") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    out = proc.stdout.read() if proc.stdout else ""
    assert code == 0
    warning = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert warning == [sandbox_warning(tty=False)], out
    assert "Demo org" not in out  # a real SMS provider: no demo org with a made-up number
    assert "\033" not in out  # not a terminal: no colour codes
