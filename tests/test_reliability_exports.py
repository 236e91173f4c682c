"""Exports never hand a spreadsheet a formula, and JSON never changes a value.

Every leading character OWASP lists for CSV injection (``= + - @``, tab,
carriage return), line feed and the full-width forms, in every kind of cell
an export has: a column name, an input value, the answer, a structured
field, an error message. Then a property: any text at all, stored and
exported, comes back from JSON and JSONL as it went in, and from CSV as it
went in behind one ``'`` exactly when it starts like a formula.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkgpt_core.batches import Batch, RowResult, RowStatus
from bulkgpt_core.export import ExportFormat, export_chunks
from bulkgpt_core.stores.sqlite import SQLiteStore
from bulkgpt_core.tables import FORMULA_STARTS, neutralise_formula
from tests.conftest import new_batch_spec

#: OWASP's list, then what BulkGPT adds: line feed and the full-width forms.
OWASP_STARTS = ("=", "+", "-", "@", "\t", "\r")
ALL_STARTS = (*OWASP_STARTS, "\n", "＝", "＋", "－", "＠")
SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string"}, "tags": {"type": "array"}},
}


def export(store: SQLiteStore, batch: Batch, fmt: ExportFormat, **options) -> str:
    data = b"".join(export_chunks(store, batch, fmt, **options))
    return data.decode("utf-8")


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))


def json_rows(text: str) -> list[dict[str, object]]:
    """The rows of a JSON export (beside them, its manifest)."""
    return json.loads(text)["rows"]


def json_lines(text: str) -> list[object]:
    """JSON Lines as the format defines them: separated by line feeds only."""
    return [json.loads(line) for line in text.split("\n") if line]


def dangerous_batch(store: SQLiteStore, start: str) -> tuple[Batch, str]:
    """A batch whose every kind of cell starts with ``start``."""
    payload = start + 'HYPERLINK("http://attacker.example","x")'
    columns = [payload, "text"]
    batch = store.create_batch(
        new_batch_spec(columns, template="<<text>>", response_schema=SCHEMA)
    )
    store.add_rows(batch.id, [{payload: payload, "text": payload}] * 2)
    store.claim_rows(batch.id, after_index=-1, limit=2)
    answer = RowResult(
        0,
        RowStatus.SUCCEEDED,
        output=payload,
        parsed={"verdict": payload, "tags": [payload]},
        finish_reason=payload,
    )
    failure = RowResult(1, RowStatus.FAILED, error_kind="other", error_message=payload)
    store.record_results(batch.id, [answer, failure])
    return store.get_batch(batch.id), payload


def test_the_exports_own_list_is_owasps_and_more() -> None:
    assert set(ALL_STARTS) == set(FORMULA_STARTS)


@pytest.mark.parametrize("start", ALL_STARTS, ids=repr)
@pytest.mark.parametrize("bom", [False, True], ids=["plain", "excel-bom"])
def test_no_csv_cell_starts_like_a_formula(
    sqlite_store: SQLiteStore, start: str, bom: bool
) -> None:
    batch, payload = dangerous_batch(sqlite_store, start)

    header, answered, failed = csv_rows(
        export(sqlite_store, batch, ExportFormat.CSV, excel_bom=bom)
    )

    safe = "'" + payload
    assert header[:2] == [safe, "text"]
    named = dict(zip(header, answered, strict=True))
    assert [named[n] for n in (safe, "text", "output", "verdict", "finish_reason")] == [
        safe
    ] * 5
    assert named["tags"] == json.dumps([payload], ensure_ascii=False)
    assert dict(zip(header, failed, strict=True))["error"] == safe
    for cell in header + answered + failed:
        assert not cell.startswith(FORMULA_STARTS), cell


@pytest.mark.parametrize("start", ALL_STARTS, ids=repr)
def test_failed_rows_only_are_neutralised_too(
    sqlite_store: SQLiteStore, start: str
) -> None:
    batch, payload = dangerous_batch(sqlite_store, start)

    header, failed = csv_rows(
        export(sqlite_store, batch, ExportFormat.CSV, failed_only=True)
    )

    assert dict(zip(header, failed, strict=True))["error"] == "'" + payload


@pytest.mark.parametrize("start", ALL_STARTS, ids=repr)
def test_json_and_jsonl_keep_every_value_as_it_is(
    sqlite_store: SQLiteStore, start: str
) -> None:
    batch, payload = dangerous_batch(sqlite_store, start)

    records = json_rows(export(sqlite_store, batch, ExportFormat.JSON))

    assert json_lines(export(sqlite_store, batch, ExportFormat.JSONL)) == records
    answered, failed = records
    assert answered[payload] == answered["text"] == answered["output"] == payload
    assert answered["verdict"] == payload and answered["tags"] == [payload]
    assert failed["error"] == payload


# -- any text at all ---------------------------------------------------------

TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20
)
STARTING_LIKE_A_FORMULA = st.builds(
    lambda start, rest: start + rest, st.sampled_from(ALL_STARTS), TEXT
)
VALUES = st.one_of(TEXT, STARTING_LIKE_A_FORMULA)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.tuples(VALUES, VALUES, VALUES), min_size=1, max_size=6),
)
def test_any_text_survives_the_store_and_every_export(
    tmp_path_factory: pytest.TempPathFactory, values: list[tuple[str, str, str]]
) -> None:
    store = SQLiteStore(tmp_path_factory.mktemp("export") / "store.sqlite3")
    try:
        batch = store.create_batch(new_batch_spec(["a", "b"], template="<<a>>"))
        store.add_rows(batch.id, [{"a": a, "b": b} for a, b, _ in values])
        store.claim_rows(batch.id, after_index=-1, limit=len(values))
        store.record_results(
            batch.id,
            [
                RowResult(i, RowStatus.SUCCEEDED, output=out)
                for i, (_, _, out) in enumerate(values)
            ],
        )
        batch = store.get_batch(batch.id)

        records = json_rows(export(store, batch, ExportFormat.JSON))
        lines = json_lines(export(store, batch, ExportFormat.JSONL))
        header, *rows = csv_rows(export(store, batch, ExportFormat.CSV))
    finally:
        store.close()

    kept = [(r["a"], r["b"], r["output"]) for r in records]
    assert kept == [(a, b, out or "") for a, b, out in values]
    assert lines == records
    assert header[:3] == ["a", "b", "output"]
    assert [tuple(row[:3]) for row in rows] == [
        tuple(neutralise_formula(v) for v in (a, b, out or "")) for a, b, out in values
    ]
