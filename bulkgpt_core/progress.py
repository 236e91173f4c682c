"""How far a batch has got, computed alike for the worker, the app and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .batches import Batch, BatchStatus, utcnow


@dataclass(frozen=True)
class Progress:
    total: int
    succeeded: int
    failed: int
    remaining: int
    fraction: float
    rows_per_second: float
    eta_seconds: float | None
    elapsed_seconds: float
    tokens_in: int
    tokens_out: int
    cost_usd: float
    status: BatchStatus

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


def progress(batch: Batch, now: datetime | None = None) -> Progress:
    """Progress of a batch from its one stored row; no row counting."""
    now = now or utcnow()
    done = batch.done
    total = batch.total_rows
    remaining = max(total - done, 0)
    elapsed = _elapsed(batch, now)
    rate = batch.rows_per_second
    if batch.status.is_finished:
        # A finished batch is described by its average speed over the run.
        rate = done / elapsed if elapsed > 0 else 0.0
    elif rate <= 0 and elapsed > 0 and batch.status is BatchStatus.RUNNING:
        rate = done / elapsed
    eta = None
    if batch.status is BatchStatus.RUNNING and rate > 0:
        eta = remaining / rate
    return Progress(
        total=total,
        succeeded=batch.succeeded,
        failed=batch.failed,
        remaining=remaining,
        fraction=done / total if total else 0.0,
        rows_per_second=rate,
        eta_seconds=eta,
        elapsed_seconds=elapsed,
        tokens_in=batch.tokens_in,
        tokens_out=batch.tokens_out,
        cost_usd=batch.cost_usd,
        status=batch.status,
    )


def _elapsed(batch: Batch, now: datetime) -> float:
    if batch.started_at is None:
        return 0.0
    end = batch.finished_at or now
    return max((end - batch.started_at).total_seconds(), 0.0)


def format_duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``12s``; an em dash when unknown."""
    if seconds is None:
        return "—"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
