"""Conversions between the batch dataclasses and the flat records stores keep.

Every store writes the same column names; JSON columns arrive either as text
(SQLite) or already decoded (PostgreSQL, Supabase), and timestamps either as
ISO text or as datetimes. These helpers accept both, so each store only
speaks its own SQL or HTTP.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..batches import (
    Batch,
    BatchStatus,
    NewBatch,
    RowResult,
    RowStatus,
    StoredRow,
    utcnow,
)

BATCH_FIELDS = [
    "id",
    "name",
    "user_id",
    "status",
    "template",
    "system_prompt",
    "model",
    "generation",
    "limits",
    "output_schema",
    "source_name",
    "columns",
    "total_rows",
    "succeeded",
    "failed",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "reused",
    "saved_usd",
    "budget_usd",
    "rows_per_second",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "last_error",
    "runner",
    "call_id",
]

#: Fields ``update_batch`` may set directly.
UPDATABLE_FIELDS = frozenset(
    {
        "name",
        "status",
        "last_error",
        "runner",
        "call_id",
        "started_at",
        "finished_at",
        "rows_per_second",
        "budget_usd",
    }
)

JSON_BATCH_FIELDS = ("generation", "limits", "output_schema", "columns")


def new_batch_id() -> str:
    return str(uuid.uuid4())


def new_batch_record(spec: NewBatch, *, batch_id: str | None = None) -> dict[str, Any]:
    """The record of a freshly created batch, with Python values."""
    now = utcnow()
    gen = spec.generation
    return {
        "id": batch_id or new_batch_id(),
        "name": spec.name,
        "user_id": spec.user_id,
        "status": BatchStatus.PENDING.value,
        "template": spec.template,
        "system_prompt": gen.system_prompt,
        "model": gen.model,
        "generation": gen.to_json(),
        "limits": spec.limits.to_json(),
        "output_schema": gen.response_schema,
        "source_name": spec.source_name,
        "columns": list(spec.columns),
        "total_rows": 0,
        "succeeded": 0,
        "failed": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
        "reused": 0,
        "saved_usd": 0.0,
        "budget_usd": spec.budget_usd,
        "rows_per_second": 0.0,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
        "last_error": None,
        "runner": spec.runner,
        "call_id": None,
    }


def to_json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def from_json(value: Any) -> Any:
    """Decode a JSON column that may already be decoded."""
    if isinstance(value, str | bytes | bytearray):
        return json.loads(value)
    return value


def to_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def batch_from_record(rec: Mapping[str, Any]) -> Batch:
    """A :class:`Batch` from a stored record of any store."""
    values = {name: rec.get(name) for name in BATCH_FIELDS}
    for name in JSON_BATCH_FIELDS:
        values[name] = from_json(values[name])
    for name in ("created_at", "started_at", "finished_at", "updated_at"):
        values[name] = to_datetime(values[name])
    values["id"] = str(values["id"])
    values["user_id"] = None if values["user_id"] is None else str(values["user_id"])
    values["status"] = BatchStatus(values["status"])
    values["generation"] = values["generation"] or {}
    values["limits"] = values["limits"] or {}
    values["columns"] = values["columns"] or []
    for name in ("cost_usd", "saved_usd", "rows_per_second"):
        values[name] = float(values[name] or 0)
    if values["budget_usd"] is not None:
        values["budget_usd"] = float(values["budget_usd"])
    return Batch(**values)


def stored_row_from_record(rec: Mapping[str, Any]) -> StoredRow:
    """A :class:`StoredRow` from a ``batch_results`` record of any store."""
    parsed = rec.get("parsed")
    return StoredRow(
        index=int(rec["row_index"]),
        values=from_json(rec["input"]),
        status=RowStatus(rec["status"]),
        output=rec.get("output"),
        parsed=from_json(parsed) if parsed is not None else None,
        error_kind=rec.get("error_kind"),
        error_message=rec.get("error_message"),
        attempts=int(rec.get("attempts") or 0),
        tokens_in=int(rec.get("tokens_in") or 0),
        tokens_out=int(rec.get("tokens_out") or 0),
        cost_usd=float(rec.get("cost_usd") or 0),
        latency_ms=rec.get("latency_ms"),
        finish_reason=rec.get("finish_reason"),
        updated_at=to_datetime(rec.get("updated_at")),
    )


def result_record(result: RowResult) -> dict[str, Any]:
    """The ``batch_results`` fields a result sets, with Python values."""
    return {
        "row_index": result.index,
        "status": result.status.value,
        "output": result.output,
        "parsed": result.parsed,
        "prompt_hash": result.prompt_hash,
        "error_kind": result.error_kind,
        "error_message": result.error_message,
        "attempts": result.attempts,
        "tokens_in": result.tokens_in,
        "tokens_out": result.tokens_out,
        "cost_usd": result.cost_usd,
        "latency_ms": result.latency_ms,
        "finish_reason": result.finish_reason,
    }


def counter_deltas(results: list[RowResult]) -> dict[str, float]:
    """How a set of newly terminal rows moves a batch's counters."""
    return {
        "succeeded": sum(r.status is RowStatus.SUCCEEDED for r in results),
        "failed": sum(r.status is RowStatus.FAILED for r in results),
        "tokens_in": sum(r.tokens_in for r in results),
        "tokens_out": sum(r.tokens_out for r in results),
        "cost_usd": sum(r.cost_usd for r in results),
        "reused": sum(r.reused for r in results),
        "saved_usd": sum(r.saved_usd for r in results),
    }


# -- prompt-lab runs ----------------------------------------------------------

#: Keys of a lab run that the store keeps in columns of their own.
LAB_RUN_KEYS = frozenset({"id", "name", "user_id", "created_at", "updated_at"})


def lab_run_name(run: Mapping[str, Any]) -> str:
    """A lab run's name, never empty."""
    return str(run.get("name") or "").strip() or "Untitled lab run"


def lab_run_data(run: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document a store keeps for a lab run: all but its own columns."""
    return {k: v for k, v in run.items() if k not in LAB_RUN_KEYS}


def lab_run_from_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A lab run as saved, from a ``lab_runs`` record of any store."""
    run = dict(from_json(rec["data"]) or {})
    run["id"] = str(rec["id"])
    run["name"] = rec["name"]
    run["created_at"] = to_datetime(rec["created_at"])
    run["updated_at"] = to_datetime(rec["updated_at"])
    return run
