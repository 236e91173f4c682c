"""The store goes away in the middle of a batch: nothing is lost, nothing re-billed.

A worker process rides out PostgreSQL stopped for ten seconds, and the
Supabase gateway answering 503 for as long: it keeps the answers it gets in
memory and in its journal, tries its writes again with backoff, and finishes
the batch with every row answered exactly once. Past the outage limit
(``EngineOptions.store_outage_s``) the batch pauses with a clear error, or,
when even the pause cannot be written, the run ends with an error that says
where the answers are; either way the next run records them and completes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from bulkgpt_core import jobs
from bulkgpt_core.batches import BatchStatus, RowStatus
from bulkgpt_core.config import Settings
from bulkgpt_core.engine import EngineOptions
from bulkgpt_core.errors import StoreError
from bulkgpt_core.journal import leftover_segments, read_segments
from bulkgpt_core.stores.base import Store
from bulkgpt_core.stores.sqlite import SQLiteStore
from bulkgpt_core.worker import run_stored_batch
from tests.fake_gemini import FakeGemini
from tests.hostile.processes import (
    assert_every_row_answered_once,
    done_rows,
    generate_calls,
    make_batch,
    running_worker,
    wait_for_done,
    watching_store,
)
from tests.pg import PostgresServer
from tests.postgrest_gateway import PostgrestGateway

OUTAGE_S = 10.0
WORKER_ROWS = 1500


@pytest.fixture
def on_postgres(
    clean_database: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PostgresServer]:
    """The environment (so the worker too) on the test PostgreSQL."""
    monkeypatch.setenv("BULKGPT_STORE", "postgres")
    monkeypatch.setenv("DATABASE_URL", clean_database.url)
    yield clean_database
    if not (clean_database.data_dir / "postmaster.pid").exists():
        clean_database.start()  # a failed test must not leave it stopped


@pytest.fixture
def on_supabase(
    gateway: PostgrestGateway, monkeypatch: pytest.MonkeyPatch
) -> PostgrestGateway:
    """The environment on the Supabase gateway, with the service role key."""
    monkeypatch.setenv("BULKGPT_STORE", "supabase")
    monkeypatch.setenv("SUPABASE_URL", gateway.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", gateway.service_role_key)
    return gateway


def ride_out(
    gemini: FakeGemini, log_path: Path, start_outage: Any, end_outage: Any
) -> dict[str, int]:
    """Run a worker, cut the store off at a quarter of the rows, bring it back.

    Returns what happened around the outage, for the assertions and the report.
    """
    gemini.configure(latency_ms=15, jitter_ms=5)
    with watching_store() as store:
        batch_id = make_batch(store, WORKER_ROWS)
    with running_worker(batch_id, log_path) as worker, watching_store() as store:
        wait_for_done(store, batch_id, WORKER_ROWS // 4)
        start_outage()
        done_when_cut = generate_calls(gemini)
        time.sleep(OUTAGE_S)
        answered_while_down = generate_calls(gemini) - done_when_cut
        end_outage()
        began = time.monotonic()
        assert worker.wait(timeout=120) == 0, worker.log()
        tail_s = time.monotonic() - began
    with watching_store() as store:
        assert_every_row_answered_once(store, batch_id, gemini, WORKER_ROWS)
    assert generate_calls(gemini) == WORKER_ROWS  # not one call re-billed
    log = worker.log()
    assert "the store failed" in log and "Traceback" not in log
    return {"answered_while_down": answered_while_down, "tail_ms": int(tail_s * 1000)}


@pytest.mark.postgres
def test_postgres_stopped_for_ten_seconds_loses_nothing(
    gemini: FakeGemini, on_postgres: PostgresServer, tmp_path: Path
) -> None:
    seen = ride_out(
        gemini, tmp_path / "worker.log", on_postgres.stop, on_postgres.start
    )

    # The worker went on answering the rows it held while the store was down.
    assert seen["answered_while_down"] > 0
    print(f"postgres outage: {seen}")


@pytest.mark.postgres
def test_supabase_answering_503_for_ten_seconds_loses_nothing(
    gemini: FakeGemini, on_supabase: PostgrestGateway, tmp_path: Path
) -> None:
    seen = ride_out(
        gemini,
        tmp_path / "worker.log",
        lambda: on_supabase.fail_for(OUTAGE_S, status=503),
        lambda: None,  # the gateway answers again by itself
    )

    assert seen["answered_while_down"] > 0
    assert any(r.status == 503 for r in on_supabase.requests)
    print(f"supabase outage: {seen}")


# -- past the outage limit ---------------------------------------------------------

LIMIT_ROWS = 400
LIMIT_S = 1.0


class OutageStore:
    """A store that fails every call while ``down`` is set, as in an outage."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.owner = inner.owner
        self.down = threading.Event()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                raise StoreError(f"The store cannot be reached (test outage: {name}).")
            return value(*args, **kwargs)

        return call


class Halted(logging.Handler):
    """Notices the engine stopping a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "stopping" in record.getMessage():
            self.seen.set()


@pytest.fixture
def halted() -> Iterator[Halted]:
    handler = Halted()
    engine_log = logging.getLogger("bulkgpt_core.engine")
    engine_log.addHandler(handler)
    yield handler
    engine_log.removeHandler(handler)


def limit_options(journal: Path) -> EngineOptions:
    return EngineOptions(
        page_rows=40,
        flush_seconds=0.05,
        tick_seconds=0.05,
        base_backoff_s=0.01,
        store_outage_s=LIMIT_S,
        journal_dir=journal,
    )


def run_in_thread(store: Any, batch_id: str, journal: Path) -> dict[str, Any]:
    """Start the engine on a thread; the dict gets its batch or its error."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["batch"] = asyncio.run(
                run_stored_batch(
                    Settings.from_env(),
                    cast(Store, store),
                    batch_id,
                    options=limit_options(journal),
                )
            )
        except StoreError as exc:
            outcome["error"] = exc

    outcome["thread"] = threading.Thread(target=work, daemon=True)
    outcome["thread"].start()
    return outcome


def journal_results(journal: Path, batch_id: str) -> int:
    return sum(1 for _ in read_segments(leftover_segments(journal, batch_id)))


def finish_and_check(
    store: SQLiteStore, batch_id: str, gemini: FakeGemini, journal: Path
) -> None:
    """Run the batch again with the store up: it completes, nothing twice."""
    batch = asyncio.run(
        run_stored_batch(
            Settings.from_env(), store, batch_id, options=limit_options(journal)
        )
    )
    assert batch.status is BatchStatus.COMPLETED
    assert_every_row_answered_once(store, batch_id, gemini, LIMIT_ROWS)
    assert generate_calls(gemini) == LIMIT_ROWS
    assert journal_results(journal, batch_id) == 0


def test_past_the_limit_the_batch_pauses_and_resume_completes(
    gemini: FakeGemini, sqlite_store: SQLiteStore, halted: Halted, tmp_path: Path
) -> None:
    gemini.configure(latency_ms=5)
    batch_id = make_batch(sqlite_store, LIMIT_ROWS, concurrency=4)
    flaky = OutageStore(sqlite_store)
    journal = tmp_path / "journal"

    outcome = run_in_thread(flaky, batch_id, journal)
    wait_for_done(sqlite_store, batch_id, 60)
    flaky.down.set()
    assert halted.seen.wait(10), "the engine did not give up on the store"
    flaky.down.clear()  # back while the worker still tries to record the pause
    outcome["thread"].join(30)

    paused = outcome["batch"]
    assert paused.status is BatchStatus.PAUSED
    assert "BULKGPT_STORE_OUTAGE_S" in (paused.last_error or "")
    assert "paused" in (paused.last_error or "")
    # What it held through the outage was written once the store came back.
    assert paused.done == generate_calls(gemini)
    assert RowStatus.RUNNING not in {r.status for r in sqlite_store.iter_rows(batch_id)}

    jobs.resume_batch(sqlite_store, batch_id)
    finish_and_check(sqlite_store, batch_id, gemini, journal)


def test_when_even_the_pause_cannot_be_written_the_journal_keeps_the_answers(
    gemini: FakeGemini, sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    gemini.configure(latency_ms=5)
    batch_id = make_batch(sqlite_store, LIMIT_ROWS, concurrency=4)
    flaky = OutageStore(sqlite_store)
    journal = tmp_path / "journal"

    outcome = run_in_thread(flaky, batch_id, journal)
    wait_for_done(sqlite_store, batch_id, 60)
    flaky.down.set()
    outcome["thread"].join(30)
    assert not outcome["thread"].is_alive()

    message = str(outcome["error"])
    assert "could not be recorded" in message and str(journal) in message
    assert f"worker {batch_id}" in message
    stuck = sqlite_store.get_batch(batch_id)
    assert stuck.status is BatchStatus.RUNNING
    held = journal_results(journal, batch_id)
    assert held > 0
    assert stuck.done + held == generate_calls(gemini)

    # What `python -m bulkgpt_core worker BATCH_ID` does once the store is back.
    finish_and_check(sqlite_store, batch_id, gemini, journal)


def test_the_outage_clock_restarts_after_each_success(
    gemini: FakeGemini, sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    """Short blips, each under the limit but longer together, never pause."""
    gemini.configure(latency_ms=5)
    batch_id = make_batch(sqlite_store, LIMIT_ROWS, concurrency=4)
    flaky = OutageStore(sqlite_store)
    journal = tmp_path / "journal"

    outcome = run_in_thread(flaky, batch_id, journal)
    wait_for_done(sqlite_store, batch_id, 20)
    for _blip in range(3):
        before = done_rows(sqlite_store, batch_id) or 0
        flaky.down.set()
        time.sleep(LIMIT_S * 0.6)
        flaky.down.clear()
        wait_for_done(sqlite_store, batch_id, min(before + 20, LIMIT_ROWS))
    outcome["thread"].join(30)

    assert "error" not in outcome
    assert outcome["batch"].status is BatchStatus.COMPLETED
    assert_every_row_answered_once(sqlite_store, batch_id, gemini, LIMIT_ROWS)
    assert generate_calls(gemini) == LIMIT_ROWS
