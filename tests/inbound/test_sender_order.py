"""One sender's messages are handled in the order they arrived, and an opt-out is never undone by
an earlier message processed later (issue 9; CTIA and TCPA: STOP is honoured from when it is sent)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from gateway.clock import FrozenClock
from gateway.messaging.contacts import OPTED_IN, OPTED_OUT
from gateway.security.crypto import Keyring
from gateway.storage.store import Store
from tests.conftest import make_config
from tests.inbound.test_batching import until
from tests.portal.test_sandbox_gating import client_for, inject_reply
from tests.support.harness import ORG_NUMBER, Gateway

# Each new number sends these two texts, the second once the first's webhook got its 200.
SEQUENCES = [("YES", "STOP"), ("START", "STOP"), ("STOP", "START")]
NUMBERS = [f"+1555888{i:04d}" for i in range(30)]


async def _all_processed(gw: Gateway, n: int) -> bool:
    done = await gw.store.inbound_events.count_documents({"state": {"$ne": "pending"}})
    return done == n


async def test_the_last_keyword_of_each_new_number_wins_with_concurrent_workers(gw: Gateway) -> None:
    processor = gw.runtime.processor
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop, 4))  # as `serve` runs it: several loops, batches
    plan = {phone: SEQUENCES[i % len(SEQUENCES)] for i, phone in enumerate(NUMBERS)}

    async def texts(phone: str) -> None:
        for body in plan[phone]:
            await gw.inbound_sms(body, frm=phone)  # signed webhook; returns after its 200

    try:
        await asyncio.sleep(0.05)  # the loops are running
        # One number after the other: each pair meets the workers idle, so its two events are
        # taken by two loops at once (the race that lost opt-outs; numbers sent all at once land
        # in batches, which kept a sender's order already).
        for phone in NUMBERS:
            await texts(phone)
        await until(lambda: _all_processed(gw, 2 * len(NUMBERS)))
    finally:
        stop.set()
        await task
    wrong: list[Any] = []
    for phone, (_, last) in plan.items():
        found = await gw.services.contacts.by_phone(gw.org.id, phone)
        assert found is not None
        want = OPTED_OUT if last == "STOP" else OPTED_IN
        if found.consent.get("sms", {}).get("state") != want:
            wrong.append((plan[phone], found.consent.get("sms")))
    assert not wrong, f"{len(wrong)} of {len(NUMBERS)} numbers ended in the wrong state: {wrong}"
    # Every event finished (none failed or was left behind), each exactly once.
    assert await gw.store.inbound_events.count_documents({"state": "done"}) == 2 * len(NUMBERS)
    assert await gw.store.messages.count_documents({"direction": "inbound"}) == 2 * len(NUMBERS)


async def test_a_later_message_waits_for_an_earlier_one_that_is_being_retried(gw: Gateway) -> None:
    # STOP then START from one number; STOP's first attempt failed and it waits for its retry (as
    # after a database error), so START alone is due. START must not run before STOP: that would
    # leave the contact opted out although its last text was START.
    phone = NUMBERS[0]
    await gw.inbound_sms("STOP", frm=phone)
    await gw.inbound_sms("START", frm=phone)
    first, second = [d async for d in gw.store.inbound_events.find({}, sort=[("_id", 1)])]
    retry_at = gw.clock.now() + timedelta(seconds=30)
    await gw.store.inbound_events.update_one({"_id": first["_id"]}, {"$set": {"next_attempt_at": retry_at}})
    await gw.runtime.processor.run_once()
    later = await gw.store.inbound_events.find_one({"_id": second["_id"]})
    assert later is not None
    # Given back unhandled, not counted as an attempt, due again with the earlier one.
    assert later["state"] == "pending" and later["attempts"] == 0 and later["next_attempt_at"] == retry_at
    assert await gw.store.messages.count_documents({"direction": "inbound"}) == 0
    gw.clock.advance(31)
    await gw.drain()
    found = await gw.services.contacts.by_phone(gw.org.id, phone)
    assert found is not None and found.consent["sms"]["state"] == OPTED_IN
    log = [e["state"] for e in (await gw.store.contacts.find_one({"_id": found.id}))["consent_log"]]
    assert log == [OPTED_OUT, OPTED_IN]
    # START found the contact opted out, so it is confirmed (once).
    assert [str(m["body"]) for m in gw.sms_to(phone)] == [
        "Riverside Clinic: you are subscribed to messages again. Reply STOP to opt out."]


async def test_an_opt_in_from_an_earlier_message_does_not_undo_a_later_opt_out(gw: Gateway) -> None:
    # The consent guard on its own (events stored without a sender, e.g. by an older build, are
    # not ordered by the processor): the earlier START, applied after the later STOP, changes nothing.
    contacts = gw.services.contacts
    contact, _ = await contacts.find_or_create(gw.org.id, phone=NUMBERS[1])
    at = gw.clock.now()
    assert await contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_OUT, "sms:keyword", at=at,
                                      event_id="000000000000000000000002")
    assert not await contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_IN, "sms:keyword", at=at,
                                          event_id="000000000000000000000001")
    assert (await contacts.get(gw.org.id, contact.id)).opted_out("sms")
    # A repeated STOP moves the mark forward, so an opt-in that arrived between the two is stale too.
    assert not await contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_OUT, "sms:keyword", at=at,
                                          event_id="000000000000000000000009")
    assert not await contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_IN, "sms:keyword", at=at,
                                          event_id="000000000000000000000005")
    assert (await contacts.get(gw.org.id, contact.id)).opted_out("sms")
    # A change made now (staff, a provider report) is newer than both.
    assert await contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_IN, "staff")
    log = [e["state"] for e in (await gw.store.contacts.find_one({"_id": contact.id}))["consent_log"]]
    assert log == [OPTED_OUT, OPTED_IN]


async def test_sandbox_replies_carry_their_sender_as_webhooks_do(
        store: Store, keyring: Keyring, clock: FrozenClock, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    # The quick start's sandbox answers as a phone through the same intake: its texts are ordered
    # by sender like Twilio's (the key is the contacts' blind index of the number).
    async with client_for(make_config(None), store, keyring, clock, aiohttp_client) as (client, services):
        assert await inject_reply(client, services) == 303
        event = await store.inbound_events.find_one({"provider": "sandbox"})
        assert event is not None
        org = await services.orgs.by_recipient(ORG_NUMBER, None)
        assert event["sender"] == services.contacts.phone_index(org.id, "+15551230001")
