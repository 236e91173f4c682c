"""Never pay twice for the same prompt.

A row whose rendered prompt, model, settings and schema hash equals an answer
already given (earlier in this run, stored from an earlier run, or in flight
for an identical row right now) takes that answer without a call. The row is
stored as succeeded, with no tokens and no cost of its own, and the batch
counts it as reused with the cost it saved.
"""

from __future__ import annotations

import asyncio
import collections

from .batches import RowResult, RowStatus, StoredRow

#: Answers kept in memory. Older ones are still found: each page of rows looks
#: its prompts up in the store, where every answer lands within a second.
DEFAULT_CAPACITY = 5_000


def reused_result(index: int, source: RowResult) -> RowResult:
    """The result of a row that takes ``source``'s answer without a call."""
    return RowResult(
        index=index,
        status=RowStatus.SUCCEEDED,
        output=source.output,
        parsed=source.parsed,
        prompt_hash=source.prompt_hash,
        attempts=0,
        finish_reason=source.finish_reason,
        reused=True,
        saved_usd=source.cost_usd or source.saved_usd,
    )


def from_stored(row: StoredRow, prompt_hash: str) -> RowResult:
    return RowResult(
        index=row.index,
        status=RowStatus.SUCCEEDED,
        output=row.output,
        parsed=row.parsed,
        prompt_hash=prompt_hash,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        cost_usd=row.cost_usd,
        finish_reason=row.finish_reason,
    )


class AnswerCache:
    """Succeeded answers by prompt hash (the most recent ones), and calls in flight."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._done: collections.OrderedDict[str, RowResult] = collections.OrderedDict()
        self._in_flight: dict[str, asyncio.Future[RowResult | None]] = {}

    def __contains__(self, phash: str) -> bool:
        return phash in self._done or phash in self._in_flight

    def answered(self, phash: str) -> RowResult | None:
        result = self._done.get(phash)
        if result is not None:
            self._done.move_to_end(phash)
        return result

    def in_flight(self, phash: str) -> asyncio.Future[RowResult | None] | None:
        return self._in_flight.get(phash)

    def remember(self, phash: str, result: RowResult) -> None:
        self._done[phash] = result
        self._done.move_to_end(phash)
        while len(self._done) > self.capacity:
            self._done.popitem(last=False)

    def begin(self, phash: str) -> None:
        self._in_flight[phash] = asyncio.get_running_loop().create_future()

    def finish(self, phash: str, result: RowResult | None) -> None:
        future = self._in_flight.pop(phash, None)
        if future is not None and not future.done():
            future.set_result(result)
        if result is not None and result.status is RowStatus.SUCCEEDED:
            self.remember(phash, result)
