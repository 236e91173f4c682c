"""Prompt templates: placeholders that name a table's columns, filled in per row.

A template is the prompt a user writes once; each row of the table turns it
into one prompt by replacing every placeholder with that row's cell.

Syntax
------
- A placeholder is ``<<`` + name + ``>>`` or ``{{`` + name + ``}}``, written
  on one line. ``<<Company Name>>`` and ``{{Company Name}}`` mean the same.
- The name is what lies between the brackets. It may hold spaces and any
  punctuation (``<<Price ($)>>``, ``<<a.b>>``), but no line break and none of
  the pairs ``<<``, ``>>``, ``{{``, ``}}``. It ends at the first closing pair.
- Surrounding spaces are not part of the name: ``<< Company Name >>`` names
  ``Company Name`` (unless a column is literally called `` Company Name ``).
- Blank brackets (``<<>>``, ``{{ }}``) and an opening pair never closed on its
  line (``<<name``) are not placeholders: they are sent as written.
- Where brackets nest, the innermost valid pair wins. ``<<<a>>>`` is the text
  ``<``, the placeholder ``<<a>>`` and the text ``>``; ``{{{a}}}`` likewise,
  and ``<<{{a}}>>`` is ``<<``, ``{{a}}``, ``>>``. So a name cannot begin with
  its own opening bracket; write ``<< <5 years>>`` (or ``{{<5 years}}``).

Matching a name to a column prefers, in this order: the name exactly as
written, spaces included; the stripped name exactly; the same name ignoring
case; the same name ignoring case and the column's surrounding spaces. If a
step finds two columns (``Name`` and ``NAME`` for ``<<name>>``), the
placeholder is ambiguous and reported as unknown.

Rendering is exact and single pass: cells are inserted as they are, text
outside placeholders is kept byte for byte, and a cell that itself contains
``<<x>>`` is not expanded again.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from bulkgpt_core.errors import TemplateError

__all__ = [
    "EMPTY_PROMPT_MESSAGE",
    "NO_PLACEHOLDER_WARNING",
    "CompiledTemplate",
    "Placeholder",
    "TemplateCheck",
    "UnknownPlaceholder",
    "check_template",
    "compile_template",
    "find_placeholders",
    "insert_placeholder",
    "prompt_hash",
    "render",
    "resolve_column",
]

# A name never holds a line break nor any bracket pair; "*?" stops it at the
# first closing pair, and "(?!<)" takes the last "<<" of a run of "<".
_NAME = r"(?:(?!<<|>>|\{\{|\}\})[^\r\n])*?"
_PLACEHOLDER_RE = re.compile(
    r"<<(?!<)(?P<angle>" + _NAME + r")>>"
    r"|\{\{(?!\{)(?P<curly>" + _NAME + r")\}\}"
)
_OPENER_RE = re.compile(r"<<(?!<)|\{\{(?!\{)")
_CLOSERS = {"<<": ">>", "{{": "}}"}
_BRACKETS = (("<<", ">>"), ("{{", "}}"), ("<< ", " >>"), ("{{ ", " }}"))

_SUGGESTION_CUTOFF = 0.6
_WORD_WEIGHT = 0.85
_LISTED_COLUMNS = 10
_SNIPPET_CHARS = 30
_HASH_VERSION = 1

EMPTY_PROMPT_MESSAGE = (
    "The prompt is empty: write what the model should do with each row, "
    'e.g. "Summarise <<review text>> in one sentence."'
)
NO_PLACEHOLDER_WARNING = (
    "The prompt has no <<column>> placeholder, so every row gets the same prompt."
)


@dataclass(frozen=True)
class Placeholder:
    """One placeholder as written in a template."""

    text: str
    """As written, brackets included, e.g. ``"<< Company Name >>"``."""
    name: str
    """What the brackets hold, surrounding spaces stripped."""
    start: int
    end: int


@dataclass(frozen=True)
class UnknownPlaceholder:
    """A placeholder name that matches no column, or more than one."""

    name: str
    suggestion: str | None
    """The closest column, or ``None`` if nothing is close."""
    candidates: tuple[str, ...] = ()
    """The columns an ambiguous name matches equally well."""
    columns: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """The table's columns, listed when nothing is close."""

    def message(self) -> str:
        """Say what is wrong, in words for the person who wrote the prompt."""
        written = f"<<{self.name}>>"
        if len(self.candidates) > 1:
            listed = ", ".join(self.candidates)
            return (
                f"{written} matches more than one column ({listed}): write "
                f"the name exactly as one of them, e.g. <<{self.candidates[0]}>>."
            )
        if self.suggestion is not None:
            return f"{written} is not a column. Did you mean <<{self.suggestion}>>?"
        if not self.columns:
            return f"{written} is not a column: the table has no columns."
        return f"{written} is not a column. Columns are: {_list(self.columns)}"


@dataclass(frozen=True)
class TemplateCheck:
    """What a template needs from a table, and what is wrong with it."""

    placeholders: list[Placeholder]
    resolved: dict[str, str]
    """Placeholder name -> column, for each name that matched (first wins)."""
    unknown: list[UnknownPlaceholder]
    """Each name that matched no single column, once, in order."""
    warnings: list[str]
    blank: bool = False
    """The template is empty or only whitespace."""

    @property
    def ok(self) -> bool:
        """Whether the template can be used: not blank, every name a column."""
        return not self.blank and not self.unknown

    def error_message(self) -> str | None:
        """The message :func:`compile_template` raises, or ``None`` if ok."""
        if self.blank:
            return EMPTY_PROMPT_MESSAGE
        if not self.unknown:
            return None
        if len(self.unknown) == 1:
            return self.unknown[0].message()
        lines = [f"{len(self.unknown)} placeholders do not match a column:"]
        lines += [f"- {unknown.message()}" for unknown in self.unknown]
        return "\n".join(lines)


class CompiledTemplate:
    """A template already split into text and columns, ready for many rows."""

    __slots__ = ("_parts", "_slots", "columns_used", "template")

    def __init__(
        self, template: str, literals: Sequence[str], columns: Sequence[str]
    ) -> None:
        """Alternate ``literals`` and ``columns``: one more literal than columns."""
        if len(literals) != len(columns) + 1:
            raise ValueError("need exactly one more literal than columns")
        parts: list[str] = []
        slots: list[tuple[int, str]] = []
        for literal, column in zip(literals, [*columns, None], strict=True):
            if literal:
                parts.append(literal)
            if column is not None:
                slots.append((len(parts), column))
                parts.append("")
        self.template = template
        self.columns_used = list(dict.fromkeys(columns))
        self._parts = parts
        self._slots = tuple(slots)

    def render(self, row: Mapping[str, str]) -> str:
        """Fill the placeholders with ``row``'s cells; a missing cell is ``""``."""
        get = row.get
        parts = self._parts.copy()
        for index, column in self._slots:
            parts[index] = get(column, "")
        return "".join(parts)

    def __repr__(self) -> str:
        return f"CompiledTemplate({self.template!r}, columns={self.columns_used!r})"


def find_placeholders(template: str) -> list[Placeholder]:
    """Every placeholder in ``template``, in order; blank brackets are skipped."""
    found = []
    for match in _PLACEHOLDER_RE.finditer(template):
        inner = match["angle"] if match["angle"] is not None else match["curly"]
        name = inner.strip()
        if name:
            found.append(Placeholder(match[0], name, match.start(), match.end()))
    return found


def resolve_column(name: str, columns: Sequence[str]) -> str | None:
    """The column ``name`` refers to, or ``None`` if none or more than one."""
    candidates = _ColumnIndex(columns).candidates(name)
    return candidates[0] if len(candidates) == 1 else None


def check_template(template: str, columns: Sequence[str]) -> TemplateCheck:
    """Find the template's placeholders and match each one to a column."""
    return _analyse(template, columns)[0]


def compile_template(template: str, columns: Sequence[str]) -> CompiledTemplate:
    """Prepare ``template`` for rendering rows that have ``columns``.

    Raises :class:`TemplateError` if the template is blank or names a column
    that is not there; the message lists every such placeholder.
    """
    check, matched = _analyse(template, columns)
    message = check.error_message()
    if message is not None:
        raise TemplateError(message)

    literals: list[str] = []
    position = 0
    for placeholder in check.placeholders:
        literals.append(template[position : placeholder.start])
        position = placeholder.end
    literals.append(template[position:])
    slot_columns = [column for column in matched if column is not None]
    return CompiledTemplate(template, literals, slot_columns)


def render(template: str, row: Mapping[str, str]) -> str:
    """Render one row; for many rows, compile once with :func:`compile_template`."""
    return compile_template(template, list(row)).render(row)


def insert_placeholder(template: str, column: str) -> str:
    """Append a placeholder for ``column`` at the end of ``template``.

    A space separates it from text that does not already end in whitespace.
    Raises :class:`TemplateError` for a name no placeholder can hold (a blank
    name, or one with a line break or both ``>>`` and ``}}``).
    """
    placeholder = _placeholder_for(column)
    if template and not template[-1].isspace():
        return f"{template} {placeholder}"
    return template + placeholder


def prompt_hash(
    prompt: str,
    *,
    model: str,
    system_prompt: str = "",
    settings: Mapping[str, object] | None = None,
    schema: Mapping[str, object] | None = None,
) -> str:
    """A SHA-256 hex digest of everything that decides a model's answer.

    Two calls with the same arguments give the same digest, whatever the order
    of the mappings' keys. Settings set to ``None`` count as left out.
    """
    payload = {
        "v": _HASH_VERSION,
        "prompt": prompt,
        "model": model,
        "system_prompt": system_prompt,
        "settings": {k: v for k, v in (settings or {}).items() if v is not None},
        "schema": schema,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _ColumnIndex:
    """The columns, grouped for each step of matching a name."""

    def __init__(self, columns: Iterable[str]) -> None:
        self.columns = tuple(dict.fromkeys(columns))
        self.exact = frozenset(self.columns)
        self.by_case = _group(self.columns, str.casefold)
        self.by_loose = _group(self.columns, _loose)

    def candidates(self, name: str) -> tuple[str, ...]:
        """The columns of the first matching step; more than one is ambiguous."""
        if name in self.exact:
            return (name,)
        return self.by_case.get(name.casefold()) or self.by_loose.get(_loose(name), ())

    def match(self, placeholder: Placeholder) -> tuple[str, ...]:
        """Like :meth:`candidates`, but first try the name as written."""
        written = placeholder.text[2:-2]
        if written in self.exact:
            return (written,)
        return self.candidates(placeholder.name)


def _analyse(
    template: str, columns: Sequence[str]
) -> tuple[TemplateCheck, list[str | None]]:
    """Check the template and return each placeholder's column (or ``None``)."""
    index = _ColumnIndex(columns)
    placeholders = find_placeholders(template)
    resolved: dict[str, str] = {}
    unknown: dict[str, UnknownPlaceholder] = {}
    matched: list[str | None] = []
    for placeholder in placeholders:
        candidates = index.match(placeholder)
        if len(candidates) == 1:
            resolved.setdefault(placeholder.name, candidates[0])
            matched.append(candidates[0])
            continue
        matched.append(None)
        if placeholder.name not in unknown:
            unknown[placeholder.name] = _unknown(placeholder.name, candidates, index)

    check = TemplateCheck(
        placeholders=placeholders,
        resolved=resolved,
        unknown=list(unknown.values()),
        warnings=_warnings(template, placeholders),
        blank=not template.strip(),
    )
    return check, matched


def _unknown(
    name: str, candidates: tuple[str, ...], index: _ColumnIndex
) -> UnknownPlaceholder:
    suggestion = candidates[0] if candidates else _suggest(name, index.columns)
    return UnknownPlaceholder(name, suggestion, candidates, index.columns)


def _suggest(name: str, columns: Iterable[str]) -> str | None:
    """The column closest to ``name`` ignoring case, if any is close enough."""
    target = _loose(name)
    best, best_score = None, _SUGGESTION_CUTOFF
    for column in columns:
        score = _similarity(target, _loose(column))
        if score > best_score or (best is None and score == best_score):
            best, best_score = column, score
    return best


def _similarity(name: str, column: str) -> float:
    """How alike two names are; one word of the column can carry the match."""
    score = difflib.SequenceMatcher(None, name, column).ratio()
    for word in column.split():
        word_score = difflib.SequenceMatcher(None, name, word).ratio()
        score = max(score, word_score * _WORD_WEIGHT)
    return score


def _warnings(template: str, placeholders: list[Placeholder]) -> list[str]:
    if not template.strip():
        return [EMPTY_PROMPT_MESSAGE]
    warnings = [] if placeholders else [NO_PLACEHOLDER_WARNING]
    return warnings + _stray_bracket_warnings(template, placeholders)


def _stray_bracket_warnings(
    template: str, placeholders: list[Placeholder]
) -> list[str]:
    """Warn once about blank brackets and once about an unclosed placeholder."""
    found: dict[str, str] = {}
    for opener, following in _stray_openers(template, placeholders):
        closer = _CLOSERS[opener]
        inside, closed, _ = following.partition(closer)
        if not closed and following.strip():
            snippet = (opener + following).strip()[:_SNIPPET_CHARS]
            found.setdefault(
                "unclosed",
                f'"{snippet}" starts a placeholder with {opener} that is never '
                f"closed with {closer}, so it is sent as written.",
            )
        elif closed and not inside.strip():
            found.setdefault(
                "blank",
                f'"{opener}{inside}{closer}" has no column name inside, so it '
                "is sent as written.",
            )
    return list(found.values())


def _stray_openers(
    template: str, placeholders: list[Placeholder]
) -> Iterator[tuple[str, str]]:
    """Each opening pair that starts no placeholder, with the text after it.

    That text stops at the next opening pair or line break, so the whole
    scan reads the template once.
    """
    starts = {placeholder.start for placeholder in placeholders}
    openers = list(_OPENER_RE.finditer(template))
    for number, match in enumerate(openers, start=1):
        if match.start() in starts:
            continue
        end = openers[number].start() if number < len(openers) else len(template)
        for line_break in "\r\n":
            found = template.find(line_break, match.end(), end)
            end = end if found == -1 else found
        yield match[0], template[match.end() : end]


def _placeholder_for(column: str) -> str:
    """The first way of writing ``column`` that reads back as that column."""
    for opener, closer in _BRACKETS:
        written = f"{opener}{column}{closer}"
        found = find_placeholders(written)
        if len(found) == 1 and found[0].text == written:
            inner = written[2:-2]
            if column in (inner, found[0].name):
                return written
    raise TemplateError(
        f"The column {column!r} cannot be named in a prompt: rename it without "
        "line breaks or double brackets (<<, >>, {{, }})."
    )


def _group(
    columns: Iterable[str], key: Callable[[str], str]
) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for column in columns:
        groups.setdefault(key(column), []).append(column)
    return {k: tuple(v) for k, v in groups.items()}


def _loose(name: str) -> str:
    return name.strip().casefold()


def _list(columns: Sequence[str]) -> str:
    shown = ", ".join(columns[:_LISTED_COLUMNS])
    hidden = len(columns) - _LISTED_COLUMNS
    return f"{shown} and {hidden} more" if hidden > 0 else shown
