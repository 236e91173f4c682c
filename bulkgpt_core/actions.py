"""What the app's buttons do: launch a batch, resume it, retry it, delete it.

Each action is one of :mod:`bulkgpt_core.jobs` followed, where rows are left
to run, by starting a worker. A worker that cannot be started leaves the
batch stored with the reason in ``last_error``, so the batch page can say
what happened and offer to try again.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import jobs
from .batches import Batch, BatchStatus, GenerationSettings, RunLimits
from .config import Settings
from .errors import BatchStateError, BulkGPTError
from .runners import local_worker_alive, start_worker
from .stores.base import Store
from .tables import Table

log = logging.getLogger(__name__)

#: States in which a batch expects a worker to be busy with it.
NEEDS_A_WORKER = (BatchStatus.PENDING, BatchStatus.RUNNING, BatchStatus.CANCELLING)
RESUMABLE = (BatchStatus.PAUSED, BatchStatus.FAILED, BatchStatus.CANCELLED)


@dataclass(frozen=True)
class BatchRequest:
    """What the new-batch form asks for; ``None`` means "the default"."""

    name: str
    template: str
    model: str
    system_prompt: str = ""
    temperature: float | None = None
    max_output_tokens: int | None = None
    concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    output_schema: dict[str, Any] | None = None
    budget_usd: float | None = None

    @classmethod
    def from_batch(cls, batch: Batch) -> BatchRequest:
        """Everything a stored batch was launched with, to start another like it."""
        limits = batch.run_limits()
        return cls(
            name=batch.name,
            template=batch.template,
            model=batch.model,
            system_prompt=batch.system_prompt,
            temperature=batch.generation.get("temperature"),
            max_output_tokens=batch.generation.get("max_output_tokens"),
            concurrency=limits.concurrency,
            rpm=limits.rpm,
            tpm=limits.tpm,
            output_schema=batch.output_schema,
            budget_usd=batch.budget_usd,
        )

    def generation(self) -> GenerationSettings:
        return GenerationSettings(
            model=self.model.strip(),
            system_prompt=self.system_prompt,
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            response_schema=self.output_schema,
        )

    def checked(self, settings: Settings) -> tuple[GenerationSettings, RunLimits]:
        """The generation settings and limits, or a LimitError naming the setting."""
        generation = self.generation()
        jobs.check_generation(settings, generation)
        jobs.check_budget(self.budget_usd)
        limits = jobs.run_limits(
            settings, concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm
        )
        return generation, limits


def launch_batch(
    settings: Settings, store: Store, table: Table, request: BatchRequest
) -> Batch:
    """Store the batch with every row, then start its worker."""
    generation, limits = request.checked(settings)
    batch = jobs.create_batch(
        store,
        table,
        name=request.name,
        template=request.template,
        generation=generation,
        limits=limits,
        runner=settings.runner,
        budget_usd=request.budget_usd,
    )
    _start(settings, store, batch.id)
    return store.get_batch(batch.id)


def resume(settings: Settings, store: Store, batch_id: str) -> Batch:
    """Run the rest of a batch: resume a stopped one, or restart a lost worker."""
    batch = store.get_batch(batch_id)
    if batch.status in NEEDS_A_WORKER:
        if not worker_missing(batch):
            raise BatchStateError("This batch's worker is still running.")
    else:
        if batch.runner == "local" and local_worker_alive(batch.call_id):
            raise BatchStateError(
                "The worker is still finishing its calls in flight: "
                "try again in a few seconds."
            )
        jobs.resume_batch(store, batch_id)
    _start(settings, store, batch_id)
    return store.get_batch(batch_id)


def retry_failed_rows(
    settings: Settings,
    store: Store,
    batch_id: str,
    kinds: Sequence[str] | None = None,
) -> int:
    """Put failed rows (all, or of some reasons) back in the queue and start a
    worker; say how many."""
    count = jobs.retry_failed(store, batch_id, kinds)
    if count:
        _start(settings, store, batch_id)
    return count


def delete(store: Store, batch_id: str) -> None:
    """Remove a batch and its rows, unless a worker is still writing to it."""
    batch = store.get_batch(batch_id)
    if batch.status in NEEDS_A_WORKER and not worker_missing(batch):
        raise BatchStateError(
            "This batch is still running: cancel it and wait until it has "
            "stopped, then delete it."
        )
    store.delete_batch(batch_id)


def worker_missing(batch: Batch) -> bool:
    """Whether a batch waits for a local worker that is not running.

    A batch with no call id never got a worker. Only local workers can be
    checked beyond that; a Modal run is taken to be alive.
    """
    if batch.status not in NEEDS_A_WORKER:
        return False
    if batch.call_id is None:
        return True
    return batch.runner == "local" and not local_worker_alive(batch.call_id)


def _start(settings: Settings, store: Store, batch_id: str) -> None:
    try:
        start_worker(settings, store, batch_id)
    except (BulkGPTError, OSError, ImportError) as exc:
        log.exception("the worker for batch %s could not be started", batch_id)
        store.update_batch(
            batch_id,
            call_id=None,
            last_error=f"The worker could not be started: {exc}",
        )


class Action(enum.StrEnum):
    """The buttons of the batch page."""

    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    RETRY_FAILED = "retry_failed"
    DELETE = "delete"


def available_actions(batch: Batch) -> list[Action]:
    """The buttons that make sense for a batch as it is now, in display order."""
    status = batch.status
    found: list[Action] = []
    if status in (BatchStatus.PENDING, BatchStatus.RUNNING):
        found.append(Action.PAUSE)
    if status in RESUMABLE or worker_missing(batch):
        found.append(Action.RESUME)
    if status in (BatchStatus.PENDING, BatchStatus.RUNNING, BatchStatus.PAUSED):
        found.append(Action.CANCEL)
    if batch.failed and status not in NEEDS_A_WORKER:
        found.append(Action.RETRY_FAILED)
    found.append(Action.DELETE)
    return found
