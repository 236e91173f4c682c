"""Tests for bulkgpt_core.tables: reading uploads and writing downloads."""

from __future__ import annotations

import codecs
import csv
import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkgpt_core.config import Settings
from bulkgpt_core.errors import CSVError
from bulkgpt_core.tables import (
    CSVLimits,
    Table,
    neutralise_formula,
    read_csv,
    read_csv_path,
    write_csv,
)

SAMPLE_DIRS = [Path(__file__).parent.parent / "samples", Path("/work/shared/samples")]
SAMPLES = next((d for d in SAMPLE_DIRS if d.is_dir()), SAMPLE_DIRS[-1])
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="no samples folder")
OWASP_STARTS = ["=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠"]


def read_text(text: str, **kwargs: object) -> Table:
    return read_csv(text.encode("utf-8"), **kwargs)


def csv_error(data: bytes, **kwargs: object) -> CSVError:
    with pytest.raises(CSVError) as caught:
        read_csv(data, **kwargs)
    return caught.value


def sample_rows(name: str) -> list[list[str]]:
    with (SAMPLES / name).open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


# --- Encodings ---------------------------------------------------------------

ACCENTED = "name,note\r\nJosé,“5 €” – café\r\n"


@pytest.mark.parametrize(
    ("data", "encoding", "label"),
    [
        (ACCENTED.encode("utf-8"), "utf-8", "UTF-8"),
        (codecs.BOM_UTF8 + ACCENTED.encode("utf-8"), "utf-8-sig", "UTF-8 (with BOM)"),
        (ACCENTED.encode("cp1252"), "cp1252", "Windows-1252"),
        (ACCENTED.encode("utf-16"), "utf-16", "UTF-16"),
        (
            codecs.BOM_UTF16_BE + ACCENTED.encode("utf-16-be"),
            "utf-16",
            "UTF-16",
        ),
        (ACCENTED.encode("utf-16-le"), "utf-16-le", "UTF-16 LE (no BOM)"),
    ],
    ids=["utf-8", "utf-8-sig", "cp1252", "utf-16", "utf-16-be-bom", "utf-16-le"],
)
def test_reads_each_encoding(data: bytes, encoding: str, label: str) -> None:
    table = read_csv(data)

    assert table.columns == ["name", "note"]
    assert table.rows == [("José", "“5 €” – café")]
    assert (table.encoding, table.encoding_label) == (encoding, label)


def test_reads_utf16_as_excel_writes_unicode_text() -> None:
    text = "Company ID\tName\r\n007\tCafé «Zoë»\r\n008\t\r\n"
    data = codecs.BOM_UTF16_LE + text.encode("utf-16-le")

    table = read_csv(data)

    assert table.columns == ["Company ID", "Name"]
    assert table.rows == [("007", "Café «Zoë»"), ("008", "")]
    assert (table.encoding, table.delimiter_label) == ("utf-16", "tab")


def test_strips_bom_from_first_header() -> None:
    table = read_csv(codecs.BOM_UTF8 + b"id,name\n1,a\n")

    assert table.columns == ["id", "name"]
    assert table.row_dict(0) == {"id": "1", "name": "a"}


# --- Delimiters, quoting, line endings --------------------------------------


@pytest.mark.parametrize(
    ("text", "delimiter", "label"),
    [
        ("a,b,c\n1,2,3\n4,5,6\n", ",", "comma"),
        ("a;b;c\n1,5;2,5;x\n4;5,0;6\n", ";", "semicolon"),
        ("a\tb\tc\n1, 2\t2; 3\t3\n4\t5\t6\n", "\t", "tab"),
        ("a|b|c\n1,2|2;3|3\n4|5|6\n", "|", "pipe"),
    ],
)
def test_detects_delimiter(text: str, delimiter: str, label: str) -> None:
    table = read_text(text)

    assert (table.delimiter, table.delimiter_label) == (delimiter, label)
    assert table.columns == ["a", "b", "c"]
    assert len(table) == 2


def test_semicolon_file_with_quoted_semicolons_and_decimal_commas() -> None:
    table = read_text('id;price;text\n1;3,50;"a; b"\n2;4,00;plain\n')

    assert table.delimiter == ";"
    assert table.rows == [("1", "3,50", "a; b"), ("2", "4,00", "plain")]


def test_single_column_file() -> None:
    table = read_text("title\nHello, world\n\nGoodbye\n")

    assert table.columns == ["title"]
    assert table.rows == [("Hello, world",), ("Goodbye",)]


def test_falls_back_to_comma_without_any_delimiter() -> None:
    table = read_text("title\nfoo\nbar\n")

    assert (table.delimiter, table.columns, len(table)) == (",", ["title"], 2)


def test_detects_delimiter_from_the_start_of_a_long_file() -> None:
    lines = ["id;text"] + [f'{i:05d};"a, b\nc; d"' for i in range(5000)]

    table = read_text("\n".join(lines))

    assert table.delimiter == ";"
    assert len(table) == 5000
    assert table.rows[-1] == ("04999", "a, b\nc; d")


def test_quoted_cells_keep_commas_quotes_and_line_breaks() -> None:
    text = 'id,text\n1,"a, b"\n2,"she said ""hi"""\n3,"line one\nline two"\n'

    table = read_text(text)

    assert table.rows == [
        ("1", "a, b"),
        ("2", 'she said "hi"'),
        ("3", "line one\nline two"),
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_ending(newline: str) -> None:
    text = newline.join(["id,text", '1,"x' + newline + 'y"', "2,z", ""])

    table = read_text(text)

    assert table.rows == [("1", "x" + newline + "y"), ("2", "z")]


def test_values_stay_text() -> None:
    table = read_text("id,amount,note\n007,1e5,\n,NaN,null\n")

    assert table.rows == [("007", "1e5", ""), ("", "NaN", "null")]


# --- The sample files --------------------------------------------------------


@needs_samples
def test_reads_companies_sample() -> None:
    table = read_csv_path(SAMPLES / "companies.csv")

    assert table.columns == [
        "Company ID",
        "Company Name",
        "First Name",
        "industry",
        "Website",
        "Description",
        "Employees",
    ]
    assert len(table) == 150
    assert table.rows == [tuple(row) for row in sample_rows("companies.csv")[1:]]
    assert [row[0] for row in table.rows] == [f"{i:05d}" for i in range(150)]
    assert table.row_dict(0)["Description"].endswith(
        'design, "quoted", with commas\nsecond line 🚀 naïve café'
    )
    assert (table.source_name, table.encoding, table.repairs) == (
        "companies.csv",
        "utf-8",
        [],
    )


@needs_samples
def test_reads_reviews_sample() -> None:
    table = read_csv_path(SAMPLES / "reviews.csv")

    assert table.columns == ["review_id", "product", "stars", "review text", "country"]
    assert len(table) == 120
    assert table.rows == [tuple(row) for row in sample_rows("reviews.csv")[1:]]
    assert table.delimiter == ","


# --- Repairs -------------------------------------------------------------------


def test_blank_and_duplicate_headers_are_renamed_and_reported() -> None:
    table = read_text(" name ,,name,name_2,name, Employee Count \n1,2,3,4,5,6\n")

    assert table.columns == [
        "name",
        "column_2",
        "name_3",
        "name_2",
        "name_4",
        "Employee Count",
    ]
    assert table.repairs == [
        'Column 2 had no name; it is now called "column_2".',
        'Column 3 repeats the name "name"; it is now called "name_3".',
        'Column 5 repeats the name "name"; it is now called "name_4".',
    ]


def test_short_rows_padded_long_empty_cells_trimmed_blank_lines_skipped() -> None:
    text = "a,b,c\n1,2,3\n4\n\n5,6,7,,\n,,\n8,9\n"

    table = read_text(text)

    assert table.rows == [
        ("1", "2", "3"),
        ("4", "", ""),
        ("5", "6", "7"),
        ("8", "9", ""),
    ]
    assert table.repairs == [
        "2 rows had fewer cells than the header; the missing cells were left "
        "empty (first at line 3).",
        "1 row had empty cells after the last column, which were dropped "
        "(first at line 5).",
    ]


def test_long_row_with_values_is_an_error_on_its_physical_line() -> None:
    text = 'id,text\n1,"two\nlines"\n2,ok\n3,extra,cell\n'

    error = csv_error(text.encode())

    assert error.line == 5
    assert str(error).startswith("Line 5: this row has 3 cells")
    assert "'cell'" in str(error)
    assert "comma outside quotes" in str(error)


# --- Bad files -----------------------------------------------------------------


def xlsx_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", "a,b\n1,2\n")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "The file is empty"),
        (b"a,b\n", "header row (line 1) but no data rows"),
        (b"\r\n\n,,\n", "no header row"),
        (xlsx_bytes(), "This looks like an Excel workbook (.xlsx); save it as CSV"),
        (zip_bytes(), "zip archive"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "Excel workbook (.xls)"),
        (b"%PDF-1.7\n%\xe2\xe3\n1 0 obj", "PDF document"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image"),
    ],
    ids=["empty", "header-only", "blank", "xlsx", "zip", "xls", "pdf", "png"],
)
def test_bad_files_without_a_line(data: bytes, words: str) -> None:
    error = csv_error(data)

    assert words in str(error)
    assert error.line is None


@pytest.mark.parametrize(
    ("data", "line", "words"),
    [
        (b"a,b\n1,2\n3,\x004\n", 3, "NUL bytes"),
        ("a,b\nñ,2\n3,".encode() + b"\xff\n", 3, "UTF-8 text but byte 0xFF"),
        (b"a,b\r\n\xe9,2\r\n\x81,3\r\n", 3, "neither UTF-8 nor Windows-1252"),
        (codecs.BOM_UTF16_LE + "a,b\n1,2\n".encode("utf-16-le") + b"x", 3, "UTF-16"),
        (b'a,b\n1,"x\ny"\n2,"open\n3,4\n', 4, "never closed"),
        (b'"a,b\n1,2\n', 1, "never closed"),
        (b'a,b\n1,"x"\n2,"y\n', 3, "never closed"),
    ],
    ids=["nul", "bad-utf8", "cp1252-undefined", "utf16-odd", "quote", "q1", "q-end"],
)
def test_bad_files_name_the_line(data: bytes, line: int, words: str) -> None:
    error = csv_error(data)

    assert error.line == line
    assert str(error).startswith(f"Line {line}: ")
    assert words in str(error)


def test_missing_file_and_folder_are_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(CSVError, match="no file at"):
        read_csv_path(tmp_path / "missing.csv")
    with pytest.raises(CSVError, match="is a folder"):
        read_csv_path(tmp_path)


# --- Limits --------------------------------------------------------------------


def test_file_size_limit() -> None:
    error = csv_error(b"a,b\n1,2\n", limits=CSVLimits(max_bytes=4))

    assert "8 bytes" in str(error)
    assert "BULKGPT_MAX_UPLOAD_MB" in str(error)


def test_file_size_checked_before_reading_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"a\n" + b"x\n" * 2 * 1024 * 1024)

    def refuse(self: Path) -> bytes:
        raise AssertionError("read before the size check")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(CSVError, match=r"4\.0 MB, larger than the limit of 1\.0 MB"):
        read_csv_path(path, limits=CSVLimits(max_bytes=1024 * 1024))


def test_row_limit_names_line_and_setting() -> None:
    error = csv_error(b'a,b\n1,"x\ny"\n2,2\n3,3\n', limits=CSVLimits(max_rows=2))

    assert error.line == 5
    assert "BULKGPT_MAX_ROWS" in str(error)


def test_row_limit_allows_exactly_the_limit() -> None:
    table = read_csv(b"a\n1\n2\n", limits=CSVLimits(max_rows=2))

    assert table.rows == [("1",), ("2",)]


def test_column_limit() -> None:
    error = csv_error(b"a,b,c\n1,2,3\n", limits=CSVLimits(max_columns=2))

    assert error.line == 1
    assert "3 columns" in str(error)
    assert "BULKGPT_MAX_COLUMNS" in str(error)


def test_cell_limit_names_column_and_the_line_the_cell_starts_on() -> None:
    text = 'id,a,b\n1,"x\ny",' + "z" * 11 + "\n"

    error = csv_error(text.encode(), limits=CSVLimits(max_cell_chars=10))

    assert error.line == 3
    assert 'column "b" (11 characters)' in str(error)
    assert "BULKGPT_MAX_CELL_CHARS" in str(error)


def test_cell_limit_beyond_the_csv_modules_own_limit() -> None:
    text = "id,text\n1,ok\n2," + "x" * (csv.field_size_limit() + 10) + "\n"

    error = csv_error(text.encode(), limits=CSVLimits(max_cell_chars=10))

    assert error.line == 3
    assert "BULKGPT_MAX_CELL_CHARS" in str(error)


def test_cell_limit_applies_to_header_names() -> None:
    error = csv_error(b"id,abcdefghijk\n1,2\n", limits=CSVLimits(max_cell_chars=10))

    assert error.line == 1
    assert "name 2 of the header" in str(error)


def test_limits_from_settings() -> None:
    configured = Settings(max_upload_mb=3, max_rows=4, max_columns=5, max_cell_chars=6)

    assert CSVLimits.from_settings(configured) == CSVLimits(
        max_bytes=3 * 1024 * 1024, max_rows=4, max_columns=5, max_cell_chars=6
    )


# --- Table ---------------------------------------------------------------------


def test_table_gives_rows_as_dicts() -> None:
    table = read_text("id,name\n1,a\n2,b\n", name="people.csv")

    assert len(table) == 2
    assert table.source_name == "people.csv"
    assert list(table.iter_dicts()) == [
        {"id": "1", "name": "a"},
        {"id": "2", "name": "b"},
    ]


# --- Properties ------------------------------------------------------------------

ANY_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
# Without the other candidate delimiters, minimal quoting is unambiguous. It is
# only tested with "\r\n": with another line terminator Python's writer leaves
# the other line-break character unquoted, which no reader could undo.
COMMA_ONLY_TEXT = st.characters(
    exclude_categories=("Cs",), exclude_characters="\x00;\t|"
)


def header_names(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=1, max_size=8).filter(
        lambda name: name == name.strip() and not name.startswith("\ufeff")
    )


TableData = tuple[list[str], list[tuple[str, ...]]]


@st.composite
def tables(draw: st.DrawFn, alphabet: st.SearchStrategy[str]) -> TableData:
    columns = draw(
        st.lists(header_names(alphabet), min_size=1, max_size=5, unique=True)
    )
    cells = st.text(alphabet, max_size=12)
    row = st.lists(cells, min_size=len(columns), max_size=len(columns))
    rows = draw(st.lists(row, min_size=1, max_size=8))
    return columns, [tuple(r) for r in rows]


def written(
    columns: list[str], rows: list[tuple[str, ...]], quoting: int, newline: str
) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=quoting, lineterminator=newline)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def assert_round_trip(
    columns: list[str], rows: list[tuple[str, ...]], data: bytes
) -> None:
    expected = [row for row in rows if any(row)]
    if not expected:
        with pytest.raises(CSVError, match="no data rows"):
            read_csv(data)
        return
    table = read_csv(data)
    assert (table.columns, table.rows, table.repairs) == (columns, expected, [])


@settings(max_examples=200, deadline=None)
@given(tables(COMMA_ONLY_TEXT), st.just("\r\n"))
def test_round_trip_with_minimal_quoting(table: TableData, newline: str) -> None:
    columns, rows = table
    assert_round_trip(columns, rows, written(columns, rows, csv.QUOTE_MINIMAL, newline))


@settings(max_examples=200, deadline=None)
@given(tables(ANY_TEXT), st.sampled_from(["\n", "\r\n", "\r"]))
def test_round_trip_any_text_fully_quoted(table: TableData, newline: str) -> None:
    columns, rows = table
    assert_round_trip(columns, rows, written(columns, rows, csv.QUOTE_ALL, newline))


CSV_ISH_BYTES = st.lists(
    st.sampled_from([b"a", b",", b";", b"\t", b'"', b"\n", b"\r", b"\xe9", b"\xc3\xa9"])
).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), CSV_ISH_BYTES))
def test_any_bytes_give_a_table_or_a_csv_error(data: bytes) -> None:
    try:
        table = read_csv(data, limits=CSVLimits(max_cell_chars=50, max_rows=20))
    except CSVError:
        return
    assert all(len(row) == len(table.columns) for row in table.rows)
    assert len(set(table.columns)) == len(table.columns)


# --- Writing -------------------------------------------------------------------


@pytest.mark.parametrize("start", OWASP_STARTS)
def test_neutralise_formula_prefixes_each_dangerous_start(start: str) -> None:
    assert neutralise_formula(start + "SUM(A1)") == "'" + start + "SUM(A1)"


@pytest.mark.parametrize("value", ["", "plain", "'=quoted", " =spaced", "a=b", "007"])
def test_neutralise_formula_leaves_safe_values(value: str) -> None:
    assert neutralise_formula(value) == value


def test_write_csv_neutralises_every_cell_including_headers() -> None:
    buffer = io.StringIO(newline="")

    count = write_csv(buffer, ["=name", "n"], [[start + "1", 2] for start in "=@"])

    assert count == 2
    assert buffer.getvalue() == "'=name,n\r\n'=1,2\r\n'@1,2\r\n"


def test_write_csv_without_neutralising() -> None:
    buffer = io.StringIO(newline="")

    write_csv(buffer, ["a", "b"], [["=1+1", None]], neutralise=False)

    assert buffer.getvalue() == "a,b\r\n=1+1,\r\n"


def test_write_csv_round_trips_plain_values(tmp_path: Path) -> None:
    rows = [("007", 'say "hi", then\nleave', ""), ("x", "1.5", "café 🚀")]
    path = tmp_path / "out.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        write_csv(handle, ["id", "text", "extra"], [*rows, ("y", None, 3)])

    table = read_csv_path(path)

    assert table.columns == ["id", "text", "extra"]
    assert table.rows == [*rows, ("y", "", "3")]
