"""Tests for bulkgpt_core.sample_run: trying a template on a few rows now."""

from __future__ import annotations

import json

import pytest

from bulkgpt_core.batches import GenerationSettings
from bulkgpt_core.config import Settings
from bulkgpt_core.errors import ConfigError, TemplateError
from bulkgpt_core.models.base import FailureKind
from bulkgpt_core.reasons import reason_for
from bulkgpt_core.sample_run import SAMPLE_ATTEMPTS, choose_rows, run_sample
from bulkgpt_core.tables import Table, read_csv
from tests.fake_gemini import FakeGemini

FLASH = GenerationSettings(model="gemini-2.5-flash")


def table_of(*texts: str) -> Table:
    lines = ["id,text", *(f'{i},"{t}"' for i, t in enumerate(texts))]
    return read_csv("\n".join(lines).encode(), name="t.csv")


def sample(
    table: Table,
    indexes: list[int] | None = None,
    generation: GenerationSettings = FLASH,
    **options: int,
):
    indexes = list(range(len(table))) if indexes is None else indexes
    return run_sample(
        Settings.from_env(), table, "Say <<text>>", generation, indexes, **options
    )


# --- Choosing rows ---------------------------------------------------------------


def test_first_rows() -> None:
    assert choose_rows(100, 5) == [0, 1, 2, 3, 4]
    assert choose_rows(3, 5) == [0, 1, 2]
    assert choose_rows(3, 0) == []


def test_random_rows_are_sorted_distinct_and_repeatable() -> None:
    picked = choose_rows(1000, 10, random_rows=True, seed=42)

    assert picked == sorted(set(picked))
    assert len(picked) == 10
    assert all(0 <= i < 1000 for i in picked)
    assert choose_rows(1000, 10, random_rows=True, seed=42) == picked
    assert choose_rows(1000, 10, random_rows=True, seed=43) != picked
    assert choose_rows(4, 10, random_rows=True) == [0, 1, 2, 3]


# --- Answers ---------------------------------------------------------------------


def test_each_row_gets_its_prompt_answer_tokens_and_time(gemini: FakeGemini) -> None:
    table = table_of("alpha", "beta", "gamma")
    run = sample(table, [2, 0])

    assert [r.index for r in run.results] == [2, 0]
    assert [r.row_number for r in run.results] == [3, 1]
    assert [r.values["text"] for r in run.results] == ["gamma", "alpha"]
    assert [r.prompt for r in run.results] == ["Say gamma", "Say alpha"]
    assert [r.answer for r in run.results] == ["ANSWER: Say gamma", "ANSWER: Say alpha"]
    for result in run.results:
        assert result.ok
        assert result.error is None
        assert result.tokens_in > 0
        assert result.tokens_out > 0
        assert result.latency_s is not None
        assert result.cost_usd > 0
    assert run.failed == 0
    assert run.tokens_in == sum(r.tokens_in for r in run.results)
    assert run.answer_tokens() == [r.tokens_out for r in run.results]
    assert gemini.stats()["answered"] == 2


def test_the_demo_model_answers_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKGPT_DEMO_DELAY_MS", "0")
    run = sample(table_of("hello"), generation=GenerationSettings(model="demo"))

    [result] = run.results
    assert result.answer.startswith("[demo answer]")
    assert result.cost_usd == 0


def test_rows_are_sent_with_bounded_concurrency(gemini: FakeGemini) -> None:
    gemini.configure(latency_ms=100)
    sample(table_of(*(f"row {i}" for i in range(8))), concurrency=2)

    assert gemini.stats()["max_in_flight"] == 2


# --- Failures, in plain words ---------------------------------------------------------


def test_a_blocked_row_says_why_and_what_to_do(gemini: FakeGemini) -> None:
    run = sample(table_of("fine", "bad [[fake:safety]]"))

    ok, blocked = run.results
    assert ok.ok
    assert not blocked.ok
    assert blocked.error_kind == FailureKind.SAFETY
    assert blocked.error == "Blocked by safety filters"
    assert blocked.fix == reason_for(FailureKind.SAFETY).fix
    assert blocked.error_detail
    assert run.failed == 1


def test_a_rate_limited_row_is_retried(gemini: FakeGemini) -> None:
    gemini.configure(retry_delay="0s")
    run = sample(table_of("busy [[fake:429:1]]"))

    [result] = run.results
    assert result.ok
    assert result.answer == "ANSWER: Say busy [[fake:429:1]]"


def test_a_server_error_that_persists_fails_after_a_few_tries(
    gemini: FakeGemini,
) -> None:
    run = sample(table_of("down [[fake:500]]"))

    [result] = run.results
    assert result.error_kind == FailureKind.SERVER_ERROR
    assert result.error == reason_for(FailureKind.SERVER_ERROR).title
    assert gemini.stats()["total"] == SAMPLE_ATTEMPTS


def test_a_refused_key_stops_the_other_rows(gemini: FakeGemini) -> None:
    gemini.configure(api_key="the-right-key")
    run = sample(table_of("a", "b", "c", "d"), concurrency=1)

    assert [r.error_kind for r in run.results] == [FailureKind.INVALID_KEY] * 4
    assert all(r.error == "Invalid API key" for r in run.results)
    assert gemini.stats()["total"] == 1


def test_a_prompt_over_the_limit_is_not_sent(
    gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKGPT_MAX_PROMPT_CHARS", "10")
    run = sample(table_of("short", "much too long for the limit"))

    short, long = run.results
    assert short.ok
    assert long.error_kind == FailureKind.INVALID_REQUEST
    assert "BULKGPT_MAX_PROMPT_CHARS" in long.error_detail
    assert gemini.stats()["total"] == 1


def test_gemini_without_a_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
        sample(table_of("x"))


def test_a_template_that_does_not_fit_is_refused() -> None:
    table = table_of("x")
    with pytest.raises(TemplateError, match="txt"):
        run_sample(Settings.from_env(), table, "Say <<txt>>", FLASH, [0])


def test_rows_are_asked_as_a_batch_would_ask_them(gemini: FakeGemini) -> None:
    # Output fields: an unusable answer gets one repair; a cut-off answer is
    # asked again with twice the token limit.
    gemini.configure(max_tokens_ok_at=4096)
    schema = {
        "type": "object",
        "properties": {"mood": {"type": "string", "enum": ["good", "bad"]}},
        "required": ["mood"],
    }
    run = sample(
        table_of("[[fake:bad_json:1]]", "[[fake:max_tokens:1]]"),
        generation=GenerationSettings(
            model="gemini-2.5-flash", max_output_tokens=2048, response_schema=schema
        ),
    )
    assert [r.ok for r in run.results] == [True, True]
    assert [json.loads(r.answer or "") for r in run.results] == [{"mood": "good"}] * 2
    assert gemini.stats()["total"] == 4
