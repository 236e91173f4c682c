"""Exports: column order, clashing names, formula safety in CSV, values kept in JSON."""

from __future__ import annotations

import csv
import io
import json

import pytest

from bulkgpt_core.batches import RowResult, RowStatus
from bulkgpt_core.export import (
    ExportFormat,
    batch_manifest,
    export_chunks,
    manifest_path,
    result_field_names,
    write_export,
)
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
    exported = json.loads(export_text(sqlite_store, finished_batch, ExportFormat.JSON))
    assert list(exported) == ["manifest", "rows"]
    records = exported["rows"]
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
    exported = json.loads(export_text(sqlite_store, batch, ExportFormat.JSON))
    assert exported["rows"] == []
    assert exported["manifest"]["counts"]["rows"] == 0


def test_the_manifest_says_what_produced_the_results(
    sqlite_store, finished_batch
) -> None:
    manifest = json.loads(
        export_text(sqlite_store, finished_batch, ExportFormat.JSON, failed_only=True)
    )["manifest"]

    assert manifest == {
        **batch_manifest(finished_batch, failed_only=True),
        "exported_at": manifest["exported_at"],
    }
    assert manifest["template"] == "<<text>>"
    assert manifest["model"] == "gemini-2.5-flash"
    assert manifest["source_file"] == "test.csv"
    assert manifest["settings"] == {"temperature": None, "max_output_tokens": None}
    assert manifest["limits"]["concurrency"] == 8
    assert manifest["counts"] == {
        "rows": 10,
        "succeeded": 9,
        "failed": 1,
        "remaining": 0,
        "reused": 0,
    }
    assert manifest["tokens"] == {"in": 9, "out": 18}
    assert manifest["rows_exported"] == "failed only"
    assert manifest["created_at"] == finished_batch.created_at.isoformat()


def test_csv_and_jsonl_files_get_a_sidecar_manifest(
    sqlite_store, finished_batch, tmp_path
) -> None:
    for name in ("out.csv", "out.jsonl"):
        sidecar = write_export(sqlite_store, finished_batch, tmp_path / name)
        assert sidecar == manifest_path(tmp_path / name)
        assert sidecar.name == f"{name}.manifest.json"
        manifest = json.loads(sidecar.read_text(encoding="utf-8"))
        assert manifest["batch_id"] == finished_batch.id
        assert manifest["counts"]["succeeded"] == 9

    assert write_export(sqlite_store, finished_batch, tmp_path / "out.json") is None
    assert not manifest_path(tmp_path / "out.json").exists()


def test_format_from_path() -> None:
    assert ExportFormat.from_path("a/b.JSONL") is ExportFormat.JSONL
    with pytest.raises(ValueError, match=r"\.csv, \.json or \.jsonl"):
        ExportFormat.from_path("out.xlsx")
