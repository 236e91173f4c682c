"""A throwaway PostgreSQL 15, shaped like a Supabase database, for tests.

``PostgresServer.create()`` runs ``initdb`` into a temporary folder and starts
the server with ``pg_ctl`` on a free port of 127.0.0.1 (its unix socket stays
in the same folder), with durability turned off for speed. It then adds what
a Supabase project provides: the ``anon``, ``authenticated`` and
``service_role`` roles, an ``authenticator`` login role that may become them,
``auth.users`` and ``auth.uid()``, and Supabase's default grants to ``anon``
and ``authenticated`` on everything created in ``public`` (so the migrations
must take them back). Finally it applies ``supabase/migrations``.

``initdb`` refuses to run as root; as root (as in CI) the server runs as the
``postgres`` system user.
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

from bulkgpt_core.stores.pg_schema import SUPABASE_BASICS, prepare_database

log = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("BULKGPT_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE = "bulkgpt"
INSTALL_HINT = "PostgreSQL 15 is not installed: run scripts/install-test-deps.sh"

#: Users every clean database starts with (the contract suite's two owners).
TEST_USERS = {
    "alice": "11111111-1111-1111-1111-111111111111",
    "bob": "22222222-2222-2222-2222-222222222222",
}

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
    "timezone": "'UTC'",
}

# What `supabase start` sets up around the roles: PostgREST's login role, and
# default privileges that hand every new table and function to the API roles.
SUPABASE_EXTRAS = """
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'authenticator') then
        create role authenticator login noinherit;
    end if;
end;
$$;
grant anon, authenticated, service_role to authenticator;
alter default privileges in schema public
    grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on sequences to anon, authenticated, service_role;
"""

TABLES = (
    "public.batches, public.batch_results, public.batch_progress, "
    "public.lab_runs, auth.users"
)


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _system_user() -> pwd.struct_passwd | None:
    """The user the server runs as: ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("Running as root needs a `postgres` system user.") from exc


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data_dir = root / "data"
        self.socket_dir = root / "sock"
        self.log_file = root / "postgres.log"
        self.start_seconds = 0.0
        self._user = _system_user()

    # -- life cycle ----------------------------------------------------------

    @classmethod
    def create(cls) -> PostgresServer:
        """initdb, start, create the database and apply the migrations."""
        if not postgres_available():
            raise RuntimeError(INSTALL_HINT)
        began = time.monotonic()
        server = cls(Path(tempfile.mkdtemp(prefix="bulkgpt-pg-")), free_port())
        atexit.register(server.destroy)  # even if the caller forgets or crashes
        server._init_cluster()
        server.start()
        server._create_database()
        server.start_seconds = time.monotonic() - began
        log.info(
            "PostgreSQL ready in %.2f s on port %s", server.start_seconds, server.port
        )
        return server

    def _run(self, *args: str) -> None:
        command = [str(a) for a in args]
        if self._user is not None:
            command = ["runuser", "-u", self._user.pw_name, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )

    def _init_cluster(self) -> None:
        self.socket_dir.mkdir()
        if self._user is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._run(
            PG_BIN / "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        )
        settings = {
            **SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# bulkgpt tests\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) the server and wait for it."""
        self._run(
            PG_BIN / "pg_ctl", "start", "-w", "-D", self.data_dir, "-l", self.log_file
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` ends sessions; ``immediate`` is a crash)."""
        self._run(PG_BIN / "pg_ctl", "stop", "-w", "-m", mode, "-D", self.data_dir)

    def destroy(self) -> None:
        """Stop the server if it runs and remove its folder."""
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except RuntimeError as exc:
                log.warning("Stopping PostgreSQL failed: %s", exc)
        shutil.rmtree(self.root, ignore_errors=True)

    def _create_database(self) -> None:
        with psycopg.connect(self.url_for(database="postgres"), autocommit=True) as c:
            c.execute(f"create database {DATABASE}")
        with psycopg.connect(self.url) as conn:
            conn.execute(SUPABASE_BASICS)
            conn.execute(SUPABASE_EXTRAS)
            conn.commit()
            prepare_database(conn)

    # -- access --------------------------------------------------------------

    def url_for(self, user: str = "postgres", database: str = DATABASE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The superuser's connection string (what DATABASE_URL would hold)."""
        return self.url_for()

    def connect(self, user: str = "postgres", **kwargs: Any) -> psycopg.Connection:
        return psycopg.connect(self.url_for(user), **kwargs)

    def reset(self) -> None:
        """Empty every table and recreate the test users."""
        with self.connect() as conn:
            conn.execute(f"truncate {TABLES} cascade")
            self._insert_users(conn, TEST_USERS.values())

    def create_users(self, *user_ids: str) -> None:
        """Add users to ``auth.users`` (a batch's owner must be one)."""
        with self.connect() as conn:
            self._insert_users(conn, user_ids)

    @staticmethod
    def _insert_users(conn: psycopg.Connection, user_ids: Iterable[str]) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "insert into auth.users (id) values (%s) on conflict do nothing",
                [(u,) for u in user_ids],
            )
