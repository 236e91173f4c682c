"""Batches on Modal, with no network to Modal.

The Modal functions' bodies run here with ``.local()`` against the fake
Gemini server and a real store (SQLite; PostgreSQL and Supabase, through the
test gateway, when PostgreSQL is installed); sharded batches run their
shards in threads of this process.
The launching side runs with the Modal client replaced at its lookup
boundary (``modal_launch._lookup_function`` and ``_function_call``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import modal.exception
import pytest

from bulkgpt_core import jobs, modal_app, modal_launch, shards
from bulkgpt_core.batches import BatchStatus, GenerationSettings, RowStatus
from bulkgpt_core.config import Settings
from bulkgpt_core.engine import EngineOptions
from bulkgpt_core.errors import BatchStateError, ConfigError
from bulkgpt_core.modal_launch import RunnerError
from bulkgpt_core.models.base import ModelReply
from bulkgpt_core.runners import start_worker
from bulkgpt_core.shards import ShardConfig, ShardOutcome, ShardResult, ShardSpec
from bulkgpt_core.stores.base import Store
from bulkgpt_core.stores.postgres import PostgresStore
from bulkgpt_core.stores.sqlite import SQLiteStore
from bulkgpt_core.stores.supabase import SupabaseStore
from tests.conftest import new_batch_spec
from tests.fake_gemini import FakeGemini, prompt_hash

ROOT = Path(__file__).resolve().parents[1]
THREE_SHARDS = ShardConfig(shard_rows=100, max_shards=3)


# -- stores the Modal functions can open from the environment


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("supabase", marks=pytest.mark.postgres),
    ]
)
def env_store(
    request: pytest.FixtureRequest,
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    """The store the environment names, so `.local()` bodies open the same one."""
    store: Store
    if request.param == "sqlite":
        store = SQLiteStore.in_data_dir(isolated_env)
    elif request.param == "postgres":
        server = request.getfixturevalue("clean_database")
        monkeypatch.setenv("BULKGPT_STORE", "postgres")
        monkeypatch.setenv("DATABASE_URL", server.url)
        store = PostgresStore(server.url)
    else:
        gateway = request.getfixturevalue("gateway")
        monkeypatch.setenv("BULKGPT_STORE", "supabase")
        monkeypatch.setenv("SUPABASE_URL", gateway.url)
        monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", gateway.service_role_key)
        store = SupabaseStore(gateway.url, gateway.service_role_key)
    try:
        yield store
    finally:
        store.close()


def store_factory(store: Store) -> Callable[[], Store]:
    return lambda: store.scoped(None)


def make_batch(store: Store, rows: int, **kwargs: Any) -> str:
    batch = store.create_batch(new_batch_spec(["text"], **kwargs))
    store.add_rows(batch.id, ({"text": f"row {i}"} for i in range(rows)))
    return batch.id


def statuses(store: Store, batch_id: str) -> dict[RowStatus, int]:
    counts = dict.fromkeys(RowStatus, 0)
    for row in store.iter_rows(batch_id):
        counts[row.status] += 1
    return counts


def assert_every_row_answered_once(
    store: Store, batch_id: str, gemini: FakeGemini, rows: int
) -> None:
    """Whole outcome: each row succeeded with its own answer, each asked once."""
    stored = list(store.iter_rows(batch_id))
    assert [r.status for r in stored] == [RowStatus.SUCCEEDED] * rows
    assert [r.output for r in stored] == [f"ANSWER: Say row {i}" for i in range(rows)]
    answers = gemini.stats()["answers_by_prompt"]
    expected = {prompt_hash(f"Say row {i}") for i in range(rows)}
    assert set(answers) == expected
    assert set(answers.values()) == {1}
    batch = store.get_batch(batch_id)
    assert (batch.succeeded, batch.failed) == (rows, 0)
    assert batch.tokens_in == sum(r.tokens_in for r in stored)
    assert batch.tokens_out == sum(r.tokens_out for r in stored)


# -- a container that dies midway


class ContainerCrash(Exception):
    """Stands in for a coordinator's container dying."""


LOOP_STOPPED = "Event loop stopped before Future completed"


class CrashingModel:
    """Passes ``calls`` calls through, then stops the run's event loop dead.

    Like a killed container, the run ends in the middle: the rows it had
    claimed stay ``running``. It waits for the calls already at the server
    to come back first, so that "answered once" stays exact.
    """

    def __init__(self, inner: Any, calls: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.left = calls
        self.in_flight = 0

    async def generate(self, prompt: str, settings: GenerationSettings) -> ModelReply:
        if self.left <= 0:
            while self.in_flight:
                await asyncio.sleep(0.005)
            asyncio.get_running_loop().stop()
            await asyncio.Event().wait()
        self.left -= 1
        self.in_flight += 1
        try:
            return await self.inner.generate(prompt, settings)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def crash_first_shard(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """The next shard to open its model crashes after ``calls`` calls."""
    real_open = shards.open_model
    lock = threading.Lock()
    crashes = [calls]

    def open_model(settings: Settings, name: str) -> Any:
        model = real_open(settings, name)
        with lock:
            if crashes:
                return CrashingModel(model, crashes.pop())
        return model

    monkeypatch.setattr(shards, "open_model", open_model)


# -- (1) the functions' bodies, run with .local()


def test_process_batch_runs_a_whole_batch(gemini: FakeGemini, env_store: Store) -> None:
    batch_id = make_batch(env_store, 40)

    status = modal_app.process_batch.local(batch_id)

    assert status == "completed"
    batch = env_store.get_batch(batch_id)
    assert batch.status is BatchStatus.COMPLETED
    assert batch.finished_at is not None
    assert_every_row_answered_once(env_store, batch_id, gemini, 40)


def test_process_batch_splits_a_big_batch_into_paced_shards(
    gemini: FakeGemini, env_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKGPT_SHARD_ROWS", "100")
    batch_id = make_batch(env_store, 300, rpm=60_000)
    seen: list[ShardSpec] = []
    real_run_shard = shards.run_shard

    def recording_run_shard(*args: Any, **kwargs: Any) -> ShardOutcome:
        seen.append(args[2])
        return real_run_shard(*args, **kwargs)

    monkeypatch.setattr(shards, "run_shard", recording_run_shard)

    status = modal_app.process_batch.local(batch_id)

    assert status == "completed"
    assert sorted((s.lo, s.hi, s.rpm, s.tpm) for s in seen) == [
        (0, 100, 20_000, None),
        (100, 200, 20_000, None),
        (200, 300, 20_000, None),
    ]
    assert_every_row_answered_once(env_store, batch_id, gemini, 300)
    assert env_store.get_batch(batch_id).rows_per_second == 0.0


def test_a_crashed_shard_resumes_without_redoing_rows(
    gemini: FakeGemini, env_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = make_batch(env_store, 300)
    crash_first_shard(monkeypatch, calls=40)

    with pytest.raises(RuntimeError, match=LOOP_STOPPED):
        modal_app.process_shard.local(batch_id, 0, 150, None, None)

    # The crash left claimed rows `running` and the batch unfinished.
    after_crash = statuses(env_store, batch_id)
    assert after_crash[RowStatus.RUNNING] > 0
    assert after_crash[RowStatus.PENDING] == 150
    assert after_crash[RowStatus.FAILED] == 0
    assert gemini.stats()["answered"] == 40
    assert env_store.get_batch(batch_id).status is BatchStatus.RUNNING

    # The retried shard finishes its range and leaves the other shard's alone.
    outcome = modal_app.process_shard.local(batch_id, 0, 150, None, None)
    assert outcome == {"lo": 0, "hi": 150, "status": "running"}
    again = statuses(env_store, batch_id)
    assert (again[RowStatus.SUCCEEDED], again[RowStatus.PENDING]) == (150, 150)
    assert env_store.get_batch(batch_id).status is BatchStatus.RUNNING

    modal_app.process_shard.local(batch_id, 150, 300, None, None)
    assert env_store.get_batch(batch_id).status is BatchStatus.RUNNING

    # The coordinator finds nothing left to do, and completes the batch.
    monkeypatch.setenv("BULKGPT_SHARD_ROWS", "150")
    assert modal_app.process_batch.local(batch_id) == "completed"
    assert_every_row_answered_once(env_store, batch_id, gemini, 300)


def test_the_coordinator_runs_a_crashed_shard_again(
    gemini: FakeGemini, env_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKGPT_SHARD_ROWS", "100")
    batch_id = make_batch(env_store, 300)
    crash_first_shard(monkeypatch, calls=25)

    assert modal_app.process_batch.local(batch_id) == "completed"

    assert_every_row_answered_once(env_store, batch_id, gemini, 300)


def test_a_retried_coordinator_finishes_without_redoing_rows(
    gemini: FakeGemini, env_store: Store
) -> None:
    settings = Settings.from_env()
    batch_id = make_batch(env_store, 300)
    factory = store_factory(env_store)
    run_here = shards.run_shards_in_threads(
        lambda spec: shards.run_shard(settings, factory, spec)
    )

    def coordinator_dies(specs: Sequence[ShardSpec]) -> list[Any]:
        run_here(specs[:1])
        raise ContainerCrash()

    with pytest.raises(ContainerCrash):
        shards.run_sharded(
            env_store, batch_id, run_shards=coordinator_dies, config=THREE_SHARDS
        )
    assert env_store.get_batch(batch_id).status is BatchStatus.RUNNING
    assert statuses(env_store, batch_id)[RowStatus.SUCCEEDED] == 100

    # Modal runs the coordinator again.
    batch = shards.run_sharded(
        env_store, batch_id, run_shards=run_here, config=THREE_SHARDS
    )

    assert batch.status is BatchStatus.COMPLETED
    assert_every_row_answered_once(env_store, batch_id, gemini, 300)


def test_a_batch_completes_only_when_every_shard_has(
    gemini: FakeGemini, sqlite_store: SQLiteStore
) -> None:
    settings = Settings.from_env()
    batch_id = make_batch(sqlite_store, 300)
    seen: list[tuple[BatchStatus, int]] = []

    def one_after_another(specs: Sequence[ShardSpec]) -> list[ShardOutcome]:
        outcomes = []
        for spec in specs:
            factory = store_factory(sqlite_store)
            outcomes.append(shards.run_shard(settings, factory, spec))
            batch = sqlite_store.get_batch(batch_id)
            seen.append((batch.status, batch.succeeded))
        return outcomes

    batch = shards.run_sharded(
        sqlite_store, batch_id, run_shards=one_after_another, config=THREE_SHARDS
    )

    # Progress adds the shards up; only the coordinator completes the batch.
    assert seen == [
        (BatchStatus.RUNNING, 100),
        (BatchStatus.RUNNING, 200),
        (BatchStatus.RUNNING, 300),
    ]
    assert batch.status is BatchStatus.COMPLETED
    assert_every_row_answered_once(sqlite_store, batch_id, gemini, 300)


def test_cancelling_a_sharded_batch_stops_every_shard(
    gemini: FakeGemini, sqlite_store: SQLiteStore
) -> None:
    settings = Settings.from_env()
    batch_id = make_batch(sqlite_store, 300)

    def cancel_after_first(specs: Sequence[ShardSpec]) -> list[ShardOutcome]:
        factory = store_factory(sqlite_store)
        first = shards.run_shard(settings, factory, specs[0])
        jobs.cancel_batch(sqlite_store, batch_id)
        return [first, *(shards.run_shard(settings, factory, s) for s in specs[1:])]

    batch = shards.run_sharded(
        sqlite_store, batch_id, run_shards=cancel_after_first, config=THREE_SHARDS
    )

    assert batch.status is BatchStatus.CANCELLED
    assert statuses(sqlite_store, batch_id) == {
        RowStatus.PENDING: 200,
        RowStatus.RUNNING: 0,
        RowStatus.SUCCEEDED: 100,
        RowStatus.FAILED: 0,
    }
    assert gemini.stats()["answered"] == 100


def test_shards_that_make_no_progress_pause_the_batch(
    sqlite_store: SQLiteStore,
) -> None:
    batch_id = make_batch(sqlite_store, 300)
    rounds: list[int] = []

    def all_fail(specs: Sequence[ShardSpec]) -> list[BaseException]:
        rounds.append(len(specs))
        return [RuntimeError("container lost\ntraceback...") for _ in specs]

    batch = shards.run_sharded(
        sqlite_store, batch_id, run_shards=all_fail, config=THREE_SHARDS
    )

    assert rounds == [3]
    assert batch.status is BatchStatus.PAUSED
    assert batch.last_error == (
        "300 rows were not finished: 3 shard(s) stopped with an error "
        "(RuntimeError: container lost). Resume the batch to go on with the rest."
    )


def test_shards_stop_together_at_the_budget(
    gemini: FakeGemini, sqlite_store: SQLiteStore
) -> None:
    settings = Settings.from_env()
    spec = dataclasses.replace(new_batch_spec(["text"]), budget_usd=0.000001)
    batch_id = sqlite_store.create_batch(spec).id
    sqlite_store.add_rows(batch_id, ({"text": f"row {i}"} for i in range(300)))
    quick = EngineOptions(tick_seconds=0.01, flush_seconds=0.01)
    rounds: list[int] = []

    def run_here(specs: Sequence[ShardSpec]) -> list[ShardResult]:
        rounds.append(len(specs))
        return shards.run_shards_in_threads(
            lambda s: shards.run_shard(settings, store_factory(sqlite_store), s, quick)
        )(specs)

    batch = shards.run_sharded(
        sqlite_store, batch_id, run_shards=run_here, config=THREE_SHARDS
    )

    assert rounds == [3]
    assert batch.status is BatchStatus.PAUSED
    assert batch.last_error is not None
    assert batch.last_error.startswith("Paused: the budget of $0.00 is spent")
    assert 0 < batch.done < 300
    assert statuses(sqlite_store, batch_id)[RowStatus.RUNNING] == 0


def test_a_finished_batch_is_left_alone(sqlite_store: SQLiteStore) -> None:
    batch_id = make_batch(sqlite_store, 300)
    sqlite_store.set_status(batch_id, BatchStatus.PAUSED)

    def must_not_run(specs: Sequence[ShardSpec]) -> list[ShardOutcome]:
        raise AssertionError("no shard should start")

    batch = shards.run_sharded(
        sqlite_store, batch_id, run_shards=must_not_run, config=THREE_SHARDS
    )

    assert batch.status is BatchStatus.PAUSED


def test_the_coordinator_publishes_the_speed_while_shards_run(
    gemini: FakeGemini, sqlite_store: SQLiteStore
) -> None:
    settings = Settings.from_env()
    batch_id = make_batch(sqlite_store, 300)
    speeds: list[float] = []

    def slowly(specs: Sequence[ShardSpec]) -> list[ShardOutcome]:
        outcomes = []
        for spec in specs:
            outcomes.append(
                shards.run_shard(settings, store_factory(sqlite_store), spec)
            )
            time.sleep(0.05)
            speeds.append(sqlite_store.get_batch(batch_id).rows_per_second)
        return outcomes

    batch = shards.run_sharded(
        sqlite_store,
        batch_id,
        run_shards=slowly,
        config=THREE_SHARDS,
        watch_seconds=0.01,
    )

    assert all(speed > 0 for speed in speeds), speeds
    assert (batch.status, batch.rows_per_second) == (BatchStatus.COMPLETED, 0.0)


def test_a_deleted_batch_is_not_retried() -> None:
    assert modal_app.process_batch.local("no-such-batch") == "deleted"


def test_containers_refuse_the_sqlite_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modal_app.modal, "is_local", lambda: False)

    with pytest.raises(ConfigError, match="BULKGPT_STORE is sqlite"):
        modal_app.process_batch.local("any-batch")


# -- planning and pacing


@pytest.mark.parametrize(
    ("total", "shard_rows", "max_shards", "expected"),
    [
        (0, 100, 4, []),
        (99, 100, 4, [(0, 99)]),
        (100, 100, 4, [(0, 100)]),
        (101, 100, 4, [(0, 51), (51, 101)]),
        (300, 100, 4, [(0, 100), (100, 200), (200, 300)]),
        (1000, 100, 4, [(0, 250), (250, 500), (500, 750), (750, 1000)]),
        (10, 3, 20, [(0, 3), (3, 6), (6, 8), (8, 10)]),
    ],
)
def test_plan_shards_covers_every_row_once(
    total: int, shard_rows: int, max_shards: int, expected: list[tuple[int, int]]
) -> None:
    assert shards.plan_shards(total, shard_rows, max_shards) == expected


def test_plan_shards_for_a_million_rows() -> None:
    ranges = shards.plan_shards(1_000_000, 50_000, 20)

    assert len(ranges) == 20
    assert ranges[0] == (0, 50_000) and ranges[-1] == (950_000, 1_000_000)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_rate_limits_are_shared_out() -> None:
    assert shards.share_of(None, 4) is None
    assert shards.share_of(1000, 3) == 333
    assert shards.share_of(2, 3) == 1


NO_FILE = {"BULKGPT_SECRETS_FILE": "/nonexistent/secrets.toml"}


def test_shard_config_comes_from_settings() -> None:
    assert ShardConfig.from_settings(Settings.from_env(NO_FILE)) == ShardConfig(
        50_000, 20
    )
    settings = Settings.from_env(
        {**NO_FILE, "BULKGPT_SHARD_ROWS": "1000", "BULKGPT_MAX_SHARDS": "5"}
    )
    assert ShardConfig.from_settings(settings) == ShardConfig(1000, 5)
    with pytest.raises(ConfigError, match="BULKGPT_MAX_SHARDS"):
        Settings.from_env({**NO_FILE, "BULKGPT_MAX_SHARDS": "0"})


class InstantModel:
    name = "instant"

    def __init__(self) -> None:
        self.times: list[float] = []

    async def generate(self, prompt: str, settings: GenerationSettings) -> ModelReply:
        self.times.append(time.monotonic())
        return ModelReply("ok", 1, 1, "STOP", 0.0)

    async def aclose(self) -> None:
        pass


def test_a_shard_paces_to_its_share() -> None:
    inner = InstantModel()
    model = shards.PacedModel(inner, rpm=1200, tpm=None)  # one call per 50 ms
    settings = GenerationSettings(model="instant")

    async def six_calls() -> None:
        await asyncio.gather(*(model.generate("hi", settings) for _ in range(6)))

    asyncio.run(six_calls())

    assert inner.times[-1] - inner.times[0] >= 0.24


def test_the_rate_meter_uses_a_sliding_window() -> None:
    now = [0.0]
    meter = shards.RateMeter(window_s=10, clock=lambda: now[0])

    assert meter.add(0) == 0.0
    now[0] = 5
    assert meter.add(50) == 10.0
    now[0] = 20
    assert meter.add(100) == 0.0  # only this sample is inside the window
    now[0] = 25
    assert meter.add(150) == 10.0


# -- (2) the app's Modal path, with the Modal client replaced


class FakeCall:
    def __init__(self, object_id: str, log: list[tuple[str, ...]]) -> None:
        self.object_id = object_id
        self.log = log

    def cancel(self) -> None:
        self.log.append(("cancel", self.object_id))


class FakeFunction:
    def __init__(self, fake: FakeModal, app_name: str, name: str) -> None:
        self.fake = fake
        self.app_name = app_name
        self.name = name

    def hydrate(self) -> FakeFunction:
        self.fake.fail("hydrate")
        return self

    def spawn(self, *args: Any) -> FakeCall:
        self.fake.fail("spawn")
        self.fake.log.append(("spawn", self.app_name, self.name, *args))
        return FakeCall("fc-01TEST", self.fake.log)


class FakeModal:
    """Stands in for the Modal client at modal_launch's lookup boundary."""

    def __init__(self) -> None:
        self.log: list[tuple[str, ...]] = []
        self.errors: dict[str, Exception] = {}

    def fail(self, step: str) -> None:
        if step in self.errors:
            raise self.errors[step]

    def lookup(self, app_name: str, name: str) -> FakeFunction:
        self.log.append(("lookup", app_name, name))
        return FakeFunction(self, app_name, name)

    def function_call(self, call_id: str) -> FakeCall:
        self.fail("cancel")
        return FakeCall(call_id, self.log)


@pytest.fixture
def fake_modal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeModal:
    fake = FakeModal()
    monkeypatch.setattr(modal_launch, "_lookup_function", fake.lookup)
    monkeypatch.setattr(modal_launch, "_function_call", fake.function_call)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    return fake


def settings_from(values: dict[str, str]) -> Settings:
    return Settings.from_env(values, secrets_path=ROOT / "tests" / "no-secrets.toml")


@pytest.fixture
def modal_settings(fake_modal: FakeModal, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings that can run on Modal: a remote database and a token."""
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    return settings_from(
        {
            "BULKGPT_RUNNER": "modal",
            "BULKGPT_STORE": "postgres",
            "DATABASE_URL": "postgresql://bulkgpt@db.example.com:5432/bulkgpt",
            "BULKGPT_MODAL_APP": "bulkgpt-test",
        }
    )


def test_start_worker_spawns_process_batch_and_stores_the_call_id(
    fake_modal: FakeModal, modal_settings: Settings, sqlite_store: SQLiteStore
) -> None:
    batch_id = make_batch(sqlite_store, 3)

    call_id = start_worker(modal_settings, sqlite_store, batch_id)

    assert call_id == "fc-01TEST"
    assert fake_modal.log == [
        ("lookup", "bulkgpt-test", "process_batch"),
        ("spawn", "bulkgpt-test", "process_batch", batch_id),
    ]
    batch = sqlite_store.get_batch(batch_id)
    assert (batch.runner, batch.call_id) == ("modal", "fc-01TEST")


def test_cancel_sets_the_flag_and_cancels_the_modal_call(
    fake_modal: FakeModal, sqlite_store: SQLiteStore
) -> None:
    batch_id = make_batch(sqlite_store, 3)
    sqlite_store.update_batch(batch_id, runner="modal", call_id="fc-01TEST")
    sqlite_store.set_status(batch_id, BatchStatus.RUNNING)
    sqlite_store.claim_rows(batch_id, after_index=-1, limit=2)

    # What runners.cancel_worker does: the flag first, then the call.
    flagged = jobs.cancel_batch(sqlite_store, batch_id)
    assert flagged.status is BatchStatus.CANCELLING
    batch = modal_launch.stop_modal_batch(sqlite_store, flagged)

    assert fake_modal.log == [("cancel", "fc-01TEST")]
    assert batch.status is BatchStatus.CANCELLED
    assert statuses(sqlite_store, batch_id)[RowStatus.PENDING] == 3


def test_cancelling_a_call_modal_forgot_still_settles_the_batch(
    fake_modal: FakeModal, sqlite_store: SQLiteStore
) -> None:
    fake_modal.errors["cancel"] = modal.exception.NotFoundError("no such call")
    batch_id = make_batch(sqlite_store, 3)
    sqlite_store.update_batch(batch_id, runner="modal", call_id="fc-OLD")
    sqlite_store.set_status(batch_id, BatchStatus.RUNNING)

    flagged = jobs.cancel_batch(sqlite_store, batch_id)
    batch = modal_launch.stop_modal_batch(sqlite_store, flagged)

    assert modal_launch.cancel_on_modal("fc-OLD") is False
    assert batch.status is BatchStatus.CANCELLED


def test_a_local_batch_is_not_cancelled_on_modal(
    fake_modal: FakeModal, sqlite_store: SQLiteStore
) -> None:
    batch_id = make_batch(sqlite_store, 3)
    sqlite_store.update_batch(batch_id, runner="local", call_id="pid:1")

    batch = modal_launch.stop_modal_batch(
        sqlite_store, sqlite_store.get_batch(batch_id)
    )

    assert fake_modal.log == []
    assert batch.status is BatchStatus.PENDING


def test_the_launch_command_spawns_a_paused_batch(
    fake_modal: FakeModal,
    modal_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "launch.sqlite3"
    monkeypatch.setattr(modal_launch, "open_store", lambda settings: SQLiteStore(path))
    with SQLiteStore(path) as store:
        batch_id = make_batch(store, 3)
        store.set_status(batch_id, BatchStatus.PAUSED, last_error="Paused: budget")

    line = modal_launch.launch_on_modal_command(modal_settings, batch_id)

    assert line == (
        f"batch {batch_id} launched on Modal app 'bulkgpt-test' (call fc-01TEST); "
        f"follow it with: python -m bulkgpt_core status {batch_id}"
    )
    assert ("spawn", "bulkgpt-test", "process_batch", batch_id) in fake_modal.log
    with SQLiteStore(path) as store:
        batch = store.get_batch(batch_id)
    assert (batch.status, batch.last_error) == (BatchStatus.PENDING, None)
    assert (batch.runner, batch.call_id) == ("modal", "fc-01TEST")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (BatchStatus.RUNNING, "is running already (modal fc-01TEST)"),
        (BatchStatus.COMPLETED, "This batch is complete"),
    ],
)
def test_the_launch_command_refuses_a_batch_it_cannot_start(
    fake_modal: FakeModal,
    modal_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    status: BatchStatus,
    message: str,
) -> None:
    path = tmp_path / "launch.sqlite3"
    monkeypatch.setattr(modal_launch, "open_store", lambda settings: SQLiteStore(path))
    with SQLiteStore(path) as store:
        batch_id = make_batch(store, 0)
        store.update_batch(batch_id, runner="modal", call_id="fc-01TEST")
        store.set_status(batch_id, status)

    with pytest.raises((RunnerError, BatchStateError), match=re.escape(message)):
        modal_launch.launch_on_modal_command(modal_settings, batch_id)

    assert not [entry for entry in fake_modal.log if entry[0] == "spawn"]


def test_ready_when_everything_is_in_place(
    fake_modal: FakeModal, modal_settings: Settings
) -> None:
    assert modal_launch.check_modal_ready(modal_settings) is None
    assert fake_modal.log == [("lookup", "bulkgpt-test", "process_batch")]


def test_a_token_in_the_modal_config_file_is_enough(
    fake_modal: FakeModal,
    modal_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    config = tmp_path / "modal.toml"
    config.write_text('[work]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(config))

    assert modal_launch.check_modal_ready(modal_settings) is None


SETTINGS_PROBLEMS = {
    "sqlite": (
        {"BULKGPT_STORE": "sqlite"},
        "Batches can't run on Modal with the SQLite store: a Modal container can't "
        "see a file on this computer. Use Supabase or PostgreSQL",
    ),
    "no database": (
        {"DATABASE_URL": ""},
        "DATABASE_URL is not set: Modal needs the store's address.",
    ),
    "localhost": (
        {"DATABASE_URL": "postgresql://me@localhost:5432/bulkgpt"},
        "DATABASE_URL points at this computer (localhost), which a Modal container "
        "can't reach",
    ),
    "local supabase": (
        {"BULKGPT_STORE": "supabase", "SUPABASE_URL": "http://127.0.0.1:54321"},
        "SUPABASE_URL points at this computer (127.0.0.1)",
    ),
}


@pytest.mark.parametrize("case", SETTINGS_PROBLEMS)
def test_settings_that_cannot_work_on_modal_are_named(
    fake_modal: FakeModal, modal_settings: Settings, case: str
) -> None:
    changes, message = SETTINGS_PROBLEMS[case]
    settings = settings_from({**modal_settings.source, **changes})

    problem = modal_launch.check_modal_ready(settings)

    assert problem is not None and problem.startswith(message)
    assert problem.endswith(
        "Or set BULKGPT_RUNNER=local to run batches on this computer."
    )
    with pytest.raises(RunnerError, match="BULKGPT_RUNNER=local"):
        modal_launch.spawn_on_modal(settings, "batch-1")
    assert fake_modal.log == []


def test_missing_credentials_are_named(
    fake_modal: FakeModal, modal_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODAL_TOKEN_SECRET")

    problem = modal_launch.check_modal_ready(modal_settings)

    assert problem is not None
    assert problem.startswith("No Modal credentials were found: run `modal token new`")
    assert "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" in problem
    assert fake_modal.log == []


MODAL_FAILURES = {
    "not deployed": (
        modal.exception.NotFoundError("App 'bulkgpt-test' not found"),
        "The Modal app 'bulkgpt-test' is not deployed (or BULKGPT_MODAL_APP names "
        "another app): deploy it with `modal deploy -m bulkgpt_core.modal_app`.",
    ),
    "auth": (
        modal.exception.AuthError("Token invalid"),
        "Modal refused the credentials (Token invalid): run `modal token new`",
    ),
    "unreachable": (
        modal.exception.ConnectionError("DNS failure"),
        "Modal can't be reached (DNS failure): check the internet connection",
    ),
    "other": (
        modal.exception.InvalidError("Bad request"),
        "Modal failed: InvalidError: Bad request",
    ),
}


@pytest.mark.parametrize("case", MODAL_FAILURES)
def test_modal_errors_are_translated(
    fake_modal: FakeModal, modal_settings: Settings, case: str
) -> None:
    error, message = MODAL_FAILURES[case]
    fake_modal.errors = {"hydrate": error, "spawn": error}

    problem = modal_launch.check_modal_ready(modal_settings)
    with pytest.raises(RunnerError) as raised:
        modal_launch.spawn_on_modal(modal_settings, "batch-1")

    assert problem is not None and problem.startswith(message)
    assert str(raised.value) == problem
    assert isinstance(raised.value.__cause__, modal.exception.Error)


def test_start_worker_reports_an_app_that_is_not_deployed(
    fake_modal: FakeModal, modal_settings: Settings, sqlite_store: SQLiteStore
) -> None:
    fake_modal.errors["spawn"] = modal.exception.NotFoundError("not found")
    batch_id = make_batch(sqlite_store, 3)

    with pytest.raises(RunnerError, match="is not deployed"):
        start_worker(modal_settings, sqlite_store, batch_id)

    batch = sqlite_store.get_batch(batch_id)
    assert (batch.status, batch.call_id) == (BatchStatus.PENDING, None)


# -- (3) the Modal module, imported with no credentials


def test_the_modal_module_imports_without_credentials(tmp_path: Path) -> None:
    script = (
        "import json, bulkgpt_core.modal_app as m\n"
        "info = {n: f.info() for n, f in "
        "(('process_batch', m.process_batch), ('process_shard', m.process_shard))}\n"
        "print(json.dumps({'app': m.app.name, **{n: {'timeout': i.timeout, "
        "'retries': i.max_retries, 'secrets': i.secrets, 'cpu': i.cpu, "
        "'memory': i.memory_mib} for n, i in info.items()}}))\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODAL_", "BULKGPT_", "GEMINI_"))
    }
    env.update(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "none.toml"))

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["app"] == "bulkgpt"
    for name in ("process_batch", "process_shard"):
        assert found[name] == {
            "timeout": 24 * 60 * 60,
            "retries": 3,
            "secrets": ["modal.Secret.from_name('bulkgpt-secrets')"],
            "cpu": 1.0,
            "memory": 1024,
        }


def test_the_modal_functions_settings() -> None:
    assert modal_app.MINUTES == 60 and modal_app.HOURS == 3600
    retries = modal_app.RETRIES
    assert retries.max_retries == 3
    assert retries.initial_delay.total_seconds() == 10.0
    assert retries.backoff_coefficient == 2.0
    assert modal_app.secret.name == "bulkgpt-secrets"


def test_the_image_pins_what_requirements_txt_pins() -> None:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name] = version
    for requirement in modal_app.WORKER_REQUIREMENTS:
        name, version = requirement.split("==")
        assert pins[name] == version, requirement
    assert not {"streamlit", "pandas", "modal"} & {
        r.split("==")[0] for r in modal_app.WORKER_REQUIREMENTS
    }
