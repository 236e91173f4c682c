"""The prompt lab: variants of a prompt answered side by side on the same rows.

A variant is everything that shapes an answer: template, system prompt, model,
temperature, max output tokens and output schema. A lab run renders each
chosen row with each variant and sends every (row, variant) pair at once,
under one concurrency limit and one pace shared by all the variants, so the
rate limit holds however many variants there are. Each pair comes back as a
:class:`Cell` (answer, tokens, time, cost, or the failure in plain words) and
each variant gets a :class:`VariantSummary`.

People mark the better answer of each row; the marks are tallied per variant,
and the winner can be promoted to a batch on the whole file. A run is plain
JSON (:meth:`LabRun.to_record`), stored whole with ``Store.save_lab_run``, so
a refresh or a later visit loses nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import actions, jobs
from .actions import BatchRequest
from .batches import Batch, GenerationSettings, RowResult, RunLimits
from .calls import CallPolicy, FatalCallError, RowCaller
from .config import Settings
from .cost import parse_price_overrides, price_for
from .errors import BulkGPTError, LabError
from .models import open_model
from .models.base import FailureKind, ModelError
from .pacing import Pacer
from .reasons import reason_for
from .sample_run import choose_rows
from .stores.base import Store
from .stores.records import to_datetime
from .tables import Table
from .templates import CompiledTemplate, compile_template

log = logging.getLogger(__name__)

MIN_VARIANTS, MAX_VARIANTS = 2, 4
DEFAULT_LAB_ROWS = 3
MAX_LAB_ROWS = 20
#: A lab run must come back quickly: few tries, short waits.
LAB_POLICY = CallPolicy(max_attempts=3, base_backoff_s=0.5, max_backoff_s=5.0)
VARIANT_NAMES = "ABCDEFGH"
ROW_RANGE = re.compile(r"^(\d+)\s*(?:-\s*(\d+))?$")


class RowChoice(enum.StrEnum):
    """How the lab picks its rows."""

    FIRST = "first"
    RANDOM = "random"
    CHOSEN = "chosen"


@dataclass(frozen=True)
class Variant:
    """One way of asking: what a batch launched from it would send."""

    name: str
    template: str
    model: str
    system_prompt: str = ""
    temperature: float | None = None
    max_output_tokens: int | None = None
    output_schema: dict[str, Any] | None = None

    def generation(self) -> GenerationSettings:
        return GenerationSettings(
            model=self.model.strip(),
            system_prompt=self.system_prompt,
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            response_schema=self.output_schema,
        )

    def batch_request(self, name: str, limits: Mapping[str, Any]) -> BatchRequest:
        """The new-batch request with this variant's settings."""
        return BatchRequest(
            name=name,
            template=self.template,
            model=self.model,
            system_prompt=self.system_prompt,
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            concurrency=limits.get("concurrency"),
            rpm=limits.get("rpm"),
            tpm=limits.get("tpm"),
            output_schema=self.output_schema,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Variant:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class Cell:
    """One row answered by one variant."""

    prompt: str
    answer: str | None = None
    parsed: Any = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float | None = None
    cost_usd: float = 0.0
    error_kind: str | None = None
    error: str | None = None
    """What went wrong, in plain words (the reason's title)."""
    error_detail: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class LabRow:
    """A row of the file and its cells, one per variant in variant order."""

    index: int
    values: dict[str, str]
    cells: list[Cell]

    @property
    def row_number(self) -> int:
        """The row as people count it: the first data row is row 1."""
        return self.index + 1


@dataclass(frozen=True)
class VariantSummary:
    """How one variant did over the run's rows."""

    name: str
    model: str
    rows: int
    failed: int
    avg_tokens_in: float
    avg_tokens_out: float
    avg_latency_s: float | None
    cost_usd: float
    marks: int

    @property
    def cost_per_1000_rows(self) -> float:
        return self.cost_usd / self.rows * 1000 if self.rows else 0.0


@dataclass
class LabRun:
    """Variants, the rows they answered, and the marks; ``id`` once stored."""

    name: str
    source_name: str
    columns: list[str]
    variants: list[Variant]
    rows: list[LabRow]
    #: Row index -> index of the variant whose answer was marked better.
    marks: dict[int, int] = field(default_factory=dict)
    #: The concurrency and rate limits chosen (None: the configured default).
    limits: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    created_at: datetime | None = None

    def mark(self, row_index: int, variant: int | None) -> None:
        """Mark a row's better answer (None takes the mark away)."""
        if variant is None:
            self.marks.pop(row_index, None)
        elif 0 <= variant < len(self.variants):
            self.marks[row_index] = variant
        else:
            raise LabError(f"There is no variant number {variant + 1} to mark.")

    def tally(self) -> list[int]:
        """How many rows each variant won, in variant order."""
        counts = [0] * len(self.variants)
        for variant in self.marks.values():
            counts[variant] += 1
        return counts

    def summaries(self) -> list[VariantSummary]:
        tally = self.tally()
        return [
            _summary(v, [row.cells[i] for row in self.rows], tally[i])
            for i, v in enumerate(self.variants)
        ]

    def fits(self, table: Table) -> bool:
        """Whether every variant's template can be filled from ``table``."""
        try:
            for variant in self.variants:
                compile_template(variant.template, table.columns)
        except BulkGPTError:
            return False
        return True

    def to_record(self) -> dict[str, Any]:
        """The run as plain JSON, for ``Store.save_lab_run``."""
        record: dict[str, Any] = {
            "name": self.name,
            "source_name": self.source_name,
            "columns": list(self.columns),
            "variants": [v.to_json() for v in self.variants],
            "rows": [_row_json(row) for row in self.rows],
            "marks": {str(k): v for k, v in self.marks.items()},
            "limits": dict(self.limits),
        }
        if self.id is not None:
            record["id"] = self.id
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LabRun:
        """A run as ``Store.get_lab_run`` gives it back."""
        return cls(
            name=record["name"],
            source_name=record.get("source_name", ""),
            columns=list(record.get("columns", [])),
            variants=[Variant.from_json(v) for v in record["variants"]],
            rows=[_row_from_json(r) for r in record["rows"]],
            marks={int(k): int(v) for k, v in record.get("marks", {}).items()},
            limits=dict(record.get("limits") or {}),
            id=record.get("id"),
            created_at=to_datetime(record.get("created_at")),
        )


# --- Choosing rows -------------------------------------------------------------


def pick_rows(
    total: int,
    choice: RowChoice,
    *,
    count: int = DEFAULT_LAB_ROWS,
    seed: int = 0,
    chosen: str = "",
) -> list[int]:
    """Row indexes: the first ``count``, ``count`` at random, or those written."""
    if choice is RowChoice.CHOSEN:
        return parse_row_numbers(chosen, total)
    count = min(count, MAX_LAB_ROWS)
    return choose_rows(total, count, random_rows=choice is RowChoice.RANDOM, seed=seed)


def parse_row_numbers(text: str, total: int) -> list[int]:
    """``"1, 4, 10-12"`` as row indexes ``[0, 3, 9, 10, 11]`` (rows count from 1)."""
    numbers: set[int] = set()
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        match = ROW_RANGE.match(part)
        if match is None:
            raise LabError(
                f"{part!r} is not a row number: write numbers and ranges, "
                "such as 1, 4, 10-12."
            )
        first, last = int(match[1]), int(match[2] or match[1])
        numbers.update(range(min(first, last), max(first, last) + 1))
    if not numbers:
        raise LabError("Write the numbers of the rows to try, such as 1, 4, 10-12.")
    if min(numbers) < 1 or max(numbers) > total:
        raise LabError(f"Row numbers go from 1 to {total:,} in this file.")
    if len(numbers) > MAX_LAB_ROWS:
        raise LabError(f"Choose at most {MAX_LAB_ROWS} rows for the lab.")
    return [n - 1 for n in sorted(numbers)]


# --- Running -----------------------------------------------------------------------


def run_lab(
    settings: Settings,
    table: Table,
    variants: Sequence[Variant],
    indexes: Sequence[int],
    *,
    concurrency: int | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
) -> LabRun:
    """Ask every variant about every chosen row now, and wait for all answers.

    Raises :class:`LabError`, ``TemplateError``, ``LimitError`` or
    ``ConfigError`` (each naming the variant) before anything is sent.
    """
    if not indexes:
        raise LabError("Choose at least one row to try the variants on.")
    variants = named_variants(variants)
    compiled = check_variants(settings, table, variants)
    limits = jobs.run_limits(settings, concurrency=concurrency, rpm=rpm, tpm=tpm)
    lab = _Lab(settings, limits)
    cells = asyncio.run(lab.run(variants, compiled, table, indexes))
    rows = [
        LabRow(index, table.row_dict(index), cells[n])
        for n, index in enumerate(indexes)
    ]
    return LabRun(
        name=run_name(table.source_name, variants, len(rows)),
        source_name=table.source_name,
        columns=list(table.columns),
        variants=list(variants),
        rows=rows,
        limits={"concurrency": concurrency, "rpm": rpm, "tpm": tpm},
    )


def named_variants(variants: Sequence[Variant]) -> list[Variant]:
    """The variants, a blank name replaced by its letter (A, B, C…)."""
    return [
        v if v.name.strip() else dataclasses.replace(v, name=VARIANT_NAMES[i])
        for i, v in enumerate(variants)
    ]


def check_variants(
    settings: Settings, table: Table, variants: Sequence[Variant]
) -> list[CompiledTemplate]:
    """Each variant's compiled template, or the first problem, naming the variant."""
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        raise LabError(
            f"Compare {MIN_VARIANTS} to {MAX_VARIANTS} variants "
            f"(there are {len(variants)})."
        )
    names = [v.name.strip() for v in variants]
    for name in names:
        if names.count(name) > 1:
            raise LabError(f"Two variants are called {name!r}: rename one.")
    return [_checked(settings, table, v) for v in variants]


def _checked(settings: Settings, table: Table, variant: Variant) -> CompiledTemplate:
    try:
        compiled = compile_template(variant.template, table.columns)
        jobs.check_generation(settings, variant.generation())
    except BulkGPTError as exc:
        raise type(exc)(f"Variant {variant.name}: {exc}") from exc
    return compiled


def run_name(source_name: str, variants: Sequence[Variant], rows: int) -> str:
    """``reviews.csv: A vs B on 3 rows``."""
    versus = " vs ".join(v.name for v in variants)
    noun = "row" if rows == 1 else "rows"
    return f"{source_name or 'uploaded file'}: {versus} on {rows} {noun}"


@dataclass
class _VariantCaller:
    """One variant's model and caller, and the failure that stopped it, if any."""

    variant: Variant
    compiled: CompiledTemplate
    caller: RowCaller
    stop: asyncio.Event
    fatal: ModelError | None = None


class _Lab:
    """Sends every (row, variant) pair through one shared gate and pace."""

    def __init__(self, settings: Settings, limits: RunLimits) -> None:
        self.settings = settings
        self.limits = limits
        self.prices = parse_price_overrides(settings.prices)

    async def run(
        self,
        variants: Sequence[Variant],
        compiled: Sequence[CompiledTemplate],
        table: Table,
        indexes: Sequence[int],
    ) -> list[list[Cell]]:
        gate = asyncio.Semaphore(self.limits.concurrency)
        pacer = Pacer(self.limits.rpm, self.limits.tpm)
        callers: list[_VariantCaller] = []
        try:
            for variant, template in zip(variants, compiled, strict=True):
                callers.append(self._caller(variant, template, gate, pacer))
            pairs = [(i, c) for i in indexes for c in callers]
            cells = await asyncio.gather(*(self._cell(c, table, i) for i, c in pairs))
        finally:
            for caller in callers:
                await caller.caller.model.aclose()
        width = len(callers)
        return [list(cells[n : n + width]) for n in range(0, len(cells), width)]

    def _caller(
        self,
        variant: Variant,
        compiled: CompiledTemplate,
        gate: asyncio.Semaphore,
        pacer: Pacer,
    ) -> _VariantCaller:
        try:
            model = open_model(self.settings, variant.model)
        except BulkGPTError as exc:
            raise type(exc)(f"Variant {variant.name}: {exc}") from exc
        stop = asyncio.Event()
        policy = dataclasses.replace(
            LAB_POLICY, max_output_tokens_cap=self.settings.max_output_tokens
        )
        caller = RowCaller(
            model,
            variant.generation(),
            concurrency=self.limits.concurrency,
            pacer=pacer,
            price=price_for(variant.model, self.prices),
            policy=policy,
            stop=stop,
            in_flight=gate,
        )
        return _VariantCaller(variant, compiled, caller, stop)

    async def _cell(self, vc: _VariantCaller, table: Table, index: int) -> Cell:
        prompt = vc.compiled.render(table.row_dict(index))
        limit = self.settings.max_prompt_chars
        if len(prompt) > limit:
            return _failed(
                Cell(prompt), FailureKind.INVALID_REQUEST, _too_long(prompt, limit)
            )
        try:
            result = await vc.caller.answer(index, prompt, "")
        except FatalCallError as exc:
            # Every call of this variant would fail the same way: stop it.
            vc.fatal = exc.error
            vc.stop.set()
            return _failed(Cell(prompt), exc.error.kind, str(exc.error))
        except Exception as exc:  # one bad cell never hides the others
            log.exception("lab cell (row %d, %s) failed", index, vc.variant.name)
            return _failed(
                Cell(prompt), FailureKind.OTHER, f"{type(exc).__name__}: {exc}"
            )
        if result is None:
            fatal = vc.fatal
            kind = fatal.kind if fatal else FailureKind.OTHER
            return _failed(Cell(prompt), kind, str(fatal or "The variant stopped."))
        return _from_result(prompt, result)


def _from_result(prompt: str, result: RowResult) -> Cell:
    cell = Cell(
        prompt=prompt,
        answer=result.output,
        parsed=result.parsed,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        latency_s=None if result.latency_ms is None else result.latency_ms / 1000,
        cost_usd=result.cost_usd,
    )
    if result.error_kind is None:
        return cell
    return _failed(cell, result.error_kind, result.error_message or "")


def _failed(cell: Cell, kind: str, detail: str) -> Cell:
    reason = reason_for(kind)
    return dataclasses.replace(
        cell,
        error_kind=reason.kind,
        error=reason.title,
        error_detail=detail,
        fix=reason.fix,
    )


def _too_long(prompt: str, limit: int) -> str:
    return (
        f"The prompt for this row is {len(prompt):,} characters, over the limit "
        f"of {limit:,} (BULKGPT_MAX_PROMPT_CHARS). Shorten the template or the cell."
    )


# --- Storing and promoting ---------------------------------------------------------


def save_run(store: Store, run: LabRun) -> LabRun:
    """Store the run (again, if it was stored before); it gets its id."""
    run.id = store.save_lab_run(run.to_record())
    if run.created_at is None:
        run.created_at = to_datetime(store.get_lab_run(run.id)["created_at"])
    return run


def load_run(store: Store, run_id: str) -> LabRun:
    """A stored run, or ``LabRunNotFound``."""
    return LabRun.from_record(store.get_lab_run(run_id))


def promote(
    settings: Settings,
    store: Store,
    table: Table,
    run: LabRun,
    variant_index: int,
    *,
    name: str = "",
) -> Batch:
    """Launch a batch of every row of ``table`` with one variant's settings."""
    variant = run.variants[variant_index]
    stem = (table.source_name or run.source_name).rsplit(".", 1)[0]
    request = variant.batch_request(name or f"{stem} ({variant.name})", run.limits)
    return actions.launch_batch(settings, store, table, request)


# --- Helpers -------------------------------------------------------------------------


def _summary(variant: Variant, cells: Sequence[Cell], marks: int) -> VariantSummary:
    count = len(cells)
    latencies = [c.latency_s for c in cells if c.latency_s is not None]
    return VariantSummary(
        name=variant.name,
        model=variant.model,
        rows=count,
        failed=sum(not c.ok for c in cells),
        avg_tokens_in=sum(c.tokens_in for c in cells) / count if count else 0.0,
        avg_tokens_out=sum(c.tokens_out for c in cells) / count if count else 0.0,
        avg_latency_s=sum(latencies) / len(latencies) if latencies else None,
        cost_usd=sum(c.cost_usd for c in cells),
        marks=marks,
    )


def _row_json(row: LabRow) -> dict[str, Any]:
    return {
        "index": row.index,
        "values": dict(row.values),
        "cells": [c.to_json() for c in row.cells],
    }


def _row_from_json(data: Mapping[str, Any]) -> LabRow:
    return LabRow(
        index=int(data["index"]),
        values=dict(data["values"]),
        cells=[Cell.from_json(c) for c in data["cells"]],
    )


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that ``cls`` has fields for (older runs may differ)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}
