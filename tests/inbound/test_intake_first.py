"""Intake first: processing and sending wait for a lull in incoming deliveries, but not for ever.

A provider waits on every acknowledgement (and retries when it is slow); nobody waits on the
processing behind it. So background work yields to a burst of deliveries (EventIntake.lull),
bounded so that a burst that never ends cannot starve it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.clock import FrozenClock
from gateway.storage.intake import EventIntake
from gateway.storage.leases import LeaseWorker
from gateway.storage.store import Doc, Store
from tests.support.harness import Gateway


def intake(gw: Gateway, *, lull: float, burst: float) -> EventIntake:
    return EventIntake(gw.store, gw.services.vault, gw.clock, lull_seconds=lull, burst_seconds=burst)


async def _deliver(events: EventIntake, gw: Gateway, n: int) -> None:
    await events.store_event(provider="test", provider_id=f"burst-{n}", org_id=gw.org.id, kind="sms",
                        payload={"Body": f"burst {n}"}, state="unroutable")


async def test_background_work_waits_until_a_burst_of_deliveries_is_over(gw: Gateway) -> None:
    # A lull of 0.5 s: far above the pause between two deliveries, even on a slow machine.
    events = intake(gw, lull=0.5, burst=60)
    loop = asyncio.get_running_loop()
    started: list[float] = []
    first = asyncio.Event()

    async def burst() -> None:
        for n in range(20):
            started.append(loop.time())
            await _deliver(events, gw, n)
            first.set()
            await asyncio.sleep(0.005)

    task = asyncio.create_task(burst())
    await asyncio.wait_for(first.wait(), 10)  # the burst is under way
    await asyncio.wait_for(events.lull(), 30)
    assert task.done() and len(started) == 20
    assert loop.time() - started[-1] >= 0.5
    await task


async def test_a_burst_that_does_not_end_gets_a_window_then_shares(gw: Gateway) -> None:
    """Deliveries that keep coming (a long burst, or steady traffic) cannot starve background
    work: once the burst window is spent, it goes on without waiting."""
    events = intake(gw, lull=5, burst=0.2)  # a lull never comes
    stop = asyncio.Event()
    under_way = asyncio.Event()
    delivered = 0

    async def endless() -> None:
        nonlocal delivered
        while not stop.is_set():
            await _deliver(events, gw, delivered)
            delivered += 1
            if delivered == 3:
                under_way.set()
            await asyncio.sleep(0.002)

    task = asyncio.create_task(endless())
    try:
        await asyncio.wait_for(under_way.wait(), 10)
        await asyncio.wait_for(events.lull(), 10)  # the window ends while deliveries go on
        assert not task.done()
        before = delivered
        # From then on there is no wait at all (not another window of 0.2 s per call).
        await asyncio.wait_for(events.lull(), 0.1)
        await asyncio.wait_for(events.lull(), 0.1)
        await asyncio.sleep(0.05)
        assert delivered > before  # deliveries were still arriving
    finally:
        stop.set()
        await task


async def test_a_delivery_still_being_stored_keeps_intake_busy(gw: Gateway) -> None:
    """Senders wait for our answer before sending more: a slow store is no lull."""
    events = intake(gw, lull=0.05, burst=60)
    storing = asyncio.Event()
    release = asyncio.Event()
    insert = events._intake.insert

    async def slow_insert(doc: Doc, on_stored: Any = None) -> None:
        storing.set()
        await release.wait()
        await insert(doc, on_stored)

    events._intake.insert = slow_insert  # type: ignore[method-assign]
    delivery = asyncio.create_task(_deliver(events, gw, 1))
    await asyncio.wait_for(storing.wait(), 10)
    waiting = asyncio.create_task(events.lull())
    await asyncio.sleep(0.3)  # six lulls' length without a new arrival
    assert not waiting.done()
    release.set()
    await delivery
    await asyncio.wait_for(waiting, 10)


async def test_no_wait_when_nothing_has_arrived(gw: Gateway) -> None:
    await asyncio.wait_for(intake(gw, lull=30, burst=30).lull(), 5)


async def test_the_worker_waits_before_each_unit_of_work(store: Store, clock: FrozenClock) -> None:
    """The runtime's processor and dispatcher pass EventIntake.lull as `before_work`."""
    coll = store.db["lease_before_work_test"]
    order: list[str] = []
    handled = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def before_work() -> None:
        order.append("wait")

    async def handle(doc: Doc) -> None:
        order.append(f"handle {doc['_id']}")
        await coll.update_one({"_id": doc["_id"]}, {"$set": {"state": "done"}})
        handled[doc["_id"]].set()

    worker = LeaseWorker(coll, clock, owner="test", lease_seconds=60, poll_seconds=0.05, handle=handle,
                         name="test worker", before_work=before_work)
    now = clock.now()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, 1))
    try:
        for doc_id in ("a", "b"):
            await coll.insert_one({"_id": doc_id, "state": "pending", "next_attempt_at": now, "lease_until": now})
            worker.notify(doc_id)
            await asyncio.wait_for(handled[doc_id].wait(), 10)
        steps = [i for i, step in enumerate(order) if step.startswith("handle")]
        assert [order[i] for i in steps] == ["handle a", "handle b"]
        assert all(order[i - 1] == "wait" for i in steps)
    finally:
        stop.set()
        await task


def test_the_runtime_wires_intake_first_into_both_workers(gw: Gateway) -> None:
    rt = gw.runtime
    assert rt.processor.worker._before_work == rt.events.lull
    assert rt.dispatcher.worker._before_work == rt.events.lull
