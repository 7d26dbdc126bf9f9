"""GroupedLookup: concurrent point lookups share queries and each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest
from pymongo.errors import OperationFailure

from gateway.storage.grouped import GroupedLookup


class Table:
    """A fetch function over a dict that records each query and can be made to fail or stall."""

    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = rows
        self.queries: list[list[str]] = []
        self.fail: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        self.queries.append(keys)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: self.rows[k] for k in keys if k in self.rows}


async def test_a_lone_lookup_goes_out_at_once() -> None:
    table = Table({"a": 1})
    lookup = GroupedLookup(table.fetch)
    assert await lookup.get("a") == 1
    assert await lookup.get("zz") is None
    assert table.queries == [["a"], ["zz"]]


async def test_lookups_arriving_while_queries_are_in_flight_share_the_next_query() -> None:
    table = Table({f"k{i}": i for i in range(40)})
    lookup = GroupedLookup(table.fetch, inflight=1)
    table.gate.clear()
    first = asyncio.create_task(lookup.get("k0"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(lookup.get(k)) for k in ["k1", "k2", "k2", "nope", *[f"k{i}" for i in range(3, 40)]]]
    await asyncio.sleep(0)
    table.gate.set()
    assert await first == 0
    answers = await asyncio.gather(*rest)
    assert answers[:4] == [1, 2, 2, None] and answers[4:] == list(range(3, 40))
    assert len(table.queries) == 2  # one for the first, one shared by the 41 that came meanwhile
    assert table.queries[1][:3] == ["k1", "k2", "nope"]  # each key asked once


async def test_a_failed_query_fails_each_of_its_callers_and_the_next_one_works() -> None:
    table = Table({"a": 1, "b": 2})
    lookup = GroupedLookup(table.fetch, inflight=1)
    table.fail = ConnectionError("database down")
    table.gate.clear()
    calls = [asyncio.create_task(lookup.get(k)) for k in ("a", "b", "a")]
    await asyncio.sleep(0)
    table.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert len({id(r) for r in results}) == 3  # each raises its own exception object
    table.fail = None
    assert await lookup.get("b") == 2


async def test_each_caller_gets_the_database_error_with_its_code_and_labels() -> None:
    table = Table({})
    lookup = GroupedLookup(table.fetch, inflight=1)
    table.fail = OperationFailure("not primary", code=10107, details={"errorLabels": ["RetryableWriteError"]})
    table.gate.clear()
    calls = [asyncio.create_task(lookup.get(k)) for k in ("a", "b")]
    await asyncio.sleep(0)
    table.gate.set()
    for result in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(result, OperationFailure) and result is not table.fail
        assert result.code == 10107 and result.has_error_label("RetryableWriteError")


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_query() -> None:
    table = Table({"a": 1, "b": 2})
    lookup = GroupedLookup(table.fetch, inflight=1)
    table.gate.clear()
    leaving = asyncio.create_task(lookup.get("a"))
    staying = asyncio.create_task(lookup.get("b"))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    table.gate.set()
    assert await staying == 2
