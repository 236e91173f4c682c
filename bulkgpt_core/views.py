"""What the app's pages show, as plain data: tables, labels and numbers.

The pages hand these to Streamlit as they are, so the wording and the layout
of every table live here, where they can be tested without a browser.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from .batches import Batch, ProgressSample, StoredRow, utcnow
from .export import ExportFormat, export_chunks, manifest_bytes
from .lab import Cell, LabRun
from .progress import format_duration, progress
from .reasons import reason_for
from .sample_run import SampleResult
from .schema import (
    FieldType,
    OutputField,
    SchemaError,
    fields_to_schema,
    schema_to_fields,
)
from .stores.base import Store
from .tables import Table
from .templates import TemplateCheck, compile_template

PREVIEW_ROWS = 50
ANSWER_CHARS = 300
#: Runs longer than this are charted in minutes rather than seconds.
LONG_RUN_S = 600


@dataclass(frozen=True)
class FailureGroup:
    """Failed rows that share a reason."""

    kind: str
    title: str
    count: int
    fix: str


@dataclass(frozen=True)
class Metric:
    """One number of the batch page, already formatted."""

    label: str
    value: str


# --- The new batch page -------------------------------------------------------


def preview_frame(table: Table, limit: int = PREVIEW_ROWS) -> pd.DataFrame:
    """The first rows of a table, every value as text, numbered from 1."""
    frame = pd.DataFrame(table.rows[:limit], columns=table.columns, dtype="string")
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="Row")
    return frame


def table_summary(table: Table) -> str:
    """``120 rows × 5 columns · UTF-8 · comma-separated``."""
    rows = len(table)
    columns = len(table.columns)
    return (
        f"{rows:,} {_plural(rows, 'row')} × {columns} {_plural(columns, 'column')}"
        f" · {table.encoding_label} · {table.delimiter_label}-separated"
    )


def row_frame(values: Mapping[str, str]) -> pd.DataFrame:
    """One row as a two-column table: column name, value."""
    return pd.DataFrame(
        {"Column": list(values), "Value": list(values.values())}, dtype="string"
    )


def rendered_prompt(
    template: str, check: TemplateCheck, table: Table, index: int
) -> str | None:
    """The prompt row ``index`` gets, or ``None`` while the template has errors."""
    if not check.ok or not 0 <= index < len(table):
        return None
    return compile_template(template, table.columns).render(table.row_dict(index))


def sample_caption(result: SampleResult) -> str:
    """``1,204 tokens in · 85 out · 1.3 s · $0.0006`` for one row."""
    parts = [
        f"{result.tokens_in:,} tokens in",
        f"{result.tokens_out:,} out",
    ]
    if result.latency_s is not None:
        parts.append(f"{result.latency_s:.1f} s")
    if result.cost_usd:
        parts.append(format_cost(result.cost_usd))
    return " · ".join(parts)


# --- Output fields (the field table) -------------------------------------------

#: The field table's columns, as people see them.
FIELD_NAME, FIELD_TYPE, FIELD_DESCRIPTION = "Field name", "Type", "Description"
FIELD_REQUIRED, FIELD_CHOICES = "Required", "Choices"
FIELD_COLUMNS = (
    FIELD_NAME,
    FIELD_TYPE,
    FIELD_DESCRIPTION,
    FIELD_REQUIRED,
    FIELD_CHOICES,
)


def fields_frame(fields: Sequence[OutputField] = ()) -> pd.DataFrame:
    """Output fields as the editable table (choices separated by commas)."""
    frame = pd.DataFrame(
        {
            FIELD_NAME: [f.name for f in fields],
            FIELD_TYPE: [f.type.value for f in fields],
            FIELD_DESCRIPTION: [f.description for f in fields],
            FIELD_REQUIRED: [f.required for f in fields],
            FIELD_CHOICES: [", ".join(f.choices) for f in fields],
        }
    )
    return frame.astype(
        {
            FIELD_NAME: "string",
            FIELD_TYPE: "string",
            FIELD_DESCRIPTION: "string",
            FIELD_REQUIRED: "boolean",
            FIELD_CHOICES: "string",
        }
    )


def fields_from_frame(frame: pd.DataFrame) -> list[OutputField]:
    """The fields of an edited table; rows without a name are left out.

    Raises :class:`SchemaError` for a type that is not one of the list.
    """
    fields = []
    for record in frame.to_dict("records"):
        name = _cell_text(record.get(FIELD_NAME))
        if not name:
            continue
        required = record.get(FIELD_REQUIRED)
        fields.append(
            OutputField(
                name=name,
                type=_field_type(name, _cell_text(record.get(FIELD_TYPE))),
                description=_cell_text(record.get(FIELD_DESCRIPTION)),
                required=True if _missing(required) else bool(required),
                choices=tuple(
                    c.strip()
                    for c in _cell_text(record.get(FIELD_CHOICES)).split(",")
                    if c.strip()
                ),
            )
        )
    return fields


def schema_from_frame(frame: pd.DataFrame) -> dict[str, object] | None:
    """The JSON Schema of an edited field table; None when it has no fields."""
    return fields_to_schema(fields_from_frame(frame))


def fields_markdown(schema: Mapping[str, Any]) -> str:
    """A schema's fields, one a line: ``**score** (integer): 1 to 5``."""
    lines = []
    for f in schema_to_fields(schema):
        about = f": {f.description}" if f.description else ""
        choices = f" — {', '.join(f.choices)}" if f.choices else ""
        lines.append(f"**{f.name}** ({f.type.value}){choices}{about}")
    return "  \n".join(lines)


def _field_type(name: str, text: str) -> FieldType:
    if not text:
        return FieldType.TEXT
    try:
        return FieldType(text)
    except ValueError:
        kinds = ", ".join(t.value for t in FieldType)
        raise SchemaError(f"Field {name!r} has type {text!r}: pick {kinds}.") from None


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _cell_text(value: object) -> str:
    return "" if _missing(value) or value is pd.NA else str(value).strip()


# --- The batches page ---------------------------------------------------------


def batch_list_frame(batches: Sequence[Batch]) -> pd.DataFrame:
    """Batches as a table: name, created, status, progress, rows, cost."""
    return pd.DataFrame(
        {
            "Name": [b.name for b in batches],
            "Created": [format_time(b.created_at) for b in batches],
            "Status": [b.status.value for b in batches],
            "Progress": [_percent(b) for b in batches],
            "Rows": [b.total_rows for b in batches],
            "Cost": [format_cost(b.cost_usd) for b in batches],
        }
    )


def results_frame(rows: Sequence[StoredRow]) -> pd.DataFrame:
    """Stored rows as a table: row, status, answer, error, tokens, latency."""
    return pd.DataFrame(
        {
            "Row": [r.index + 1 for r in rows],
            "Status": [r.status.value for r in rows],
            "Answer": [_clip(r.output or "") for r in rows],
            "Error": [r.error_message or "" for r in rows],
            "Tokens in": [r.tokens_in for r in rows],
            "Tokens out": [r.tokens_out for r in rows],
            "Seconds": pd.array(
                [_seconds(_ms(r.latency_ms)) for r in rows], dtype="Float64"
            ),
        }
    )


def failure_groups(counts: Mapping[str, int]) -> list[FailureGroup]:
    """Failure counts by kind, in plain words with a fix, most common first."""
    merged: dict[str, FailureGroup] = {}
    for kind, count in counts.items():
        reason = reason_for(kind)
        known = merged.get(reason.kind)
        total = count + (known.count if known else 0)
        merged[reason.kind] = FailureGroup(reason.kind, reason.title, total, reason.fix)
    return sorted(merged.values(), key=lambda g: (-g.count, g.title))


def throughput_frame(
    batch: Batch, samples: Sequence[ProgressSample], now: datetime | None = None
) -> pd.DataFrame:
    """Rows per second between progress samples, against time since the start.

    The batch's start (nothing done) and its latest counters (now, or when it
    finished) bracket the stored samples, so a short batch still has a line.
    The time is in seconds, or in minutes for a run longer than ten minutes.
    """
    if batch.started_at is None:
        return pd.DataFrame({"Seconds": [], "Rows done": [], "Rows per second": []})
    start = batch.started_at
    end = batch.finished_at or now or utcnow()
    points = [
        ProgressSample(start, 0, 0),
        *(s for s in samples if start < s.at < end),
        ProgressSample(end, batch.succeeded, batch.failed),
    ]
    in_minutes = (end - start).total_seconds() > LONG_RUN_S
    unit, scale = ("Minutes", 60) if in_minutes else ("Seconds", 1)
    times, done, rates = [], [], []
    for before, after in itertools.pairwise(points):
        seconds = (after.at - before.at).total_seconds()
        if seconds <= 0:
            continue
        times.append(round((after.at - start).total_seconds() / scale, 2))
        done.append(after.done)
        rates.append(round(max(after.done - before.done, 0) / seconds, 2))
    return pd.DataFrame({unit: times, "Rows done": done, "Rows per second": rates})


def batch_metrics(batch: Batch, now: datetime | None = None) -> list[Metric]:
    """The numbers of the batch page, in reading order."""
    p = progress(batch, now)
    return [
        Metric("Done", f"{p.done:,} of {p.total:,}"),
        Metric("Failed", f"{p.failed:,}"),
        Metric("Remaining", f"{p.remaining:,}"),
        Metric("Rows per second", f"{p.rows_per_second:,.1f}"),
        Metric("Time left", format_duration(p.eta_seconds)),
        Metric("Elapsed", format_duration(p.elapsed_seconds)),
        Metric("Tokens in", f"{p.tokens_in:,}"),
        Metric("Tokens out", f"{p.tokens_out:,}"),
        Metric("Cost", format_cost(p.cost_usd)),
    ]


def reuse_text(batch: Batch) -> str | None:
    """``12 rows reused, about $0.0042 saved``; None when nothing was reused."""
    if not batch.reused:
        return None
    rows = _plural(batch.reused, "row")
    return f"{batch.reused:,} {rows} reused, about {format_cost(batch.saved_usd)} saved"


def budget_text(batch: Batch) -> str:
    """``Budget $5.00 · $1.25 spent (25%)``, or that there is no cap."""
    spent = format_cost(batch.cost_usd)
    if batch.budget_usd is None:
        return f"No budget cap · {spent} spent"
    share = batch.cost_usd / batch.budget_usd if batch.budget_usd else 0.0
    return f"Budget {format_cost(batch.budget_usd)} · {spent} spent ({share:.0%})"


def progress_fraction(batch: Batch) -> float:
    """Between 0 and 1, for a progress bar."""
    return min(max(progress(batch).fraction, 0.0), 1.0)


def progress_text(batch: Batch) -> str:
    """``42% · 50 of 120 rows · running``."""
    p = progress(batch)
    return (
        f"{p.fraction:.0%} · {p.done:,} of {p.total:,} "
        f"{_plural(p.total, 'row')} · {batch.status.value}"
    )


# --- Downloads ----------------------------------------------------------------


def export_bytes(
    store: Store, batch_id: str, fmt: ExportFormat, *, failed_only: bool = False
) -> bytes:
    """A whole export, read from the store a page at a time when asked for."""
    batch = store.get_batch(batch_id)
    return b"".join(export_chunks(store, batch, fmt, failed_only=failed_only))


def download_name(batch: Batch, fmt: ExportFormat, *, failed_only: bool = False) -> str:
    """``reviews-results.csv`` or ``reviews-failed-rows.csv``."""
    kind = "failed-rows" if failed_only else "results"
    return f"{_file_stem(batch)}-{kind}.{fmt.value}"


def manifest_download(store: Store, batch_id: str) -> bytes:
    """The batch's manifest as it is now, read when the button is clicked."""
    return manifest_bytes(store.get_batch(batch_id))


def manifest_name(batch: Batch) -> str:
    """``reviews-manifest.json``."""
    return f"{_file_stem(batch)}-manifest.json"


def _file_stem(batch: Batch) -> str:
    return re.sub(r"[^\w-]+", "-", batch.name.lower()).strip("-_") or "batch"


# --- The prompt lab -----------------------------------------------------------


def lab_summary_frame(run: LabRun) -> pd.DataFrame:
    """One line per variant: failures, average tokens, time, cost, marks."""
    summaries = run.summaries()
    return pd.DataFrame(
        {
            "Variant": [s.name for s in summaries],
            "Model": [s.model for s in summaries],
            "Failed": [f"{s.failed} of {s.rows}" for s in summaries],
            "Avg tokens in": [round(s.avg_tokens_in, 1) for s in summaries],
            "Avg tokens out": [round(s.avg_tokens_out, 1) for s in summaries],
            "Avg seconds": pd.array(
                [_seconds(s.avg_latency_s) for s in summaries], dtype="Float64"
            ),
            "Cost": [format_cost(s.cost_usd) for s in summaries],
            "Cost per 1,000 rows": [
                format_cost(s.cost_per_1000_rows) for s in summaries
            ],
            "Marked better": [s.marks for s in summaries],
        }
    )


def cell_caption(cell: Cell) -> str:
    """``85 tokens in · 12 out · 0.4 s · $0.0001`` for one lab answer."""
    parts = [f"{cell.tokens_in:,} tokens in", f"{cell.tokens_out:,} out"]
    if cell.latency_s is not None:
        parts.append(f"{cell.latency_s:.1f} s")
    parts.append(format_cost(cell.cost_usd))
    return " · ".join(parts)


def lab_runs_frame(runs: Sequence[LabRun]) -> pd.DataFrame:
    """Stored lab runs as a table: name, created, variants, rows, marks."""
    return pd.DataFrame(
        {
            "Name": [r.name for r in runs],
            "Created": [
                format_time(r.created_at) if r.created_at else "" for r in runs
            ],
            "Variants": [len(r.variants) for r in runs],
            "Rows": [len(r.rows) for r in runs],
            "Marked": [len(r.marks) for r in runs],
        }
    )


# --- Formatting ---------------------------------------------------------------


def format_cost(usd: float) -> str:
    """Dollars with cents, or four decimals below a dollar so cents show."""
    if usd == 0:
        return "$0.00"
    if abs(usd) < 1:
        return f"${usd:.4f}"
    return f"${usd:,.2f}"


def format_cost_range(low: float, high: float) -> str:
    if format_cost(low) == format_cost(high):
        return format_cost(low)
    return f"{format_cost(low)} – {format_cost(high)}"


def format_tokens_range(low: int, high: int) -> str:
    if low == high:
        return f"{low:,}"
    return f"{low:,} – {high:,}"


def format_time(moment: datetime) -> str:
    """``2025-12-03 16:44 UTC``: stored times are UTC."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _percent(batch: Batch) -> int:
    return round(progress(batch).fraction * 100)


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else noun + "s"


def _clip(text: str, limit: int = ANSWER_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(value: int | None) -> float | None:
    return None if value is None else value / 1000


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
