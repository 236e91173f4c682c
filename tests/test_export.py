"""Exports: column order, clashing names, formula safety in CSV, values kept in JSON."""

from __future__ import annotations

import csv
import io
import json

import pytest

from bulkgpt_core.batches import RowResult, RowStatus
from bulkgpt_core.export import ExportFormat, export_chunks, result_field_names
from bulkgpt_core.stores.sqlite import SQLiteStore
from tests.conftest import new_batch_spec

DANGEROUS = ["=SUM(A1)", "+1", "-2", "@cmd", "\tx", "\rx", "＝1", "＋1", "－1", "＠x"]


@pytest.fixture
def finished_batch(sqlite_store: SQLiteStore):
    columns = ["output", "text"]
    batch = sqlite_store.create_batch(new_batch_spec(columns, template="<<text>>"))
    rows = [{"output": "mine", "text": value} for value in DANGEROUS]
    sqlite_store.add_rows(batch.id, rows)
    sqlite_store.claim_rows(batch.id, after_index=-1, limit=100)
    results = [
        RowResult(i, RowStatus.SUCCEEDED, output=v, tokens_in=1, tokens_out=2)
        for i, v in enumerate(DANGEROUS[:-1])
    ]
    results.append(
        RowResult(len(DANGEROUS) - 1, RowStatus.FAILED, error_message="=blocked")
    )
    sqlite_store.record_results(batch.id, results)
    return sqlite_store.get_batch(batch.id)


def export_text(store, batch, fmt: ExportFormat, **options) -> str:
    return b"".join(export_chunks(store, batch, fmt, **options)).decode("utf-8")


def test_clashing_result_names_get_a_suffix() -> None:
    names = result_field_names(["output", "status", "status_2"])
    assert names["output"] == "output_2"
    assert names["status"] == "status_3"
    assert names["error"] == "error"


def test_csv_neutralises_every_formula_start(sqlite_store, finished_batch) -> None:
    text = export_text(sqlite_store, finished_batch, ExportFormat.CSV)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == [
        "output",
        "text",
        "output_2",
        "status",
        "error",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "finish_reason",
    ]
    body = rows[1:]
    assert len(body) == len(DANGEROUS)
    for row, value in zip(body, DANGEROUS, strict=True):
        assert row[1] == "'" + value
    assert [row[2] for row in body[:-1]] == ["'" + v for v in DANGEROUS[:-1]]
    assert body[-1][3:5] == ["failed", "'=blocked"]


def test_json_and_jsonl_keep_values(sqlite_store, finished_batch) -> None:
    records = json.loads(export_text(sqlite_store, finished_batch, ExportFormat.JSON))
    assert [r["text"] for r in records] == DANGEROUS
    assert records[0]["output"] == "mine"
    assert records[0]["output_2"] == DANGEROUS[0]
    assert records[-1]["status"] == "failed"
    lines = export_text(sqlite_store, finished_batch, ExportFormat.JSONL).splitlines()
    assert [json.loads(line) for line in lines] == records


def test_failed_only_and_excel_bom(sqlite_store, finished_batch) -> None:
    text = export_text(
        sqlite_store, finished_batch, ExportFormat.CSV, failed_only=True, excel_bom=True
    )
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text[1:], newline="")))
    assert len(rows) == 2 and rows[1][3] == "failed"


def test_empty_json_export_is_valid(sqlite_store) -> None:
    batch = sqlite_store.create_batch(new_batch_spec())
    assert json.loads(export_text(sqlite_store, batch, ExportFormat.JSON)) == []


def test_format_from_path() -> None:
    assert ExportFormat.from_path("a/b.JSONL") is ExportFormat.JSONL
    with pytest.raises(ValueError, match=r"\.csv, \.json or \.jsonl"):
        ExportFormat.from_path("out.xlsx")
