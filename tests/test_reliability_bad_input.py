"""Every hostile file, through the CSV module, the command line and the app.

Each file of :mod:`tests.hostile.corpus` is either read as exactly the table
it holds or refused with one clear line (the reason, and the line of the file
when there is one): never a traceback, never a crash, never a page that stops
working. Values go through untouched; only a CSV export neutralises formulas.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkgpt_core.errors import CSVError, TemplateError
from bulkgpt_core.tables import CSVLimits, neutralise_formula, read_csv
from bulkgpt_core.templates import compile_template, insert_placeholder
from bulkgpt_core.views import PREVIEW_ROWS
from pages.ui import md
from tests.app_fixtures import app, reviews_bytes, texts, uploaded
from tests.hostile.corpus import (
    KINDS,
    HostileFile,
    Parsed,
    Refused,
    corpus,
    csv_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
FILES = corpus()


def by_name(name: str) -> HostileFile:
    return next(f for f in FILES if f.name == name)


def test_the_corpus_covers_every_kind_of_hostile_file() -> None:
    assert len(FILES) >= 30
    assert {f.kind for f in FILES} == set(KINDS)
    assert sum(isinstance(f.expect, Refused) for f in FILES) >= 15
    assert sum(isinstance(f.expect, Parsed) for f in FILES) >= 15


# -- the CSV module ------------------------------------------------------------


def assert_one_clear_line(message: str, expect: Refused) -> None:
    assert expect.words.lower() in message.lower(), message
    assert "\n" not in message and "Traceback" not in message
    if expect.line is not None:
        assert message.startswith(f"Line {expect.line}: "), message


@pytest.mark.parametrize("hostile", FILES, ids=lambda f: f.name)
def test_read_csv_reads_each_file_exactly_or_refuses_it(hostile: HostileFile) -> None:
    expect = hostile.expect
    if isinstance(expect, Refused):
        with pytest.raises(CSVError) as refused:
            read_csv(hostile.data, name=hostile.name)
        assert_one_clear_line(str(refused.value), expect)
        assert refused.value.line == expect.line
        return

    table = read_csv(hostile.data, name=hostile.name)
    assert table.columns == list(expect.columns)
    if expect.rows is not None:
        assert table.rows == list(expect.rows)
    else:
        assert (len(table), table.rows[0]) == (expect.row_count, expect.first_row)
    assert len(table.repairs) == expect.repairs, table.repairs
    assert (table.delimiter, table.source_name) == (expect.delimiter, hostile.name)
    if expect.encoding is not None:
        assert table.encoding == expect.encoding


# -- the command line ----------------------------------------------------------


def cli_prompt(hostile: HostileFile) -> str:
    """A prompt naming the first column when it can be named, else plain text."""
    if isinstance(hostile.expect, Parsed):
        try:
            return insert_placeholder("Echo ", hostile.expect.columns[0])
        except TemplateError:
            pass
    return "Say hello"


def run_cli(source: Path, prompt: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BULKGPT_DEMO_DELAY_MS": "0"}
    return subprocess.run(
        [
            *(sys.executable, "-m", "bulkgpt_core", "run", str(source)),
            *("--prompt", prompt, "--out", str(out), "--model", "demo"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def exported_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("hostile", FILES, ids=lambda f: f.name)
def test_the_cli_runs_each_file_or_refuses_it_in_one_line(
    hostile: HostileFile, tmp_path: Path
) -> None:
    source, out = tmp_path / hostile.name, tmp_path / "out.csv"
    source.write_bytes(hostile.data)

    done = run_cli(source, cli_prompt(hostile), out)

    assert "Traceback" not in done.stderr + done.stdout
    expect = hostile.expect
    if isinstance(expect, Refused):
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith("error: ")
        assert_one_clear_line(line.removeprefix("error: "), expect)
        assert not out.exists()
        return

    assert done.returncode == 0, done.stderr
    header, *body = exported_rows(out)
    width = len(expect.columns)
    assert header[:width] == [neutralise_formula(c) for c in expect.columns]
    assert len(body) == expect.count
    assert {row[header.index("status")] for row in body} == {"succeeded"}
    if expect.rows is not None:
        # Every value comes back; a spreadsheet would not run any of them.
        assert [row[:width] for row in body] == [
            [neutralise_formula(v) for v in row] for row in expect.rows
        ]


def test_the_cli_export_neutralises_every_formula_in_the_file(tmp_path: Path) -> None:
    hostile = by_name("formulas.csv")
    source, out = tmp_path / hostile.name, tmp_path / "out.csv"
    source.write_bytes(hostile.data)

    assert run_cli(source, "Repeat <<text>>", out).returncode == 0

    header, *body = exported_rows(out)
    assert header[1] == '\'=HYPERLINK("x")'
    for row in body:
        formula = row[2]
        assert formula.startswith("'"), formula
        # The demo answer quotes the prompt, which starts "Repeat", so it is safe.
        assert row[3].startswith("[demo answer]")


# -- the app -------------------------------------------------------------------


def summary_words(expect: Parsed) -> str:
    rows, columns = expect.count, len(expect.columns)
    return (
        f"{rows:,} {'row' if rows == 1 else 'rows'} × "
        f"{columns} {'column' if columns == 1 else 'columns'}"
    )


def app_problem(at: object, hostile: HostileFile) -> str | None:
    """What is wrong with the page after uploading ``hostile``, if anything."""
    if at.exception:  # type: ignore[attr-defined]
        return f"exception {at.exception}"  # type: ignore[attr-defined]
    errors = texts(at.error)  # type: ignore[attr-defined]
    expect = hostile.expect
    if isinstance(expect, Refused):
        if len(errors) != 1 or hostile.name not in errors[0]:
            return f"expected one error naming the file, got {errors}"
        if expect.words.lower() not in errors[0].lower():
            return f"the error does not say {expect.words!r}: {errors[0]}"
        return None
    if errors:
        return f"unexpected errors {errors}"
    shown = " ".join(texts(at.markdown))  # type: ignore[attr-defined]
    if summary_words(expect) not in shown:
        return f"no {summary_words(expect)!r} in {shown[:200]!r}"
    preview = at.dataframe[0].value  # type: ignore[attr-defined]
    if list(preview.columns) != list(expect.columns):
        return f"preview columns {list(preview.columns)[:5]}"
    if expect.rows is not None:
        shown_rows = [tuple(r) for r in preview.itertuples(index=False)]
        if shown_rows != list(expect.rows[:PREVIEW_ROWS]):
            return "the preview does not show the rows as they are"
    return None


def test_the_app_reads_or_refuses_each_file_and_stays_usable() -> None:
    at = app()
    problems = {}
    for hostile in FILES:
        # A browser only offers .csv files; an attacker just renames them.
        at = uploaded(at, hostile.data, name=hostile.name + ".csv")
        problem = app_problem(at, hostile)
        if problem:
            problems[hostile.name] = problem

    assert problems == {}
    # After all of that, the page still takes a good file and goes on.
    at = uploaded(at, reviews_bytes(), name="reviews.csv")
    assert not at.exception and not at.error
    assert "120 rows × 5 columns" in " ".join(texts(at.markdown))
    assert at.text_area(key="template") is not None


HOSTILE_NAMES = (
    "<img src=x onerror=alert(1)>.csv",
    "[click](javascript:alert(1)).csv",
    "**bold** `code` # title.csv",
    "../../etc/passwd.csv",
    "\u202egnp.exe.csv",
    "名前 😀.csv",
)


def test_hostile_file_names_are_shown_as_text_and_break_nothing() -> None:
    at = app()
    for name in HOSTILE_NAMES:
        at = uploaded(at, b"id,text\n1,a\n", name=name)
        assert not at.exception and not at.error
        # Shown as literal text: markdown's special characters are escaped.
        assert md(name) in " ".join(texts(at.markdown))
        at = uploaded(at, b"%PDF-1.4", name=name)
        [error] = texts(at.error)
        assert md(name) in error and "PDF document" in error


# -- fuzzing -------------------------------------------------------------------

SMALL_FILES = [f for f in FILES if len(f.data) < 4096]
BYTE_EDITS = st.lists(
    st.tuples(st.integers(0, 4095), st.integers(0, 255), st.sampled_from("sid")),
    max_size=8,
)


def mutated(data: bytes, edits: list[tuple[int, int, str]]) -> bytes:
    """``data`` with bytes substituted, inserted or deleted."""
    out = bytearray(data)
    for position, value, how in edits:
        at = position % (len(out) + 1)
        if how == "i":
            out.insert(at, value)
        elif out and how == "s":
            out[at % len(out)] = value
        elif out:
            del out[at % len(out)]
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SMALL_FILES), BYTE_EDITS)
def test_any_damage_to_a_hostile_file_gives_a_table_or_a_csv_error(
    hostile: HostileFile, edits: list[tuple[int, int, str]]
) -> None:
    data = mutated(hostile.data, edits)
    try:
        table = read_csv(data, limits=CSVLimits(max_cell_chars=2000, max_rows=200))
    except CSVError as refused:
        assert "\n" not in str(refused)
        return
    assert len(set(table.columns)) == len(table.columns)
    assert all(len(row) == len(table.columns) for row in table.rows)
    # Whatever was read renders into a prompt exactly, value for value.
    column = table.columns[0]
    with contextlib.suppress(TemplateError):
        template = compile_template(insert_placeholder("", column), table.columns)
        assert [template.render(table.row_dict(i)) for i in range(len(table))] == [
            row[0] for row in table.rows
        ]


ANY_TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    max_size=10,
)
NAMES = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00\ufeff"),
    min_size=1,
    max_size=8,
).filter(lambda name: name == name.strip())


@st.composite
def any_table(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, ...]]]:
    columns = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    width = len(columns)
    row = st.tuples(*[ANY_TEXT] * width)
    rows = draw(
        st.lists(row, min_size=1, max_size=6).filter(lambda r: any(map(any, r)))
    )
    return columns, rows


@settings(max_examples=150, deadline=None)
@given(
    any_table(),
    st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"]),
    st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_any_text_in_any_marked_encoding_reads_back_exactly(
    table: tuple[list[str], list[tuple[str, ...]]], encoding: str, newline: str
) -> None:
    columns, rows = table
    data = csv_bytes(columns, rows, encoding=encoding, newline=newline,
                     quoting=csv.QUOTE_ALL)  # fmt: skip
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data

    read = read_csv(data)

    assert read.columns == columns
    assert read.rows == [row for row in rows if any(row)]
