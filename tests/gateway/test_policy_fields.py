"""Every org policy field changes what a user, client or attacker can observe (issue 9).

CHECKS maps each OrgPolicy field to a check that sets it to a non-default value and observes the
difference through a real edge: the API, the client portal, the staff portal, the inbound
processor or the hourly retention run. A field nothing reads has no check to write, and the
first test fails until it has one: a setting that silently does nothing is a bug.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta

import pytest

from gateway.tenancy.orgs import OrgPolicy
from tests.portal.test_break_glass import break_glass, scene
from tests.portal.test_client_portal import PIN, WRONG, open_session, post_open, renew, send_secure, thread_page
from tests.portal.test_staff_support import Browser, csrf_of, make_staff, signed_in
from tests.support.harness import Gateway
from tests.support.twilio_standin import new_sid

Check = Callable[[Gateway], Awaitable[None]]
OTHER_PHONE = "+15551230002"


async def _set(gw: Gateway, **changes: object) -> None:
    await gw.services.orgs.update_policy(gw.org.id, **changes)


async def secure_default(gw: Gateway) -> None:
    assert (await gw.api_send())["secure"] is True
    await _set(gw, secure_default=False)
    assert (await gw.api_send(to={"phone": OTHER_PHONE}))["secure"] is False


async def secure_forced(gw: Gateway) -> None:
    assert (await gw.api_send(secure=False))["secure"] is False
    await _set(gw, secure_forced=True)
    sent = await gw.api_send(to={"phone": OTHER_PHONE}, secure=False)
    stored = await gw.store.messages.find_one({"_id": sent["id"]})
    assert sent["secure"] is True and stored is not None and stored["secure"] is True


async def pin_required(gw: Gateway) -> None:
    await gw.api_send(secure=True)  # no PIN anywhere: fine by default
    await _set(gw, pin_required=True)
    refused = await gw.api_send(to={"phone": OTHER_PHONE}, secure=True, expect=422)
    assert refused["error"]["code"] == "pin_required"


async def link_ttl_seconds(gw: Gateway) -> None:
    _, day_link = await send_secure(gw, pin=None)
    await _set(gw, link_ttl_seconds=3600)
    _, hour_link = await send_secure(gw, pin=None)
    gw.clock.advance(seconds=3601)
    assert (await gw.client.get(f"/s/{day_link}")).status == 200
    assert (await gw.client.get(f"/s/{hour_link}")).status == 404


async def lock_threshold(gw: Gateway) -> None:
    await _set(gw, lock_threshold=1)
    _, token = await send_secure(gw, pin=PIN)
    csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
    assert (await post_open(gw, token, csrf, pin=WRONG)).status == 404  # one wrong PIN locks it
    assert (await post_open(gw, token, csrf, pin=PIN)).status == 404  # the right one is refused too


async def link_renewals_per_day(gw: Gateway) -> None:
    await _set(gw, link_renewals_per_day=1, link_ttl_seconds=3600)
    _, token = await send_secure(gw, pin=None)
    before = len(gw.sms_to())
    for _ in range(2):  # each new link expires unopened and the client asks again (a renewal revokes the old one)
        gw.clock.advance(seconds=3601)
        assert (await renew(gw, token))[0] == 200
        token = gw.last_link_token()
    assert len(gw.sms_to()) == before + 1  # the default (3 a day) would have sent both


async def provider_redaction(gw: Gateway) -> None:
    await _set(gw, provider_redaction=True)
    sid = new_sid("SM")
    gw.twilio.store[sid] = {"sid": sid, "body": "Is my appointment still on?", "status": "received"}
    await gw.inbound_sms("Is my appointment still on?", sid=sid)
    await gw.drain()
    assert gw.twilio.redactions == [sid] and gw.twilio.store[sid]["body"] == ""


async def sensitive_terms(gw: Gateway) -> None:
    body = "Your oncology follow-up is on Tuesday."
    assert (await gw.api_send(body=body, secure=False))["secure"] is False
    await _set(gw, sensitive_terms=("oncology",))
    refused = await gw.api_send(to={"phone": OTHER_PHONE}, body=body, secure=False, expect=422)
    assert refused["error"]["code"] == "sensitive_content"


async def client_idle_seconds(gw: Gateway) -> None:
    await _set(gw, client_idle_seconds=120)
    _, token = await send_secure(gw)
    await open_session(gw, token)
    assert (await thread_page(gw))[0] == 200
    gw.clock.advance(seconds=121)  # well inside the default 15 minutes
    assert (await thread_page(gw))[0] == 401


async def staff_idle_seconds(gw: Gateway) -> None:
    await _set(gw, staff_idle_seconds=300)
    browser, _ = await signed_in(gw)
    async with browser as b:
        gw.clock.advance(301)
        assert (await b.get("/staff/")).headers["Location"].startswith("/staff/login")


async def staff_absolute_seconds(gw: Gateway) -> None:
    await _set(gw, staff_absolute_seconds=3600)
    browser, _ = await signed_in(gw)
    async with browser as b:
        for _ in range(4):  # active every 800 s: the idle limit (900 s) never bites
            gw.clock.advance(800)
            assert (await b.get("/staff/")).status == 200
        gw.clock.advance(401)  # 3601 s after sign-in
        assert (await b.get("/staff/")).headers["Location"].startswith("/staff/login")


async def require_totp(gw: Gateway) -> None:
    await _set(gw, require_totp=True)
    member = await make_staff(gw)
    async with Browser(gw) as b:
        assert (await b.login(member.email)).headers["Location"] == "/staff/account/totp"
        assert (await b.get("/staff/")).headers["Location"] == "/staff/account/totp"


async def agent_scope(gw: Gateway) -> None:
    s = await scene(gw, scope="all")
    async with s.browser as b:
        assert (await b.get(f"/staff/threads/{s.theirs}")).status == 200
        await _set(gw, agent_scope="assigned")
        assert (await b.get(f"/staff/threads/{s.theirs}")).status == 403


async def break_glass_minutes(gw: Gateway) -> None:
    s = await scene(gw)
    await _set(gw, break_glass_minutes=5)
    async with s.browser as b:
        assert (await break_glass(b, s.theirs)).status == 303
        assert (await b.get(f"/staff/threads/{s.theirs}")).status == 200
        gw.clock.advance(minutes=6)  # the default (30 minutes) would still be open
        assert (await b.get(f"/staff/threads/{s.theirs}")).status == 403


async def retention_days(gw: Gateway) -> None:
    sent = await gw.api_send(body="Your results are ready.", secure=True)
    await gw.drain()
    gw.clock.set(datetime.now(UTC) + timedelta(days=31))  # message ids carry the real time

    async def bodies() -> list[str | None]:
        resp = await gw.client.get(f"/api/v1/threads/{sent['thread_id']}/messages", headers=gw.auth())
        return [m["body"] for m in (await resp.json())["messages"]]

    await gw.services.retention.purge_all()  # what serve runs every hour
    assert await bodies() == ["Your results are ready."]  # 0 (the default) keeps content
    await _set(gw, retention_days=30)
    await gw.services.retention.purge_all()
    assert await bodies() == [None]


CHECKS: dict[str, Check] = {check.__name__: check for check in (
    secure_default, secure_forced, pin_required, link_ttl_seconds, lock_threshold, link_renewals_per_day,
    provider_redaction, sensitive_terms, client_idle_seconds, staff_idle_seconds, staff_absolute_seconds,
    require_totp, agent_scope, break_glass_minutes, retention_days,
)}


def test_every_policy_field_has_a_behaviour_check() -> None:
    assert set(CHECKS) == {f.name for f in fields(OrgPolicy)}


@pytest.mark.parametrize("field", sorted(CHECKS))
async def test_policy_field_changes_observable_behaviour(gw: Gateway, field: str) -> None:
    await CHECKS[field](gw)
