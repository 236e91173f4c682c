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
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .batches import GenerationSettings
from .config import Settings
from .cost import Price, parse_price_overrides, price_for
from .models import open_model
from .models.base import FailureKind, ModelClient, ModelError, ModelReply
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

    Raises :class:`~bulkgpt_core.errors.TemplateError` for a template that
    does not fit the table and :class:`~bulkgpt_core.errors.ConfigError` when
    the model cannot be used (e.g. Gemini without a key).
    """
    compiled = compile_template(template, table.columns)
    price = price_for(generation.model, parse_price_overrides(settings.prices))
    model = open_model(settings, generation.model)
    sampler = _Sampler(
        model,
        generation,
        price,
        concurrency=concurrency,
        max_prompt_chars=settings.max_prompt_chars,
    )
    results = asyncio.run(sampler.run(compiled, table, indexes))
    return SampleRun(model=generation.model, results=results)


class _Sampler:
    """Sends rows with bounded concurrency, retrying briefly what is retryable."""

    def __init__(
        self,
        model: ModelClient,
        generation: GenerationSettings,
        price: Price,
        *,
        concurrency: int,
        max_prompt_chars: int,
    ) -> None:
        self.model = model
        self.generation = generation
        self.price = price
        self.concurrency = max(1, concurrency)
        self.max_prompt_chars = max_prompt_chars
        self.fatal: ModelError | None = None

    async def run(
        self, compiled: CompiledTemplate, table: Table, indexes: Sequence[int]
    ) -> list[SampleResult]:
        gate = asyncio.Semaphore(self.concurrency)
        try:
            return list(
                await asyncio.gather(
                    *(self._row(compiled, table, i, gate) for i in indexes)
                )
            )
        finally:
            await self.model.aclose()

    async def _row(
        self,
        compiled: CompiledTemplate,
        table: Table,
        index: int,
        gate: asyncio.Semaphore,
    ) -> SampleResult:
        values = table.row_dict(index)
        prompt = compiled.render(values)
        base = SampleResult(index=index, values=values, prompt=prompt)
        if len(prompt) > self.max_prompt_chars:
            return _too_long(base, self.max_prompt_chars)
        async with gate:
            try:
                return await self._call(base)
            except Exception as exc:  # one bad row never hides the others
                log.exception("sample row %d failed unexpectedly", index)
                detail = f"{type(exc).__name__}: {exc}"
                return _failed(base, FailureKind.OTHER, detail)

    async def _call(self, base: SampleResult) -> SampleResult:
        started = time.perf_counter()
        for attempt in range(1, SAMPLE_ATTEMPTS + 1):
            if self.fatal is not None:
                return self._failure(base, self.fatal, None)
            try:
                reply = await self.model.generate(base.prompt, self.generation)
            except ModelError as exc:
                if exc.kind.fails_every_call:
                    self.fatal = exc
                if not exc.retryable or attempt == SAMPLE_ATTEMPTS:
                    return self._failure(base, exc, time.perf_counter() - started)
                await asyncio.sleep(_retry_wait(attempt, exc.retry_after))
            else:
                return self._success(base, reply)
        raise AssertionError("unreachable: the last attempt always returns")

    def _success(self, base: SampleResult, reply: ModelReply) -> SampleResult:
        return _with_reply(base, reply, self.price)

    def _failure(
        self, base: SampleResult, error: ModelError, elapsed: float | None
    ) -> SampleResult:
        result = base
        if error.reply is not None:
            result = _with_reply(base, error.reply, self.price)
        elif elapsed is not None:
            result = replace(base, latency_s=elapsed)
        return _failed(result, error.kind, str(error))


def _retry_wait(attempt: int, retry_after: float | None) -> float:
    """Doubling from half a second, at least what the server asked, capped."""
    delay = max(0.5 * 2 ** (attempt - 1), retry_after or 0.0)
    return min(delay, MAX_RETRY_WAIT_S)


def _with_reply(base: SampleResult, reply: ModelReply, price: Price) -> SampleResult:
    return replace(
        base,
        answer=reply.text or None,
        tokens_in=reply.tokens_in,
        tokens_out=reply.tokens_out,
        latency_s=reply.latency_s,
        cost_usd=price.cost(reply.tokens_in, reply.tokens_out),
        finish_reason=reply.finish_reason,
    )


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
