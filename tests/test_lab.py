"""Tests for bulkgpt_core.lab: variants compared on the same rows, stored, promoted."""

from __future__ import annotations

import time

import pytest

from bulkgpt_core import actions, lab
from bulkgpt_core.config import Settings
from bulkgpt_core.cost import price_for
from bulkgpt_core.errors import ConfigError, LabError, TemplateError
from bulkgpt_core.lab import LabRun, RowChoice, Variant
from bulkgpt_core.schema import FieldType, OutputField, fields_to_schema
from bulkgpt_core.stores.sqlite import SQLiteStore
from bulkgpt_core.tables import Table, read_csv
from tests.fake_gemini import FakeGemini

SCHEMA = fields_to_schema(
    [
        OutputField("sentiment", FieldType.CHOICE, choices=("positive", "negative")),
        OutputField("score", FieldType.INTEGER),
    ]
)
PLAIN = Variant("A", "Say <<text>>", "gemini-2.5-flash")
TERSE = Variant(
    "B",
    "One word for <<text>>",
    "gemini-2.5-flash-lite",
    system_prompt="Be terse.",
    temperature=0.2,
    max_output_tokens=50,
)


def table_of(*texts: str) -> Table:
    lines = ["id,text", *(f'{i},"{t}"' for i, t in enumerate(texts))]
    return read_csv("\n".join(lines).encode(), name="t.csv")


def run_lab(table: Table, variants=(PLAIN, TERSE), indexes=None, **limits) -> LabRun:
    indexes = list(range(len(table))) if indexes is None else indexes
    return lab.run_lab(Settings.from_env(), table, list(variants), indexes, **limits)


# --- Running ------------------------------------------------------------------


def test_every_variant_answers_every_row(gemini: FakeGemini) -> None:
    table = table_of("alpha", "beta", "gamma")
    run = run_lab(table, indexes=[2, 0])

    assert run.name == "t.csv: A vs B on 2 rows"
    assert [row.index for row in run.rows] == [2, 0]
    assert [row.values["text"] for row in run.rows] == ["gamma", "alpha"]
    answers = [[cell.answer for cell in row.cells] for row in run.rows]
    assert answers == [
        ["ANSWER: Say gamma", "ANSWER: One word for gamma"],
        ["ANSWER: Say alpha", "ANSWER: One word for alpha"],
    ]
    for row in run.rows:
        for cell, variant in zip(row.cells, run.variants, strict=True):
            assert cell.ok and cell.error is None
            assert cell.tokens_in > 0 and cell.tokens_out > 0
            assert cell.latency_s is not None
            price = price_for(variant.model)
            assert cell.cost_usd == pytest.approx(
                price.cost(cell.tokens_in, cell.tokens_out)
            )
    assert gemini.stats()["answered"] == 4


def test_the_summary_counts_failures_tokens_and_cost_per_thousand_rows(
    gemini: FakeGemini,
) -> None:
    table = table_of("fine", "please block [[fake:safety]]", "also fine")
    run = run_lab(table)
    plain, terse = run.summaries()

    assert (plain.name, plain.model, plain.rows) == ("A", "gemini-2.5-flash", 3)
    assert plain.failed == terse.failed == 1
    cells = [row.cells[0] for row in run.rows]
    assert plain.avg_tokens_in == pytest.approx(sum(c.tokens_in for c in cells) / 3)
    assert plain.cost_usd == pytest.approx(sum(c.cost_usd for c in cells))
    assert plain.cost_per_1000_rows == pytest.approx(plain.cost_usd / 3 * 1000)
    blocked = run.rows[1].cells[0]
    assert not blocked.ok
    assert blocked.error == "Blocked by safety filters"
    assert blocked.fix


def test_variants_share_one_concurrency_limit_and_one_pace(gemini: FakeGemini) -> None:
    gemini.configure(latency_ms=100)
    table = table_of("a", "b", "c")

    started = time.monotonic()
    run_lab(table, concurrency=2, rpm=600)
    elapsed = time.monotonic() - started

    stats = gemini.stats()
    assert stats["answered"] == 6
    assert stats["max_in_flight"] <= 2
    assert elapsed >= 0.5  # six calls spaced 0.1 s apart, whichever variant


def test_a_variant_whose_model_is_unknown_fails_alone(gemini: FakeGemini) -> None:
    table = table_of("a", "b", "c")
    run = run_lab(table, [PLAIN, Variant("B", "Say <<text>>", "nope-model")])

    assert all(row.cells[0].ok for row in run.rows)
    for row in run.rows:
        cell = row.cells[1]
        assert cell.error_kind == "unknown_model"
        assert cell.error == "Unknown model"
        assert "nope-model" in (cell.error_detail or "")
    assert [s.failed for s in run.summaries()] == [0, 3]


def test_a_structured_variant_gets_parsed_answers(gemini: FakeGemini) -> None:
    structured = Variant(
        "B", "Review: <<text>>", "gemini-2.5-flash", output_schema=SCHEMA
    )
    run = run_lab(table_of("great"), [PLAIN, structured])

    cell = run.rows[0].cells[1]
    assert cell.ok
    assert set(cell.parsed) == {"sentiment", "score"}
    assert cell.parsed["sentiment"] in ("positive", "negative")


def test_problems_are_named_by_variant_before_anything_is_sent(
    gemini: FakeGemini,
) -> None:
    table = table_of("a")
    with pytest.raises(TemplateError, match=r"^Variant B: <<txt>> is not a column"):
        run_lab(table, [PLAIN, Variant("B", "Say <<txt>>", "gemini-2.5-flash")])
    with pytest.raises(LabError, match="Compare 2 to 4 variants"):
        run_lab(table, [PLAIN])
    with pytest.raises(LabError, match="Two variants are called 'A'"):
        run_lab(table, [PLAIN, PLAIN])
    with pytest.raises(LabError, match="Choose at least one row"):
        run_lab(table, indexes=[])
    assert gemini.stats()["total"] == 0


def test_a_gemini_variant_without_a_key_is_refused() -> None:
    demo = Variant("A", "Say <<text>>", "demo")
    with pytest.raises(ConfigError, match=r"^Variant B: GEMINI_API_KEY is not set"):
        run_lab(table_of("a"), [demo, Variant("B", "Say <<text>>", "gemini-2.5-flash")])


def test_blank_names_become_letters(gemini: FakeGemini) -> None:
    run = run_lab(table_of("a"), [Variant("", "<<text>>", "demo"), TERSE])
    assert [v.name for v in run.variants] == ["A", "B"]


# --- Rows ---------------------------------------------------------------------


def test_rows_first_random_or_by_number() -> None:
    assert lab.pick_rows(100, RowChoice.FIRST, count=3) == [0, 1, 2]
    picked = lab.pick_rows(100, RowChoice.RANDOM, count=3, seed=7)
    assert picked == lab.pick_rows(100, RowChoice.RANDOM, count=3, seed=7)
    assert len(picked) == 3 and picked == sorted(picked)
    assert lab.pick_rows(100, RowChoice.FIRST, count=500) == list(range(20))
    chosen = lab.pick_rows(100, RowChoice.CHOSEN, chosen="1, 4; 10-12, 4")
    assert chosen == [0, 3, 9, 10, 11]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Write the numbers of the rows"),
        ("1, two", "'two' is not a row number"),
        ("0", "Row numbers go from 1 to 100"),
        ("99-101", "Row numbers go from 1 to 100"),
        ("1-30", "at most 20 rows"),
    ],
)
def test_row_numbers_that_cannot_be_used_say_why(text: str, message: str) -> None:
    with pytest.raises(LabError, match=message):
        lab.parse_row_numbers(text, 100)


# --- Marks, storage and promotion ---------------------------------------------


def test_marks_are_tallied_per_variant(gemini: FakeGemini) -> None:
    run = run_lab(table_of("a", "b", "c"))
    run.mark(0, 1)
    run.mark(1, 1)
    run.mark(2, 0)
    run.mark(2, None)

    assert run.tally() == [0, 2]
    assert [s.marks for s in run.summaries()] == [0, 2]
    with pytest.raises(LabError):
        run.mark(0, 5)


def test_a_run_is_stored_whole_and_read_back(
    gemini: FakeGemini, sqlite_store: SQLiteStore
) -> None:
    structured = Variant("B", "<<text>>", "gemini-2.5-flash", output_schema=SCHEMA)
    run = run_lab(table_of("a", "b"), [PLAIN, structured], concurrency=3)
    run.mark(1, 0)
    lab.save_run(sqlite_store, run)
    assert run.id is not None and run.created_at is not None

    again = lab.load_run(sqlite_store, run.id)
    assert again == run
    assert again.limits == {"concurrency": 3, "rpm": None, "tpm": None}

    again.mark(0, 1)
    lab.save_run(sqlite_store, again)
    assert lab.load_run(sqlite_store, run.id).marks == {0: 1, 1: 0}
    assert len(sqlite_store.list_lab_runs()) == 1


def test_promote_launches_a_batch_with_the_variants_settings(
    gemini: FakeGemini,
    sqlite_store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []
    monkeypatch.setattr(
        actions,
        "start_worker",
        lambda settings, store, batch_id: started.append(batch_id),
    )
    structured = Variant(
        "B",
        "One word for <<text>>",
        "gemini-2.5-flash-lite",
        system_prompt="Be terse.",
        temperature=0.2,
        max_output_tokens=50,
        output_schema=SCHEMA,
    )
    whole = table_of("a", "b", "c", "d")
    run = run_lab(whole, [PLAIN, structured], indexes=[0, 1], concurrency=3)

    batch = lab.promote(Settings.from_env(), sqlite_store, whole, run, 1)

    assert started == [batch.id]
    assert batch.name == "t (B)"
    assert batch.total_rows == 4
    assert batch.template == "One word for <<text>>"
    assert batch.model == "gemini-2.5-flash-lite"
    assert batch.system_prompt == "Be terse."
    assert batch.generation == {"temperature": 0.2, "max_output_tokens": 50}
    assert batch.output_schema == SCHEMA
    assert batch.limits["concurrency"] == 3
