"""Shared fixtures: the session's SecantusDB server, a fresh database per test, whole gateways."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import settings

from gateway.clock import FrozenClock
from gateway.runtime.app import build_runtime, create_app
from gateway.runtime.config import Config, ServerConfig, TwilioConfig
from gateway.runtime.services import Services, build_services
from gateway.security.crypto import Keyring
from gateway.storage.store import Store, make_client
from outbound.smtp_email import SmtpEmailSender
from outbound.twilio_sms import TwilioSmsSender
from tests.support.database import SecantusServer, external_uri
from tests.support.harness import ORG_EMAIL, ORG_NUMBER, PUBLIC_URL, REPLY_DOMAIN, Gateway
from tests.support.smtp_sink import SmtpSink
from tests.support.twilio_standin import TwilioStandIn

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# CI runs the same examples every time (a failure there is reproducible); locally they vary.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[SecantusServer | None]:
    if external_uri():
        yield None
        return
    ARTIFACTS.mkdir(exist_ok=True)
    server = SecantusServer(ARTIFACTS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri(mongo_server: SecantusServer | None) -> str:
    return external_uri() or (mongo_server.uri if mongo_server else "")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[Store]:
    client = make_client(mongo_uri, 5)
    name = "t_" + uuid.uuid4().hex[:16]
    st = Store(client, name)
    await st.ensure_indexes()
    yield st
    await st.drop()
    await client.close()


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStandIn]:
    async with TwilioStandIn() as standin:
        yield standin


def make_config(twilio: TwilioStandIn | None, **server: object) -> Config:
    tw = TwilioConfig(account_sid=twilio.account_sid, auth_token=twilio.auth_token,
                      api_base=twilio.base_url, timeout_seconds=3) if twilio else TwilioConfig()
    return Config(server=replace(ServerConfig(public_url=PUBLIC_URL), **server), twilio=tw)  # type: ignore[arg-type]


@pytest.fixture
def config(twilio: TwilioStandIn) -> Config:
    return make_config(twilio)


@pytest.fixture
def services(config: Config, store: Store, keyring: Keyring, clock: FrozenClock) -> Services:
    return build_services(config, store, keyring, clock)


@contextlib.asynccontextmanager
async def running_gateway(services: Services, twilio: TwilioStandIn, clock: FrozenClock,
                          aiohttp_client) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    """The whole gateway on `services`: Twilio stand-in, a mail sink, an org and an API key."""
    from gateway.security.api_keys import ApiKeys

    sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url, timeout=3)
    sink = SmtpSink()
    await sink.start()
    gateway: Gateway | None = None
    try:
        mailer = SmtpEmailSender(sink.host, sink.port, starttls=False, timeout=5)
        runtime = build_runtime(services, sms=sender, email=mailer)
        client = await aiohttp_client(create_app(runtime, workers=False))
        org = await services.orgs.create("Riverside Clinic", ORG_NUMBER, email_from=ORG_EMAIL,
                                         reply_domain=REPLY_DOMAIN)
        key, _ = await ApiKeys(services.store, clock).create(org.id, "tests")
        gateway = Gateway(client, services, runtime, twilio, clock, org, key, mail=sink)
        yield gateway
    finally:
        if gateway is not None:
            await gateway.stop_smtp()
        await sender.close()
        await sink.close()


@pytest.fixture
async def gw(services: Services, twilio: TwilioStandIn, clock: FrozenClock, aiohttp_client) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    async with running_gateway(services, twilio, clock, aiohttp_client) as gateway:
        yield gateway


@pytest.fixture
async def outage_gw(twilio: TwilioStandIn, keyring: Keyring, clock: FrozenClock,
                    aiohttp_client) -> AsyncIterator[tuple[Gateway, SecantusServer]]:  # type: ignore[no-untyped-def]
    """The gateway of `gw` on its own SecantusDB server, which an outage test may stop."""
    ARTIFACTS.mkdir(exist_ok=True)
    server = SecantusServer(ARTIFACTS)
    server.start()
    mongo = make_client(server.uri, 1)
    try:
        store = Store(mongo, "outage")
        await store.ensure_indexes()
        services = build_services(make_config(twilio), store, keyring, clock)
        async with running_gateway(services, twilio, clock, aiohttp_client) as gateway:
            yield gateway, server
    finally:
        server.stop()
        await mongo.close()
