"""Pacing calls to a provider's rate limits, evenly from the first second.

Each call reserves the next free slot on a schedule: requests are spaced
``60 / rpm`` seconds apart, and a call that will use ``n`` tokens also moves
the schedule on by ``60 * n / tpm``. There is no opening burst, so a job that
starts at its limit does not trip a storm of 429s.

When the provider still answers 429 (the configured limit is above the real
one, another client shares the quota, or no limit was configured), the pace
follows what gets through. Once a second the pacer looks at the share of
answers that were 429s: above a few percent, it slows to about the rate that
was accepted. If slowing down did not lower that share, the 429s were not
about the pace (a provider that refuses some calls whatever the rate), so the
cut is undone and the pace is left alone for a while. With no 429s, the pace
climbs back slowly towards the configured limit.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

#: How often the share of 429s is looked at, and over how long.
EVALUATE_EVERY_S = 1.0
#: Fewer answers than this in a window say nothing either way.
MIN_ANSWERS = 8
#: A share of 429s above this slows the pace down.
TOLERATED_SHARE = 0.05
#: The most one look may cut the pace by, and a little headroom under the
#: accepted rate.
LARGEST_CUT = 0.5
HEADROOM = 0.95
#: A cut that did not lower the share of 429s by at least this is undone.
USEFUL_DROP = 0.8
#: After an undone cut, how long 429s are taken as not about the pace.
IGNORE_AFTER_USELESS_CUT_S = 10.0
#: How much faster the pace gets per clean look (slowly: near a limit, a fast
#: climb only finds it again).
RECOVERY = 1.02
MIN_FACTOR = 0.05
RATE_WINDOW_S = 5.0
MIN_SPAN_S = 0.05


#: A share of 429s this high is the pace, whatever a cut seemed to do.
SURELY_THE_PACE = 0.35


@dataclass
class _Cut:
    """A cut, judged one look after the next: calls already sent at the old
    pace are still answered during the next look."""

    multiplier: float
    share_before: float
    looks_to_wait: int = 1


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
        self._recent: collections.deque[float] = collections.deque(maxlen=10_000)
        self._window_start = clock()
        self._answers = 0
        self._throttled_answers = 0
        self._last_cut: _Cut | None = None
        self._ignore_until = 0.0
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
        """The provider answered 429."""
        self.throttles += 1
        self._answered(throttled=True)

    def succeeded(self) -> None:
        """The provider answered with anything but a 429."""
        self._answered(throttled=False)

    def _answered(self, *, throttled: bool) -> None:
        self._answers += 1
        self._throttled_answers += throttled
        now = self._clock()
        if now - self._window_start >= EVALUATE_EVERY_S:
            self._evaluate(now)

    def _evaluate(self, now: float) -> None:
        """Once a window: slow down, undo a useless cut, or recover."""
        answers, throttled = self._answers, self._throttled_answers
        span = now - self._window_start
        self._window_start, self._answers, self._throttled_answers = now, 0, 0
        if answers < MIN_ANSWERS:
            return
        share = throttled / answers
        cut = self._last_cut
        if cut is not None and cut.looks_to_wait > 0:
            cut.looks_to_wait -= 1
            return
        self._last_cut = None
        if cut is not None and self._was_useless(cut, share):
            self._factor = min(1.0, self._factor / cut.multiplier)
            self._ignore_until = now + IGNORE_AFTER_USELESS_CUT_S
        elif share > TOLERATED_SHARE and (
            now >= self._ignore_until or share >= SURELY_THE_PACE
        ):
            self._slow_down(now, share, (answers - throttled) / span)
        elif share == 0 and self._factor < 1.0:
            self._factor = min(1.0, self._factor * RECOVERY)

    @staticmethod
    def _was_useless(cut: _Cut, share: float) -> bool:
        """The share of 429s did not drop after a cut, and is not a sure sign
        of going too fast."""
        return share >= cut.share_before * USEFUL_DROP and share < SURELY_THE_PACE

    def _slow_down(self, now: float, share: float, accepted_per_s: float) -> None:
        """Pace at a little under what was accepted (at most halving at once)."""
        sent_per_s = self._recent_rate(now)
        if self.rpm is None:
            # No limit was set: start from the pace calls were actually sent at.
            self.rpm = max(sent_per_s * 60.0, 1.0)
        pace = self.rpm / 60.0 * self._factor
        # Below the pace, concurrency was the limit: cut from what was sent.
        current = min(pace, sent_per_s) or pace
        target = accepted_per_s * HEADROOM
        new_pace = current * max(LARGEST_CUT, min(HEADROOM, target / current))
        multiplier = new_pace / pace
        self._factor = max(self._factor * multiplier, MIN_FACTOR)
        self._last_cut = _Cut(multiplier, share)

    def _recent_rate(self, now: float) -> float:
        """Calls per second over the last few seconds (or since the first call)."""
        recent = [t for t in self._recent if t >= now - RATE_WINDOW_S]
        if not recent:
            return 1.0
        return len(recent) / max(now - recent[0], MIN_SPAN_S)
