"""Finished outbox jobs and processed inbound events carry `expire_at` and a TTL index removes them
([outbox] keep_done_days), so storage does not grow with traffic; pending work never expires.

The test SecantusDB runs without its TTL monitor, so these check the index and the field, not the
removal itself."""

from __future__ import annotations

from datetime import timedelta

from tests.support.harness import Gateway

KEEP = timedelta(days=30)  # the default of [outbox] keep_done_days


async def _ttl_fields(coll) -> dict[str, int]:  # type: ignore[no-untyped-def]
    info = await coll.index_information()
    return {spec["key"][0][0]: spec["expireAfterSeconds"] for spec in info.values() if "expireAfterSeconds" in spec}


async def test_outbox_and_inbound_events_have_a_ttl_index_on_expire_at(gw: Gateway) -> None:
    assert (await _ttl_fields(gw.store.outbox)).get("expire_at") == 0
    assert (await _ttl_fields(gw.store.inbound_events)).get("expire_at") == 0


async def test_sent_and_failed_jobs_expire_after_the_window_and_pending_ones_never(gw: Gateway) -> None:
    sent = await gw.api_send(body="Reminder", secure=False)
    failed = await gw.api_send(to={"phone": "+15551230002"}, body="Reminder", secure=False)
    gw.twilio.fail_next(400, code=21211, message="invalid")  # whichever goes first is refused
    await gw.drain()
    now = gw.clock.now()
    jobs = {j["message_id"]: j async for j in gw.store.outbox.find({})}
    assert {jobs[sent["id"]]["state"], jobs[failed["id"]]["state"]} == {"sent", "failed"}
    for job in jobs.values():
        assert job["expire_at"] == now + KEEP
    gw.clock.advance(3600)
    pending = await gw.api_send(body="Later", secure=False)
    job = await gw.store.outbox.find_one({"message_id": pending["id"]})
    assert job is not None and job["state"] == "pending" and "expire_at" not in job


async def test_processed_inbound_events_expire_and_unroutable_ones_are_kept_for_review(gw: Gateway) -> None:
    await gw.inbound_sms("Hello there")
    await gw.inbound_sms("Anyone?", to="+15005550099")  # a number no org owns
    pending = await gw.store.inbound_events.find_one({"state": "pending"})
    assert pending is not None and "expire_at" not in pending
    await gw.drain()
    done = await gw.store.inbound_events.find_one({"state": "done"})
    assert done is not None and done["expire_at"] == gw.clock.now() + KEEP
    kept = await gw.store.inbound_events.find_one({"state": "unroutable"})
    assert kept is not None and "expire_at" not in kept


async def test_a_shorter_window_from_config_is_used(gw: Gateway) -> None:
    from dataclasses import replace

    from gateway.runtime.app import build_dispatcher

    cfg = gw.services.config
    services = replace(gw.services, config=replace(cfg, outbox=replace(cfg.outbox, keep_done_days=3)))
    await gw.api_send(body="Reminder", secure=False)
    assert await build_dispatcher(services, gw.runtime.sms, owner="short").run_once() == 1
    job = await gw.store.outbox.find_one({})
    assert job is not None and job["expire_at"] == gw.clock.now() + timedelta(days=3)


async def test_stored_status_callbacks_expire_after_the_window(gw: Gateway) -> None:
    """A provider's status callbacks are kept to recognise repeats and to replay early ones, not
    for ever: each carries expire_at (arrival + the window) under a TTL index."""
    assert (await _ttl_fields(gw.store.delivery_events)).get("expire_at") == 0
    await gw.api_send(body="Reminder", secure=False)
    await gw.drain()
    job = await gw.store.outbox.find_one({})
    assert job is not None and job["provider_id"]
    await gw.runtime.delivery.record(job["provider_id"], "delivered", None)
    event = await gw.store.delivery_events.find_one({"provider_id": job["provider_id"]})
    assert event is not None and event["expire_at"] == gw.clock.now() + KEEP
