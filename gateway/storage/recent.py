"""Newest-first pages whose cost does not grow with the history behind them: one window at a time.

SecantusDB (the embedded and test database) answers a query over an index range by reading every
entry in the range and every document it points at, sorting them in memory, and only then applying
the limit; `hint()` walks the whole index. So "the newest 50 of an org's 10,000 threads" used to
read all 10,000 threads (with the hint: every org's).

A `Recent` reader asks for one window of a time-ordered indexed field instead (`last_activity_at`,
or an ObjectId-hex `_id`, whose first 4 bytes are its creation time): equality on the leading
fields of an index, a range [lo, hi) on the field that follows, newest window first, widening until
the page is full. Windows are contiguous and the last one is open-ended (everything older than the
floor), so the result is exactly what the single sorted query returns; only the work changes.

The width that held the last full first page is remembered per key (an org's inbox view, a
thread), 25 % wider, so a steady inbox costs one query reading about a page of documents. When
everything fit on one page, the key is remembered as "small" and read in one query next time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.asynchronous.collection import AsyncCollection

from gateway.storage.store import Doc

FIRST_WIDTH = timedelta(hours=1)  # the first window for a key nothing is known about yet
SLACK = 1.25  # remembered width = the width that held the page last time, plus this much
MIN_WIDTH = timedelta(seconds=1)
MAX_GROWTH = 16  # a window is at most this many times the span read so far
FLOOR_MARGIN = timedelta(days=1)  # below the floor (creation of the org/thread, less this): one query
MEMO_SIZE = 20_000

Bound = Callable[[datetime], Any]
SMALL = None  # memo value: everything fit on one page last time


def oid_at(at: datetime) -> str:
    """The smallest ObjectId hex created at `at` (for `_id` ranges by creation time)."""
    return str(ObjectId.from_datetime(max(at, datetime(1970, 1, 2, tzinfo=UTC))))


def oid_time(value: Any) -> datetime | None:
    """The creation time of an ObjectId (or its hex), or None for any other id."""
    try:
        return ObjectId(value).generation_time
    except (InvalidId, TypeError):
        return None


def same(at: datetime) -> datetime:
    return at


class Recent:
    """Windowed newest-first reads, with the remembered window width per key (a hint, never a result)."""

    def __init__(self) -> None:
        self._widths: dict[Hashable, timedelta | None] = {}

    def forget(self) -> None:
        self._widths.clear()

    async def newest(
        self, coll: AsyncCollection[Doc], base: Doc, field: str, *, limit: int, order: list[tuple[str, int]],
        key: Hashable, now: datetime, floor: datetime | None, at_of: Callable[[Doc], datetime],
        bound: Bound = same, upper: tuple[str, Any] | None = None, upper_at: datetime | None = None,
        keep: Callable[[Doc], bool] | None = None,
    ) -> list[Doc]:
        """The newest `limit` documents matching `base` (and `keep`), newest first by `order`.

        `base` holds equality (or one `$in`) on the fields an index has before `field`; `order`
        starts with `field` descending. `bound` turns a time into a value of `field`; `at_of` gives a
        document's time. `upper` is the cursor: ("$lt" or "$lte", value) with its time `upper_at`.
        `keep` filters documents after they are read (its fields are not in the index).
        """
        out: list[Doc] = []
        width = self._widths.get(key, FIRST_WIDTH)
        hi_op, hi = upper if upper is not None else ("", None)
        top = upper_at or now
        edge = top  # the windows read so far cover [edge, top]
        while True:
            lo = None if width is SMALL or floor is None or width >= edge - floor else edge - width
            rng: Doc = {}
            if lo is not None:
                rng["$gte"] = bound(lo)
            if hi is not None:
                rng[hi_op] = hi
            cursor = coll.find({**base, field: rng} if rng else dict(base)).sort(order)
            if keep is None:
                cursor = cursor.limit(limit - len(out))
            out += [d for d in await cursor.to_list(None) if keep is None or keep(d)]
            if len(out) >= limit or lo is None:
                break
            covered = max(top - lo, MIN_WIDTH)
            if out:  # extrapolate the rate seen so far to the rest of the page
                want = covered * (limit / len(out) * SLACK - 1)
                width = min(max(want, covered), covered * MAX_GROWTH)
            else:
                width = covered * 4
            hi_op, hi, edge = "$lt", bound(lo), lo
        out = out[:limit]
        if upper is None:
            if len(self._widths) >= MEMO_SIZE:
                self._widths.clear()
            self._widths[key] = max((now - at_of(out[-1])) * SLACK, MIN_WIDTH) if len(out) >= limit else SMALL
        return out
