"""Try a template on a few rows right away, before paying for a whole batch.

Nothing is stored: the rows go straight to the model, a few at a time, and
each comes back with its rendered prompt, the answer, the tokens and the time
it took, or what went wrong in plain words. A failure that would fail every
call (a refused key, an unknown model) stops the other rows from being sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .batches import GenerationSettings, RowResult, RowStatus
from .calls import CallPolicy, FatalCallError, RowCaller
from .config import Settings
from .cost import Price, parse_price_overrides, price_for
from .models import open_model
from .models.base import FailureKind, ModelClient, ModelError
from .pacing import Pacer
from .reasons import reason_for
from .tables import Table
from .templates import CompiledTemplate, compile_template

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_ROWS = 5
MAX_SAMPLE_ROWS = 50
DEFAULT_SAMPLE_CONCURRENCY = 5
#: Tries per row for errors worth another try; a sample must come back quickly.
SAMPLE_ATTEMPTS = 3
MAX_RETRY_WAIT_S = 5.0


@dataclass(frozen=True)
class SampleResult:
    """One row of a sample run."""

    index: int
    values: dict[str, str]
    prompt: str
    answer: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float | None = None
    cost_usd: float = 0.0
    finish_reason: str | None = None
    error_kind: str | None = None
    error: str | None = None
    """What went wrong, in plain words (the reason's title)."""
    error_detail: str | None = None
    """The message behind it, e.g. the provider's."""
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def row_number(self) -> int:
        """The row as people count it: the first data row is row 1."""
        return self.index + 1


@dataclass(frozen=True)
class SampleRun:
    """Every row of one sample run, in the order they were chosen."""

    model: str
    results: list[SampleResult]

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)

    @property
    def tokens_in(self) -> int:
        return sum(r.tokens_in for r in self.results)

    @property
    def tokens_out(self) -> int:
        return sum(r.tokens_out for r in self.results)

    @property
    def cost_usd(self) -> float:
        return sum(r.cost_usd for r in self.results)

    def answer_tokens(self) -> list[int]:
        """Output tokens of the rows that got an answer, for the cost estimate."""
        return [r.tokens_out for r in self.results if r.ok and r.tokens_out > 0]


def choose_rows(
    total: int, count: int, *, random_rows: bool = False, seed: int = 0
) -> list[int]:
    """Row indexes to try: the first ``count``, or ``count`` at random (sorted)."""
    count = max(0, min(count, total))
    if random_rows:
        return sorted(random.Random(seed).sample(range(total), count))
    return list(range(count))


def run_sample(
    settings: Settings,
    table: Table,
    template: str,
    generation: GenerationSettings,
    indexes: Sequence[int],
    *,
    concurrency: int = DEFAULT_SAMPLE_CONCURRENCY,
) -> SampleRun:
    """Render and send the chosen rows now, and wait for every answer.

    Each row is asked exactly as a batch would ask it (the same retries,
    output-field checks and cut-off retry), only with shorter waits.

    Raises :class:`~bulkgpt_core.errors.TemplateError` for a template that
    does not fit the table and :class:`~bulkgpt_core.errors.ConfigError` when
    the model cannot be used (e.g. Gemini without a key).
    """
    compiled = compile_template(template, table.columns)
    price = price_for(generation.model, parse_price_overrides(settings.prices))
    model = open_model(settings, generation.model)
    policy = CallPolicy(
        max_attempts=SAMPLE_ATTEMPTS,
        base_backoff_s=0.5,
        max_backoff_s=MAX_RETRY_WAIT_S,
        max_output_tokens_cap=settings.max_output_tokens,
    )
    sampler = _Sampler(
        model,
        generation,
        price,
        policy,
        max_prompt_chars=settings.max_prompt_chars,
        concurrency=max(1, concurrency),
    )
    results = asyncio.run(sampler.run(compiled, table, indexes))
    return SampleRun(model=generation.model, results=results)


class _Sampler:
    """Sends rows through one :class:`RowCaller`; a fatal error stops the rest."""

    def __init__(
        self,
        model: ModelClient,
        generation: GenerationSettings,
        price: Price,
        policy: CallPolicy,
        max_prompt_chars: int,
        concurrency: int,
    ) -> None:
        self.model = model
        self.max_prompt_chars = max_prompt_chars
        self.fatal: ModelError | None = None
        self.stop = asyncio.Event()
        self.caller = RowCaller(
            model,
            generation,
            concurrency=concurrency,
            pacer=Pacer(),
            price=price,
            policy=policy,
            stop=self.stop,
        )

    async def run(
        self, compiled: CompiledTemplate, table: Table, indexes: Sequence[int]
    ) -> list[SampleResult]:
        try:
            rows = (self._row(compiled, table, i) for i in indexes)
            return list(await asyncio.gather(*rows))
        finally:
            await self.model.aclose()

    async def _row(
        self, compiled: CompiledTemplate, table: Table, index: int
    ) -> SampleResult:
        values = table.row_dict(index)
        prompt = compiled.render(values)
        base = SampleResult(index=index, values=values, prompt=prompt)
        if len(prompt) > self.max_prompt_chars:
            return _too_long(base, self.max_prompt_chars)
        try:
            result = await self.caller.answer(index, prompt, "")
        except FatalCallError as fatal:
            self.fatal = fatal.error
            self.stop.set()
            result = None
        except Exception as exc:  # one bad row never hides the others
            log.exception("sample row %d failed unexpectedly", index)
            return _failed(base, FailureKind.OTHER, f"{type(exc).__name__}: {exc}")
        if result is None:
            assert self.fatal is not None  # only a fatal error stops the caller
            return _failed(base, self.fatal.kind, str(self.fatal))
        return _from_result(base, result)


def _from_result(base: SampleResult, result: RowResult) -> SampleResult:
    answered = replace(
        base,
        answer=result.output,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        latency_s=None if result.latency_ms is None else result.latency_ms / 1000,
        cost_usd=result.cost_usd,
        finish_reason=result.finish_reason,
    )
    if result.status is RowStatus.SUCCEEDED:
        return answered
    return _failed(answered, result.error_kind or "", result.error_message or "")


def _failed(base: SampleResult, kind: str, detail: str) -> SampleResult:
    reason = reason_for(kind)
    return replace(
        base,
        error_kind=reason.kind,
        error=reason.title,
        error_detail=detail,
        fix=reason.fix,
    )


def _too_long(base: SampleResult, limit: int) -> SampleResult:
    detail = (
        f"The prompt for this row is {len(base.prompt):,} characters, over the "
        f"limit of {limit:,} (BULKGPT_MAX_PROMPT_CHARS). Shorten the template or "
        "the cell."
    )
    return _failed(base, FailureKind.INVALID_REQUEST, detail)
