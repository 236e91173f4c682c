"""What a batch will roughly cost, worked out before it is launched.

Input tokens come from the rendered prompts of a spread of rows, at about four
characters per token. Output tokens come from the answers of the sample run
when there was one, else from the max-output-tokens setting, else from a
typical answer length. Both are ranges, because neither is known exactly
until the model has answered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .batches import GenerationSettings
from .cost import Price, price_for
from .tables import Table
from .templates import compile_template

CHARS_PER_TOKEN = 4
#: How many rows are rendered to measure the prompts (spread over the file).
MEASURED_ROWS = 200
#: Characters per token vary with the language: the input is given as a range.
INPUT_LOW, INPUT_HIGH = 0.8, 1.25
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

    @property
    def tokens_low(self) -> int:
        return self.tokens_in_low + self.tokens_out_low

    @property
    def tokens_high(self) -> int:
        return self.tokens_in_high + self.tokens_out_high

    @property
    def free(self) -> bool:
        return self.price.input_per_m == 0 and self.price.output_per_m == 0


def prompt_tokens(text: str) -> int:
    """About one token per four characters, as for English text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


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
) -> Estimate:
    """Estimate a batch of every row of ``table``.

    ``answer_tokens`` are the output tokens of the sample run's answers, if
    the user tried the prompt first; ``prices`` override the built-in price
    table (``BULKGPT_PRICES``). Raises
    :class:`~bulkgpt_core.errors.TemplateError` for a template that does not
    fit the table.
    """
    compiled = compile_template(template, table.columns)
    rows = len(table)
    indexes = measured_indexes(rows)
    system = prompt_tokens(generation.system_prompt) if generation.system_prompt else 0
    measured = [prompt_tokens(compiled.render(table.row_dict(i))) for i in indexes]
    per_row_in = system + (sum(measured) / len(measured) if measured else 0)
    tokens_in = per_row_in * rows

    low_out, high_out, basis = _answer_tokens(answer_tokens, generation)
    price = price_for(generation.model, dict(prices or {}))
    tokens = (
        round(tokens_in * INPUT_LOW),
        round(tokens_in * INPUT_HIGH),
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
