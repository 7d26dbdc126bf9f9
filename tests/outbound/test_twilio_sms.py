"""TwilioSmsSender against the Twilio stand-in, through the real `twilio` library."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from twilio.request_validator import RequestValidator

from gateway.errors import ProviderError, ProviderPermanent, ProviderTransient
from gateway.ports import SentSms, SmsSender
from outbound.twilio_sms import TwilioSmsSender, mask_number
from tests.support.twilio_standin import (
    SIGNATURE_HEADER,
    TwilioStandIn,
    inbound_sms_params,
    sign,
)

FROM = "+15005550006"
TO = "+15551234567"
SERVICE = "MG" + "0123456789abcdef" * 2
CANARY = "canary-7f3a body: your code is 918273"
PUBLIC_CALLBACK = "https://hushlink.example/twilio/status?outbox=42"


@pytest.fixture
async def standin() -> AsyncIterator[TwilioStandIn]:
    async with TwilioStandIn() as twilio:
        yield twilio


@pytest.fixture
async def sender(standin: TwilioStandIn) -> AsyncIterator[TwilioSmsSender]:
    async with TwilioSmsSender(
        standin.account_sid, standin.auth_token, api_base=standin.base_url, timeout=5.0
    ) as twilio_sender:
        yield twilio_sender


async def send(sender: SmsSender, to: str = TO, body: str = CANARY) -> SentSms:
    return await sender.send_sms(
        from_number=FROM, to_number=to, body=body, status_callback=PUBLIC_CALLBACK
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_send_reaches_twilio_with_every_field(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    sent = await send(sender)

    assert re.fullmatch(r"SM[0-9a-f]{32}", sent.provider_id)
    assert sent.status == "queued"
    assert standin.messages == [
        {
            "sid": sent.provider_id,
            "to": TO,
            "from": FROM,
            "messaging_service_sid": None,
            "body": CANARY,
            "status_callback": PUBLIC_CALLBACK,
        }
    ]


async def test_send_without_status_callback_omits_it(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    await sender.send_sms(from_number=FROM, to_number=TO, body="hi", status_callback=None)

    assert "StatusCallback" not in standin.requests[-1]["form"]


async def test_messaging_service_sid_is_sent_as_messaging_service(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    sent = await sender.send_sms(
        from_number=SERVICE, to_number=TO, body="hello", status_callback=None
    )

    assert sent.status == "accepted"
    form = standin.requests[-1]["form"]
    assert form["MessagingServiceSid"] == SERVICE
    assert "From" not in form


async def test_wrong_credentials_are_permanent(standin: TwilioStandIn) -> None:
    async with TwilioSmsSender(
        standin.account_sid, "not-the-token", api_base=standin.base_url
    ) as wrong:
        with pytest.raises(ProviderPermanent) as caught:
            await send(wrong)

    assert caught.value.code == "20003"
    assert standin.requests[-1]["status"] == 401
    assert standin.messages == []


@pytest.mark.parametrize(
    ("status", "code", "expected_code"),
    [(429, 20429, "20429"), (500, None, "20500"), (503, 20503, "20503")],
)
async def test_rate_limit_and_server_errors_are_transient(
    standin: TwilioStandIn,
    sender: TwilioSmsSender,
    status: int,
    code: int | None,
    expected_code: str,
) -> None:
    standin.fail_next(status=status, code=code)

    with pytest.raises(ProviderTransient) as caught:
        await send(sender)

    assert caught.value.code == expected_code
    assert standin.messages == []


async def test_non_json_gateway_error_is_transient(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    standin.fail_next(status=502, raw="<html>Bad Gateway</html>")

    with pytest.raises(ProviderTransient) as caught:
        await send(sender)

    assert caught.value.code == "502"


async def test_scripted_failure_is_used_once(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    standin.fail_next(status=429, code=20429)

    with pytest.raises(ProviderTransient):
        await send(sender)
    sent = await send(sender)

    assert [m["sid"] for m in standin.messages] == [sent.provider_id]


async def test_unsubscribed_recipient_is_permanent_with_code_21610(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    standin.fail_next(status=400, code=21610, message="Attempt to send to unsubscribed recipient")

    with pytest.raises(ProviderPermanent) as caught:
        await send(sender)

    assert caught.value.code == "21610"


async def test_opted_out_number_is_refused_every_time(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    standin.opted_out.add(TO)

    for _ in range(2):
        with pytest.raises(ProviderPermanent) as caught:
            await send(sender)
        assert caught.value.code == "21610"
    other = await send(sender, to="+15557654321")

    assert [m["sid"] for m in standin.messages] == [other.provider_id]


async def test_invalid_to_is_permanent_and_the_number_is_not_repeated(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    bad = "555-867-5309"

    with pytest.raises(ProviderPermanent) as caught:
        await send(sender, to=bad)

    assert caught.value.code == "21211"
    # The stand-in, like Twilio, quotes the number in its error text; we must not.
    assert bad in standin.requests[-1]["form"]["To"]
    assert "8675309" not in str(caught.value)


async def test_scripted_invalid_to_is_permanent(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    standin.fail_next(status=400, code=21211)

    with pytest.raises(ProviderPermanent) as caught:
        await send(sender)

    assert caught.value.code == "21211"


async def test_slow_twilio_times_out_as_transient(standin: TwilioStandIn) -> None:
    standin.delay_next(3.0)
    async with TwilioSmsSender(
        standin.account_sid, standin.auth_token, api_base=standin.base_url, timeout=0.5
    ) as impatient:
        started = time.monotonic()
        with pytest.raises(ProviderTransient) as caught:
            async with asyncio.timeout(10):
                await send(impatient)
        elapsed = time.monotonic() - started

    assert caught.value.code == "network"
    assert elapsed < 2.5


async def test_unreachable_twilio_is_transient() -> None:
    async with TwilioSmsSender(
        "AC" + "0" * 32, "token", api_base=f"http://127.0.0.1:{free_port()}", timeout=2.0
    ) as nowhere:
        with pytest.raises(ProviderTransient) as caught:
            await send(nowhere)

    assert caught.value.code == "network"


async def test_redact_blanks_the_stored_body(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    sent = await send(sender)

    await sender.redact_sms(sent.provider_id)

    assert standin.redactions == [sent.provider_id]
    assert standin.store[sent.provider_id]["body"] == ""
    assert [r["form"] for r in standin.requests if r["method"] == "POST"][-1] == {"Body": ""}
    assert standin.messages[0]["body"] == CANARY  # the record of what was sent stays


async def test_redact_also_deletes_the_media_of_an_mms(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    sent = await send(sender)
    standin.add_media(sent.provider_id, "image/jpeg", b"\xff\xd8 photo")
    standin.add_media(sent.provider_id, "image/png", b"\x89PNG scan")
    other = await send(sender)
    standin.add_media(other.provider_id, "image/jpeg", b"someone else's")

    await sender.redact_sms(sent.provider_id)

    assert standin.media[sent.provider_id] == {}
    assert len(standin.media[other.provider_id]) == 1
    assert [r["status"] for r in standin.requests if r["method"] == "DELETE"] == [204, 204]


async def test_media_is_fetched_with_credentials_that_never_reach_the_cdn(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    url = standin.add_media("MM" + "a" * 32, "image/jpeg", b"\xff\xd8 the photo")

    media = await sender.fetch_media(url, max_bytes=1000)

    assert (media.content_type, media.data) == ("image/jpeg", b"\xff\xd8 the photo")
    api, cdn = [r for r in standin.requests if r["method"] == "GET"]
    assert api["authorized"] and api["status"] == 307
    assert cdn["path"] == "/cdn" and cdn["authorized"] is False


@pytest.mark.parametrize("make_url", [
    lambda s: "https://evil.example/2010-04-01/Accounts/" + s.account_sid + "/Messages/MM" + "a" * 32 + "/Media/ME"
    + "b" * 32,
    lambda s: s.base_url + "/2010-04-01/Accounts/AC" + "0" * 32 + "/Messages/MM" + "a" * 32 + "/Media/ME" + "b" * 32,
    lambda s: s.base_url + "/2010-04-01/Accounts/" + s.account_sid + "/Messages/MM" + "a" * 32 + ".json",
    lambda s: s.base_url + "/2010-04-01/Accounts/" + s.account_sid + "/Messages/MM" + "a" * 32 + "/Media/ME"
    + "b" * 32 + "?redirect=https://evil.example",
    lambda s: s.base_url.replace("http://", "https://") + "/2010-04-01/Accounts/" + s.account_sid
    + "/Messages/MM" + "a" * 32 + "/Media/ME" + "b" * 32,
])
async def test_a_url_that_is_not_this_accounts_media_is_refused_without_a_request(
    standin: TwilioStandIn, sender: TwilioSmsSender, make_url: Callable[[TwilioStandIn], str]
) -> None:
    with pytest.raises(ProviderPermanent) as caught:
        await sender.fetch_media(make_url(standin), max_bytes=1000)
    assert caught.value.code == "media_url"
    assert standin.requests == []


async def test_media_over_the_size_cap_is_refused(standin: TwilioStandIn, sender: TwilioSmsSender) -> None:
    url = standin.add_media("MM" + "a" * 32, "video/mp4", b"x" * 5000)
    with pytest.raises(ProviderPermanent) as caught:
        await sender.fetch_media(url, max_bytes=4999)
    assert caught.value.code == "media_too_large"


async def test_media_gone_is_permanent_and_an_outage_transient(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    url = standin.add_media("MM" + "a" * 32, "image/jpeg", b"photo")
    standin.fail_next(status=503)
    with pytest.raises(ProviderTransient):
        await sender.fetch_media(url, max_bytes=1000)
    standin.media.clear()
    with pytest.raises(ProviderPermanent) as caught:
        await sender.fetch_media(url, max_bytes=1000)
    assert caught.value.code == "404"


async def test_redacting_an_unknown_message_is_permanent(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    with pytest.raises(ProviderPermanent) as caught:
        await sender.redact_sms("SM" + "f" * 32)

    assert caught.value.code == "20404"
    assert standin.redactions == []


async def test_redact_during_outage_is_transient(
    standin: TwilioStandIn, sender: TwilioSmsSender
) -> None:
    sent = await send(sender)
    standin.fail_next(status=503)

    with pytest.raises(ProviderTransient):
        await sender.redact_sms(sent.provider_id)

    assert standin.store[sent.provider_id]["body"] == CANARY


async def _failing_send(standin: TwilioStandIn, sender: TwilioSmsSender, case: str) -> None:
    scripts: dict[str, Callable[[], None]] = {
        "429": lambda: standin.fail_next(status=429, code=20429),
        "500": lambda: standin.fail_next(status=500),
        "21610": lambda: standin.opted_out.add(TO),
        "21211": lambda: standin.fail_next(status=400, code=21211, message=f"bad To {TO}"),
        "detail": lambda: standin.fail_next(status=400, code=21617, message=CANARY),
    }
    if case == "timeout":
        standin.delay_next(3.0)
        async with TwilioSmsSender(
            standin.account_sid, standin.auth_token, api_base=standin.base_url, timeout=0.3
        ) as impatient:
            await send(impatient)
        return
    if case == "auth":
        async with TwilioSmsSender(
            standin.account_sid, "wrong", api_base=standin.base_url
        ) as wrong:
            await send(wrong)
        return
    scripts[case]()
    await send(sender)


@pytest.mark.parametrize("case", ["429", "500", "21610", "21211", "detail", "timeout", "auth"])
async def test_errors_and_logs_never_carry_body_or_number(
    standin: TwilioStandIn,
    sender: TwilioSmsSender,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="outbound")

    with pytest.raises(ProviderError) as caught:
        await _failing_send(standin, sender, case)

    shown = str(caught.value) + repr(caught.value) + str(caught.value.args)
    assert CANARY not in shown and "918273" not in shown
    assert TO not in shown and "1234567" not in shown
    ours = [r for r in caplog.records if r.name.startswith("outbound")]
    assert ours, "the adapter should log the failure"
    for record in ours:
        logged = record.getMessage() + repr(record.__dict__)
        assert "918273" not in logged and "1234567" not in logged


async def test_success_log_masks_the_number(
    sender: TwilioSmsSender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outbound")

    await send(sender)

    ours = [r for r in caplog.records if r.name.startswith("outbound")]
    assert [getattr(r, "to", None) for r in ours] == [mask_number(TO)]
    assert all("918273" not in repr(r.__dict__) for r in ours)


def test_mask_number_keeps_only_the_ends() -> None:
    assert mask_number("+15551234567") == "+1******4567"
    assert mask_number("12345") == "*****"


# -- the stand-in's webhooks, as the gateway will receive them ----------------------------

Receiver = tuple[str, list[dict[str, str]]]


@pytest.fixture
async def receiver(
    aiohttp_server: AiohttpServer,
    standin: TwilioStandIn,
) -> Receiver:
    """A webhook endpoint that validates signatures over the public URL, as the gateway must."""
    received: list[dict[str, str]] = []
    validator = RequestValidator(standin.auth_token)

    async def hook(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        public = "https://hushlink.example" + request.path_qs
        if not validator.validate(public, form, request.headers.get(SIGNATURE_HEADER, "")):
            return web.Response(status=403)
        received.append(form)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/twilio/status", hook)
    app.router.add_post("/twilio/inbound", hook)
    server = await aiohttp_server(app)
    return str(server.make_url("/")).rstrip("/"), received


async def test_status_callback_is_signed_over_the_public_url(
    standin: TwilioStandIn, sender: TwilioSmsSender, receiver: Receiver
) -> None:
    actual_base, received = receiver
    sent = await send(sender)

    status = await standin.send_status(sent.provider_id, "delivered", deliver_to=actual_base)

    assert status == 204
    callback = standin.callbacks[-1]
    assert callback["url"] == PUBLIC_CALLBACK
    assert callback["actual_url"] == actual_base + "/twilio/status?outbox=42"
    assert RequestValidator(standin.auth_token).validate(
        PUBLIC_CALLBACK, callback["params"], callback["signature"]
    )
    assert received == [
        {
            "MessageSid": sent.provider_id,
            "SmsSid": sent.provider_id,
            "MessageStatus": "delivered",
            "SmsStatus": "delivered",
            "AccountSid": standin.account_sid,
            "From": FROM,
            "To": TO,
            "ApiVersion": "2010-04-01",
        }
    ]
    assert standin.store[sent.provider_id]["status"] == "delivered"


async def test_failed_status_carries_error_code_and_forgery_is_refused(
    standin: TwilioStandIn, sender: TwilioSmsSender, receiver: Receiver
) -> None:
    actual_base, received = receiver
    standin.deliver_to = actual_base
    sent = await send(sender)

    assert await standin.send_status(sent.provider_id, "undelivered", error_code=30005) == 204
    forged = await standin.send_status(sent.provider_id, "delivered", signing_token="guess")

    assert forged == 403
    assert [(r["MessageStatus"], r.get("ErrorCode")) for r in received] == [
        ("undelivered", "30005")
    ]


async def test_inbound_sms_helpers_sign_like_twilio(
    standin: TwilioStandIn, receiver: Receiver
) -> None:
    actual_base, received = receiver
    url = "https://hushlink.example/twilio/inbound"
    params = inbound_sms_params(
        frm=TO, to=FROM, body="STOP", account_sid=standin.account_sid, messaging_service_sid=SERVICE
    )
    validator = RequestValidator(standin.auth_token)

    assert validator.validate(url, params, sign(url, params, standin.auth_token))
    assert not validator.validate(url, {**params, "Body": "START"}, sign(url, params, "x"))
    assert re.fullmatch(r"SM[0-9a-f]{32}", params["MessageSid"])

    status = await standin.send_inbound_sms(
        url, frm=TO, to=FROM, body="STOP", deliver_to=actual_base
    )
    assert status == 204
    assert received[-1]["Body"] == "STOP" and received[-1]["From"] == TO
