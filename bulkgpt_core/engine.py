"""Runs one batch from the store: every pending row to the model, every result stored.

The engine streams pending rows a page at a time, renders each with the
batch's template, calls the model with bounded concurrency at the pace the
rate limits allow, retries what is worth retrying, and writes results in
batched transactions. It knows nothing about any particular provider or
store: both come in through their interfaces.

Running a batch again is always safe: it picks up only rows that are not yet
succeeded or failed, including rows a dead worker left ``running``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .batches import (
    Batch,
    BatchStatus,
    GenerationSettings,
    PendingRow,
    RowResult,
    RowStatus,
    utcnow,
)
from .calls import CallPolicy, FatalCallError, RowCaller
from .cost import Price, price_for
from .errors import BatchNotFound, BulkGPTError, StoreError
from .journal import Journal, leftover_segments, read_segments
from .models.base import FailureKind, ModelClient
from .pacing import Pacer
from .reuse import AnswerCache, from_stored, reused_result
from .stores.base import Store
from .templates import CompiledTemplate, compile_template, prompt_hash

log = logging.getLogger(__name__)
T = TypeVar("T")

RATE_WINDOW_S = 30.0
#: How often the counters are remembered for the throughput chart.
PROGRESS_SAMPLE_S = 5.0
#: The longest pause between two tries of a store that is not answering.
STORE_RETRY_MAX_S = 5.0


@dataclass(frozen=True)
class EngineOptions:
    """Tuning knobs; the defaults suit every store and provider."""

    page_rows: int = 500
    flush_rows: int = 500
    flush_seconds: float = 1.0
    tick_seconds: float = 1.0
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_prompt_chars: int = 200_000
    max_output_tokens_cap: int = 65_536
    #: Only rows with ``lo <= index < hi`` (one shard of a batch).
    row_range: tuple[int, int] | None = None
    #: How long the store may fail before the batch is paused; results wait
    #: in memory and in the journal meanwhile (``BULKGPT_STORE_OUTAGE_S``).
    store_outage_s: float = 120.0
    #: Prices that override the built-in table (``BULKGPT_PRICES``).
    prices: dict[str, Price] | None = None
    #: Where results wait, safe from a killed worker, until they are stored.
    journal_dir: Path | None = None
    #: Dispatch waits while this many results wait to be stored.
    max_buffered_rows: int = 20_000


@dataclass
class RunStats:
    """What one run of the engine did, for logs and benchmarks."""

    calls: int = 0
    retries: int = 0
    throttled: int = 0
    succeeded: int = 0
    failed: int = 0
    reused: int = 0
    flushes: int = 0


class BatchRun:
    """One worker's run over a batch (or one shard of it)."""

    def __init__(
        self,
        store: Store,
        batch: Batch,
        model: ModelClient,
        options: EngineOptions,
        price: Price,
    ) -> None:
        self.store = store
        self.batch = batch
        self.options = options
        self.limits = batch.run_limits()
        self.settings: GenerationSettings = batch.generation_settings()
        self.template: CompiledTemplate = compile_template(
            batch.template, batch.columns
        )
        self._stop = asyncio.Event()
        self.caller = RowCaller(
            model,
            self.settings,
            concurrency=self.limits.concurrency,
            pacer=Pacer(self.limits.rpm, self.limits.tpm),
            price=price,
            policy=CallPolicy(
                max_attempts=self.limits.max_attempts,
                base_backoff_s=options.base_backoff_s,
                max_backoff_s=options.max_backoff_s,
                max_output_tokens_cap=options.max_output_tokens_cap,
            ),
            stop=self._stop,
        )
        self.cache = AnswerCache()
        self.reuse_across_batches = self.limits.reuse
        # Answers are only ever reused from the batch owner's own batches.
        owner = batch.user_id
        self.reuse_store = store if owner == store.owner else store.scoped(owner)
        self.stats = RunStats()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._buffer: list[RowResult] = []
        # Results whose write failed, and the journal segments holding them.
        self._held: list[RowResult] = []
        self._held_segments: list[Path] = []
        self._outage_since: float | None = None
        self._to_release: list[int] = []
        self._flush_wanted = asyncio.Event()
        self.stop_status: BatchStatus | None = None
        self.stop_error: str | None = None
        self._done_times: collections.deque[tuple[float, int]] = collections.deque()
        self._completed_rows = 0
        self._last_sample = 0.0
        self.journal: Journal | None = None

    # -- store access, off the event loop

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, lambda: fn(*args, **kwargs))

    async def _store_patiently(
        self, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """A store call, tried again with backoff while the store is down.

        Every caller shares one outage clock: once the store has failed for
        longer than ``store_outage_s``, the batch stops to be paused and the
        error is raised.
        """
        delay = 0.5
        while True:
            try:
                result = await self._store(fn, *args, **kwargs)
            except BatchNotFound:
                raise
            except StoreError as exc:
                now = time.monotonic()
                self._outage_since = self._outage_since or now
                if now - self._outage_since > self.options.store_outage_s:
                    self._halt(BatchStatus.PAUSED, _outage_message(exc, self.options))
                    raise
                log.warning("the store failed (%s); trying again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)
            else:
                self._outage_since = None
                return result

    # -- the run

    async def run(self) -> RunStats:
        await self._recover_journal()
        rng = self.options.row_range
        await self._store_patiently(self.store.requeue_running, self.batch.id, rng)
        flusher = asyncio.create_task(self._flush_loop())
        ticker = asyncio.create_task(self._tick_loop())
        try:
            await self._dispatch_all()
        finally:
            self._stop.set()
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            self._flush_wanted.set()
            await flusher
            await self._final_flush()
            self._io.shutdown(wait=True)
            if self.reuse_store is not self.store:
                self.reuse_store.close()
        counters = self.caller.counters
        self.stats.calls = counters.calls
        self.stats.retries = counters.retries
        self.stats.throttled = counters.throttled
        return self.stats

    async def _dispatch_all(self) -> None:
        """Passes over the pending rows until a pass finds none."""
        # Rows waiting out a retry's backoff hold a place here, not a call slot.
        outstanding = asyncio.Semaphore(max(self.limits.concurrency * 4, 32))
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not self._stop.is_set():
                claimed = await self._one_pass(outstanding, tasks)
                if claimed == 0:
                    break
        except StoreError:
            if self.stop_status is not BatchStatus.PAUSED:
                raise
            # The store stayed down past its limit: the batch is pausing.
        finally:
            # Calls in flight finish and are recorded, whatever stopped us.
            if tasks:
                await asyncio.gather(*tasks)

    async def _one_pass(
        self, outstanding: asyncio.Semaphore, tasks: set[asyncio.Task[None]]
    ) -> int:
        cursor, claimed = -1, 0
        while not self._stop.is_set():
            page = await self._store_patiently(
                self.store.claim_rows,
                self.batch.id,
                after_index=cursor,
                limit=self.options.page_rows,
                row_range=self.options.row_range,
            )
            if not page:
                break
            claimed += len(page)
            cursor = page[-1].index
            prepared = [self._prepare(row) for row in page]
            await self._look_up_answers([phash for _, phash in prepared])
            for position, (row, (prompt, phash)) in enumerate(
                zip(page, prepared, strict=True)
            ):
                await self._wait_for_the_store()
                await outstanding.acquire()
                if self._stop.is_set():
                    outstanding.release()
                    self._to_release.extend(r.index for r in page[position:])
                    break
                task = asyncio.create_task(self._process(row, prompt, phash))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t: outstanding.release())
        # Let this pass's rows finish before looking for rows left behind.
        if tasks:
            await asyncio.gather(*tasks)
        return claimed

    async def _wait_for_the_store(self) -> None:
        """Hold dispatch while the store is behind (during an outage)."""
        while (
            len(self._buffer) + len(self._held) >= self.options.max_buffered_rows
            and not self._stop.is_set()
        ):
            self._flush_wanted.set()
            await asyncio.sleep(0.1)

    # -- one row

    def _prepare(self, row: PendingRow) -> tuple[str, str]:
        """The row's rendered prompt and the hash that identifies its answer."""
        prompt = self.template.render(row.values)
        phash = prompt_hash(
            prompt,
            model=self.settings.model,
            system_prompt=self.settings.system_prompt,
            settings=self.batch.generation,
            schema=self.settings.response_schema,
        )
        return prompt, phash

    async def _process(self, row: PendingRow, prompt: str, phash: str) -> None:
        try:
            result = await self._answer(row.index, prompt, phash)
        except FatalCallError as fatal:
            self._halt(BatchStatus.FAILED, str(fatal.error))
            result = None
        except Exception as exc:  # one bad row never stops a batch
            log.exception("row %d failed unexpectedly", row.index)
            result = _unexpected_failure(row.index, exc)
        if result is None:
            self._to_release.append(row.index)
        else:
            self._record(result)

    async def _answer(self, index: int, prompt: str, phash: str) -> RowResult | None:
        """A result from an identical answer if there is one, else from a call."""
        if len(prompt) > self.options.max_prompt_chars:
            return _prompt_too_long(index, phash, len(prompt), self.options)
        earlier = self.cache.answered(phash)
        if earlier is None and (waiting := self.cache.in_flight(phash)) is not None:
            earlier = await waiting
        if earlier is not None and earlier.status is RowStatus.SUCCEEDED:
            return reused_result(index, earlier)
        self.cache.begin(phash)
        result = None
        try:
            result = await self.caller.answer(index, prompt, phash)
        finally:
            self.cache.finish(phash, result)
        return result

    async def _look_up_answers(self, hashes: list[str]) -> None:
        """Fill the cache with stored answers for this page's prompts."""
        wanted = [h for h in dict.fromkeys(hashes) if h not in self.cache]
        if not wanted:
            return
        batch_only = None if self.reuse_across_batches else self.batch.id
        try:
            found = await self._store(
                self.reuse_store.find_reusable, wanted, batch_id=batch_only
            )
        except StoreError as exc:  # reuse saves money; it is never worth stopping for
            log.warning("looking up earlier answers failed: %s", exc)
            return
        for phash, row in found.items():
            self.cache.remember(phash, from_stored(row, phash))

    def _record(self, result: RowResult) -> None:
        self._buffer.append(result)
        if self.journal is not None:
            self.journal.append(result)
        if result.status is RowStatus.SUCCEEDED:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1
        self.stats.reused += result.reused
        self._completed_rows += 1
        if len(self._buffer) >= self.options.flush_rows:
            self._flush_wanted.set()

    def _halt(self, status: BatchStatus, error: str | None = None) -> None:
        if self.stop_status is None:
            self.stop_status = status
            self.stop_error = error
            log.warning("batch %s stopping: %s %s", self.batch.id, status, error or "")
        self._stop.set()

    # -- writing results

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._flush_wanted.wait(), timeout=self.options.flush_seconds
                )
            self._flush_wanted.clear()
            await self._flush()
            if self._stop.is_set():
                return

    async def _flush(self) -> bool:
        """Write the results waiting to be stored; say whether they all are.

        Through an outage the results stay held (in memory and in their
        journal segments) and each flush tries them again.
        """
        if self.journal is not None and self._buffer:
            self._held_segments.append(self.journal.rotate())
        results, self._buffer = self._held + self._buffer, []
        self._held = []
        if not results:
            return True
        try:
            await self._store_patiently(
                self.store.record_results, self.batch.id, results
            )
        except StoreError as exc:
            self._held = results
            log.error(
                "batch %s: %d results wait to be stored (%s)",
                self.batch.id,
                len(results),
                exc,
            )
            return False
        self.stats.flushes += 1
        for segment in self._held_segments:
            segment.unlink(missing_ok=True)
        self._held_segments = []
        return True

    async def _final_flush(self) -> None:
        if not await self._flush():
            log.error(
                "batch %s: %d results are kept in the journal (%s) and are "
                "recorded when the batch runs again",
                self.batch.id,
                len(self._held),
                self.options.journal_dir,
            )
            return
        if self.journal is not None:
            self.journal.discard()
        if self._to_release:
            released, self._to_release = self._to_release, []
            try:
                await self._store_patiently(
                    self.store.release_rows, self.batch.id, released
                )
            except StoreError as exc:  # the next run puts them back itself
                log.warning("releasing unsent rows failed: %s", exc)

    def store_held_results(self) -> None:
        """Write the results an outage left held (call once the run is over)."""
        if self._held:
            self.store.record_results(self.batch.id, self._held)
            self._held = []
        for segment in self._held_segments:
            segment.unlink(missing_ok=True)
        self._held_segments = []
        if self.journal is not None:
            self.journal.discard()

    async def _recover_journal(self) -> None:
        """Record what workers that died left in their journals."""
        folder = self.options.journal_dir
        if folder is None:
            return
        segments = leftover_segments(folder, self.batch.id)
        results = list(read_segments(segments))
        if results:
            stored = await self._store_patiently(
                self.store.record_results, self.batch.id, results
            )
            log.info("recovered %d results from a stopped worker", stored)
        for segment in segments:
            segment.unlink(missing_ok=True)
        self.journal = Journal(folder, self.batch.id)

    # -- watching the batch

    async def _tick_loop(self) -> None:
        """Once a tick: publish the rate, and notice pause, cancel and budget."""
        while True:
            await asyncio.sleep(self.options.tick_seconds)
            try:
                await self._tick()
            except StoreError as exc:
                log.warning("progress update failed: %s", exc)

    async def _tick(self) -> None:
        now = time.monotonic()
        self._done_times.append((now, self._completed_rows))
        while self._done_times and now - self._done_times[0][0] > RATE_WINDOW_S:
            self._done_times.popleft()
        first_t, first_n = self._done_times[0]
        rate = (
            (self._completed_rows - first_n) / (now - first_t) if now > first_t else 0
        )
        if self.options.row_range is None:
            await self._store(
                self.store.update_batch, self.batch.id, rows_per_second=round(rate, 3)
            )
        if now - self._last_sample >= PROGRESS_SAMPLE_S:
            self._last_sample = now
            await self._store(self.store.add_progress_sample, self.batch.id)
        batch = await self._store(self.store.get_batch, self.batch.id)
        if batch.status is BatchStatus.PAUSED:
            self._halt(BatchStatus.PAUSED)
        elif batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            self._halt(BatchStatus.CANCELLED)
        elif batch.status is BatchStatus.FAILED:
            # Another shard met an error that fails every call.
            self._halt(BatchStatus.FAILED, batch.last_error)
        elif batch.budget_usd is not None and batch.cost_usd >= batch.budget_usd:
            self._halt(
                BatchStatus.PAUSED,
                f"Paused: the budget of ${batch.budget_usd:.2f} is spent "
                f"(${batch.cost_usd:.2f}). Raise the budget and resume to go on.",
            )


def _unexpected_failure(index: int, exc: Exception) -> RowResult:
    return RowResult(
        index=index,
        status=RowStatus.FAILED,
        error_kind=FailureKind.OTHER.value,
        error_message=f"Unexpected error: {type(exc).__name__}: {exc}",
        attempts=0,
    )


def _prompt_too_long(
    index: int, phash: str, length: int, options: EngineOptions
) -> RowResult:
    return RowResult(
        index=index,
        status=RowStatus.FAILED,
        prompt_hash=phash,
        error_kind=FailureKind.INVALID_REQUEST.value,
        error_message=(
            f"The prompt for this row is {length:,} characters, over the limit of "
            f"{options.max_prompt_chars:,} (BULKGPT_MAX_PROMPT_CHARS). Shorten the "
            "template or the cell."
        ),
        attempts=0,
    )


async def run_batch(
    store: Store,
    batch_id: str,
    model: ModelClient,
    options: EngineOptions | None = None,
) -> Batch:
    """Run a batch (or one shard of it) until no pending row is left, or it stops.

    Returns the batch as stored afterwards. Without a row range, the batch ends
    ``completed``, ``paused``, ``cancelled`` or ``failed``; a shard leaves the
    batch's status to whoever coordinates the shards.
    """
    options = options or EngineOptions()
    batch = store.get_batch(batch_id)
    if not _claim_for_running(store, batch):
        return store.get_batch(batch_id)
    try:
        price = price_for(batch.model, options.prices)
        run = BatchRun(store, batch, model, options, price)
    except BulkGPTError as exc:
        store.set_status(batch_id, BatchStatus.FAILED, last_error=str(exc))
        return store.get_batch(batch_id)
    started = time.monotonic()
    try:
        stats = await run.run()
    except StoreError:
        if run.stop_status is None:
            raise
        # The store stayed down past its limit: the run stopped to pause.
    else:
        log.info(
            "batch %s: %d calls, %d ok, %d failed, %d retries in %.1fs",
            batch_id,
            stats.calls,
            stats.succeeded,
            stats.failed,
            stats.retries,
            time.monotonic() - started,
        )
    await _record_the_end(store, run, options)
    return store.get_batch(batch_id)


async def _record_the_end(store: Store, run: BatchRun, options: EngineOptions) -> None:
    """Store what the run holds and how it ended, waiting out an outage a while.

    When the store stays down even then, the error says so: the results stay
    in the journal, and the next run of the batch records them.
    """
    deadline = time.monotonic() + options.store_outage_s
    delay = 0.5
    while True:
        try:
            run.store_held_results()
            _record_stop(store, run, options)
            return
        except BatchNotFound:
            raise
        except StoreError as exc:
            if time.monotonic() >= deadline:
                message = _unrecorded_message(run, options, exc)
                log.error("%s", message)
                raise StoreError(message) from exc
            log.warning(
                "recording the end of the run failed (%s); again in %.1fs", exc, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_S)


def _record_stop(store: Store, run: BatchRun, options: EngineOptions) -> None:
    batch_id = run.batch.id
    if options.row_range is None:
        settle_batch(store, batch_id, run.stop_status, run.stop_error)
    elif run.stop_status is BatchStatus.FAILED:
        store.set_status(batch_id, BatchStatus.FAILED, last_error=run.stop_error)


def _outage_message(exc: StoreError, options: EngineOptions) -> str:
    return (
        f"The store did not answer for more than {options.store_outage_s:g} s "
        "(BULKGPT_STORE_OUTAGE_S), so the batch was paused. The answers already "
        f"received are kept and recorded when it resumes. The store said: {exc}"
    )


def _unrecorded_message(run: BatchRun, options: EngineOptions, exc: StoreError) -> str:
    status = run.stop_status.value if run.stop_status else "finished"
    return (
        f"Batch {run.batch.id} stopped ({status}), but the store has not answered "
        f"for more than {options.store_outage_s:g} s (BULKGPT_STORE_OUTAGE_S), so "
        "that could not be recorded. The answers already received are kept in "
        f"the journal ({options.journal_dir}) and recorded when the batch runs "
        "again: once the store is back, resume the batch (or run python -m "
        f"bulkgpt_core worker {run.batch.id}). The store said: {exc}"
    )


def _claim_for_running(store: Store, batch: Batch) -> bool:
    """Mark the batch running; False when it is not runnable."""
    if batch.status is BatchStatus.CANCELLING:
        store.requeue_running(batch.id)
        store.set_status(batch.id, BatchStatus.CANCELLED)
        return False
    runnable = (BatchStatus.PENDING, BatchStatus.RUNNING)
    if batch.status not in runnable:
        return False
    if not store.set_status(batch.id, BatchStatus.RUNNING, only_from=runnable):
        return False
    if batch.started_at is None:
        store.update_batch(batch.id, started_at=utcnow())
    return True


def settle_batch(
    store: Store, batch_id: str, stop: BatchStatus | None, error: str | None
) -> None:
    """Give a whole batch its final status after a run."""
    if stop is BatchStatus.FAILED:
        store.set_status(batch_id, BatchStatus.FAILED, last_error=error)
    elif stop is BatchStatus.CANCELLED:
        store.set_status(batch_id, BatchStatus.CANCELLED)
    elif stop is BatchStatus.PAUSED:
        store.set_status(
            batch_id,
            BatchStatus.PAUSED,
            only_from=(BatchStatus.RUNNING, BatchStatus.PAUSED),
            last_error=error,
        )
    else:
        batch = store.get_batch(batch_id)
        if batch.remaining == 0:
            store.set_status(
                batch_id, BatchStatus.COMPLETED, only_from=(BatchStatus.RUNNING,)
            )
        store.update_batch(batch_id, rows_per_second=0.0)
