"""Results out: CSV, JSON and JSONL, streamed from the store a page at a time.

Each line holds the row's original columns in their original order, then the
answer and how it went. Names that clash with an input column get a suffix.
In CSV, a cell that a spreadsheet would run as a formula is neutralised; JSON
keeps every value as it is.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .batches import Batch, RowStatus, StoredRow
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
CHUNK_ROWS = 500


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


def result_field_names(columns: Sequence[str]) -> dict[str, str]:
    """Our field -> its name in the export, suffixed where an input column clashes."""
    taken = set(columns)
    names = {}
    for field in RESULT_FIELDS:
        name, n = field, 1
        while name in taken:
            n += 1
            name = f"{field}_{n}"
        taken.add(name)
        names[field] = name
    return names


def row_values(row: StoredRow) -> dict[str, Any]:
    """Our fields of one stored row, before renaming."""
    return {
        "output": row.output or "",
        "status": row.status.value,
        "error": row.error_message or "",
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "cost_usd": round(row.cost_usd, 8),
        "finish_reason": row.finish_reason or "",
    }


def export_chunks(
    store: Store,
    batch: Batch,
    fmt: ExportFormat,
    *,
    failed_only: bool = False,
    excel_bom: bool = False,
) -> Iterator[bytes]:
    """The export as byte chunks, read from the store page by page."""
    status = RowStatus.FAILED if failed_only else None
    rows = store.iter_rows(batch.id, status=status)
    names = result_field_names(batch.columns)
    header = [*batch.columns, *names.values()]
    if fmt is ExportFormat.CSV:
        yield from _csv_chunks(rows, batch.columns, header, excel_bom)
    else:
        yield from _json_chunks(rows, batch.columns, names, fmt)


def _csv_chunks(
    rows: Iterator[StoredRow], columns: Sequence[str], header: list[str], bom: bool
) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if bom:
        buffer.write("\ufeff")
    writer.writerow([neutralise_formula(name) for name in header])
    for count, row in enumerate(rows, start=1):
        cells = [row.values.get(c, "") for c in columns]
        cells.extend(str(v) for v in row_values(row).values())
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
    fmt: ExportFormat,
) -> Iterator[bytes]:
    lines: list[str] = []
    first = True
    if fmt is ExportFormat.JSON:
        yield b"["
    for row in rows:
        record = {c: row.values.get(c, "") for c in columns}
        record.update({names[k]: v for k, v in row_values(row).items()})
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
        yield b"\n]\n"


def write_export(
    store: Store,
    batch: Batch,
    target: str | Path | BinaryIO,
    fmt: ExportFormat | None = None,
    **options: Any,
) -> None:
    """Write an export to a path or a binary file object."""
    if isinstance(target, str | Path):
        fmt = fmt or ExportFormat.from_path(target)
        with Path(target).open("wb") as handle:
            for chunk in export_chunks(store, batch, fmt, **options):
                handle.write(chunk)
        return
    for chunk in export_chunks(store, batch, fmt or ExportFormat.CSV, **options):
        target.write(chunk)
