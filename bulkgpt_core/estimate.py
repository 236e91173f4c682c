"""What a batch will roughly cost, worked out before it is launched.

Input tokens come from the rendered prompts of a spread of rows. With a Gemini
key, a sample of them is counted by Gemini's own tokenizer (``countTokens``)
and the characters-per-token it gives is used for the whole file; offline, or
if counting fails, about four characters make a token. Output tokens come
from the answers of the sample run when there was one, else from the
max-output-tokens setting, else from a typical answer length. Both are
ranges, because neither is known exactly until the model has answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .batches import GenerationSettings
from .config import DEMO_MODEL, Settings
from .cost import Price, price_for
from .errors import BulkGPTError
from .models import open_model
from .models.base import CHARS_PER_TOKEN
from .tables import Table
from .templates import compile_template

log = logging.getLogger(__name__)

#: How many rows are rendered to measure the prompts (spread over the file).
MEASURED_ROWS = 200
#: Characters per token vary with the language: the input is given as a range,
#: narrower once Gemini has counted a sample.
INPUT_LOW, INPUT_HIGH = 0.8, 1.25
COUNTED_LOW, COUNTED_HIGH = 0.95, 1.05
#: How many rendered prompts are sent to Gemini's countTokens (in one request).
COUNTED_ROWS = 20
#: Around the sample run's average answer: answers vary from row to row.
SAMPLE_LOW, SAMPLE_HIGH = 0.75, 1.5
#: Answer length assumed when nothing better is known, in tokens.
TYPICAL_ANSWER_TOKENS = (50, 500)


@dataclass(frozen=True)
class Estimate:
    """Token and cost ranges for a whole batch."""

    rows: int
    measured_rows: int
    tokens_in_low: int
    tokens_in_high: int
    tokens_out_low: int
    tokens_out_high: int
    cost_low: float
    cost_high: float
    output_basis: str
    price: Price
    input_basis: str = ""

    @property
    def tokens_low(self) -> int:
        return self.tokens_in_low + self.tokens_out_low

    @property
    def tokens_high(self) -> int:
        return self.tokens_in_high + self.tokens_out_high

    @property
    def free(self) -> bool:
        return self.price.input_per_m == 0 and self.price.output_per_m == 0


def prompt_tokens(text: str, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """About one token per four characters, as for English text, unless counted."""
    return math.ceil(len(text) / chars_per_token)


def counted_chars_per_token(
    settings: Settings, generation: GenerationSettings, table: Table, template: str
) -> float | None:
    """Characters per token of this file's prompts, by Gemini's own count.

    One ``countTokens`` request over a sample of rendered prompts; None for the
    demo model, without a key, or when counting fails (the estimate then
    falls back to four characters per token).
    """
    if generation.model == DEMO_MODEL or not settings.has_gemini_key or not len(table):
        return None
    compiled = compile_template(template, table.columns)
    indexes = measured_indexes(len(table), COUNTED_ROWS)
    text = "\n".join(compiled.render(table.row_dict(i)) for i in indexes)
    if not text.strip():
        return None
    try:
        tokens = asyncio.run(_count(settings, generation.model, text))
    except BulkGPTError as exc:
        log.info("counting tokens failed, estimating instead: %s", exc)
        return None
    return len(text) / tokens if tokens > 0 else None


async def _count(settings: Settings, model_name: str, text: str) -> int:
    model = open_model(settings, model_name)
    try:
        return await model.count_tokens(text)  # type: ignore[attr-defined]
    finally:
        await model.aclose()


def measured_indexes(total: int, count: int = MEASURED_ROWS) -> list[int]:
    """Up to ``count`` row indexes spread evenly from the first row to the last."""
    if total <= count:
        return list(range(total))
    step = total / count
    return [int(i * step) for i in range(count)]


def estimate_batch(
    table: Table,
    template: str,
    generation: GenerationSettings,
    *,
    answer_tokens: Sequence[int] = (),
    prices: Mapping[str, Price] | None = None,
    chars_per_token: float | None = None,
) -> Estimate:
    """Estimate a batch of every row of ``table``.

    ``answer_tokens`` are the output tokens of the sample run's answers, if
    the user tried the prompt first; ``prices`` override the built-in price
    table (``BULKGPT_PRICES``); ``chars_per_token`` comes from
    :func:`counted_chars_per_token` when Gemini counted a sample. Raises
    :class:`~bulkgpt_core.errors.TemplateError` for a template that does not
    fit the table.
    """
    compiled = compile_template(template, table.columns)
    rows = len(table)
    indexes = measured_indexes(rows)
    ratio = chars_per_token or CHARS_PER_TOKEN
    system = prompt_tokens(generation.system_prompt, ratio)
    measured = [
        prompt_tokens(compiled.render(table.row_dict(i)), ratio) for i in indexes
    ]
    per_row_in = system + (sum(measured) / len(measured) if measured else 0)
    tokens_in = per_row_in * rows
    low_in, high_in = (
        (COUNTED_LOW, COUNTED_HIGH) if chars_per_token else (INPUT_LOW, INPUT_HIGH)
    )
    input_basis = (
        f"the rendered prompts of {len(indexes):,} rows, at the "
        f"{ratio:.1f} characters per token Gemini counted on a sample"
        if chars_per_token
        else f"the rendered prompts of {len(indexes):,} rows, at about "
        f"{CHARS_PER_TOKEN} characters per token"
    )

    low_out, high_out, basis = _answer_tokens(answer_tokens, generation)
    price = price_for(generation.model, dict(prices or {}))
    tokens = (
        round(tokens_in * low_in),
        round(tokens_in * high_in),
        round(low_out * rows),
        round(high_out * rows),
    )
    return Estimate(
        rows=rows,
        measured_rows=len(indexes),
        tokens_in_low=tokens[0],
        tokens_in_high=tokens[1],
        tokens_out_low=tokens[2],
        tokens_out_high=tokens[3],
        cost_low=price.cost(tokens[0], tokens[2]),
        cost_high=price.cost(tokens[1], tokens[3]),
        output_basis=basis,
        price=price,
        input_basis=input_basis,
    )


def _answer_tokens(
    answers: Sequence[int], generation: GenerationSettings
) -> tuple[float, float, str]:
    """Output tokens per row, low and high, and where they come from."""
    cap = generation.max_output_tokens
    if answers:
        average = sum(answers) / len(answers)
        low, high = average * SAMPLE_LOW, average * SAMPLE_HIGH
        if cap:
            low, high = min(low, cap), min(high, cap)
        count = len(answers)
        noun = "answer" if count == 1 else "answers"
        return low, high, f"from the {count} {noun} of your sample run"
    if cap:
        low = min(TYPICAL_ANSWER_TOKENS[0], cap)
        return low, cap, "up to the max output tokens per answer"
    low, high = TYPICAL_ANSWER_TOKENS
    return low, high, f"assuming answers of {low} to {high} tokens"
