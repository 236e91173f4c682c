"""The PostgreSQL store: the SQLite store's contract on one psycopg connection.

DATABASE_URL may name any PostgreSQL with the BulkGPT schema, for example a
Supabase project's own connection string. Rows are ingested with COPY. Every
change of a row's status goes through the SQL functions the Supabase store
calls over HTTP (``bulkgpt_*`` in ``supabase/migrations``), so one definition
of the counters' rules serves both.

The connection is opened by the constructor and again, on the next call,
after it was lost: while the database is unreachable every call fails fast
with a :class:`StoreError`, and the first call after it is back works.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ..batches import (
    Batch,
    BatchStatus,
    NewBatch,
    PendingRow,
    ProgressSample,
    RowResult,
    RowStatus,
    StoredRow,
)
from ..errors import BatchNotFound, LabRunNotFound, StoreError
from .base import EXPORT_PAGE_ROWS, INGEST_CHUNK_ROWS, Store
from .pg_schema import (
    MISSING_SCHEMA_FIX,
    as_uuid,
    batch_key,
    batch_owner,
    lab_run_key,
    owner_uuid,
    result_payload,
    row_bounds,
    without_nul,
)
from .records import (
    BATCH_FIELDS,
    JSON_BATCH_FIELDS,
    UPDATABLE_FIELDS,
    batch_from_record,
    lab_run_data,
    lab_run_from_record,
    lab_run_name,
    new_batch_id,
    new_batch_record,
    stored_row_from_record,
)

log = logging.getLogger(__name__)

Connection = psycopg.Connection[dict[str, Any]]
Cursor = psycopg.Cursor[dict[str, Any]]

#: Give up connecting after 3 s, notice a dead peer, and prepare no
#: statements (transaction poolers such as Supabase's port 6543 reject them).
CONNECT_OPTIONS: dict[str, Any] = {
    "prepare_threshold": None,
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "application_name": "bulkgpt",
}

SCHEMA_CHECK = (
    "select to_regclass('public.batches') is not null "
    "and to_regproc('public.bulkgpt_record_results') is not null as ready"
)
UNREACHABLE = (
    "PostgreSQL cannot be reached ({detail}). Check DATABASE_URL (host, port, "
    "user, password, database) and that the database is running; nothing "
    "already stored is lost."
)
#: What to do about the errors people can fix, by SQLSTATE.
FIXES = {
    "57014": "PostgreSQL cancelled a statement that ran too long ({detail}).",
    "42P01": "The BulkGPT schema is incomplete ({detail}). " + MISSING_SCHEMA_FIX,
    "42883": "The BulkGPT schema is incomplete ({detail}). " + MISSING_SCHEMA_FIX,
    "42501": (
        "The database user in DATABASE_URL may not do this ({detail}). Use the "
        "project's postgres user, or grant it the BulkGPT tables."
    ),
    "owner": (
        "A batch's owner must be a user of this project in auth.users ({detail}). "
        "Sign the user up first, or create the batch without an owner."
    ),
}
OWNER_CONSTRAINTS = ("batches_user_id_fkey", "lab_runs_user_id_fkey")
COPY_ROWS = "copy public.batch_results (batch_id, row_index, input) from stdin"
TERMINAL = (RowStatus.SUCCEEDED.value, RowStatus.FAILED.value)


class PostgresStore(Store):
    """Batches in a PostgreSQL database (DATABASE_URL)."""

    label = "PostgreSQL"

    def __init__(self, database_url: str, *, owner: str | None = None) -> None:
        super().__init__(owner_uuid(owner))
        self.database_url = database_url
        self._lock = threading.RLock()
        self._conn: Connection | None = None
        with self._lock:
            self._connection()

    def scoped(self, owner: str | None) -> PostgresStore:
        """The same database seen by one owner, on a connection of its own."""
        return PostgresStore(self.database_url, owner=owner)

    def close(self) -> None:
        with self._lock:
            self._discard()

    # -- connection ----------------------------------------------------------

    def _connection(self) -> Connection:
        """The open connection, or a new one if there is none or it broke."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._discard()
        try:
            conn = psycopg.connect(
                self.database_url, row_factory=dict_row, **CONNECT_OPTIONS
            )
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        try:
            ready = conn.execute(SCHEMA_CHECK).fetchone()
            conn.commit()
        except psycopg.Error as exc:
            conn.close()
            raise self._translate(exc) from exc
        if not (ready and ready["ready"]):
            conn.close()
            raise StoreError(
                "The BulkGPT tables are missing in the database DATABASE_URL "
                f"names. {MISSING_SCHEMA_FIX}"
            )
        self._conn = conn
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                log.debug("Closing a broken connection failed", exc_info=True)

    @contextmanager
    def _transaction(self, batch_id: str | None = None) -> Iterator[Cursor]:
        """One committed transaction; database errors become StoreErrors."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    yield cur
                conn.commit()
            except psycopg.Error as exc:
                self._roll_back(conn)
                raise self._translate(exc, batch_id) from exc
            except BaseException:
                self._roll_back(conn)
                raise

    def _roll_back(self, conn: Connection) -> None:
        try:
            conn.rollback()
        except psycopg.Error:
            self._discard()
        if conn.broken:
            self._discard()

    def _translate(self, exc: psycopg.Error, batch_id: str | None = None) -> StoreError:
        """The project's error for a psycopg error, naming what to check."""
        state = exc.sqlstate or ""
        if state == "PT404":
            return BatchNotFound(batch_id or "")
        if exc.diag.constraint_name in OWNER_CONSTRAINTS:
            state = "owner"
        template = FIXES.get(state)
        if template is None and isinstance(
            exc, psycopg.OperationalError | psycopg.InterfaceError
        ):
            template = UNREACHABLE
        template = template or "PostgreSQL refused the request: {detail}"
        return StoreError(template.format(detail=self._redact(_first_line(exc))))

    def _redact(self, text: str) -> str:
        """``text`` without the password of DATABASE_URL, should it appear."""
        try:
            password = conninfo_to_dict(self.database_url).get("password")
        except psycopg.Error:
            password = None
        return text.replace(str(password), "***") if password else text

    # -- helpers -------------------------------------------------------------

    def _owner_sql(self, column: str = "user_id") -> tuple[str, tuple[Any, ...]]:
        if self.owner is None:
            return "", ()
        return f" and {column} = %s", (self.owner,)

    def _require(self, cur: Cursor, batch_id: str) -> None:
        """Raise BatchNotFound unless this owner may see the batch."""
        cur.execute(
            "select public.bulkgpt_require_batch(%s, %s)", (batch_id, self.owner)
        )

    # -- batches -------------------------------------------------------------

    def create_batch(self, spec: NewBatch) -> Batch:
        record = new_batch_record(spec)
        record["user_id"] = batch_owner(spec.user_id, self.owner)
        values = [
            Jsonb(record[name]) if name in JSON_BATCH_FIELDS else record[name]
            for name in BATCH_FIELDS
        ]
        names = ", ".join(f'"{name}"' for name in BATCH_FIELDS)
        marks = ", ".join(["%s"] * len(BATCH_FIELDS))
        with self._transaction() as cur:
            cur.execute(
                f"insert into public.batches ({names}) values ({marks}) returning *",
                values,
            )
            row = cur.fetchone()
        assert row is not None
        return batch_from_record(row)

    def add_rows(
        self,
        batch_id: str,
        rows: Iterable[Mapping[str, str]],
        *,
        chunk_rows: int = INGEST_CHUNK_ROWS * 10,
    ) -> int:
        """Append rows with COPY, one transaction (and total_rows bump) per chunk."""
        key = batch_key(batch_id)
        added = 0
        iterator = iter(rows)
        while chunk := list(islice(iterator, max(chunk_rows, 1))):
            added += self._copy_chunk(key, chunk)
        if not added:
            with self._transaction(batch_id) as cur:
                self._require(cur, key)
        return added

    def _copy_chunk(self, batch_id: str, chunk: list[Mapping[str, str]]) -> int:
        owner_sql, owner_args = self._owner_sql()
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select total_rows from public.batches where id = %s"
                f"{owner_sql} for no key update",
                (batch_id, *owner_args),
            )
            found = cur.fetchone()
            if found is None:
                raise BatchNotFound(batch_id)
            start = int(found["total_rows"])
            with cur.copy(COPY_ROWS) as copy:
                for offset, row in enumerate(chunk):
                    copy.write_row((batch_id, start + offset, _json_text(row)))
            cur.execute(
                "update public.batches set total_rows = total_rows + %s, "
                "updated_at = now() where id = %s",
                (len(chunk), batch_id),
            )
        return len(chunk)

    def get_batch(self, batch_id: str) -> Batch:
        key = batch_key(batch_id)
        owner_sql, owner_args = self._owner_sql()
        with self._transaction(batch_id) as cur:
            cur.execute(
                f"select * from public.batches where id = %s{owner_sql}",
                (key, *owner_args),
            )
            row = cur.fetchone()
        if row is None:
            raise BatchNotFound(batch_id)
        return batch_from_record(row)

    def list_batches(self, *, limit: int = 200) -> list[Batch]:
        owner_sql, owner_args = self._owner_sql()
        with self._transaction() as cur:
            cur.execute(
                f"select * from public.batches where true{owner_sql} "
                "order by created_at desc limit %s",
                (*owner_args, limit),
            )
            rows = cur.fetchall()
        return [batch_from_record(r) for r in rows]

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"Fields that cannot be set: {sorted(unknown)}")
        key = batch_key(batch_id)
        sets = "".join(f"{name} = %s, " for name in fields)
        owner_sql, owner_args = self._owner_sql()
        with self._transaction(batch_id) as cur:
            cur.execute(
                f"update public.batches set {sets}updated_at = now() "
                f"where id = %s{owner_sql} returning id",
                (*(without_nul(v) for v in fields.values()), key, *owner_args),
            )
            if cur.fetchone() is None:
                raise BatchNotFound(batch_id)

    def set_status(
        self,
        batch_id: str,
        status: BatchStatus,
        *,
        only_from: Iterable[BatchStatus] | None = None,
        last_error: str | None = None,
    ) -> bool:
        allowed = None if only_from is None else [s.value for s in only_from]
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select public.bulkgpt_set_status(%s, %s, %s::text[], %s, %s) as ok",
                (
                    batch_key(batch_id),
                    status.value,
                    allowed,
                    without_nul(last_error),
                    self.owner,
                ),
            )
            row = cur.fetchone()
        return bool(row and row["ok"])

    def delete_batch(self, batch_id: str) -> None:
        key = batch_key(batch_id)
        owner_sql, owner_args = self._owner_sql()
        with self._transaction(batch_id) as cur:
            cur.execute(
                f"delete from public.batches where id = %s{owner_sql} returning id",
                (key, *owner_args),
            )
            if cur.fetchone() is None:
                raise BatchNotFound(batch_id)

    # -- rows, for the engine ------------------------------------------------

    def requeue_running(
        self, batch_id: str, row_range: tuple[int, int] | None = None
    ) -> int:
        lo, hi = row_bounds(row_range)
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select public.bulkgpt_requeue_running(%s, %s::int, %s::int, %s) as n",
                (batch_key(batch_id), lo, hi, self.owner),
            )
            return _count(cur)

    def claim_rows(
        self,
        batch_id: str,
        *,
        after_index: int,
        limit: int,
        row_range: tuple[int, int] | None = None,
    ) -> list[PendingRow]:
        lo, hi = row_bounds(row_range)
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select row_index, input from public.bulkgpt_claim_rows"
                "(%s, %s::int, %s::int, %s::int, %s::int, %s)",
                (batch_key(batch_id), after_index, limit, lo, hi, self.owner),
            )
            rows = cur.fetchall()
        return [PendingRow(r["row_index"], r["input"]) for r in rows]

    def release_rows(self, batch_id: str, indexes: Sequence[int]) -> None:
        key = as_uuid(batch_id)
        if not indexes or key is None:
            return
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select public.bulkgpt_release_rows(%s, %s::integer[], %s)",
                (key, list(indexes), self.owner),
            )

    def record_results(self, batch_id: str, results: Sequence[RowResult]) -> int:
        if not results:
            return 0
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select public.bulkgpt_record_results(%s, %s, %s) as n",
                (batch_key(batch_id), Jsonb(result_payload(results)), self.owner),
            )
            return _count(cur)

    def reset_failed(self, batch_id: str, kinds: Iterable[str] | None = None) -> int:
        chosen = None if kinds is None else list(kinds)
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select public.bulkgpt_reset_failed(%s, %s::text[], %s) as n",
                (batch_key(batch_id), chosen, self.owner),
            )
            return _count(cur)

    # -- progress over time --------------------------------------------------

    def add_progress_sample(self, batch_id: str) -> None:
        key = as_uuid(batch_id)
        if key is None:
            return
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select public.bulkgpt_add_progress_sample(%s, %s)", (key, self.owner)
            )

    def progress_samples(
        self, batch_id: str, *, limit: int = 1000
    ) -> list[ProgressSample]:
        key = batch_key(batch_id)
        with self._transaction(batch_id) as cur:
            self._require(cur, key)
            cur.execute(
                "select at, succeeded, failed from public.batch_progress "
                "where batch_id = %s order by at desc, id desc limit %s",
                (key, limit),
            )
            rows = cur.fetchall()
        return [
            ProgressSample(r["at"], r["succeeded"], r["failed"]) for r in reversed(rows)
        ]

    # -- rows, for pages and exports -----------------------------------------

    def iter_rows(
        self,
        batch_id: str,
        *,
        status: RowStatus | None = None,
        page_rows: int = EXPORT_PAGE_ROWS,
    ) -> Iterator[StoredRow]:
        key = batch_key(batch_id)
        with self._transaction(batch_id) as cur:
            self._require(cur, key)
        status_sql = "" if status is None else " and status = %s"
        status_args = () if status is None else (status.value,)
        after = -1
        while True:
            with self._transaction(batch_id) as cur:
                cur.execute(
                    "select * from public.batch_results where batch_id = %s "
                    f"and row_index > %s{status_sql} order by row_index limit %s",
                    (key, after, *status_args, page_rows),
                )
                rows = cur.fetchall()
            if not rows:
                return
            yield from (stored_row_from_record(r) for r in rows)
            after = rows[-1]["row_index"]

    def latest_results(self, batch_id: str, *, limit: int = 20) -> list[StoredRow]:
        key = batch_key(batch_id)
        with self._transaction(batch_id) as cur:
            self._require(cur, key)
            cur.execute(
                "select * from public.batch_results where batch_id = %s "
                "and status in (%s, %s) order by updated_at desc limit %s",
                (key, *TERMINAL, limit),
            )
            rows = cur.fetchall()
        return [stored_row_from_record(r) for r in rows]

    def failure_counts(self, batch_id: str) -> dict[str, int]:
        with self._transaction(batch_id) as cur:
            cur.execute(
                "select error_kind, failed_rows "
                "from public.bulkgpt_failure_counts(%s, %s)",
                (batch_key(batch_id), self.owner),
            )
            rows = cur.fetchall()
        return {r["error_kind"]: int(r["failed_rows"]) for r in rows}

    def find_reusable(
        self, prompt_hashes: Sequence[str], *, batch_id: str | None = None
    ) -> dict[str, StoredRow]:
        key = as_uuid(batch_id)
        if batch_id is not None and key is None:
            return {}
        hashes = list(dict.fromkeys(prompt_hashes))
        found: dict[str, StoredRow] = {}
        for start in range(0, len(hashes), 500):
            with self._transaction(batch_id) as cur:
                cur.execute(
                    "select * from public.bulkgpt_find_reusable(%s::text[], %s, %s)",
                    (hashes[start : start + 500], key, self.owner),
                )
                rows = cur.fetchall()
            for row in rows:
                found.setdefault(row["prompt_hash"], stored_row_from_record(row))
        return found

    # -- prompt-lab runs -----------------------------------------------------

    def save_lab_run(self, run: Mapping[str, Any]) -> str:
        name = without_nul(lab_run_name(run))
        data = Jsonb(without_nul(lab_run_data(run)))
        if run.get("id") is None:
            run_id = new_batch_id()
            with self._transaction() as cur:
                cur.execute(
                    "insert into public.lab_runs (id, user_id, name, data) "
                    "values (%s, %s, %s, %s)",
                    (run_id, self.owner, name, data),
                )
            return run_id
        key = lab_run_key(str(run["id"]))
        owner_sql, owner_args = self._owner_sql()
        with self._transaction() as cur:
            cur.execute(
                "update public.lab_runs set name = %s, data = %s, updated_at = now() "
                f"where id = %s{owner_sql} returning id",
                (name, data, key, *owner_args),
            )
            if cur.fetchone() is None:
                raise LabRunNotFound(str(run["id"]))
        return key

    def list_lab_runs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        owner_sql, owner_args = self._owner_sql()
        with self._transaction() as cur:
            cur.execute(
                f"select * from public.lab_runs where true{owner_sql} "
                "order by created_at desc, id limit %s",
                (*owner_args, limit),
            )
            rows = cur.fetchall()
        return [lab_run_from_record(r) for r in rows]

    def get_lab_run(self, run_id: str) -> dict[str, Any]:
        owner_sql, owner_args = self._owner_sql()
        with self._transaction() as cur:
            cur.execute(
                f"select * from public.lab_runs where id = %s{owner_sql}",
                (lab_run_key(run_id), *owner_args),
            )
            row = cur.fetchone()
        if row is None:
            raise LabRunNotFound(run_id)
        return lab_run_from_record(row)

    def delete_lab_run(self, run_id: str) -> None:
        owner_sql, owner_args = self._owner_sql()
        with self._transaction() as cur:
            cur.execute(
                f"delete from public.lab_runs where id = %s{owner_sql} returning id",
                (lab_run_key(run_id), *owner_args),
            )
            if cur.fetchone() is None:
                raise LabRunNotFound(run_id)


def _count(cur: Cursor) -> int:
    row = cur.fetchone()
    return int(row["n"]) if row and row["n"] is not None else 0


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _json_text(row: Mapping[str, str]) -> str:
    text = json.dumps(dict(row), ensure_ascii=False)
    if "\\u0000" in text:
        text = json.dumps(without_nul(dict(row)), ensure_ascii=False)
    return text
