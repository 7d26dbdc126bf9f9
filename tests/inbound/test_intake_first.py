"""Intake first: processing and sending wait for a lull in incoming deliveries, but not for ever.

A provider waits on every acknowledgement (and retries when it is slow); nobody waits on the
processing behind it. So background work yields to a burst of deliveries (InboundEvents.lull),
bounded so that a burst that never ends cannot starve it.
"""

from __future__ import annotations

import asyncio

from gateway.clock import FrozenClock
from gateway.leases import LeaseWorker
from gateway.store import Doc, Store
from tests.support.harness import Gateway


async def _deliver(gw: Gateway, n: int) -> None:
    await gw.runtime.events.accept(provider="test", provider_id=f"burst-{n}", org_id=gw.org.id, kind="sms",
                                   payload={"Body": f"burst {n}"}, state="unroutable")


async def test_background_work_waits_until_a_burst_of_deliveries_is_over(gw: Gateway) -> None:
    loop = asyncio.get_running_loop()
    started: list[float] = []

    async def burst() -> None:
        for n in range(20):
            started.append(loop.time())
            await _deliver(gw, n)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(burst())
    await asyncio.sleep(0)  # the burst is under way
    gap = 0.5  # far above the pause between two deliveries, even on a slow machine
    await asyncio.wait_for(gw.runtime.events.lull(gap=gap, max_wait=60), 30)
    assert task.done() and len(started) == 20
    assert loop.time() - started[-1] >= gap
    await task


async def test_a_burst_that_does_not_end_cannot_starve_background_work(gw: Gateway) -> None:
    stop = asyncio.Event()
    under_way = asyncio.Event()
    delivered = 0

    async def endless() -> None:
        nonlocal delivered
        while not stop.is_set():
            await _deliver(gw, delivered)
            delivered += 1
            if delivered == 3:
                under_way.set()
            await asyncio.sleep(0.002)

    task = asyncio.create_task(endless())
    try:
        await asyncio.wait_for(under_way.wait(), 10)
        # A lull of 5 s never comes; the wait ends at max_wait while deliveries go on.
        await asyncio.wait_for(gw.runtime.events.lull(gap=5, max_wait=0.2), 10)
        assert not task.done()
        before = delivered
        await asyncio.sleep(0.05)
        assert delivered > before  # deliveries were still arriving when the wait ended
    finally:
        stop.set()
        await task


async def test_no_wait_when_nothing_has_arrived(gw: Gateway) -> None:
    loop = asyncio.get_running_loop()
    t = loop.time()
    await gw.runtime.events.lull(gap=30, max_wait=30)  # no delivery ever: no lull to wait for
    assert loop.time() - t < 5


async def test_the_worker_waits_before_each_unit_of_work(store: Store, clock: FrozenClock) -> None:
    """The runtime's processor and dispatcher pass InboundEvents.lull as `before_work`."""
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
