"""Asking the model about one row until there is an answer worth keeping.

A row's call is retried when the failure is worth another try (rate limits,
server errors, timeouts, dropped connections), with backoff. Two failures get
one special second chance: an answer cut off at the token limit is asked again
with twice the limit (within the configured cap), and an answer that does not
fit the output schema is asked again with what was wrong with it. Every token
spent along the way is counted on the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any

from .batches import GenerationSettings, RowResult, RowStatus
from .cost import Price
from .models.base import (
    FailureKind,
    ModelClient,
    ModelError,
    ModelReply,
    estimate_tokens,
)
from .pacing import Pacer
from .schema import AnswerError, parse_answer, repair_prompt


class FatalCallError(Exception):
    """A failure every call of the batch would meet (invalid key, unknown model)."""

    def __init__(self, error: ModelError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class CallPolicy:
    """How hard to try for one row."""

    max_attempts: int = 6
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    #: The highest max-output-tokens a cut-off answer may be retried with.
    max_output_tokens_cap: int = 65_536


@dataclass
class CallCounters:
    """Totals over every row's calls, for logs and benchmarks."""

    calls: int = 0
    retries: int = 0
    throttled: int = 0


@dataclass
class _RowCall:
    """What one row's call has tried and spent so far."""

    prompt: str
    settings: GenerationSettings
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    repaired: bool = False
    widened: bool = False
    started: float = dataclasses.field(default_factory=time.monotonic)

    def spend(self, reply: ModelReply | None) -> None:
        if reply is not None:
            self.tokens_in += reply.tokens_in
            self.tokens_out += reply.tokens_out


class RowCaller:
    """Calls the model for rows, sharing one concurrency limit and one pace."""

    def __init__(
        self,
        model: ModelClient,
        settings: GenerationSettings,
        *,
        concurrency: int,
        pacer: Pacer,
        price: Price,
        policy: CallPolicy,
        stop: asyncio.Event,
        in_flight: asyncio.Semaphore | None = None,
    ) -> None:
        """``in_flight``, when given, is a concurrency limit shared with other
        callers (the prompt lab's variants); else ``concurrency`` makes one."""
        self.model = model
        self.settings = settings
        self.pacer = pacer
        self.price = price
        self.policy = policy
        self.counters = CallCounters()
        self._stop = stop
        self._in_flight = in_flight or asyncio.Semaphore(concurrency)

    async def answer(self, index: int, prompt: str, phash: str) -> RowResult | None:
        """The row's result; None if the batch stopped before it was answered.

        Raises :class:`FatalCallError` for a failure every row would meet.
        """
        call = _RowCall(prompt, self.settings)
        while not self._stop.is_set():
            call.attempts += 1
            try:
                reply = await self._call_once(call)
            except ModelError as error:
                call.spend(error.reply)
                outcome = await self._after_error(index, phash, call, error)
            else:
                if reply is None:
                    return None
                call.spend(reply)
                outcome = self._after_reply(index, phash, call, reply)
            if outcome is not None:
                return outcome
        return None

    async def _call_once(self, call: _RowCall) -> ModelReply | None:
        """One call, or None when the batch stopped while it waited its turn."""
        tokens = estimate_tokens(call.settings.system_prompt + call.prompt)
        async with self._in_flight:
            if self._stop.is_set():
                return None
            await self.pacer.wait(tokens)
            self.counters.calls += 1
            reply = await self.model.generate(call.prompt, call.settings)
        self.pacer.succeeded()
        return reply

    def _after_reply(
        self, index: int, phash: str, call: _RowCall, reply: ModelReply
    ) -> RowResult | None:
        schema = self.settings.response_schema
        if not schema:
            return self._result(index, phash, call, reply, RowStatus.SUCCEEDED)
        try:
            parsed = parse_answer(reply.text, schema)
        except AnswerError as problem:
            if not call.repaired:
                call.repaired = True
                call.prompt = repair_prompt(call.prompt, reply.text, str(problem))
                return None
            return self._result(
                index,
                phash,
                call,
                reply,
                RowStatus.FAILED,
                error=(
                    FailureKind.INVALID_JSON,
                    f"The answer was unusable: {problem}.",
                ),
            )
        return self._result(index, phash, call, reply, RowStatus.SUCCEEDED, parsed)

    async def _after_error(
        self, index: int, phash: str, call: _RowCall, error: ModelError
    ) -> RowResult | None:
        if error.kind.fails_every_call:
            raise FatalCallError(error)
        if error.kind is FailureKind.RATE_LIMITED:
            self.counters.throttled += 1
            self.pacer.throttled()
        else:
            self.pacer.succeeded()
        if self._widen(call, error):
            return None
        if error.retryable and call.attempts < self.policy.max_attempts:
            self.counters.retries += 1
            await self._pause(call.attempts, error.retry_after)
            return None
        return self._result(
            index,
            phash,
            call,
            error.reply,
            RowStatus.FAILED,
            error=(error.kind, str(error)),
        )

    def _widen(self, call: _RowCall, error: ModelError) -> bool:
        """Give a cut-off answer one more try with twice the token limit."""
        limit = call.settings.max_output_tokens
        if error.kind is not FailureKind.MAX_TOKENS or call.widened or not limit:
            return False
        wider = min(limit * 2, self.policy.max_output_tokens_cap)
        if wider <= limit:
            return False
        call.widened = True
        call.settings = dataclasses.replace(call.settings, max_output_tokens=wider)
        return True

    async def _pause(self, attempt: int, retry_after: float | None) -> None:
        delay = backoff_delay(
            attempt,
            retry_after,
            base=self.policy.base_backoff_s,
            cap=self.policy.max_backoff_s,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=delay)

    def _result(
        self,
        index: int,
        phash: str,
        call: _RowCall,
        reply: ModelReply | None,
        status: RowStatus,
        parsed: Any = None,
        error: tuple[FailureKind, str] | None = None,
    ) -> RowResult:
        return RowResult(
            index=index,
            status=status,
            output=reply.text if reply and reply.text else None,
            parsed=parsed,
            prompt_hash=phash,
            error_kind=error[0].value if error else None,
            error_message=error[1] if error else None,
            attempts=call.attempts,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            cost_usd=self.price.cost(call.tokens_in, call.tokens_out),
            latency_ms=round(
                (reply.latency_s if reply else time.monotonic() - call.started) * 1000
            ),
            finish_reason=reply.finish_reason if reply else None,
        )


def backoff_delay(
    attempt: int, retry_after: float | None, *, base: float, cap: float
) -> float:
    """Exponential backoff with jitter, never shorter than the server asked."""
    exponential = min(cap, base * 2 ** (attempt - 1))
    delay = random.uniform(exponential / 2, exponential)
    if retry_after is not None:
        delay = max(delay, retry_after * random.uniform(1.0, 1.2))
    return delay
