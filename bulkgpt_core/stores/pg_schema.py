"""What the PostgreSQL and Supabase stores share: the schema and its values.

The schema is plain SQL in ``supabase/migrations``, in the form ``supabase db
push`` applies. On a PostgreSQL that is not a Supabase project,
:func:`prepare_database` first creates the little of Supabase the migrations
rely on (the ``anon``, ``authenticated`` and ``service_role`` roles, and
``auth.users`` with ``auth.uid()``), then applies the migrations not applied
yet, recording them where the Supabase CLI does. From a shell::

    DATABASE_URL=postgresql://... python -m bulkgpt_core.stores.pg_schema
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from ..batches import RowResult
from ..errors import BatchNotFound, LabRunNotFound, StoreError
from .records import result_record

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "supabase" / "migrations"

#: Row indexes are PostgreSQL integers.
ROW_INDEX_MAX = 2**31 - 1

MISSING_SCHEMA_FIX = (
    "Create the tables first: run `supabase db push`, paste "
    "supabase/migrations/*.sql into the Supabase SQL editor, or run "
    "`python -m bulkgpt_core.stores.pg_schema` with DATABASE_URL set."
)

#: What a Supabase project already has and the migrations use.
SUPABASE_BASICS = """
do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
        if not exists (select 1 from pg_roles where rolname = r) then
            execute format('create role %I nologin noinherit', r);
        end if;
    end loop;
end;
$$;
alter role service_role bypassrls;
create schema if not exists auth;
create table if not exists auth.users (
    id uuid primary key,
    email text,
    created_at timestamptz not null default now()
);
create or replace function auth.uid() returns uuid
language sql stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
    )::uuid
$$;
create or replace function auth.role() returns text
language sql stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
    )
$$;
grant usage on schema auth to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;
"""

MIGRATIONS_TABLE = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
    version text primary key,
    name text
);
"""


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The migration files, oldest first (their names start with a timestamp)."""
    return sorted(directory.glob("*.sql"))


def prepare_database(conn: psycopg.Connection[Any]) -> list[str]:
    """Make a database ready for the stores; return the versions applied now."""
    has_auth = conn.execute("select to_regclass('auth.users') is not null").fetchone()
    if not (has_auth and has_auth[0]):
        log.info("Creating the Supabase roles and auth schema")
        conn.execute(SUPABASE_BASICS)
        conn.commit()
    return apply_migrations(conn)


def apply_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply each migration not yet applied, each in its own transaction."""
    conn.execute(MIGRATIONS_TABLE)
    conn.commit()
    done = {
        row[0]
        for row in conn.execute(
            "select version from supabase_migrations.schema_migrations"
        )
    }
    applied = []
    for path in migration_files():
        version, _, name = path.stem.partition("_")
        if version in done:
            continue
        log.info("Applying migration %s", path.name)
        with conn.transaction():
            conn.execute(path.read_text(encoding="utf-8"))
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, name) "
                "values (%s, %s)",
                (version, name),
            )
        applied.append(version)
    conn.commit()
    return applied


# -- values -----------------------------------------------------------------


def as_uuid(value: str | None) -> str | None:
    """The canonical form of a UUID, or None when ``value`` is not one."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def owner_uuid(owner: str | None) -> str | None:
    """An owner as the UUID the ``user_id`` columns hold."""
    if owner is None:
        return None
    checked = as_uuid(owner)
    if checked is None:
        raise StoreError(
            f"The owner {owner!r} is not a user id: PostgreSQL and Supabase stores "
            "keep Supabase Auth user ids (UUIDs) as owners."
        )
    return checked


def batch_owner(user_id: str | None, owner: str | None) -> str | None:
    """The ``user_id`` of a new batch: its own, else the store's owner."""
    if owner is not None and user_id is not None and as_uuid(user_id) != owner:
        raise StoreError("A batch can only be created for its own owner.")
    return owner_uuid(user_id or owner)


def row_bounds(row_range: tuple[int, int] | None) -> tuple[int, int]:
    """A row range clipped to what an integer column holds."""
    lo, hi = row_range or (0, ROW_INDEX_MAX)
    return max(lo, 0), min(hi, ROW_INDEX_MAX)


def without_nul(value: Any) -> Any:
    """``value`` with NUL characters replaced: PostgreSQL text cannot hold them."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


def result_payload(results: Sequence[RowResult]) -> list[dict[str, Any]]:
    """Results as the ``p_results`` array of ``bulkgpt_record_results``.

    A row given twice keeps its first result, as in the SQLite store.
    """
    payload: dict[int, dict[str, Any]] = {}
    for result in results:
        if result.index in payload:
            continue
        record = result_record(result)
        record["reused"] = result.reused
        record["saved_usd"] = result.saved_usd
        payload[result.index] = without_nul(record)
    return list(payload.values())


def main() -> None:
    """Apply the migrations to the database DATABASE_URL names."""
    from ..config import Settings
    from ..errors import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = Settings.from_env()
        settings.require("DATABASE_URL")
        with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
            applied = prepare_database(conn)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    except psycopg.Error as exc:
        raise SystemExit(f"Preparing the database failed: {exc}") from exc
    print(f"Applied {len(applied)} migration(s): {', '.join(applied) or 'none'}.")


if __name__ == "__main__":
    main()


def batch_key(batch_id: str) -> str:
    """A batch id as a UUID; anything else names no batch."""
    key = as_uuid(batch_id)
    if key is None:
        raise BatchNotFound(batch_id)
    return key


def lab_run_key(run_id: str) -> str:
    """A lab run id as a UUID; anything else names no run."""
    key = as_uuid(run_id)
    if key is None:
        raise LabRunNotFound(run_id)
    return key
