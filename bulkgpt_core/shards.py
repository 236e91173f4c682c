"""Splitting a big batch into row ranges that several workers run at once.

A batch of more than ``shard_rows`` rows is cut into at most ``max_shards``
contiguous row ranges of nearly equal size. Each shard is an ordinary engine
run limited to its range (``EngineOptions.row_range``) and paced to its share
of the batch's rate limits, so that the shards together stay within them. The
store bumps the batch's counters with every write, so the batch's progress is
the sum of its shards' with no bookkeeping here.

:func:`run_batch_job` is what a Modal container runs for a batch: a small
batch in that process, a big one through :func:`run_sharded`. The coordinator
starts the shards with a ``run_shards`` callable (Modal's ``starmap`` in the
cloud, threads in tests), waits for all of them, goes round again while rows
are left and the last round made progress, and only then gives the batch its
final status. Everything here is safe to run twice: a retried coordinator or
shard picks up only rows that are not finished yet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .batches import Batch, BatchStatus, GenerationSettings
from .config import Settings
from .engine import EngineOptions, run_batch, settle_batch
from .errors import BulkGPTError, StoreError
from .models import open_model
from .models.base import (
    FailureKind,
    ModelClient,
    ModelError,
    ModelReply,
    estimate_tokens,
)
from .pacing import Pacer
from .stores.base import Store
from .worker import engine_options, run_stored_batch

log = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 50_000
DEFAULT_MAX_SHARDS = 20
#: Rounds of shards one coordinator runs before it gives up and pauses.
MAX_ROUNDS = 3
#: How often the coordinator publishes the batch's speed while shards run.
WATCH_SECONDS = 5.0
RATE_WINDOW_S = 60.0
#: States in which a coordinator has work to do.
STARTABLE = (BatchStatus.PENDING, BatchStatus.RUNNING, BatchStatus.CANCELLING)

StoreFactory = Callable[[], Store]


@dataclass(frozen=True)
class ShardConfig:
    """When a batch is split, and into how many shards at most."""

    shard_rows: int = DEFAULT_SHARD_ROWS
    max_shards: int = DEFAULT_MAX_SHARDS

    @classmethod
    def from_settings(cls, settings: Settings) -> ShardConfig:
        """BULKGPT_SHARD_ROWS and BULKGPT_MAX_SHARDS."""
        return cls(shard_rows=settings.shard_rows, max_shards=settings.max_shards)


@dataclass(frozen=True)
class ShardSpec:
    """One shard: rows ``lo <= index < hi`` of a batch, and its rate share."""

    batch_id: str
    lo: int
    hi: int
    rpm: int | None = None
    tpm: int | None = None

    @property
    def row_range(self) -> tuple[int, int]:
        return (self.lo, self.hi)

    @property
    def args(self) -> tuple[str, int, int, int | None, int | None]:
        """The arguments of the Modal function ``process_shard``."""
        return (self.batch_id, self.lo, self.hi, self.rpm, self.tpm)


@dataclass(frozen=True)
class ShardOutcome:
    """What one shard run ended with: its range and the batch's status then."""

    lo: int
    hi: int
    status: str


ShardResult = ShardOutcome | BaseException
RunShards = Callable[[Sequence[ShardSpec]], Sequence[ShardResult]]


# -- planning


def plan_shards(
    total_rows: int, shard_rows: int, max_shards: int
) -> list[tuple[int, int]]:
    """Contiguous ``(lo, hi)`` row ranges that cover rows ``0..total_rows``.

    One range when the batch has at most ``shard_rows`` rows; otherwise one
    range per ``shard_rows`` rows, but never more than ``max_shards``. Range
    sizes differ by at most one row. No rows, no ranges.
    """
    if shard_rows < 1 or max_shards < 1:
        raise ValueError("shard_rows and max_shards must be at least 1")
    if total_rows <= 0:
        return []
    count = min(max_shards, math.ceil(total_rows / shard_rows))
    base, extra = divmod(total_rows, count)
    ranges: list[tuple[int, int]] = []
    lo = 0
    for number in range(count):
        hi = lo + base + (1 if number < extra else 0)
        ranges.append((lo, hi))
        lo = hi
    return ranges


def share_of(limit: int | None, shards: int) -> int | None:
    """One shard's share of a per-minute limit: rounded down, at least 1."""
    if limit is None:
        return None
    return max(1, limit // max(shards, 1))


def shard_specs(batch: Batch, config: ShardConfig) -> list[ShardSpec]:
    """The shards of a batch, each with its share of the batch's rate limits."""
    ranges = plan_shards(batch.total_rows, config.shard_rows, config.max_shards)
    limits = batch.run_limits()
    rpm = share_of(limits.rpm, len(ranges))
    tpm = share_of(limits.tpm, len(ranges))
    return [ShardSpec(batch.id, lo, hi, rpm, tpm) for lo, hi in ranges]


# -- one shard


class PacedModel:
    """A model client that keeps to one shard's share of the rate limits.

    The engine paces every call to the batch's limits; a shard must go
    slower, so this wrapper waits for its own slot too (and slows down on
    429s just as the engine's pacer does).
    """

    def __init__(self, inner: ModelClient, rpm: int | None, tpm: int | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.pacer = Pacer(rpm, tpm)

    async def generate(self, prompt: str, settings: GenerationSettings) -> ModelReply:
        tokens = estimate_tokens(settings.system_prompt + prompt)
        await self.pacer.wait(tokens)
        try:
            reply = await self.inner.generate(prompt, settings)
        except ModelError as exc:
            if exc.kind is FailureKind.RATE_LIMITED:
                self.pacer.throttled()
            raise
        self.pacer.succeeded()
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run_stored_shard(
    settings: Settings,
    store: Store,
    spec: ShardSpec,
    options: EngineOptions | None = None,
) -> Batch:
    """Run one shard's rows with the batch's model, paced to the shard's share."""
    options = _shard_options(options or engine_options(settings), spec)
    batch = store.get_batch(spec.batch_id)
    try:
        model: ModelClient = open_model(settings, batch.model)
    except BulkGPTError as exc:
        store.set_status(spec.batch_id, BatchStatus.FAILED, last_error=str(exc))
        return store.get_batch(spec.batch_id)
    if spec.rpm or spec.tpm:
        model = PacedModel(model, spec.rpm, spec.tpm)
    try:
        return await run_batch(store, spec.batch_id, model, options)
    finally:
        await model.aclose()


def _shard_options(base: EngineOptions, spec: ShardSpec) -> EngineOptions:
    """The engine limited to the shard's rows, with a journal of the shard's own.

    Journals are told apart by process id; shards that share a process (as
    under ``.local()``) must not take each other's segments for a dead
    worker's.
    """
    journal = base.journal_dir
    if journal is not None:
        journal = journal / f"shard-{spec.lo}-{spec.hi}"
    return dataclasses.replace(base, row_range=spec.row_range, journal_dir=journal)


def run_shard(
    settings: Settings,
    store_factory: StoreFactory,
    spec: ShardSpec,
    options: EngineOptions | None = None,
) -> ShardOutcome:
    """The body of one shard's container: its rows to the end, or a stop."""
    with _opened(store_factory) as store:
        batch = asyncio.run(run_stored_shard(settings, store, spec, options))
    log.info(
        "shard %d-%d of batch %s ended; batch is %s",
        spec.lo,
        spec.hi,
        spec.batch_id,
        batch.status.value,
    )
    return ShardOutcome(spec.lo, spec.hi, batch.status.value)


def run_shards_in_threads(call: Callable[[ShardSpec], ShardOutcome]) -> RunShards:
    """A ``run_shards`` that runs every shard at once in threads of this process.

    Like Modal's ``starmap(..., return_exceptions=True)``, a shard that raises
    gives its exception in its place instead of stopping the others.
    """

    def run_all(specs: Sequence[ShardSpec]) -> list[ShardResult]:
        if not specs:
            return []
        with ThreadPoolExecutor(len(specs), thread_name_prefix="shard") as pool:
            futures = [pool.submit(call, spec) for spec in specs]
            return [future.exception() or future.result() for future in futures]

    return run_all


# -- the coordinator


def run_batch_job(
    settings: Settings,
    store_factory: StoreFactory,
    batch_id: str,
    *,
    run_shards: RunShards,
    config: ShardConfig | None = None,
) -> Batch:
    """Run a stored batch to its end: here when small, in shards when big."""
    config = config or ShardConfig.from_settings(settings)
    with _opened(store_factory) as store:
        batch = store.get_batch(batch_id)
        if batch.total_rows > config.shard_rows:
            return run_sharded(store, batch_id, run_shards=run_shards, config=config)
        asyncio.run(run_stored_batch(settings, store, batch_id))
        return settle_after_run(store, batch_id, [])


def run_sharded(
    store: Store,
    batch_id: str,
    *,
    run_shards: RunShards,
    config: ShardConfig,
    max_rounds: int = MAX_ROUNDS,
    watch_seconds: float = WATCH_SECONDS,
) -> Batch:
    """Run a batch's shards at once, wait for all, then settle the batch.

    When rows are still left after a round (a shard crashed past its
    retries, or a shard of an earlier coordinator still held rows), the
    shards run again, as long as the last round made progress.
    """
    batch = store.get_batch(batch_id)
    if batch.status not in STARTABLE:
        return batch
    specs = shard_specs(batch, config)
    log.info("batch %s: %d rows in %d shards", batch_id, batch.total_rows, len(specs))
    problems: list[str] = []
    for round_number in range(1, max_rounds + 1):
        done_before = store.get_batch(batch_id).done
        results = _run_watched(store, batch_id, specs, run_shards, watch_seconds)
        problems = [
            _describe_failure(r) for r in results if isinstance(r, BaseException)
        ]
        batch = store.get_batch(batch_id)
        if batch.status is not BatchStatus.RUNNING or batch.remaining == 0:
            break
        if batch.done == done_before or _budget_spent(batch):
            break
        log.warning(
            "batch %s: %d rows left after round %d (%d shard errors); again",
            batch_id,
            batch.remaining,
            round_number,
            len(problems),
        )
    return settle_after_run(store, batch_id, problems)


def settle_after_run(store: Store, batch_id: str, problems: Sequence[str]) -> Batch:
    """Give a batch its final status once none of its workers runs any more."""
    batch = store.get_batch(batch_id)
    if batch.status is BatchStatus.CANCELLING:
        store.requeue_running(batch_id)
        store.set_status(
            batch_id, BatchStatus.CANCELLED, only_from=(BatchStatus.CANCELLING,)
        )
    elif batch.status is BatchStatus.RUNNING and batch.remaining == 0:
        settle_batch(store, batch_id, None, None)
    elif batch.status in (BatchStatus.PENDING, BatchStatus.RUNNING):
        store.set_status(
            batch_id,
            BatchStatus.PAUSED,
            only_from=(BatchStatus.PENDING, BatchStatus.RUNNING),
            last_error=_budget_spent(batch) or _unfinished_message(batch, problems),
        )
    store.update_batch(batch_id, rows_per_second=0.0)
    return store.get_batch(batch_id)


def _budget_spent(batch: Batch) -> str | None:
    """Why a batch stopped at its budget, or None when budget is left."""
    budget = batch.budget_usd
    if budget is None or batch.cost_usd < budget:
        return None
    return (
        f"Paused: the budget of ${budget:.2f} is spent (${batch.cost_usd:.2f}). "
        "Raise the budget and resume to go on."
    )


def _unfinished_message(batch: Batch, problems: Sequence[str]) -> str:
    text = f"{batch.remaining:,} rows were not finished"
    if problems:
        text += f": {len(problems)} shard(s) stopped with an error ({problems[0]})"
    return text + ". Resume the batch to go on with the rest."


def _describe_failure(exc: BaseException) -> str:
    # The type and the first line only: a remote traceback can be long.
    lines = str(exc).strip().splitlines()
    first = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _run_watched(
    store: Store,
    batch_id: str,
    specs: Sequence[ShardSpec],
    run_shards: RunShards,
    watch_seconds: float,
) -> Sequence[ShardResult]:
    """Run the shards in a thread; meanwhile publish the batch's speed."""
    meter = RateMeter()
    pool = ThreadPoolExecutor(1, thread_name_prefix="shards")
    future = pool.submit(run_shards, specs)
    try:
        while True:
            try:
                return future.result(timeout=watch_seconds)
            except TimeoutError:
                _publish_rate(store, batch_id, meter)
    finally:
        # Never wait here for shards that are still running: a cancelled
        # coordinator must be able to stop at once.
        pool.shutdown(wait=False)


def _publish_rate(store: Store, batch_id: str, meter: RateMeter) -> None:
    try:
        rate = meter.add(store.get_batch(batch_id).done)
        store.update_batch(batch_id, rows_per_second=round(rate, 3))
    except StoreError as exc:
        log.warning("batch %s: speed update failed: %s", batch_id, exc)


class RateMeter:
    """Rows per second over a sliding window, from a growing done count."""

    def __init__(
        self,
        window_s: float = RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._seen: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, done: int) -> float:
        """Remember ``done`` now; return the rate over the window."""
        now = self._clock()
        self._seen.append((now, done))
        while now - self._seen[0][0] > self.window_s:
            self._seen.popleft()
        first_t, first_done = self._seen[0]
        if now <= first_t:
            return 0.0
        return max(done - first_done, 0) / (now - first_t)


@contextlib.contextmanager
def _opened(store_factory: StoreFactory) -> Iterator[Store]:
    store = store_factory()
    try:
        yield store
    finally:
        store.close()
