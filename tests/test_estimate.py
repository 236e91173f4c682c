"""Tests for bulkgpt_core.estimate: tokens and cost before a batch is launched."""

from __future__ import annotations

import math

import pytest

from bulkgpt_core.batches import GenerationSettings
from bulkgpt_core.config import Settings
from bulkgpt_core.cost import PRICES, Price
from bulkgpt_core.errors import TemplateError
from bulkgpt_core.estimate import (
    INPUT_HIGH,
    INPUT_LOW,
    MEASURED_ROWS,
    SAMPLE_HIGH,
    SAMPLE_LOW,
    TYPICAL_ANSWER_TOKENS,
    counted_chars_per_token,
    estimate_batch,
    measured_indexes,
    prompt_tokens,
)
from bulkgpt_core.tables import Table, read_csv
from tests.fake_gemini import FakeGemini

FLASH = GenerationSettings(model="gemini-2.5-flash")


def table_of(texts: list[str]) -> Table:
    lines = ["text", *texts]
    return read_csv("\n".join(lines).encode(), name="t.csv")


def test_prompt_tokens_are_about_four_characters_each() -> None:
    assert prompt_tokens("") == 0
    assert prompt_tokens("abcd") == 1
    assert prompt_tokens("abcde") == 2


def test_measured_rows_spread_over_the_whole_file() -> None:
    assert measured_indexes(3) == [0, 1, 2]
    picked = measured_indexes(10_000)
    assert len(picked) == MEASURED_ROWS
    assert picked[0] == 0
    assert picked[-1] >= 9_900
    assert picked == sorted(set(picked))


def test_input_tokens_from_the_rendered_prompts() -> None:
    table = table_of(["a" * 36, "b" * 76])  # prompts of 40 and 80 characters
    estimate = estimate_batch(table, "Say <<text>>", FLASH)

    per_row = (10 + 20) / 2
    assert estimate.rows == 2
    assert estimate.measured_rows == 2
    assert estimate.tokens_in_low == round(per_row * 2 * INPUT_LOW)
    assert estimate.tokens_in_high == round(per_row * 2 * INPUT_HIGH)


def test_the_system_prompt_counts_for_every_row() -> None:
    table = table_of(["a" * 36] * 3)
    plain = estimate_batch(table, "Say <<text>>", FLASH)
    with_system = estimate_batch(
        table,
        "Say <<text>>",
        GenerationSettings(model=FLASH.model, system_prompt="x" * 40),
    )

    added = with_system.tokens_in_low - plain.tokens_in_low
    assert added == pytest.approx(10 * 3 * INPUT_LOW, abs=1)


def test_a_large_file_is_measured_on_a_sample_and_extrapolated() -> None:
    table = table_of(["a" * 36] * 5_000)
    estimate = estimate_batch(table, "Say <<text>>", FLASH)

    assert estimate.measured_rows == MEASURED_ROWS
    assert estimate.tokens_in_low == round(10 * 5_000 * INPUT_LOW)


def test_output_from_a_typical_answer_when_nothing_is_known() -> None:
    estimate = estimate_batch(table_of(["x"] * 10), "Say <<text>>", FLASH)

    low, high = TYPICAL_ANSWER_TOKENS
    assert (estimate.tokens_out_low, estimate.tokens_out_high) == (low * 10, high * 10)
    assert "assuming answers" in estimate.output_basis


def test_output_up_to_the_max_output_tokens() -> None:
    capped = GenerationSettings(model=FLASH.model, max_output_tokens=30)
    estimate = estimate_batch(table_of(["x"] * 10), "Say <<text>>", capped)

    assert (estimate.tokens_out_low, estimate.tokens_out_high) == (300, 300)
    assert "max output tokens" in estimate.output_basis


def test_output_from_the_sample_run() -> None:
    estimate = estimate_batch(
        table_of(["x"] * 10), "Say <<text>>", FLASH, answer_tokens=[10, 30]
    )

    assert estimate.tokens_out_low == round(20 * SAMPLE_LOW * 10)
    assert estimate.tokens_out_high == round(20 * SAMPLE_HIGH * 10)
    assert estimate.output_basis == "from the 2 answers of your sample run"


def test_the_sample_run_is_capped_by_max_output_tokens() -> None:
    capped = GenerationSettings(model=FLASH.model, max_output_tokens=25)
    estimate = estimate_batch(
        table_of(["x"] * 4), "Say <<text>>", capped, answer_tokens=[20]
    )

    assert estimate.tokens_out_high == 25 * 4


def test_cost_range_uses_the_model_price() -> None:
    estimate = estimate_batch(table_of(["x"] * 100), "Say <<text>>", FLASH)
    price = PRICES["gemini-2.5-flash"]

    assert estimate.price == price
    assert estimate.cost_low == pytest.approx(
        price.cost(estimate.tokens_in_low, estimate.tokens_out_low)
    )
    assert estimate.cost_high == pytest.approx(
        price.cost(estimate.tokens_in_high, estimate.tokens_out_high)
    )
    assert 0 < estimate.cost_low < estimate.cost_high
    assert estimate.tokens_low < estimate.tokens_high
    assert not estimate.free


def test_the_demo_model_is_free() -> None:
    demo = GenerationSettings(model="demo")
    estimate = estimate_batch(table_of(["x"]), "Say <<text>>", demo)

    assert estimate.free
    assert estimate.cost_high == 0


def test_price_overrides() -> None:
    prices = {"gemini-2.5-flash": Price(1.0, 1.0)}
    estimate = estimate_batch(
        table_of(["x"]), "Say <<text>>", FLASH, answer_tokens=[4], prices=prices
    )

    expected = (estimate.tokens_in_high + estimate.tokens_out_high) / 1e6
    assert estimate.cost_high == pytest.approx(expected)
    assert math.isclose(estimate.price.input_per_m, 1.0)


def test_a_template_that_does_not_fit_is_refused() -> None:
    with pytest.raises(TemplateError):
        estimate_batch(table_of(["x"]), "Say <<nope>>", FLASH)


def test_gemini_counts_a_sample_and_the_estimate_uses_its_ratio(
    gemini: FakeGemini,
) -> None:
    # The fake tokenizer counts a token per four characters.
    table = read_csv(b"text\n" + b"\n".join(b"x" * 396 for _ in range(50)))
    generation = GenerationSettings(model="gemini-2.5-flash")
    ratio = counted_chars_per_token(Settings.from_env(), generation, table, "<<text>>")

    assert ratio is not None and 3.5 < ratio <= 4.0
    assert gemini.stats()["by_method"] == {"countTokens": 1}
    counted = estimate_batch(table, "<<text>>", generation, chars_per_token=ratio)
    assert "Gemini counted" in counted.input_basis
    # A counted ratio gives a narrower range than the rule of thumb.
    guessed = estimate_batch(table, "<<text>>", generation)
    assert (
        counted.tokens_in_high - counted.tokens_in_low
        < guessed.tokens_in_high - guessed.tokens_in_low
    )


def test_counting_is_skipped_offline_and_survives_failures(
    gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = read_csv(b"text\nhello\n")
    demo = GenerationSettings(model="demo")
    assert counted_chars_per_token(Settings.from_env(), demo, table, "<<text>>") is None
    gemini.configure(api_key="another-key")
    generation = GenerationSettings(model="gemini-2.5-flash")
    assert (
        counted_chars_per_token(Settings.from_env(), generation, table, "<<text>>")
        is None
    )
    monkeypatch.delenv("GEMINI_API_KEY")
    assert (
        counted_chars_per_token(Settings.from_env(), generation, table, "<<text>>")
        is None
    )
