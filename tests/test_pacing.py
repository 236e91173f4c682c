"""The pacer spaces calls evenly and slows down when the provider says 429."""

from __future__ import annotations

import pytest

from bulkgpt_core.pacing import THROTTLE_COOLDOWN_S, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_are_spaced_from_the_first_call() -> None:
    clock = Clock()
    pacer = Pacer(rpm=600, clock=clock)
    waits = [pacer.reserve() for _ in range(5)]
    # 600 rpm is one call every 0.1 s, with no opening burst.
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_tokens_per_minute_spaces_big_prompts() -> None:
    clock = Clock()
    pacer = Pacer(rpm=6000, tpm=60_000, clock=clock)
    assert pacer.reserve(tokens=1000) == 0
    # 1,000 tokens at 60,000 per minute take a second of the budget.
    assert pacer.reserve(tokens=10) == pytest.approx(1.0)


def test_no_limit_means_no_wait() -> None:
    pacer = Pacer(clock=Clock())
    assert [pacer.reserve(tokens=10**6) for _ in range(3)] == [0, 0, 0]


def test_a_429_slows_down_then_successes_recover() -> None:
    clock = Clock()
    pacer = Pacer(rpm=600, clock=clock)
    pacer.throttled()
    pacer.throttled()  # within the cooldown: one signal
    assert pacer.factor == pytest.approx(0.75)
    assert pacer.throttles == 1
    clock.now += THROTTLE_COOLDOWN_S + 1
    pacer.throttled()
    assert pacer.factor == pytest.approx(0.5625)
    for _ in range(1000):
        pacer.succeeded()
    assert pacer.factor == 1.0


def test_a_429_without_a_limit_starts_pacing_at_the_rate_seen() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock)
    for _ in range(20):
        pacer.reserve()
        clock.now += 0.05  # 20 calls per second
    pacer.throttled()
    assert pacer.rpm == pytest.approx(20 * 60, rel=0.1)
    assert pacer.factor == pytest.approx(0.75)
