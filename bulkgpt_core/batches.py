"""The nouns of a batch: its states, its settings, its rows and their results.

The state words here are the same words the store schemas use in their
``status`` columns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


class BatchStatus(enum.StrEnum):
    """Life cycle of a batch: ``pending`` until a worker picks it up."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED_BATCH_STATES

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_BATCH_STATES


ACTIVE_BATCH_STATES = frozenset(
    {BatchStatus.PENDING, BatchStatus.RUNNING, BatchStatus.CANCELLING}
)
FINISHED_BATCH_STATES = frozenset(
    {BatchStatus.CANCELLED, BatchStatus.COMPLETED, BatchStatus.FAILED}
)


class RowStatus(enum.StrEnum):
    """Life cycle of one row: ``running`` while a worker holds it."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class GenerationSettings:
    """What is sent to the model with every prompt of a batch."""

    model: str
    system_prompt: str = ""
    temperature: float | None = None
    max_output_tokens: int | None = None
    response_schema: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "max_output_tokens": self.max_output_tokens,
        }


@dataclass(frozen=True)
class RunLimits:
    """How hard a batch may push the provider."""

    concurrency: int = 16
    rpm: int | None = None
    tpm: int | None = None
    max_attempts: int = 6
    timeout_s: float = 60.0
    #: Reuse answers from the owner's earlier batches (identical rows within
    #: this batch are always answered once).
    reuse: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_attempts": self.max_attempts,
            "timeout_s": self.timeout_s,
            "reuse": self.reuse,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RunLimits:
        data = data or {}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class NewBatch:
    """Everything needed to create a batch; rows are added separately."""

    name: str
    template: str
    columns: list[str]
    generation: GenerationSettings
    limits: RunLimits = field(default_factory=RunLimits)
    source_name: str = ""
    user_id: str | None = None
    runner: str = "local"
    budget_usd: float | None = None


@dataclass
class Batch:
    """A batch as stored, with its counters."""

    id: str
    name: str
    status: BatchStatus
    template: str
    system_prompt: str
    model: str
    generation: dict[str, Any]
    limits: dict[str, Any]
    output_schema: dict[str, Any] | None
    source_name: str
    columns: list[str]
    total_rows: int
    succeeded: int
    failed: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str | None = None
    runner: str = "local"
    call_id: str | None = None
    user_id: str | None = None
    rows_per_second: float = 0.0
    budget_usd: float | None = None
    reused: int = 0
    saved_usd: float = 0.0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def remaining(self) -> int:
        return max(self.total_rows - self.done, 0)

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(
            model=self.model,
            system_prompt=self.system_prompt,
            temperature=self.generation.get("temperature"),
            max_output_tokens=self.generation.get("max_output_tokens"),
            response_schema=self.output_schema,
        )

    def run_limits(self) -> RunLimits:
        return RunLimits.from_json(self.limits)


@dataclass(frozen=True)
class PendingRow:
    """A row claimed by a worker: its position and its cells."""

    index: int
    values: dict[str, str]


@dataclass(frozen=True)
class RowResult:
    """The outcome of one row, as the engine hands it to the store."""

    index: int
    status: RowStatus
    output: str | None = None
    parsed: Any = None
    prompt_hash: str | None = None
    error_kind: str | None = None
    error_message: str | None = None
    attempts: int = 1
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_ms: int | None = None
    finish_reason: str | None = None
    reused: bool = False
    saved_usd: float = 0.0


@dataclass(frozen=True)
class StoredRow:
    """A row as read back from the store, for exports and the batch page."""

    index: int
    values: dict[str, str]
    status: RowStatus
    output: str | None
    parsed: Any
    error_kind: str | None
    error_message: str | None
    attempts: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: int | None
    finish_reason: str | None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class ProgressSample:
    """A batch's counters at one moment, for the throughput chart."""

    at: datetime
    succeeded: int
    failed: int

    @property
    def done(self) -> int:
        return self.succeeded + self.failed
