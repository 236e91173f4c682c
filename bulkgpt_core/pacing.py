"""Pacing calls to a provider's rate limits, evenly from the first second.

Each call reserves the next free slot on a schedule: requests are spaced
``60 / rpm`` seconds apart, and a call that will use ``n`` tokens also moves
the schedule on by ``60 * n / tpm``. There is no opening burst, so a job that
starts at its limit does not trip a storm of 429s.

When the provider still answers 429 (the configured limit is above the real
one, or another client shares the quota), the pace drops by a quarter and
then creeps back up with every success. With no configured limit, the first
429 starts pacing at a little under the rate seen so far.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

THROTTLE_FACTOR = 0.75
RECOVERY_STEP = 0.002
MIN_FACTOR = 0.05
#: Several 429s from calls already in flight count as one signal.
THROTTLE_COOLDOWN_S = 1.0
RATE_WINDOW_S = 5.0
MIN_SPAN_S = 0.05


class Pacer:
    """Spaces calls to stay under a requests- and a tokens-per-minute limit."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rpm = rpm or None
        self.tpm = tpm or None
        self._clock = clock
        self._next_slot = 0.0
        self._factor = 1.0
        self._last_throttle = -THROTTLE_COOLDOWN_S
        self._recent: collections.deque[float] = collections.deque(maxlen=10_000)
        self.throttles = 0

    @property
    def factor(self) -> float:
        """The share of the configured rate currently used (1.0 is full speed)."""
        return self._factor

    def _interval(self, tokens: int) -> float:
        by_requests = 60.0 / self.rpm if self.rpm else 0.0
        by_tokens = 60.0 * tokens / self.tpm if self.tpm else 0.0
        return max(by_requests, by_tokens) / self._factor

    def reserve(self, tokens: int = 0) -> float:
        """Take the next slot; return how many seconds to wait for it."""
        now = self._clock()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._interval(tokens)
        self._recent.append(slot)
        return slot - now

    async def wait(self, tokens: int = 0) -> None:
        """Wait for this call's slot."""
        delay = self.reserve(tokens)
        if delay > 0:
            await asyncio.sleep(delay)

    def throttled(self) -> None:
        """The provider said 429: slow down (once per cooldown)."""
        now = self._clock()
        if now - self._last_throttle < THROTTLE_COOLDOWN_S:
            return
        self._last_throttle = now
        self.throttles += 1
        if self.rpm is None:
            self.rpm = max(self._recent_rate(now) * 60.0, 1.0)
            self._factor = THROTTLE_FACTOR
        else:
            self._factor = max(self._factor * THROTTLE_FACTOR, MIN_FACTOR)
        # Leave a short gap before the next call.
        self._next_slot = max(self._next_slot, now + self._interval(0))

    def succeeded(self) -> None:
        """A call went through: creep back towards the configured rate."""
        if self._factor < 1.0:
            self._factor = min(1.0, self._factor + RECOVERY_STEP)

    def _recent_rate(self, now: float) -> float:
        """Calls per second over the last few seconds (or since the first call)."""
        recent = [t for t in self._recent if t >= now - RATE_WINDOW_S]
        if not recent:
            return 1.0
        return len(recent) / max(now - recent[0], MIN_SPAN_S)
