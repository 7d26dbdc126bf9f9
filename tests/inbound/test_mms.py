"""Inbound MMS: every media item is downloaded from Twilio, sealed as an attachment of the
message, shown in both portals, and (with provider redaction) deleted at Twilio.

The Twilio stand-in serves the media at the MediaUrl its webhook names, behind HTTP Basic auth,
with a redirect to another origin as Twilio's CDN does.
"""

from __future__ import annotations

from typing import Any

import bson

from inbound.processor import MAX_ATTEMPTS
from tests.inbound.test_batching import claim_all
from tests.portal.test_staff_support import signed_in
from tests.support.harness import CLIENT_PHONE, ORG_NUMBER, Gateway

PHOTO = b"\xff\xd8\xff\xe0 canary-5e1f photo of my insurance card"
SCAN = b"\x89PNG\r\n\x1a\n canary-77b0 scan of the referral letter"


async def send_mms(gw: Gateway, body: str, media: list[tuple[str, bytes]], frm: str = CLIENT_PHONE) -> dict[str, str]:
    params = gw.twilio.mms_params(frm=frm, to=ORG_NUMBER, body=body, media=media)
    resp = await gw.post_signed("/webhooks/twilio/sms", params)
    assert resp.status == 200, await resp.text()
    return params


async def the_message(gw: Gateway, params: dict[str, str]) -> dict[str, Any]:
    message = await gw.store.messages.find_one({"provider_id": params["MessageSid"]})
    assert message is not None
    return message


async def attachments_of(gw: Gateway, message_id: str) -> list[dict[str, Any]]:
    return await gw.store.attachments.find({"message_id": message_id}).sort("_id", 1).to_list(None)


async def test_mms_media_are_sealed_as_attachments_and_shown_to_staff_and_client(gw: Gateway) -> None:
    sent = await gw.api_send(body="Please send a photo of your insurance card.", secure=True)
    await gw.drain()
    params = await send_mms(gw, "Here you go", [("image/jpeg", PHOTO), ("image/png", SCAN)])
    await gw.drain()

    message = await the_message(gw, params)
    assert message["thread_id"] == sent["thread_id"] and message["flags"] == ["media:2"]
    stored = await attachments_of(gw, message["_id"])
    assert [(a["content_type"], a["size"]) for a in stored] == [("image/jpeg", len(PHOTO)), ("image/png", len(SCAN))]
    # Sealed: the bytes are in no document in the clear.
    for name in await gw.store.collection_names():
        async for doc in gw.store.collection(name).find({}):
            raw = bson.encode(doc)
            assert b"canary-5e1f" not in raw and b"canary-77b0" not in raw, name
    # The client got a link-only answer, as for any reply on a secure thread.
    assert gw.twilio.messages[-1]["to"] == CLIENT_PHONE and "canary" not in (gw.twilio.messages[-1]["body"] or "")

    browser, _ = await signed_in(gw)
    async with browser as b:
        page = await (await b.get(f"/staff/threads/{sent['thread_id']}")).text()
        assert "media-1.jpg" in page and "media-2.png" in page
        resp = await b.get(f"/staff/threads/{sent['thread_id']}/attachments/{stored[0]['_id']}")
        assert resp.status == 200 and await resp.read() == PHOTO
    assert (await gw.open_link(gw.last_link_token())).status == 303
    resp = await gw.client.get(f"/s/attachments/{stored[1]['_id']}")
    assert resp.status == 200 and await resp.read() == SCAN


async def test_a_media_item_gone_at_twilio_is_flagged_and_the_rest_kept(gw: Gateway) -> None:
    params = await send_mms(gw, "Two photos", [("image/jpeg", PHOTO), ("image/png", SCAN)])
    first = next(iter(gw.twilio.media[params["MessageSid"]]))
    del gw.twilio.media[params["MessageSid"]][first]
    await gw.drain()
    message = await the_message(gw, params)
    assert message["flags"] == ["media:2", "media_unavailable:1"]
    assert [a["content_type"] for a in await attachments_of(gw, message["_id"])] == ["image/png"]


async def test_a_media_outage_retries_the_event_and_stores_the_message_once(gw: Gateway) -> None:
    params = await send_mms(gw, "A photo", [("image/jpeg", PHOTO)])
    gw.twilio.fail_next(status=503)
    await gw.drain()
    assert await gw.store.messages.find_one({"provider_id": params["MessageSid"]}) is None
    event = await gw.store.inbound_events.find_one({"provider_id": params["MessageSid"]})
    assert event["state"] == "pending" and event["error"] == "ProviderTransient"
    gw.clock.advance(seconds=600)
    await gw.drain()
    message = await the_message(gw, params)
    assert [a["size"] for a in await attachments_of(gw, message["_id"])] == [len(PHOTO)]
    assert await gw.store.messages.count_documents({"provider_id": params["MessageSid"]}) == 1


async def test_provider_redaction_deletes_the_media_at_twilio_too(gw: Gateway) -> None:
    await gw.services.orgs.update_policy(gw.org.id, provider_redaction=True)
    params = await send_mms(gw, "canary-9c3d my photo", [("image/jpeg", PHOTO), ("image/png", SCAN)])
    await gw.drain()
    sid = params["MessageSid"]
    message = await the_message(gw, params)
    assert len(await attachments_of(gw, message["_id"])) == 2  # stored here first...
    assert gw.twilio.media[sid] == {}  # ...then gone there
    assert sid in gw.twilio.redactions


async def test_an_mms_in_a_batch_lands_like_one_at_a_time(gw: Gateway) -> None:
    others = ["+15557770001", "+15557770002"]
    await gw.inbound_sms("Plain one", frm=others[0])
    mms = await send_mms(gw, "With a photo", [("image/jpeg", PHOTO)], frm=others[1])
    await gw.inbound_sms("Plain two", frm=others[0])
    after = await gw.inbound_sms("Text after my photo", frm=others[1])
    events = await claim_all(gw)
    assert len(events) == 4
    await gw.runtime.processor.process_batch(events)
    message = await the_message(gw, mms)
    assert [a["size"] for a in await attachments_of(gw, message["_id"])] == [len(PHOTO)]
    assert await gw.store.messages.count_documents({"direction": "inbound"}) == 4
    # The sender's text went the one-by-one way with its MMS, into the same thread.
    theirs = await gw.store.messages.find({"thread_id": message["thread_id"]}).sort("_id", 1).to_list(None)
    assert [m["provider_id"] for m in theirs] == [mms["MessageSid"], after["MessageSid"]]


async def test_a_media_url_outside_this_twilio_account_is_never_fetched(gw: Gateway) -> None:
    params = gw.sms_params(body="Look", sid="MM" + "c" * 32, NumMedia="1",
                           MediaUrl0="https://evil.example/2010-04-01/Accounts/x/Messages/y/Media/z",
                           MediaContentType0="image/jpeg")
    resp = await gw.post_signed("/webhooks/twilio/sms", params)
    assert resp.status == 200
    await gw.drain()
    message = await the_message(gw, params)
    assert message["flags"] == ["media:1", "media_unavailable:1"]
    assert [r for r in gw.twilio.requests if r["method"] == "GET"] == []  # no download was even tried


async def test_a_large_photo_is_stored_whole(gw: Gateway) -> None:
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 6000  # ~1.5 MB: many network chunks
    params = await send_mms(gw, "Big photo", [("image/jpeg", photo)])
    await gw.drain()
    message = await the_message(gw, params)
    [stored] = await attachments_of(gw, message["_id"])
    assert stored["size"] == len(photo)
    opened = await gw.services.vault.open_bytes(gw.org.id, "attachments", stored["_id"], "data", stored["data"])
    assert opened == photo


async def test_on_the_last_try_a_media_outage_no_longer_holds_back_the_text(gw: Gateway) -> None:
    params = await send_mms(gw, "STOP", [("image/jpeg", PHOTO)])
    for _ in range(MAX_ATTEMPTS - 1):
        gw.twilio.fail_next(status=503)
        await gw.drain()
        assert await gw.store.messages.find_one({"provider_id": params["MessageSid"]}) is None
        gw.clock.advance(seconds=3600)
    gw.twilio.fail_next(status=503)
    await gw.drain()
    message = await the_message(gw, params)
    assert message["flags"] == ["media:1", "media_unavailable:1"]
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None and contact.opted_out("sms")  # the STOP it carried took effect
