"""Twilio webhooks end to end: signature over the public URL, durable intake, status callbacks."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.clock import FrozenClock
from gateway.ids import new_id
from gateway.messaging.delivery import STATUS_RANK
from gateway.ports import SentSms
from gateway.runtime.app import build_dispatcher, build_runtime, create_app
from gateway.runtime.config import Config
from gateway.runtime.services import build_services
from gateway.security.api_keys import ApiKeys
from gateway.security.crypto import Keyring
from gateway.storage.store import Store
from outbound.twilio_sms import TwilioSmsSender
from tests.conftest import make_config
from tests.support.database import SecantusServer
from tests.support.harness import CLIENT_PHONE, ORG_NUMBER, PUBLIC_URL, Gateway
from tests.support.twilio_standin import TwilioStandIn, inbound_sms_params, new_sid, sign

SMS_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/status"
EMPTY_TWIML_TAIL = "<Response/>"


async def count(gw: Gateway, collection: str, query: dict[str, Any] | None = None) -> int:
    return int(await getattr(gw.store, collection).count_documents(query or {}))


async def nothing_written(gw: Gateway) -> None:
    for collection in ("inbound_events", "messages", "contacts", "threads", "outbox"):
        assert await count(gw, collection) == 0, collection


async def assert_empty_twiml(resp: Any) -> None:
    assert resp.status == 200, await resp.text()
    assert resp.content_type in ("text/xml", "application/xml")
    text = (await resp.text()).strip()
    assert text.endswith(EMPTY_TWIML_TAIL)
    assert "<Message" not in text


async def send_and_get_sid(gw: Gateway, **payload: Any) -> tuple[str, str]:
    """Send an SMS through the API and the dispatcher; return (message id, Twilio sid)."""
    data = await gw.api_send(**payload)
    await gw.drain()
    return data["id"], str(gw.twilio.messages[-1]["sid"])


async def api_message(gw: Gateway, message_id: str) -> dict[str, Any]:
    resp = await gw.client.get(f"/api/v1/messages/{message_id}", headers=gw.auth())
    assert resp.status == 200
    data: dict[str, Any] = await resp.json()
    return data


def history(data: dict[str, Any]) -> list[str]:
    return [h["status"] for h in data["status_history"]]


# -- signature ----------------------------------------------------------------------------------


async def test_valid_signature_over_public_url_is_accepted_and_stored(gw: Gateway) -> None:
    params = gw.sms_params(body="Hello there")
    resp = await gw.post_signed(SMS_PATH, params)
    await assert_empty_twiml(resp)
    event = await gw.store.inbound_events.find_one({"provider_id": params["MessageSid"]})
    assert event is not None
    assert event["state"] == "pending" and event["org_id"] == gw.org.id
    assert "payload" in event  # sealed, kept until processed


async def test_signature_over_the_servers_own_url_is_rejected(gw: Gateway) -> None:
    # Behind a proxy request.url is not what Twilio signed; only PUBLIC_URL + path counts.
    assert gw.server_url != PUBLIC_URL
    params = gw.sms_params(body="Hello there")
    sig = sign(gw.server_url + SMS_PATH, params, gw.twilio.auth_token)
    resp = await gw.post_signed(SMS_PATH, params, signature=sig)
    assert resp.status == 403
    await nothing_written(gw)


async def test_missing_signature_is_rejected(gw: Gateway) -> None:
    params = gw.sms_params(body="Hello there")
    resp = await gw.client.post(SMS_PATH, data=params)
    assert resp.status == 403
    resp = await gw.post_signed(SMS_PATH, params, signature="")
    assert resp.status == 403
    await nothing_written(gw)


async def test_wrong_token_is_rejected(gw: Gateway) -> None:
    params = gw.sms_params(body="Hello there")
    resp = await gw.post_signed(SMS_PATH, params, token="0" * 32)
    assert resp.status == 403
    await nothing_written(gw)


@pytest.mark.parametrize("field", ["Body", "From", "To", "MessageSid"])
async def test_param_mutated_after_signing_is_rejected(gw: Gateway, field: str) -> None:
    params = gw.sms_params(body="Hello there")
    sig = sign(PUBLIC_URL + SMS_PATH, params, gw.twilio.auth_token)
    tampered = dict(params)
    tampered[field] = {"Body": "Hello therE", "From": "+15551239999", "To": "+15005550007",
                       "MessageSid": new_sid("SM")}[field]
    resp = await gw.post_signed(SMS_PATH, tampered, signature=sig)
    assert resp.status == 403
    await nothing_written(gw)


async def test_extra_param_added_after_signing_is_rejected(gw: Gateway) -> None:
    params = gw.sms_params(body="Hello there")
    sig = sign(PUBLIC_URL + SMS_PATH, params, gw.twilio.auth_token)
    resp = await gw.post_signed(SMS_PATH, {**params, "MediaUrl0": "https://evil.example/x"},
                                signature=sig)
    assert resp.status == 403
    await nothing_written(gw)


async def test_signature_valid_but_other_account_is_rejected(gw: Gateway) -> None:
    params = gw.sms_params(body="Hello there")
    params["AccountSid"] = new_sid("AC")
    resp = await gw.post_signed(SMS_PATH, params)
    assert resp.status == 403
    await nothing_written(gw)


# -- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize("sid", ["", "SM123", "XX" + "0" * 32, "SM" + "g" * 32, "SM" + "0" * 33])
async def test_malformed_message_sid_is_400(gw: Gateway, sid: str) -> None:
    params = gw.sms_params(body="Hello there")
    params["MessageSid"] = sid
    resp = await gw.post_signed(SMS_PATH, params)
    assert resp.status == 400
    await nothing_written(gw)


async def test_missing_from_is_400(gw: Gateway) -> None:
    params = gw.sms_params(body="Hello there")
    del params["From"]
    resp = await gw.post_signed(SMS_PATH, params)
    assert resp.status == 400
    await nothing_written(gw)


async def test_wrong_content_type_is_415(gw: Gateway) -> None:
    params = gw.sms_params(body="Hello there")
    sig = sign(PUBLIC_URL + SMS_PATH, params, gw.twilio.auth_token)
    resp = await gw.client.post(SMS_PATH, json=params, headers={"X-Twilio-Signature": sig})
    assert resp.status == 415
    await nothing_written(gw)


@pytest.mark.parametrize("num_media", ["11", "1000", "-1", "many"])
async def test_bad_num_media_is_400(gw: Gateway, num_media: str) -> None:
    params = gw.sms_params(body="Hello there", NumMedia=num_media)
    resp = await gw.post_signed(SMS_PATH, params)
    assert resp.status == 400
    await nothing_written(gw)


async def test_ten_media_is_accepted(gw: Gateway) -> None:
    params = gw.sms_params(body="photos", NumMedia="10")
    await assert_empty_twiml(await gw.post_signed(SMS_PATH, params))
    assert await count(gw, "inbound_events") == 1


async def test_overlong_field_is_413_and_not_stored(gw: Gateway) -> None:
    params = gw.sms_params(body="x" * 6000)
    resp = await gw.post_signed(SMS_PATH, params)
    assert resp.status == 413
    await nothing_written(gw)


@pytest.fixture
async def small_gw(store: Store, keyring: Keyring, clock: FrozenClock, twilio: TwilioStandIn,
                   aiohttp_client: Any) -> AsyncIterator[Gateway]:
    """A gateway whose server.max_body_bytes is 2 KiB."""
    services = build_services(make_config(twilio, max_body_bytes=2048), store, keyring, clock)
    sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url, timeout=3)
    runtime = build_runtime(services, sms=sender)
    client = await aiohttp_client(create_app(runtime, workers=False))
    org = await services.orgs.create("Riverside Clinic", ORG_NUMBER)
    key, _ = await ApiKeys(store, clock).create(org.id, "tests")
    yield Gateway(client, services, runtime, twilio, clock, org, key)
    await sender.close()


async def test_body_over_max_body_bytes_is_413(small_gw: Gateway) -> None:
    gw = small_gw
    ok = gw.sms_params(body="short")
    await assert_empty_twiml(await gw.post_signed(SMS_PATH, ok))
    big = gw.sms_params(body="y" * 3000)  # under the per-field cap, over the 2 KiB body cap
    resp = await gw.post_signed(SMS_PATH, big)
    assert resp.status == 413
    assert await count(gw, "inbound_events") == 1
    assert await count(gw, "inbound_events", {"provider_id": big["MessageSid"]}) == 0


# -- duplicates ---------------------------------------------------------------------------------


async def secure_thread(gw: Gateway) -> None:
    await gw.api_send(body="Your lab results are ready.", secure=True)
    await gw.drain()
    assert len(gw.sms_to(CLIENT_PHONE)) == 1


async def test_sequential_duplicate_delivery_is_stored_once(gw: Gateway) -> None:
    await secure_thread(gw)
    params = gw.sms_params(body="Thank you, what do they say?")
    for _ in range(3):
        await assert_empty_twiml(await gw.post_signed(SMS_PATH, params))
    await gw.drain()
    await assert_empty_twiml(await gw.post_signed(SMS_PATH, params))  # a retry after processing
    await gw.drain()
    assert await count(gw, "inbound_events") == 1
    assert await count(gw, "messages", {"direction": "inbound"}) == 1
    assert len(gw.sms_to(CLIENT_PHONE)) == 2  # the notice and one acknowledgement


async def test_concurrent_duplicate_delivery_is_stored_once(gw: Gateway) -> None:
    await secure_thread(gw)
    params = gw.sms_params(body="Thank you, what do they say?")
    responses = await asyncio.gather(*(gw.post_signed(SMS_PATH, params) for _ in range(5)))
    for resp in responses:
        await assert_empty_twiml(resp)
    await gw.drain()
    assert await count(gw, "inbound_events") == 1
    assert await count(gw, "messages", {"direction": "inbound"}) == 1
    assert len(gw.sms_to(CLIENT_PHONE)) == 2


# -- routing ------------------------------------------------------------------------------------


async def test_unknown_org_number_is_stored_unroutable(gw: Gateway) -> None:
    params = gw.sms_params(body="Hello?", to="+15005550999")
    await assert_empty_twiml(await gw.post_signed(SMS_PATH, params))
    event = await gw.store.inbound_events.find_one({"provider_id": params["MessageSid"]})
    assert event is not None
    assert event["state"] == "unroutable" and event["org_id"] is None
    await gw.drain()
    assert await count(gw, "contacts") == 0
    assert await count(gw, "messages") == 0
    assert gw.twilio.messages == []
    event = await gw.store.inbound_events.find_one({"_id": event["_id"]})
    assert event is not None and event["state"] == "unroutable"  # kept for review


async def test_routing_by_messaging_service_sid(gw: Gateway) -> None:
    service = "MG" + "ab" * 16
    other = await gw.services.orgs.create("Lakeside Dental", messaging_service_sid=service)
    params = gw.sms_params(body="Is my cleaning on Friday?", to="+15005550123",
                           MessagingServiceSid=service)
    await assert_empty_twiml(await gw.post_signed(SMS_PATH, params))
    event = await gw.store.inbound_events.find_one({"provider_id": params["MessageSid"]})
    assert event is not None and event["org_id"] == other.id
    await gw.drain()
    contact = await gw.services.contacts.by_phone(other.id, CLIENT_PHONE)
    assert contact is not None
    assert await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE) is None
    msg = await gw.store.messages.find_one({"direction": "inbound"})
    assert msg is not None and msg["org_id"] == other.id


async def test_number_wins_over_messaging_service(gw: Gateway) -> None:
    service = "MG" + "cd" * 16
    await gw.services.orgs.create("Lakeside Dental", messaging_service_sid=service)
    params = gw.sms_params(body="hello", to=ORG_NUMBER, MessagingServiceSid=service)
    await assert_empty_twiml(await gw.post_signed(SMS_PATH, params))
    event = await gw.store.inbound_events.find_one({})
    assert event is not None and event["org_id"] == gw.org.id


# -- database down ------------------------------------------------------------------------------


async def test_database_down_gives_503_so_twilio_retries(
        outage_gw: tuple[Gateway, SecantusServer]) -> None:
    gw, server = outage_gw
    assert (await gw.client.get("/readyz")).status == 200
    await assert_empty_twiml(await gw.post_signed(SMS_PATH, gw.sms_params(body="before")))
    server.stop()
    resp = await gw.post_signed(SMS_PATH, gw.sms_params(body="during the outage"))
    assert resp.status == 503
    assert "Traceback" not in await resp.text()
    status = {"MessageSid": new_sid("SM"), "MessageStatus": "delivered",
              "AccountSid": gw.twilio.account_sid}
    assert (await gw.post_signed(STATUS_PATH, status)).status == 503
    assert (await gw.client.get("/readyz")).status == 503
    assert (await gw.client.get("/healthz")).status == 200


# -- status callbacks ---------------------------------------------------------------------------


async def test_status_moves_forward_and_lands_once(gw: Gateway) -> None:
    mid, sid = await send_and_get_sid(gw, body="Reminder: appointment Tuesday.", secure=False)
    data = await api_message(gw, mid)
    assert data["status"] == "accepted"
    assert await gw.status(sid, "sent") == 200
    assert (await api_message(gw, mid))["status"] == "sent"
    assert await gw.status(sid, "delivered") == 200
    data = await api_message(gw, mid)
    assert data["status"] == "delivered"
    assert history(data) == ["queued", "accepted", "sent", "delivered"]
    assert gw.twilio.callbacks[-1]["text"].strip().endswith(EMPTY_TWIML_TAIL)


async def test_duplicate_status_callback_is_a_no_op(gw: Gateway) -> None:
    mid, sid = await send_and_get_sid(gw, secure=True)
    for _ in range(3):
        assert await gw.status(sid, "delivered") == 200
    data = await api_message(gw, mid)
    assert data["status"] == "delivered"
    assert history(data).count("delivered") == 1
    assert await count(gw, "delivery_events", {"provider_id": sid}) == 1
    statuses = [a for a in await gw.audit_actions() if a == "message.status"]
    assert len(statuses) == 1


async def test_out_of_order_status_never_regresses(gw: Gateway) -> None:
    mid, sid = await send_and_get_sid(gw, secure=True)
    await gw.status(sid, "delivered")
    await gw.status(sid, "sent")
    await gw.status(sid, "queued")
    data = await api_message(gw, mid)
    assert data["status"] == "delivered"
    assert sorted(history(data)) == sorted(["queued", "accepted", "delivered", "sent"])


def status_sequences() -> list[list[str]]:
    statuses = ["queued", "sending", "sent", "delivered", "undelivered", "failed"]
    rng = random.Random(20260105)
    perms = list(itertools.permutations(statuses))
    chosen = [list(p) for p in rng.sample(perms, 6)]
    chosen.append(["delivered", "undelivered", "failed", "sent", "sending", "queued"])
    for _ in range(5):  # subsets too, so the highest status seen is not always "delivered"
        chosen.append(rng.sample(statuses, rng.randint(1, 5)))
    chosen.append(["failed", "sending", "undelivered", "sent"])
    return chosen


async def test_any_callback_order_ends_at_the_highest_status(gw: Gateway) -> None:
    for seq in status_sequences():
        mid, sid = await send_and_get_sid(gw, secure=True)
        for status in seq:
            assert await gw.status(sid, status) == 200, seq
        data = await api_message(gw, mid)
        top = max(STATUS_RANK[s] for s in [*seq, "accepted"])
        assert STATUS_RANK[data["status"]] == top, (seq, data["status"])
        # ties (undelivered/failed) keep whichever arrived first
        assert data["status"] == next(s for s in ["accepted", *seq] if STATUS_RANK[s] == top), seq
        seen = history(data)
        assert len(seen) == len(set(seen)), seq
        assert set(seq) <= set(seen), seq


async def test_error_21610_in_status_callback_opts_the_contact_out(gw: Gateway) -> None:
    mid, sid = await send_and_get_sid(gw, secure=True)
    assert await gw.status(sid, "undelivered", "21610") == 200
    data = await api_message(gw, mid)
    assert data["status"] == "undelivered" and data["error_code"] == "21610"
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None and contact.opted_out("sms")
    assert "consent.opt_out" in await gw.audit_actions()
    err = await gw.api_send(expect=422, body="Another one")
    assert err["error"]["code"] == "opted_out"
    await gw.drain()
    assert len(gw.twilio.messages) == 1


class CallbackFirstSender:
    """The real Twilio sender, but Twilio's status callback lands before send_sms returns."""

    def __init__(self, inner: TwilioSmsSender, gw: Gateway, statuses: list[str]) -> None:
        self._inner = inner
        self._gw = gw
        self._statuses = statuses
        self.callback_codes: list[int] = []

    async def send_sms(self, *, from_number: str, to_number: str, body: str,
                       status_callback: str | None) -> SentSms:
        sent = await self._inner.send_sms(from_number=from_number, to_number=to_number, body=body,
                                          status_callback=status_callback)
        for status in self._statuses:
            self.callback_codes.append(await self._gw.status(sent.provider_id, status))
        return sent

    async def redact_sms(self, provider_id: str) -> None:
        await self._inner.redact_sms(provider_id)


async def test_callback_before_provider_id_is_recorded_is_applied_later(gw: Gateway) -> None:
    data = await gw.api_send(secure=True)
    sender = TwilioSmsSender(gw.twilio.account_sid, gw.twilio.auth_token,
                             api_base=gw.twilio.base_url, timeout=3)
    racing = CallbackFirstSender(sender, gw, ["sent", "delivered"])
    try:
        dispatcher = build_dispatcher(gw.services, racing, owner="race")
        assert await dispatcher.run_once() == 1
    finally:
        await sender.close()
    assert racing.callback_codes == [200, 200]
    msg = await api_message(gw, data["id"])
    assert msg["status"] == "delivered"
    assert sorted(history(msg)) == sorted(["queued", "accepted", "sent", "delivered"])
    sid = str(gw.twilio.messages[-1]["sid"])
    assert await count(gw, "delivery_events", {"provider_id": sid}) == 2


async def test_status_stored_but_not_applied_is_applied_on_twilios_retry(gw: Gateway) -> None:
    # The first callback was stored, then the database failed before the message moved, so the
    # gateway answered 503. Twilio's retry must finish the job, not be dropped as a duplicate.
    mid, sid = await send_and_get_sid(gw, secure=True)
    await gw.store.delivery_events.insert_one({
        "_id": new_id(), "provider_id": sid, "status": "undelivered", "error_code": "21610",
        "at": gw.clock.now(),
    })
    assert (await api_message(gw, mid))["status"] == "accepted"
    assert await gw.status(sid, "undelivered", "21610") == 200
    data = await api_message(gw, mid)
    assert data["status"] == "undelivered" and history(data).count("undelivered") == 1
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None and contact.opted_out("sms")
    assert await count(gw, "delivery_events", {"provider_id": sid}) == 1
    assert await gw.status(sid, "undelivered", "21610") == 200  # and again: still harmless
    assert (await gw.audit_actions()).count("message.status") == 1
    assert (await gw.audit_actions()).count("consent.opt_out") == 1


async def test_forged_status_callback_is_rejected(gw: Gateway) -> None:
    mid, sid = await send_and_get_sid(gw, secure=True)
    before = await api_message(gw, mid)
    code = await gw.twilio.send_status(sid, "failed", error_code=21610, deliver_to=gw.server_url,
                                       signing_token="f" * 32)
    assert code == 403
    after = await api_message(gw, mid)
    assert after == before
    assert await count(gw, "delivery_events") == 0
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None and not contact.opted_out("sms")


async def test_status_callback_with_unknown_status_is_400(gw: Gateway) -> None:
    mid, sid = await send_and_get_sid(gw, secure=True)
    params = {"MessageSid": sid, "MessageStatus": "exploded", "AccountSid": gw.twilio.account_sid}
    resp = await gw.post_signed(STATUS_PATH, params)
    assert resp.status == 400
    assert await count(gw, "delivery_events") == 0
    assert (await api_message(gw, mid))["status"] == "accepted"


async def test_status_callback_for_unknown_sid_changes_nothing(gw: Gateway) -> None:
    mid, _ = await send_and_get_sid(gw, secure=True)
    stray = inbound_sms_params(frm=ORG_NUMBER, to=CLIENT_PHONE, body="", account_sid=gw.twilio.account_sid)
    params = {"MessageSid": stray["MessageSid"], "MessageStatus": "delivered",
              "AccountSid": gw.twilio.account_sid}
    await assert_empty_twiml(await gw.post_signed(STATUS_PATH, params))
    assert (await api_message(gw, mid))["status"] == "accepted"


async def test_config_has_public_url_distinct_from_server(gw: Gateway) -> None:
    config: Config = gw.services.config
    assert config.server.public_url == PUBLIC_URL
    # The dispatcher told Twilio to call back at the public URL, not the test server.
    assert gw.twilio.messages == []
    await send_and_get_sid(gw, secure=True)
    assert gw.twilio.messages[-1]["status_callback"] == PUBLIC_URL + STATUS_PATH
