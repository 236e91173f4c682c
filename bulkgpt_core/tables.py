"""Reading and writing tables: the CSV files people upload and download.

Reading is forgiving where a spreadsheet app would be (any common encoding,
comma, semicolon, tab or pipe, every line-ending convention, ragged rows) and
strict where guessing would lose data: a file that cannot be read whole raises
:class:`~bulkgpt_core.errors.CSVError` with the physical line number (the header
is line 1) and what to do about it. Every value stays text: ``007`` is
``"007"`` and an empty cell is ``""``.

Writing neutralises cells that a spreadsheet would run as a formula.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .errors import CSVError

if TYPE_CHECKING:
    from .config import Settings

MB = 1024 * 1024
DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
FORMULA_STARTS: tuple[str, ...] = (
    *("=", "+", "-", "@", "\t", "\r", "\n"),
    *("＝", "＋", "－", "＠"),
)

_DELIMITER_LABELS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_ENCODING_LABELS = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 (with BOM)",
    "utf-16": "UTF-16",
    "utf-16-le": "UTF-16 LE (no BOM)",
    "utf-16-be": "UTF-16 BE (no BOM)",
    "utf-32": "UTF-32",
    "cp1252": "Windows-1252",
}
_SAVE_AS_CSV = "save it as CSV (in Excel: File > Save As > CSV UTF-8) and upload that"
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an older Excel workbook (.xls)"),
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
)
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
# Text that is another format, by how it starts (lower-cased, after spaces).
_TEXT_FORMATS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<!doctype html", "<html"), "a web page (HTML)"),
    (("<?xml",), "an XML document"),
    (("{\\rtf",), "a rich text (RTF) document"),
)
# UTF-8 for Latin-1 letters, punctuation, other scripts and emoji: in text
# that is really Windows-1252 these byte pairs would be mojibake ("Ã©").
_UTF8_SEQUENCE = re.compile(
    rb"[\xc2\xc3][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
)
# Windows-1252 text has letters beyond ASCII one or two at a time (é, ü, “…”);
# double-byte text (Shift-JIS, GBK, Big5, EUC-KR) read as it has long runs.
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]{4,}")
_SAMPLE_CHARS = 64 * 1024
_SAMPLE_RECORDS = 50
# Decoded text never holds a lone surrogate, so this cannot be real data.
_SENTINEL = "\udc00"


@dataclass(frozen=True)
class CSVLimits:
    """How large an uploaded table may be; each limit has a setting."""

    max_bytes: int = 200 * MB
    max_rows: int = 1_000_000
    max_columns: int = 500
    max_cell_chars: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> CSVLimits:
        """The limits configured by ``BULKGPT_MAX_*`` settings."""
        return cls(
            max_bytes=settings.max_upload_bytes,
            max_rows=settings.max_rows,
            max_columns=settings.max_columns,
            max_cell_chars=settings.max_cell_chars,
        )


DEFAULT_LIMITS = CSVLimits()


@dataclass
class Table:
    """A table read from a file: unique column names and rows of text."""

    columns: list[str]
    rows: list[tuple[str, ...]]
    encoding: str
    delimiter: str
    repairs: list[str]
    source_name: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def row_dict(self, index: int) -> dict[str, str]:
        """One row as ``{column name: value}``."""
        return dict(zip(self.columns, self.rows[index], strict=True))

    def iter_dicts(self) -> Iterator[dict[str, str]]:
        """Every row as ``{column name: value}``, in file order."""
        columns = self.columns
        for row in self.rows:
            yield dict(zip(columns, row, strict=True))

    @property
    def encoding_label(self) -> str:
        """The encoding as people know it, e.g. ``"UTF-8 (with BOM)"``."""
        return _ENCODING_LABELS.get(self.encoding, self.encoding.upper())

    @property
    def delimiter_label(self) -> str:
        """The delimiter in words: comma, semicolon, tab or pipe."""
        return _DELIMITER_LABELS.get(self.delimiter, repr(self.delimiter))


def read_csv(
    data: bytes, *, limits: CSVLimits = DEFAULT_LIMITS, name: str = ""
) -> Table:
    """Read an uploaded CSV file's bytes into a :class:`Table`.

    Detects the encoding and the delimiter, repairs what can be repaired
    without guessing (listed in ``Table.repairs``) and raises
    :class:`CSVError` for everything else, never another exception.
    """
    _check_size(len(data), limits)
    _reject_non_text(data)
    text, encoding = _decode(data)
    _reject_other_formats(text)
    delimiter = _detect_delimiter(text)
    columns, rows, repairs = _parse(text, delimiter, limits)
    return Table(columns, rows, encoding, delimiter, repairs, source_name=name)


def read_csv_path(path: str | Path, *, limits: CSVLimits = DEFAULT_LIMITS) -> Table:
    """Read a CSV file from disk, checking its size before reading it."""
    path = Path(path)
    try:
        _check_size(path.stat().st_size, limits)
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CSVError(f"There is no file at {path}. Check the path.") from exc
    except IsADirectoryError as exc:
        raise CSVError(f"{path} is a folder, not a CSV file.") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CSVError(f"{path} cannot be read ({reason}). Check the path.") from exc
    return read_csv(data, limits=limits, name=path.name)


def neutralise_formula(value: str) -> str:
    """Prefix ``'`` to a value a spreadsheet would run as a formula.

    The leading characters are OWASP's CSV-injection list (``= + - @``, tab,
    carriage return), line feed and the full-width forms of the first four.
    """
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def write_csv(
    handle: TextIO,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    neutralise: bool = True,
) -> int:
    """Write a header and rows as CSV; return how many rows were written.

    Open ``handle`` with ``newline=""``. ``None`` becomes an empty cell and
    other values go through ``str()``. With ``neutralise``, every cell,
    header included, passes through :func:`neutralise_formula`.
    """
    writer = csv.writer(handle)
    writer.writerow(_cells(columns, neutralise))
    written = 0
    for row in rows:
        writer.writerow(_cells(row, neutralise))
        written += 1
    return written


def _cells(values: Sequence[object], neutralise: bool) -> list[str]:
    cells = [_text(value) for value in values]
    return [neutralise_formula(cell) for cell in cells] if neutralise else cells


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


# --- Checks before decoding -------------------------------------------------


def _check_size(size: int, limits: CSVLimits) -> None:
    if size > limits.max_bytes:
        raise CSVError(
            f"The file is {_size(size)}, larger than the limit of "
            f"{_size(limits.max_bytes)} (BULKGPT_MAX_UPLOAD_MB). Split it into "
            "smaller files, or raise BULKGPT_MAX_UPLOAD_MB."
        )


def _size(size: int) -> str:
    if size >= MB:
        return f"{size / MB:,.1f} MB"
    return f"{size:,} bytes"


def _reject_non_text(data: bytes) -> None:
    if not data:
        raise CSVError("The file is empty (0 bytes). Upload a CSV with a header row.")
    if data.startswith(_ZIP_SIGNATURES):
        raise CSVError(_zip_message(data))
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            raise CSVError(f"This looks like {kind}, not a CSV file; {_SAVE_AS_CSV}.")


def _reject_other_formats(text: str) -> None:
    """Refuse text in another format: a web page, XML, RTF or JSON."""
    head = text[:256].lstrip().lower()
    for starts, kind in _TEXT_FORMATS:
        if head.startswith(starts):
            raise CSVError(f"This looks like {kind}, not a CSV file; {_SAVE_AS_CSV}.")
    if head[:1] in ("[", "{") and _is_json(text):
        raise CSVError(
            "This looks like JSON, not a CSV file. Convert it to CSV, one row "
            "per record and one column per field, and upload that."
        )


def _is_json(text: str) -> bool:
    """Whether the text is JSON, or JSON Lines (a first line that is an object)."""
    first_line = re.split(r"[\r\n]", text.lstrip(), maxsplit=1)[0]
    for candidate in (first_line, text):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict | list):
            return True
    return False


def _zip_message(data: bytes) -> str:
    # Member names are stored uncompressed, so they can be found without unzipping.
    if b"xl/" in data:
        return f"This looks like an Excel workbook (.xlsx); {_SAVE_AS_CSV}."
    if b"opendocument.spreadsheet" in data:
        return f"This looks like an OpenDocument spreadsheet (.ods); {_SAVE_AS_CSV}."
    return "This is a zip archive, not a CSV file. Unzip it and upload the CSV inside."


# --- Decoding ---------------------------------------------------------------


def _decode(data: bytes) -> tuple[str, str]:
    """The file's text, without a BOM, and the name of its encoding."""
    encoding = _bom_encoding(data) or _bomless_utf16(data)
    if encoding:
        text = _decode_declared(data, encoding)
    else:
        _reject_nul_bytes(data)
        text, encoding = _decode_8bit(data)
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        raise CSVError(_NUL_MESSAGE, line=_line_at(text, text.index("\x00")))
    return text, encoding


def _bom_encoding(data: bytes) -> str | None:
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    # Before UTF-16: the UTF-32 LE mark starts with the UTF-16 LE one.
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _bomless_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM, told by the zero high bytes of Latin text."""
    sample = data[:4096]
    pairs = len(sample) // 2
    if pairs < 2:
        return None
    even_nul = sample[0::2].count(0) / pairs
    odd_nul = sample[1::2].count(0) / pairs
    if odd_nul >= 0.7 and even_nul <= 0.05:
        return "utf-16-le"
    if even_nul >= 0.7 and odd_nul <= 0.05:
        return "utf-16-be"
    return None


def _decode_declared(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        label = _ENCODING_LABELS[encoding].split(" (")[0]
        prefix = data[: exc.start].decode(encoding, errors="replace")
        raise CSVError(
            f"the file is {label} text but has bytes that are not valid "
            f"{label} here. Open it in a spreadsheet app and {_SAVE_AS_CSV}.",
            line=_line_at(prefix, len(prefix)),
        ) from exc


_NUL_MESSAGE = (
    "the file contains NUL bytes, so it is binary data rather than a text CSV. "
    f"If it came from a spreadsheet or database, {_SAVE_AS_CSV}."
)


def _reject_nul_bytes(data: bytes) -> None:
    position = data.find(b"\x00")
    if position >= 0:
        line = _line_at(data[:position].decode("latin-1"), position)
        raise CSVError(_NUL_MESSAGE, line=line)


def _decode_8bit(data: bytes) -> tuple[str, str]:
    """UTF-8 if it is valid, else Windows-1252 (a superset of printable Latin-1)."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        first_bad = exc.start
        if not data[:first_bad].isascii():
            # Valid UTF-8 up to here: a damaged UTF-8 file, not Windows-1252.
            raise _undecodable(data, first_bad, "is UTF-8 text but") from exc
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise _undecodable(
            data, exc.start, "is neither UTF-8 nor Windows-1252:"
        ) from exc
    _reject_double_byte(text)
    if _UTF8_SEQUENCE.search(data, first_bad):
        # Windows-1252 first, UTF-8 further on: saved by two different tools.
        raise _undecodable(data, first_bad, "mixes UTF-8 with another encoding:")
    return text, "cp1252"


def _reject_double_byte(text: str) -> None:
    """Refuse Windows-1252 text that is really another encoding's, garbled."""
    sample = text[:_SAMPLE_CHARS]
    beyond_ascii = len(sample) - len(sample.encode("ascii", "ignore"))
    runs = list(_NON_ASCII_RUN.finditer(sample))
    if beyond_ascii < 8 or 2 * sum(len(r.group()) for r in runs) < beyond_ascii:
        return
    raise CSVError(
        "the file is neither UTF-8 nor Windows-1252: it looks like text in "
        "another encoding, such as Shift-JIS, GBK, Big5 or EUC-KR. Open it in "
        f"a spreadsheet app and {_SAVE_AS_CSV}.",
        line=_line_at(sample, runs[0].start()),
    )


def _undecodable(data: bytes, position: int, what: str) -> CSVError:
    line = _line_at(data[:position].decode("latin-1"), position)
    return CSVError(
        f"the file {what} byte 0x{data[position]:02X} here cannot be read as "
        f"text. Open it in a spreadsheet app and {_SAVE_AS_CSV}.",
        line=line,
    )


def _line_at(text: str, position: int) -> int:
    """The 1-based physical line holding ``text[position]``."""
    return 1 + _line_breaks(text[:position])


def _line_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


# --- Delimiter --------------------------------------------------------------


def _detect_delimiter(text: str) -> str:
    """The delimiter giving the most consistent field counts; comma on a tie."""
    sample, truncated = _sample(text)
    scores = {d: _delimiter_score(sample, d, truncated) for d in DELIMITERS}
    return max(DELIMITERS, key=lambda d: (scores[d], -DELIMITERS.index(d)))


def _sample(text: str) -> tuple[str, bool]:
    if len(text) <= _SAMPLE_CHARS:
        return text, False
    sample = text[:_SAMPLE_CHARS]
    cut = max(sample.rfind("\n"), sample.rfind("\r"))
    return (sample[: cut + 1] if cut > 0 else sample), True


def _delimiter_score(
    sample: str, delimiter: str, truncated: bool
) -> tuple[bool, float, int]:
    """Rank: splits the header at all, share of rows as wide, header width."""
    counts = _field_counts(sample, delimiter, truncated)
    if not counts:
        return (False, 0.0, 0)
    width, body = counts[0], counts[1:]
    consistency = sum(c == width for c in body) / len(body) if body else 1.0
    return (width > 1, consistency, width)


def _field_counts(sample: str, delimiter: str, truncated: bool) -> list[int]:
    reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
    try:
        records = [len(row) for row in reader if row]  # [] is a blank line
    except csv.Error:
        return []
    if truncated:
        records = records[:-1]  # the last one may be cut short
    return records[: _SAMPLE_RECORDS + 1]


# --- Parsing ----------------------------------------------------------------

_Record = tuple[int, list[str]]


def _parse(
    text: str, delimiter: str, limits: CSVLimits
) -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    """Columns, rows and repair notes from decoded text."""
    if csv.field_size_limit() <= limits.max_cell_chars:
        # Process-wide and only ever raised, so our own cell limit speaks first.
        csv.field_size_limit(limits.max_cell_chars + 1)
    records = _records(text, delimiter, limits)
    header_line, header = _read_header(records, limits)
    columns, repairs = _unique_columns(header)
    fitter = _RowFitter(len(columns), delimiter)
    check_cells = len(text) > limits.max_cell_chars
    rows = _collect_rows(records, columns, limits, fitter, check_cells)
    if not rows:
        raise CSVError(
            f"The file has a header row (line {header_line}) but no data rows "
            "below it. Add at least one row."
        )
    return columns, rows, repairs + fitter.notes()


def _records(text: str, delimiter: str, limits: CSVLimits) -> Iterator[_Record]:
    """Every record with the physical line it starts on.

    A sentinel line follows the text: it arrives as a record of its own
    unless a quote was left open, in which case it ends up inside a value.
    """
    lines = itertools.chain(io.StringIO(text, newline=""), (_SENTINEL + "\n",))
    reader = csv.reader(lines, delimiter=delimiter)
    start, pending = 1, None
    try:
        for row in reader:
            if pending is not None:
                yield pending
            pending = (start, row)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _csv_error(exc, start, limits) from exc
    if pending is not None and pending[1] != [_SENTINEL]:
        raise _unclosed_quote(*pending)


def _unclosed_quote(start: int, row: list[str]) -> CSVError:
    # The open value swallowed the rest of the file, so it is the last cell.
    line = start + sum(_line_breaks(cell) for cell in row[:-1])
    return CSVError(
        'a value starts with a quote (") that is never closed, so the rest of '
        "the file became part of it. Add the closing quote, or write a quote "
        'inside a value as two quotes ("").',
        line=line,
    )


def _csv_error(exc: csv.Error, line: int, limits: CSVLimits) -> CSVError:
    if "field limit" in str(exc):
        return _cell_limit_error(line, "a cell", limits)
    return CSVError(
        f"this record cannot be read as CSV ({exc}). Check its quotes.", line=line
    )


def _read_header(records: Iterator[_Record], limits: CSVLimits) -> _Record:
    for line, row in records:
        if not any(row):
            continue
        if len(row) > limits.max_columns:
            raise CSVError(
                f"the header has {len(row):,} columns, more than the limit of "
                f"{limits.max_columns:,} (BULKGPT_MAX_COLUMNS). Remove columns "
                "you do not need, or raise BULKGPT_MAX_COLUMNS.",
                line=line,
            )
        names = [f"name {i} of the header" for i in range(1, len(row) + 1)]
        _check_cells(row, line, names, limits)
        return line, row
    raise CSVError("The file has no header row: it contains only blank lines.")


def _unique_columns(header: Sequence[str]) -> tuple[list[str], list[str]]:
    """Header names made unique, and a note for each rename.

    Names are stripped of surrounding whitespace; a blank name becomes
    ``column_N`` and a repeated one ``name_2``, ``name_3``..., never taking a
    name that another column already has.
    """
    names = [cell.strip() for cell in header]
    taken = set(filter(None, names))
    seen: set[str] = set()
    columns: list[str] = []
    repairs: list[str] = []
    for number, name in enumerate(names, start=1):
        if name and name not in seen:
            final = name
        else:
            final = _free_name(name or f"column_{number}", taken, fresh=not name)
            repairs.append(_rename_note(number, name, final))
        seen.add(final)
        taken.add(final)
        columns.append(final)
    return columns, repairs


def _free_name(base: str, taken: set[str], *, fresh: bool) -> str:
    if fresh and base not in taken:
        return base
    suffix = 2
    while f"{base}_{suffix}" in taken:
        suffix += 1
    return f"{base}_{suffix}"


def _rename_note(number: int, name: str, final: str) -> str:
    if not name:
        return f'Column {number} had no name; it is now called "{final}".'
    return f'Column {number} repeats the name "{name}"; it is now called "{final}".'


def _collect_rows(
    records: Iterator[_Record],
    columns: list[str],
    limits: CSVLimits,
    fitter: _RowFitter,
    check_cells: bool,
) -> list[tuple[str, ...]]:
    """The data rows, fitted to the header; blank lines are skipped."""
    width, max_rows, max_cell = len(columns), limits.max_rows, limits.max_cell_chars
    rows: list[tuple[str, ...]] = []
    for line, row in records:
        if len(row) != width:
            row = fitter.fit(row, line)
            if row is None:
                continue
        elif not any(row):
            continue
        if check_cells and max(map(len, row)) > max_cell:
            names = [f'the cell in column "{name}"' for name in columns]
            _check_cells(row, line, names, limits)
        if len(rows) == max_rows:
            raise CSVError(
                f"the file has more data rows than the limit of {max_rows:,} "
                "(BULKGPT_MAX_ROWS); this is the first row over it. Split the "
                "file into smaller files, or raise BULKGPT_MAX_ROWS.",
                line=line,
            )
        rows.append(tuple(row))
    return rows


def _check_cells(
    row: list[str], start: int, names: Sequence[str], limits: CSVLimits
) -> None:
    """Raise if a cell is over the limit, naming the line the cell starts on."""
    line = start
    for name, cell in zip(names, row, strict=False):
        if len(cell) > limits.max_cell_chars:
            what = f"{name} ({len(cell):,} characters)"
            raise _cell_limit_error(line, what, limits)
        line += _line_breaks(cell)


def _cell_limit_error(line: int, what: str, limits: CSVLimits) -> CSVError:
    return CSVError(
        f"{what} is longer than the limit of {limits.max_cell_chars:,} "
        "characters (BULKGPT_MAX_CELL_CHARS). Shorten it, or raise "
        "BULKGPT_MAX_CELL_CHARS. If it should not be that long, look for a "
        "quote that is opened here and never closed.",
        line=line,
    )


@dataclass
class _Tally:
    """How many rows needed one kind of repair, and the first one's line."""

    count: int = 0
    first_line: int = 0

    def add(self, line: int) -> None:
        self.count += 1
        self.first_line = self.first_line or line


class _RowFitter:
    """Pads short rows and trims empty trailing cells, counting both."""

    def __init__(self, width: int, delimiter: str) -> None:
        self.width = width
        self.delimiter = delimiter
        self.padded = _Tally()
        self.trimmed = _Tally()

    def fit(self, row: list[str], line: int) -> list[str] | None:
        """The row at the header's width, or None for a blank line."""
        if not any(row):
            return None
        if len(row) < self.width:
            self.padded.add(line)
            return row + [""] * (self.width - len(row))
        extra = [cell for cell in row[self.width :] if cell]
        if extra:
            raise self._too_wide(len(row), extra[0], line)
        self.trimmed.add(line)
        return row[: self.width]

    def _too_wide(self, cells: int, first_extra: str, line: int) -> CSVError:
        label = _DELIMITER_LABELS[self.delimiter]
        shown = first_extra if len(first_extra) <= 40 else first_extra[:37] + "..."
        return CSVError(
            f"this row has {cells} cells but the header has {self.width} "
            f"columns (the first extra cell is {shown!r}). A value probably "
            f"contains a {label} outside quotes: put the value in quotes, or "
            "name the extra column in the header.",
            line=line,
        )

    def notes(self) -> list[str]:
        """Plain-language notes on what was repaired."""
        notes = []
        if self.padded.count:
            notes.append(
                f"{_rows(self.padded.count)} had fewer cells than the header; "
                "the missing cells were left empty "
                f"(first at line {self.padded.first_line})."
            )
        if self.trimmed.count:
            notes.append(
                f"{_rows(self.trimmed.count)} had empty cells after the last "
                "column, which were dropped "
                f"(first at line {self.trimmed.first_line})."
            )
        return notes


def _rows(count: int) -> str:
    return "1 row" if count == 1 else f"{count:,} rows"
