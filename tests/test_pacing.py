"""The pacer spaces calls evenly and slows down when the provider says 429."""

from __future__ import annotations

import pytest

from bulkgpt_core.pacing import Pacer


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


def one_second(pacer: Pacer, clock: Clock, *, calls: int, throttled: int) -> None:
    """Send ``calls`` evenly over a second; the first ``throttled`` get a 429."""
    for n in range(calls):
        pacer.reserve()
        clock.now += 1.0 / calls + 1e-9
        if n < throttled:
            pacer.throttled()
        else:
            pacer.succeeded()


def test_many_429s_slow_to_about_the_accepted_rate() -> None:
    clock = Clock()
    pacer = Pacer(rpm=1200, clock=clock)  # 20 calls a second
    one_second(pacer, clock, calls=20, throttled=10)
    # Half were refused: at most halve the pace in one look.
    assert pacer.factor == pytest.approx(0.5)
    assert pacer.throttles == 10


def test_a_cut_that_helped_stays_and_recovers_slowly() -> None:
    clock = Clock()
    pacer = Pacer(rpm=1200, clock=clock)
    one_second(pacer, clock, calls=20, throttled=10)
    one_second(pacer, clock, calls=10, throttled=5)  # answers to the old pace
    assert pacer.factor == pytest.approx(0.5)
    one_second(pacer, clock, calls=10, throttled=0)
    assert pacer.factor == pytest.approx(0.51)
    for _ in range(40):
        one_second(pacer, clock, calls=12, throttled=0)
    assert pacer.factor == 1.0


def test_a_cut_that_did_not_help_is_undone_and_429s_are_ignored_a_while() -> None:
    clock = Clock()
    pacer = Pacer(rpm=1200, clock=clock)
    one_second(pacer, clock, calls=20, throttled=4)  # 20% refused
    assert pacer.factor < 1.0
    one_second(pacer, clock, calls=20, throttled=4)  # answers to the old pace
    one_second(pacer, clock, calls=20, throttled=4)  # still 20%: not the pace
    assert pacer.factor == 1.0
    for _ in range(5):
        one_second(pacer, clock, calls=20, throttled=4)
    assert pacer.factor == 1.0


def test_a_few_429s_are_tolerated() -> None:
    clock = Clock()
    pacer = Pacer(rpm=1200, clock=clock)
    one_second(pacer, clock, calls=40, throttled=1)
    assert pacer.factor == 1.0


def test_429s_without_a_limit_start_pacing_at_the_rate_seen() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock)
    one_second(pacer, clock, calls=20, throttled=10)
    assert pacer.rpm == pytest.approx(20 * 60, rel=0.1)
    assert pacer.factor == pytest.approx(0.5, rel=0.1)
