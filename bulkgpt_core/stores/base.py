"""The contract every store keeps: SQLite, PostgreSQL and Supabase alike.

A store holds two tables. ``batches`` has one row per batch with its settings
and counters; ``batch_results`` has one row per input row with its outcome.
The counters on ``batches`` always equal the terminal statuses of its rows,
because every method that changes a row's status adjusts them in the same
transaction (or the same database function, for Supabase). Progress is read
from that one ``batches`` row: nothing ever counts a million result rows.

A store may be scoped to an owner (``owner``): every read and change of a
batch then also requires ``user_id = owner``, and a batch of someone else's
is reported as not found.

A third table, ``lab_runs``, keeps the prompt lab's runs (variants compared
on a few rows) as one JSON document each, owner-scoped like batches.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..batches import (
    Batch,
    BatchStatus,
    NewBatch,
    PendingRow,
    ProgressSample,
    RowResult,
    RowStatus,
    StoredRow,
)

INGEST_CHUNK_ROWS = 1000
EXPORT_PAGE_ROWS = 1000


class Store(abc.ABC):
    """Where batches and their rows live."""

    #: A short name for people ("SQLite", "PostgreSQL", "Supabase").
    label: str = "store"

    def __init__(self, owner: str | None = None) -> None:
        self.owner = owner

    @abc.abstractmethod
    def scoped(self, owner: str | None) -> Store:
        """The same store seen by one owner (a new connection; close it after)."""

    # -- batches -------------------------------------------------------

    @abc.abstractmethod
    def create_batch(self, spec: NewBatch) -> Batch:
        """Store a new ``pending`` batch with no rows yet."""

    @abc.abstractmethod
    def add_rows(
        self,
        batch_id: str,
        rows: Iterable[Mapping[str, str]],
        *,
        chunk_rows: int = INGEST_CHUNK_ROWS,
    ) -> int:
        """Append rows (index 0, 1, ...) in chunks; return how many were added.

        ``total_rows`` on the batch grows with every chunk.
        """

    @abc.abstractmethod
    def get_batch(self, batch_id: str) -> Batch:
        """One batch, or :class:`BatchNotFound`."""

    @abc.abstractmethod
    def list_batches(self, *, limit: int = 200) -> list[Batch]:
        """Batches, newest first."""

    @abc.abstractmethod
    def update_batch(self, batch_id: str, **fields: Any) -> None:
        """Set plain fields: status, last_error, runner, call_id, started_at,
        finished_at, rows_per_second, budget_usd, name."""

    @abc.abstractmethod
    def set_status(
        self,
        batch_id: str,
        status: BatchStatus,
        *,
        only_from: Iterable[BatchStatus] | None = None,
        last_error: str | None = None,
    ) -> bool:
        """Change the status, optionally only from given states; say if it did."""

    @abc.abstractmethod
    def delete_batch(self, batch_id: str) -> None:
        """Remove a batch and all its rows."""

    # -- rows, for the engine -----------------------------------------------

    @abc.abstractmethod
    def requeue_running(
        self, batch_id: str, row_range: tuple[int, int] | None = None
    ) -> int:
        """Put rows left ``running`` (by a worker that died) back to ``pending``."""

    @abc.abstractmethod
    def claim_rows(
        self,
        batch_id: str,
        *,
        after_index: int,
        limit: int,
        row_range: tuple[int, int] | None = None,
    ) -> list[PendingRow]:
        """Mark the next ``pending`` rows past ``after_index`` as ``running``
        and return them in index order."""

    @abc.abstractmethod
    def release_rows(self, batch_id: str, indexes: Sequence[int]) -> None:
        """Put claimed rows that were never sent back to ``pending``."""

    @abc.abstractmethod
    def record_results(self, batch_id: str, results: Sequence[RowResult]) -> int:
        """Write results and bump the batch's counters in one transaction.

        A row that is already terminal is left alone, so a result recorded
        twice counts once. Returns how many rows changed.
        """

    @abc.abstractmethod
    def reset_failed(self, batch_id: str, kinds: Iterable[str] | None = None) -> int:
        """Put failed rows (all, or those with the given error kinds) back to
        ``pending`` and take them off the counters."""

    # -- progress over time, for the throughput chart -

    @abc.abstractmethod
    def add_progress_sample(self, batch_id: str) -> None:
        """Remember the batch's counters now (the engine calls this every few
        seconds)."""

    @abc.abstractmethod
    def progress_samples(
        self, batch_id: str, *, limit: int = 1000
    ) -> list[ProgressSample]:
        """The remembered counters, oldest first (the latest ``limit``)."""

    # -- rows, for pages and exports -----------------------------------------

    @abc.abstractmethod
    def iter_rows(
        self,
        batch_id: str,
        *,
        status: RowStatus | None = None,
        page_rows: int = EXPORT_PAGE_ROWS,
    ) -> Iterator[StoredRow]:
        """Every row in index order, read a page at a time."""

    @abc.abstractmethod
    def latest_results(self, batch_id: str, *, limit: int = 20) -> list[StoredRow]:
        """The most recently finished rows, newest first."""

    @abc.abstractmethod
    def failure_counts(self, batch_id: str) -> dict[str, int]:
        """Failed rows per error kind."""

    @abc.abstractmethod
    def find_reusable(
        self, prompt_hashes: Sequence[str], *, batch_id: str | None = None
    ) -> dict[str, StoredRow]:
        """Succeeded results by rendered-prompt hash (in one batch, or any of
        this owner's), for answering a repeated prompt without a call."""

    # -- prompt-lab runs ----------------------------------------------------------

    @abc.abstractmethod
    def save_lab_run(self, run: Mapping[str, Any]) -> str:
        """Store a prompt-lab run (any JSON object with a ``name``); return its id.

        A run without an ``id`` is added; one with an ``id`` replaces the
        stored run, or raises :class:`LabRunNotFound` if there is none (it
        was deleted, or it is someone else's).
        """

    @abc.abstractmethod
    def list_lab_runs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """Stored lab runs, newest first, as :meth:`get_lab_run` returns them."""

    @abc.abstractmethod
    def get_lab_run(self, run_id: str) -> dict[str, Any]:
        """One run as saved, with ``id``, ``name``, ``created_at`` and
        ``updated_at`` (UTC datetimes) set by the store; or LabRunNotFound."""

    @abc.abstractmethod
    def delete_lab_run(self, run_id: str) -> None:
        """Remove a stored lab run, or raise :class:`LabRunNotFound`."""

    def close(self) -> None:  # noqa: B027  (most stores have nothing to release)
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
