"""Point lookups shared by concurrent callers: one `$in` query answers all who asked meanwhile.

The read-side twin of group commit (gateway/storage/intake.py): a lookup that arrives while another is
in flight waits for it and then goes out in the next query with every other key that arrived
meanwhile. Each caller gets the answer for its own key (None when absent) or the query's error.
A lone lookup goes out at once, so nothing waits without concurrency. It pays where commands,
not documents, are what the database spends its time on (SecantusDB: a fixed cost per command).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_KEYS = 100  # keys per shared query
INFLIGHT = 2  # shared queries in flight at once


class GroupedLookup(Generic[K, V]):
    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]], *, max_keys: int = MAX_KEYS,
                 inflight: int = INFLIGHT) -> None:
        self._fetch = fetch
        self._max = max_keys
        self._inflight_max = inflight
        self._inflight = 0
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V | None:
        fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, fut))
        if self._inflight < self._inflight_max:
            self._inflight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a caller that goes away must not cancel a query that others share.
        return await asyncio.shield(fut)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:self._max], self._waiting[self._max:]
                try:
                    found = await self._fetch(list(dict.fromkeys(key for key, _ in group)))
                except BaseException as err:
                    for _, fut in group:
                        if not fut.done():
                            # Each caller raises its own exception object (a traceback is per raise).
                            fut.set_exception(_copy(err) if isinstance(err, Exception) else asyncio.CancelledError())
                    if not isinstance(err, Exception):
                        raise
                    continue
                for key, fut in group:
                    if not fut.done():
                        fut.set_result(found.get(key))
        finally:
            self._inflight -= 1


def _copy(err: Exception) -> Exception:
    """The error again, for one caller: same type, arguments and attributes (a PyMongo error's
    code and labels); a traceback belongs to one raise."""
    try:
        dup = copy.copy(err)
    except Exception:
        dup = RuntimeError(str(err))
    dup.__cause__ = err
    dup.__traceback__ = None
    return dup
