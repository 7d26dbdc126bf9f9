"""Per-conversation daily quotas on inbound mail: messages and bytes per thread per UTC day.

A reply address is a capability for one conversation; these quotas bound what a leaked or abused
one can pour into it (and into the database) in a day. Counters live in `mail_quota`, one
document per thread and day, removed by a TTL index once the day is over. A check and the count
that follows are two steps, so concurrent deliveries can overshoot a limit by the few in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from gateway.ports import Clock
from gateway.store import Store


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

    def _day(self) -> str:
        return self._clock.now().astimezone(UTC).date().isoformat()

    async def usage(self, thread_ids: list[str]) -> dict[str, Usage]:
        """Today's use per thread (one read); threads with none are absent."""
        day = self._day()
        ids = [f"{tid}|{day}" for tid in dict.fromkeys(thread_ids)]
        if not ids:
            return {}
        return {d["thread_id"]: Usage(int(d.get("messages", 0)), int(d.get("bytes", 0)))
                async for d in self._store.mail_quota.find({"_id": {"$in": ids}})}

    async def over(self, thread_ids: list[str], size: int = 0) -> list[str]:
        """The threads that cannot take one more message of `size` bytes today."""
        used = await self.usage(thread_ids)
        none = Usage(0, 0)
        return [tid for tid in dict.fromkeys(thread_ids)
                if used.get(tid, none).messages + 1 > self.messages_per_day
                or used.get(tid, none).bytes + size > self.bytes_per_day]

    async def count(self, thread_id: str, size: int) -> None:
        """Count one stored message of `size` bytes against the thread's quota for today."""
        now = self._clock.now().astimezone(UTC)
        day_end = datetime.combine(now.date() + timedelta(days=1), time(), tzinfo=UTC)
        await self._store.mail_quota.update_one(
            {"_id": f"{thread_id}|{now.date().isoformat()}"},
            {"$inc": {"messages": 1, "bytes": size},
             "$setOnInsert": {"thread_id": thread_id, "expire_at": day_end + timedelta(days=1)}},
            upsert=True)
