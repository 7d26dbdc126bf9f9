"""Per-conversation daily quotas on inbound mail: messages and bytes per thread per UTC day.

A reply address is a capability for one conversation; these quotas bound what a leaked or abused
one can pour into it (and into the database) in a day. Counters live in `mail_quota`, one
document per thread and day, removed by a TTL index once the day is over.

Checking and counting stay off the SMTP answer's critical path (on SecantusDB every command on it
costs a share of the mail throughput): a process reads a thread's counter once a day (concurrent
first reads share one query, gateway/storage/grouped.py), then counts in memory and writes what it
counted every WRITE_SECONDS, all threads in one command. The price is precision: counts another
process wrote after this one first read the thread, or counts lost with a crash, can let a
conversation go somewhat over its quota (never under it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from gateway.ports import Clock
from gateway.storage.grouped import GroupedLookup
from gateway.storage.store import Store

logger = logging.getLogger(__name__)

WRITE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Usage:
    messages: int
    bytes: int


class ThreadMailQuota:
    def __init__(self, store: Store, clock: Clock, *, messages_per_day: int, bytes_per_day: int) -> None:
        self._store = store
        self._clock = clock
        self.messages_per_day = messages_per_day
        self.bytes_per_day = bytes_per_day
        self._lookup: GroupedLookup[str, Usage] = GroupedLookup(self._fetch)
        self._day = ""
        self._stored: dict[str, Usage] = {}  # today's threads: their counter when first read here
        self._mine: dict[str, Usage] = {}  # today's threads: counted here (after that first read)
        self._unwritten: dict[str, Usage] = {}  # counted here, not yet written: quota id -> usage
        self._writer: asyncio.Task[None] | None = None

    def _key(self, thread_id: str) -> str:
        return f"{thread_id}|{self._clock.now().astimezone(UTC).date().isoformat()}"

    async def _fetch(self, keys: list[str]) -> dict[str, Usage]:
        return {d["_id"]: Usage(int(d.get("messages", 0)), int(d.get("bytes", 0)))
                async for d in self._store.mail_quota.find({"_id": {"$in": keys}})}

    async def usage(self, thread_id: str) -> Usage:
        """Today's use of the thread."""
        key = self._key(thread_id)
        day = key.rpartition("|")[2]
        if day != self._day:  # a new day: yesterday's counts are of no more use
            self._day, self._stored, self._mine = day, {}, {}
        if key not in self._stored:
            # Read once: a later read could include our own counts, written since. (Nothing is
            # counted for a thread before its first read: DATA checks the quota before storing.)
            self._stored.setdefault(key, await self._lookup.get(key) or Usage(0, 0))
        stored, mine = self._stored[key], self._mine.get(key, Usage(0, 0))
        return Usage(stored.messages + mine.messages, stored.bytes + mine.bytes)

    async def over(self, thread_ids: list[str], size: int = 0) -> list[str]:
        """The threads that cannot take one more message of `size` bytes today."""
        out = []
        for tid in dict.fromkeys(thread_ids):
            used = await self.usage(tid)
            if used.messages + 1 > self.messages_per_day or used.bytes + size > self.bytes_per_day:
                out.append(tid)
        return out

    def count(self, thread_id: str, size: int) -> None:
        """Count one stored message of `size` bytes against the thread's quota for today."""
        key = self._key(thread_id)
        for counts in (self._mine, self._unwritten):
            was = counts.get(key, Usage(0, 0))
            counts[key] = Usage(was.messages + 1, was.bytes + size)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        """Write what was counted, every WRITE_SECONDS while there is any (one command each time)."""
        while self._unwritten:
            await asyncio.sleep(WRITE_SECONDS)
            counts, self._unwritten = self._unwritten, {}
            expire = datetime.combine(self._clock.now().astimezone(UTC).date() + timedelta(days=2), time(), tzinfo=UTC)
            try:
                await self._store.mail_quota.bulk_write([
                    UpdateOne({"_id": key}, {"$inc": {"messages": used.messages, "bytes": used.bytes},
                                             "$setOnInsert": {"expire_at": expire}}, upsert=True)
                    for key, used in counts.items()], ordered=False)
            except PyMongoError as err:  # the quota is a limit, not a record: these counts are lost
                logger.warning("inbound mail quota: counts not written",
                               extra={"fields": {"threads": len(counts), "error": type(err).__name__}})
