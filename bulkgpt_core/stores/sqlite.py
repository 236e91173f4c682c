"""The embedded default store: one SQLite file in the data folder, in WAL mode.

WAL lets the app read progress while a worker process writes results. Writes
take ``BEGIN IMMEDIATE`` so two writers queue instead of failing, and each
flush of results is one transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from ..batches import (
    Batch,
    BatchStatus,
    NewBatch,
    PendingRow,
    ProgressSample,
    RowResult,
    RowStatus,
    StoredRow,
    utcnow,
)
from ..errors import BatchNotFound, LabRunNotFound, StoreError
from .base import EXPORT_PAGE_ROWS, INGEST_CHUNK_ROWS, Store
from .records import (
    BATCH_FIELDS,
    JSON_BATCH_FIELDS,
    UPDATABLE_FIELDS,
    batch_from_record,
    counter_deltas,
    lab_run_data,
    lab_run_from_record,
    lab_run_name,
    new_batch_id,
    new_batch_record,
    result_record,
    stored_row_from_record,
    to_json_text,
)

log = logging.getLogger(__name__)

DB_FILE_NAME = "bulkgpt.sqlite3"
SCHEMA_VERSION = 2
TERMINAL = (RowStatus.SUCCEEDED.value, RowStatus.FAILED.value)

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    user_id TEXT,
    -- pending, running, paused, cancelling, cancelled, completed, failed
    status TEXT NOT NULL,
    template TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    generation TEXT NOT NULL DEFAULT '{}',
    limits TEXT NOT NULL DEFAULT '{}',
    output_schema TEXT,
    source_name TEXT NOT NULL DEFAULT '',
    columns TEXT NOT NULL DEFAULT '[]',
    total_rows INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    reused INTEGER NOT NULL DEFAULT 0,
    saved_usd REAL NOT NULL DEFAULT 0,
    budget_usd REAL,
    rows_per_second REAL NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    updated_at TEXT NOT NULL,
    last_error TEXT,
    runner TEXT NOT NULL DEFAULT 'local',
    call_id TEXT
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (user_id, created_at);

CREATE TABLE IF NOT EXISTS batch_results (
    batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    row_index INTEGER NOT NULL,
    input TEXT NOT NULL,
    prompt_hash TEXT,
    output TEXT,
    parsed TEXT,
    -- pending, running, succeeded, failed
    status TEXT NOT NULL DEFAULT 'pending',
    error_kind TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    latency_ms INTEGER,
    finish_reason TEXT,
    updated_at TEXT,
    PRIMARY KEY (batch_id, row_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_results_status
    ON batch_results (batch_id, status, row_index);
CREATE INDEX IF NOT EXISTS batch_results_reuse
    ON batch_results (prompt_hash) WHERE status = 'succeeded';

CREATE TABLE IF NOT EXISTS batch_progress (
    batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    at TEXT NOT NULL,
    succeeded INTEGER NOT NULL,
    failed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_progress_batch ON batch_progress (batch_id, at);

-- The prompt lab's runs: variants compared on a few rows, one JSON document each.
CREATE TABLE IF NOT EXISTS lab_runs (
    id TEXT PRIMARY KEY,
    user_id TEXT,
    name TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lab_runs_owner ON lab_runs (user_id, created_at);
"""

RESULT_UPDATE = """
UPDATE batch_results SET
    status = :status, output = :output, parsed = :parsed,
    prompt_hash = :prompt_hash, error_kind = :error_kind,
    error_message = :error_message, attempts = attempts + :attempts,
    tokens_in = :tokens_in, tokens_out = :tokens_out, cost_usd = :cost_usd,
    latency_ms = :latency_ms, finish_reason = :finish_reason,
    updated_at = :updated_at
WHERE batch_id = :batch_id AND row_index = :row_index
    AND status IN ('pending', 'running')
"""


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class SQLiteStore(Store):
    """Batches in a local SQLite file."""

    label = "SQLite"

    def __init__(self, path: str | Path, *, owner: str | None = None) -> None:
        super().__init__(owner)
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = self._connect()

    @classmethod
    def in_data_dir(cls, data_dir: str | Path, **kwargs: Any) -> SQLiteStore:
        return cls(Path(data_dir) / DB_FILE_NAME, **kwargs)

    def scoped(self, owner: str | None) -> SQLiteStore:
        """The same file, seen by one owner."""
        return SQLiteStore(self.path, owner=owner)

    # -- connection ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                conn.executescript(SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"The SQLite store at {self.path} cannot be opened ({exc}). "
                "Check that BULKGPT_DATA_DIR points to a writable folder."
            ) from exc
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"Reading the SQLite store failed: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, rolled back on any error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"The SQLite store is busy: {exc}") from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(
                        f"Writing to the SQLite store failed: {exc}"
                    ) from exc
                raise

    def _owner_clause(self) -> tuple[str, tuple[Any, ...]]:
        if self.owner is None:
            return "", ()
        return " AND user_id = ?", (self.owner,)

    def _check_batch(self, conn: sqlite3.Connection, batch_id: str) -> None:
        if not self._owns(conn, batch_id):
            raise BatchNotFound(batch_id)

    def _owns(self, conn: sqlite3.Connection, batch_id: str) -> bool:
        """Whether the batch exists and this store's owner may see it."""
        clause, args = self._owner_clause()
        found = conn.execute(
            f"SELECT 1 FROM batches WHERE id = ?{clause}", (batch_id, *args)
        ).fetchone()
        return found is not None

    # -- batches -------------------------------------------------------------

    def create_batch(self, spec: NewBatch) -> Batch:
        if self.owner is not None and spec.user_id not in (None, self.owner):
            raise StoreError("A batch can only be created for its own owner.")
        record = new_batch_record(spec)
        record["user_id"] = spec.user_id or self.owner
        row = _batch_row(record)
        names = ", ".join(row)
        marks = ", ".join(f":{n}" for n in row)
        with self._write() as conn:
            conn.execute(f"INSERT INTO batches ({names}) VALUES ({marks})", row)
        return batch_from_record(record)

    def add_rows(
        self,
        batch_id: str,
        rows: Iterable[Mapping[str, str]],
        *,
        chunk_rows: int = INGEST_CHUNK_ROWS * 10,
    ) -> int:
        with self._read() as conn:
            self._check_batch(conn, batch_id)
            next_index = conn.execute(
                "SELECT total_rows FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()[0]
        added = 0
        chunk: list[tuple[str, int, str]] = []
        for row in rows:
            chunk.append((batch_id, next_index + added, json.dumps(row)))
            added += 1
            if len(chunk) >= chunk_rows:
                self._insert_chunk(batch_id, chunk)
                chunk = []
        if chunk:
            self._insert_chunk(batch_id, chunk)
        return added

    def _insert_chunk(self, batch_id: str, chunk: list[tuple[str, int, str]]) -> None:
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO batch_results (batch_id, row_index, input) "
                "VALUES (?, ?, ?)",
                chunk,
            )
            conn.execute(
                "UPDATE batches SET total_rows = total_rows + ?, updated_at = ? "
                "WHERE id = ?",
                (len(chunk), _ts(utcnow()), batch_id),
            )

    def get_batch(self, batch_id: str) -> Batch:
        clause, args = self._owner_clause()
        with self._read() as conn:
            row = conn.execute(
                f"SELECT * FROM batches WHERE id = ?{clause}", (batch_id, *args)
            ).fetchone()
        if row is None:
            raise BatchNotFound(batch_id)
        return batch_from_record(dict(row))

    def list_batches(self, *, limit: int = 200) -> list[Batch]:
        clause, args = self._owner_clause()
        where = f"WHERE 1 = 1{clause}"
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT * FROM batches {where} ORDER BY created_at DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [batch_from_record(dict(r)) for r in rows]

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"Fields that cannot be set: {sorted(unknown)}")
        values = {
            k: _ts(v) if isinstance(v, datetime) else v for k, v in fields.items()
        }
        values["updated_at"] = _ts(utcnow())
        sets = ", ".join(f"{k} = :{k}" for k in values)
        clause, args = self._owner_clause()
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE batches SET {sets} WHERE id = :_id"
                + clause.replace("?", ":_owner"),
                {**values, "_id": batch_id, "_owner": args[0] if args else None},
            )
            if cur.rowcount == 0:
                raise BatchNotFound(batch_id)

    def set_status(
        self,
        batch_id: str,
        status: BatchStatus,
        *,
        only_from: Iterable[BatchStatus] | None = None,
        last_error: str | None = None,
    ) -> bool:
        now = _ts(utcnow())
        sets = "status = ?, updated_at = ?"
        args: list[Any] = [status.value, now]
        if last_error is not None:
            sets += ", last_error = ?"
            args.append(last_error)
        if status.is_finished:
            sets += ", finished_at = ?"
            args.append(now)
        where = "id = ?"
        args.append(batch_id)
        if only_from is not None:
            allowed = [s.value for s in only_from]
            where += f" AND status IN ({', '.join('?' * len(allowed))})"
            args.extend(allowed)
        clause, owner_args = self._owner_clause()
        with self._write() as conn:
            self._check_batch(conn, batch_id)
            cur = conn.execute(
                f"UPDATE batches SET {sets} WHERE {where}{clause}", (*args, *owner_args)
            )
            return cur.rowcount > 0

    def delete_batch(self, batch_id: str) -> None:
        with self._write() as conn:
            self._check_batch(conn, batch_id)
            conn.execute("DELETE FROM batch_results WHERE batch_id = ?", (batch_id,))
            conn.execute("DELETE FROM batch_progress WHERE batch_id = ?", (batch_id,))
            conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    # -- rows, for the engine --------------------------------------------------

    def requeue_running(
        self, batch_id: str, row_range: tuple[int, int] | None = None
    ) -> int:
        lo, hi = row_range or (0, 2**62)
        with self._write() as conn:
            self._check_batch(conn, batch_id)
            cur = conn.execute(
                "UPDATE batch_results SET status = 'pending' WHERE batch_id = ? "
                "AND status = 'running' AND row_index >= ? AND row_index < ?",
                (batch_id, lo, hi),
            )
            return cur.rowcount

    def claim_rows(
        self,
        batch_id: str,
        *,
        after_index: int,
        limit: int,
        row_range: tuple[int, int] | None = None,
    ) -> list[PendingRow]:
        lo, hi = row_range or (0, 2**62)
        with self._write() as conn:
            self._check_batch(conn, batch_id)
            rows = conn.execute(
                "SELECT row_index, input FROM batch_results "
                "WHERE batch_id = ? AND status = 'pending' "
                "AND row_index > ? AND row_index >= ? AND row_index < ? "
                "ORDER BY row_index LIMIT ?",
                (batch_id, after_index, lo, hi, limit),
            ).fetchall()
            if rows:
                # Every pending row between the first and last claimed is claimed.
                conn.execute(
                    "UPDATE batch_results SET status = 'running' WHERE batch_id = ? "
                    "AND status = 'pending' AND row_index BETWEEN ? AND ?",
                    (batch_id, rows[0][0], rows[-1][0]),
                )
        return [PendingRow(r[0], json.loads(r[1])) for r in rows]

    def release_rows(self, batch_id: str, indexes: Sequence[int]) -> None:
        if not indexes:
            return
        with self._write() as conn:
            if not self._owns(conn, batch_id):
                return  # like bulkgpt_release_rows: another owner's rows stay
            conn.executemany(
                "UPDATE batch_results SET status = 'pending' WHERE batch_id = ? "
                "AND row_index = ? AND status = 'running'",
                [(batch_id, i) for i in indexes],
            )

    def record_results(self, batch_id: str, results: Sequence[RowResult]) -> int:
        if not results:
            return 0
        now = _ts(utcnow())
        with self._write() as conn:
            self._check_batch(conn, batch_id)
            fresh = self._not_yet_terminal(conn, batch_id, results)
            params = [_result_params(batch_id, r, now) for r in fresh]
            conn.executemany(RESULT_UPDATE, params)
            self._bump_counters(conn, batch_id, fresh, now)
        return len(fresh)

    def _not_yet_terminal(
        self, conn: sqlite3.Connection, batch_id: str, results: Sequence[RowResult]
    ) -> list[RowResult]:
        """Drop results for rows already terminal, so each row counts once."""
        indexes = [r.index for r in results]
        done: set[int] = set()
        for start in range(0, len(indexes), 500):
            part = indexes[start : start + 500]
            marks = ", ".join("?" * len(part))
            done.update(
                r[0]
                for r in conn.execute(
                    f"SELECT row_index FROM batch_results WHERE batch_id = ? "
                    f"AND row_index IN ({marks}) AND status IN (?, ?)",
                    (batch_id, *part, *TERMINAL),
                )
            )
        seen: set[int] = set()
        fresh = []
        for result in results:
            if result.index not in done and result.index not in seen:
                seen.add(result.index)
                fresh.append(result)
        return fresh

    def _bump_counters(
        self,
        conn: sqlite3.Connection,
        batch_id: str,
        results: list[RowResult],
        now: str | None,
    ) -> None:
        deltas = counter_deltas(results)
        sets = ", ".join(f"{k} = {k} + :{k}" for k in deltas)
        conn.execute(
            f"UPDATE batches SET {sets}, updated_at = :now WHERE id = :id",
            {**deltas, "now": now, "id": batch_id},
        )

    def reset_failed(self, batch_id: str, kinds: Iterable[str] | None = None) -> int:
        where = "batch_id = ? AND status = 'failed'"
        args: list[Any] = [batch_id]
        if kinds is not None:
            kinds = list(kinds)
            where += f" AND error_kind IN ({', '.join('?' * len(kinds))})"
            args.extend(kinds)
        with self._write() as conn:
            self._check_batch(conn, batch_id)
            sums = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(tokens_in), 0), "
                "COALESCE(SUM(tokens_out), 0), COALESCE(SUM(cost_usd), 0) "
                f"FROM batch_results WHERE {where}",
                args,
            ).fetchone()
            conn.execute(
                "UPDATE batch_results SET status = 'pending', error_kind = NULL, "
                f"error_message = NULL, output = NULL, parsed = NULL WHERE {where}",
                args,
            )
            # Tokens and cost already spent stay on the batch: they were billed.
            conn.execute(
                "UPDATE batches SET failed = failed - ?, updated_at = ? WHERE id = ?",
                (sums[0], _ts(utcnow()), batch_id),
            )
        return int(sums[0])

    # -- progress over time

    def add_progress_sample(self, batch_id: str) -> None:
        clause, args = self._owner_clause()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO batch_progress (batch_id, at, succeeded, failed) "
                f"SELECT id, ?, succeeded, failed FROM batches WHERE id = ?{clause}",
                (_ts(utcnow()), batch_id, *args),
            )

    def progress_samples(
        self, batch_id: str, *, limit: int = 1000
    ) -> list[ProgressSample]:
        with self._read() as conn:
            self._check_batch(conn, batch_id)
            rows = conn.execute(
                "SELECT at, succeeded, failed FROM batch_progress WHERE batch_id = ? "
                "ORDER BY at DESC LIMIT ?",
                (batch_id, limit),
            ).fetchall()
        return [
            ProgressSample(datetime.fromisoformat(r[0]), r[1], r[2])
            for r in reversed(rows)
        ]

    # -- rows, for pages and exports -------------------------------------------

    def iter_rows(
        self,
        batch_id: str,
        *,
        status: RowStatus | None = None,
        page_rows: int = EXPORT_PAGE_ROWS,
    ) -> Iterator[StoredRow]:
        with self._read() as conn:
            self._check_batch(conn, batch_id)
        after = -1
        status_clause = "" if status is None else " AND status = ?"
        status_args = () if status is None else (status.value,)
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT * FROM batch_results WHERE batch_id = ? AND row_index > ?"
                    f"{status_clause} ORDER BY row_index LIMIT ?",
                    (batch_id, after, *status_args, page_rows),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield stored_row_from_record(dict(row))
            after = rows[-1]["row_index"]

    def latest_results(self, batch_id: str, *, limit: int = 20) -> list[StoredRow]:
        with self._read() as conn:
            self._check_batch(conn, batch_id)
            rows = conn.execute(
                "SELECT * FROM batch_results WHERE batch_id = ? "
                "AND status IN (?, ?) ORDER BY updated_at DESC LIMIT ?",
                (batch_id, *TERMINAL, limit),
            ).fetchall()
        return [stored_row_from_record(dict(r)) for r in rows]

    def failure_counts(self, batch_id: str) -> dict[str, int]:
        with self._read() as conn:
            self._check_batch(conn, batch_id)
            rows = conn.execute(
                "SELECT COALESCE(error_kind, 'other'), COUNT(*) FROM batch_results "
                "WHERE batch_id = ? AND status = 'failed' GROUP BY 1 ORDER BY 2 DESC",
                (batch_id,),
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def find_reusable(
        self, prompt_hashes: Sequence[str], *, batch_id: str | None = None
    ) -> dict[str, StoredRow]:
        found: dict[str, StoredRow] = {}
        hashes = list(dict.fromkeys(prompt_hashes))
        owner_clause = ""
        owner_args: tuple[Any, ...] = ()
        if self.owner is not None:
            owner_clause = " AND batch_id IN (SELECT id FROM batches WHERE user_id = ?)"
            owner_args = (self.owner,)
        batch_clause = "" if batch_id is None else " AND batch_id = ?"
        batch_args = () if batch_id is None else (batch_id,)
        for start in range(0, len(hashes), 500):
            part = hashes[start : start + 500]
            marks = ", ".join("?" * len(part))
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT * FROM batch_results WHERE status = 'succeeded' "
                    f"AND prompt_hash IN ({marks}){batch_clause}{owner_clause}",
                    (*part, *batch_args, *owner_args),
                ).fetchall()
            for row in rows:
                found.setdefault(row["prompt_hash"], stored_row_from_record(dict(row)))
        return found

    # -- prompt-lab runs -------------------------------------------------------

    def save_lab_run(self, run: Mapping[str, Any]) -> str:
        now = _ts(utcnow())
        name, data = lab_run_name(run), to_json_text(lab_run_data(run))
        if run.get("id") is None:
            run_id = new_batch_id()
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO lab_runs (id, user_id, name, data, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, self.owner, name, data, now, now),
                )
            return run_id
        run_id = str(run["id"])
        clause, args = self._owner_clause()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE lab_runs SET name = ?, data = ?, updated_at = ? "
                f"WHERE id = ?{clause}",
                (name, data, now, run_id, *args),
            )
            if cur.rowcount == 0:
                raise LabRunNotFound(run_id)
        return run_id

    def list_lab_runs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        clause, args = self._owner_clause()
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT * FROM lab_runs WHERE 1 = 1{clause} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [lab_run_from_record(dict(r)) for r in rows]

    def get_lab_run(self, run_id: str) -> dict[str, Any]:
        clause, args = self._owner_clause()
        with self._read() as conn:
            row = conn.execute(
                f"SELECT * FROM lab_runs WHERE id = ?{clause}", (run_id, *args)
            ).fetchone()
        if row is None:
            raise LabRunNotFound(run_id)
        return lab_run_from_record(dict(row))

    def delete_lab_run(self, run_id: str) -> None:
        clause, args = self._owner_clause()
        with self._write() as conn:
            cur = conn.execute(
                f"DELETE FROM lab_runs WHERE id = ?{clause}", (run_id, *args)
            )
            if cur.rowcount == 0:
                raise LabRunNotFound(run_id)


def _batch_row(record: Mapping[str, Any]) -> dict[str, Any]:
    row = {}
    for name in BATCH_FIELDS:
        value = record[name]
        if name in JSON_BATCH_FIELDS:
            value = to_json_text(value)
        elif isinstance(value, datetime):
            value = _ts(value)
        row[name] = value
    return row


def _result_params(batch_id: str, result: RowResult, now: str | None) -> dict[str, Any]:
    params = result_record(result)
    params["parsed"] = to_json_text(params["parsed"])
    params["batch_id"] = batch_id
    params["updated_at"] = now
    return params
