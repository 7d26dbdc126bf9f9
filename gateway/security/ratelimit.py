"""A fixed-window rate limiter kept in this process, shared by the HTTP and SMTP edges.

A defence in depth against floods from one client (an IP, an SMTP peer), not a correctness
mechanism: every process keeps its own counts, and a restart forgets them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Above this many keys, windows that have ended are forgotten (bounds memory under a flood of
# distinct keys, e.g. spoofed addresses).
MAX_KEYS = 100_000


class RateLimiter:
    """A fixed-window counter per key: at most `limit` hits per `window_seconds`."""

    def __init__(self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._hits: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> bool:
        """Count a hit for `key`; False once it is over the limit in the current window."""
        now = self._clock()
        start, count = self._hits.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        count += 1
        self._hits[key] = (start, count)
        if len(self._hits) > MAX_KEYS:
            self._hits = {k: v for k, v in self._hits.items() if now - v[0] < self.window}
        return count <= self.limit

    def exhausted(self, key: str) -> bool:
        """Whether `key` has used up its hits in the current window (counts nothing): for answering
        before the work that would count, e.g. before a PIN is checked."""
        start, count = self._hits.get(key, (0.0, 0))
        return count >= self.limit and self._clock() - start < self.window
