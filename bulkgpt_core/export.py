"""Results out: CSV, JSON and JSONL, streamed from the store a page at a time.

Each line holds the row's original columns in their original order, then the
answer and how it went. Names that clash with an input column get a suffix.
In CSV, a cell that a spreadsheet would run as a formula is neutralised; JSON
keeps every value as it is.

Every export has a manifest: what produced it (template, system prompt, model,
settings, output schema, source file) and how far it got (counts, tokens,
cost, answers reused). A JSON export is ``{"manifest": {...}, "rows": [...]}``;
beside a CSV or JSONL file the manifest is a sidecar, ``<file>.manifest.json``.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from .batches import Batch, RowStatus, StoredRow, utcnow
from .schema import field_names
from .stores.base import Store
from .tables import neutralise_formula

RESULT_FIELDS = (
    "output",
    "status",
    "error",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "finish_reason",
)
FIELD_PREFIX = "field:"
CHUNK_ROWS = 500
#: Bumped when a manifest's keys change meaning.
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    JSON = "json"
    JSONL = "jsonl"

    @classmethod
    def from_path(cls, path: str | Path) -> ExportFormat:
        suffix = Path(path).suffix.lower().lstrip(".")
        try:
            return cls(suffix)
        except ValueError:
            raise ValueError(
                f"Cannot export to {Path(path).name!r}: use a name ending in "
                ".csv, .json or .jsonl."
            ) from None

    @property
    def mime(self) -> str:
        return {
            ExportFormat.CSV: "text/csv",
            ExportFormat.JSON: "application/json",
            ExportFormat.JSONL: "application/jsonl",
        }[self]


def result_field_names(
    columns: Sequence[str], fields: Sequence[str] = ()
) -> dict[str, str]:
    """Our field -> its name in the export, suffixed where an input column clashes.

    Structured-output fields follow ``output`` (the raw answer), keyed
    ``field:<name>``.
    """
    keys = [RESULT_FIELDS[0], *(FIELD_PREFIX + f for f in fields), *RESULT_FIELDS[1:]]
    taken = set(columns)
    names = {}
    for key in keys:
        base = key.removeprefix(FIELD_PREFIX)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names[key] = name
    return names


def row_values(row: StoredRow, fields: Sequence[str] = ()) -> dict[str, Any]:
    """Our fields of one stored row, keyed as :func:`result_field_names` keys them."""
    parsed = row.parsed if isinstance(row.parsed, dict) else {}
    values: dict[str, Any] = {"output": row.output or ""}
    values.update({FIELD_PREFIX + f: parsed.get(f) for f in fields})
    values.update(
        {
            "status": row.status.value,
            "error": row.error_message or "",
            "tokens_in": row.tokens_in,
            "tokens_out": row.tokens_out,
            "cost_usd": round(row.cost_usd, 8),
            "finish_reason": row.finish_reason or "",
        }
    )
    return values


def csv_cell(value: Any) -> str:
    """A value as CSV text: lists and objects as JSON, yes/no as true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def batch_manifest(
    batch: Batch, *, failed_only: bool = False, now: datetime | None = None
) -> dict[str, Any]:
    """What produced a batch's results and how far it got, as plain JSON values.

    ``failed_only`` says whether the export it goes with holds only the failed
    rows; ``now`` is the export's time (default: now).
    """
    return {
        "bulkgpt_manifest": MANIFEST_VERSION,
        "batch_id": batch.id,
        "name": batch.name,
        "source_file": batch.source_name,
        "columns": list(batch.columns),
        "template": batch.template,
        "system_prompt": batch.system_prompt,
        "model": batch.model,
        "settings": dict(batch.generation),
        "limits": dict(batch.limits),
        "output_schema": batch.output_schema,
        "budget_usd": batch.budget_usd,
        "status": batch.status.value,
        "created_at": _iso(batch.created_at),
        "started_at": _iso(batch.started_at),
        "finished_at": _iso(batch.finished_at),
        "exported_at": _iso(now or utcnow()),
        "rows_exported": "failed only" if failed_only else "all",
        "counts": _counts(batch),
        "tokens": {"in": batch.tokens_in, "out": batch.tokens_out},
        "cost_usd": round(batch.cost_usd, 8),
        "saved_usd": round(batch.saved_usd, 8),
    }


def _counts(batch: Batch) -> dict[str, int]:
    return {
        "rows": batch.total_rows,
        "succeeded": batch.succeeded,
        "failed": batch.failed,
        "remaining": batch.remaining,
        "reused": batch.reused,
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def manifest_bytes(batch: Batch, *, failed_only: bool = False) -> bytes:
    """The manifest as an indented JSON file."""
    manifest = batch_manifest(batch, failed_only=failed_only)
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode()


def manifest_path(export_path: str | Path) -> Path:
    """Where the sidecar manifest of an export file goes: ``<file>.manifest.json``."""
    path = Path(export_path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def export_chunks(
    store: Store,
    batch: Batch,
    fmt: ExportFormat,
    *,
    failed_only: bool = False,
    excel_bom: bool = False,
) -> Iterator[bytes]:
    """The export as byte chunks, read from the store page by page.

    JSON is one object, ``{"manifest": {...}, "rows": [...]}``; CSV and JSONL
    hold only the rows (their manifest is :func:`manifest_bytes`).
    """
    status = RowStatus.FAILED if failed_only else None
    rows = store.iter_rows(batch.id, status=status)
    fields = field_names(batch.output_schema)
    names = result_field_names(batch.columns, fields)
    if fmt is ExportFormat.CSV:
        yield from _csv_chunks(rows, batch.columns, names, fields, excel_bom)
        return
    if fmt is ExportFormat.JSON:
        manifest = batch_manifest(batch, failed_only=failed_only)
        yield b'{"manifest": ' + json.dumps(manifest, ensure_ascii=False).encode()
        yield b', "rows": '
    yield from _json_chunks(rows, batch.columns, names, fields, fmt)
    if fmt is ExportFormat.JSON:
        yield b"}\n"


def _csv_chunks(
    rows: Iterator[StoredRow],
    columns: Sequence[str],
    names: dict[str, str],
    fields: Sequence[str],
    bom: bool,
) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if bom:
        buffer.write("\ufeff")
    header = [*columns, *names.values()]
    writer.writerow([neutralise_formula(name) for name in header])
    for count, row in enumerate(rows, start=1):
        cells = [row.values.get(c, "") for c in columns]
        cells.extend(csv_cell(v) for v in row_values(row, fields).values())
        writer.writerow([neutralise_formula(cell) for cell in cells])
        if count % CHUNK_ROWS == 0:
            yield _drain(buffer)
    yield _drain(buffer)


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode("utf-8")
    buffer.seek(0)
    buffer.truncate()
    return data


def _json_chunks(
    rows: Iterator[StoredRow],
    columns: Sequence[str],
    names: dict[str, str],
    fields: Sequence[str],
    fmt: ExportFormat,
) -> Iterator[bytes]:
    lines: list[str] = []
    first = True
    if fmt is ExportFormat.JSON:
        yield b"["
    for row in rows:
        record = {c: row.values.get(c, "") for c in columns}
        record.update({names[k]: v for k, v in row_values(row, fields).items()})
        text = json.dumps(record, ensure_ascii=False)
        if fmt is ExportFormat.JSON:
            text = ("\n" if first else ",\n") + text
            first = False
        else:
            text += "\n"
        lines.append(text)
        if len(lines) >= CHUNK_ROWS:
            yield "".join(lines).encode("utf-8")
            lines = []
    if lines:
        yield "".join(lines).encode("utf-8")
    if fmt is ExportFormat.JSON:
        yield b"\n]"


def write_export(
    store: Store,
    batch: Batch,
    target: str | Path | BinaryIO,
    fmt: ExportFormat | None = None,
    **options: Any,
) -> Path | None:
    """Write an export to a path or a binary file object.

    Beside a CSV or JSONL path it also writes the manifest sidecar
    (:func:`manifest_path`), and returns that sidecar's path.
    """
    if isinstance(target, str | Path):
        fmt = fmt or ExportFormat.from_path(target)
        with Path(target).open("wb") as handle:
            for chunk in export_chunks(store, batch, fmt, **options):
                handle.write(chunk)
        if fmt is ExportFormat.JSON:
            return None
        sidecar = manifest_path(target)
        failed_only = bool(options.get("failed_only"))
        sidecar.write_bytes(manifest_bytes(batch, failed_only=failed_only))
        return sidecar
    for chunk in export_chunks(store, batch, fmt or ExportFormat.CSV, **options):
        target.write(chunk)
    return None
