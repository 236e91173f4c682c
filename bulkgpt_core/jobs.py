"""What people do with batches: create, pause, resume, cancel, retry failed rows.

The app and the command line both call these, so a batch behaves the same
whichever way it was started.
"""

from __future__ import annotations

from collections.abc import Iterable

from .batches import (
    Batch,
    BatchStatus,
    GenerationSettings,
    NewBatch,
    RunLimits,
)
from .config import Settings
from .errors import BatchStateError, LimitError
from .stores.base import Store
from .tables import Table
from .templates import compile_template

PAUSABLE = (BatchStatus.PENDING, BatchStatus.RUNNING)
RESUMABLE = (BatchStatus.PAUSED, BatchStatus.FAILED, BatchStatus.CANCELLED)


def run_limits(
    settings: Settings,
    *,
    concurrency: int | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    reuse: bool = True,
) -> RunLimits:
    """Limits for a new batch: the user's choice, else the configured defaults."""
    chosen = concurrency or settings.concurrency
    if not 1 <= chosen <= settings.max_concurrency:
        raise LimitError(
            f"Concurrency must be between 1 and {settings.max_concurrency} "
            "(BULKGPT_MAX_CONCURRENCY)."
        )
    return RunLimits(
        concurrency=chosen,
        rpm=rpm or settings.rpm,
        tpm=tpm or settings.tpm,
        max_attempts=settings.max_attempts,
        timeout_s=settings.request_timeout_s,
        reuse=reuse,
    )


def check_generation(settings: Settings, generation: GenerationSettings) -> None:
    """Refuse settings outside the configured limits, naming the setting."""
    limit = settings.max_output_tokens
    tokens = generation.max_output_tokens
    if tokens is not None and not 1 <= tokens <= limit:
        raise LimitError(
            f"Max output tokens must be between 1 and {limit:,} "
            "(BULKGPT_MAX_OUTPUT_TOKENS)."
        )
    temperature = generation.temperature
    if temperature is not None and not 0 <= temperature <= 2:
        raise LimitError("Temperature must be between 0 and 2.")


def create_batch(
    store: Store,
    table: Table,
    *,
    name: str,
    template: str,
    generation: GenerationSettings,
    limits: RunLimits,
    runner: str = "local",
    user_id: str | None = None,
    budget_usd: float | None = None,
) -> Batch:
    """Store a new batch with every row of the table, ready for a worker."""
    compile_template(template, table.columns)
    spec = NewBatch(
        name=name.strip() or table.source_name or "Untitled batch",
        template=template,
        columns=list(table.columns),
        generation=generation,
        limits=limits,
        source_name=table.source_name,
        user_id=user_id,
        runner=runner,
        budget_usd=budget_usd,
    )
    batch = store.create_batch(spec)
    store.add_rows(batch.id, table.iter_dicts())
    return store.get_batch(batch.id)


def pause_batch(store: Store, batch_id: str) -> Batch:
    """Ask the worker to stop after the calls in flight; resume goes on."""
    if not store.set_status(batch_id, BatchStatus.PAUSED, only_from=PAUSABLE):
        raise BatchStateError(_cannot(store, batch_id, "paused"))
    return store.get_batch(batch_id)


def resume_batch(store: Store, batch_id: str) -> Batch:
    """Make a paused, failed or cancelled batch runnable again (start a worker next)."""
    batch = store.get_batch(batch_id)
    if batch.status is BatchStatus.COMPLETED and batch.remaining == 0:
        raise BatchStateError("This batch is complete: there is nothing to resume.")
    allowed = (*RESUMABLE, BatchStatus.COMPLETED, BatchStatus.PENDING)
    if not store.set_status(batch_id, BatchStatus.PENDING, only_from=allowed):
        raise BatchStateError(_cannot(store, batch_id, "resumed"))
    store.update_batch(batch_id, last_error=None, finished_at=None)
    return store.get_batch(batch_id)


def cancel_batch(store: Store, batch_id: str) -> Batch:
    """Stop for good: a running worker finishes its calls in flight first."""
    batch = store.get_batch(batch_id)
    if batch.status is BatchStatus.RUNNING:
        store.set_status(
            batch_id, BatchStatus.CANCELLING, only_from=(BatchStatus.RUNNING,)
        )
    elif batch.status in (BatchStatus.PENDING, BatchStatus.PAUSED):
        store.requeue_running(batch_id)
        store.set_status(batch_id, BatchStatus.CANCELLED)
    elif batch.status is not BatchStatus.CANCELLING:
        raise BatchStateError(_cannot(store, batch_id, "cancelled"))
    return store.get_batch(batch_id)


def retry_failed(
    store: Store, batch_id: str, kinds: Iterable[str] | None = None
) -> int:
    """Put failed rows (all, or of some reasons) back in the queue."""
    batch = store.get_batch(batch_id)
    if batch.status in (BatchStatus.RUNNING, BatchStatus.CANCELLING):
        raise BatchStateError(
            "This batch is still running: wait for it to finish or pause it first."
        )
    count = store.reset_failed(batch_id, kinds)
    if count:
        store.set_status(batch_id, BatchStatus.PENDING)
        store.update_batch(batch_id, last_error=None, finished_at=None)
    return count


def check_budget(budget_usd: float | None) -> None:
    """Refuse a spending cap of $0 or less (None means no cap)."""
    if budget_usd is not None and budget_usd <= 0:
        raise LimitError("A budget must be more than $0, or empty for no cap.")


def set_budget(store: Store, batch_id: str, budget_usd: float | None) -> Batch:
    """Change a batch's spending cap (None removes it); resume to go on."""
    check_budget(budget_usd)
    store.update_batch(batch_id, budget_usd=budget_usd)
    return store.get_batch(batch_id)


def _cannot(store: Store, batch_id: str, action: str) -> str:
    status = store.get_batch(batch_id).status
    return f"A {status.value} batch cannot be {action}."
