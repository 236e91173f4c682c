"""The engine, end to end: the real google-genai SDK against the fake Gemini server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bulkgpt_core.batches import BatchStatus, RowStatus
from bulkgpt_core.calls import backoff_delay
from bulkgpt_core.config import Settings
from bulkgpt_core.engine import EngineOptions
from bulkgpt_core.stores.base import Store
from bulkgpt_core.worker import run_stored_batch
from tests.conftest import new_batch_spec
from tests.fake_gemini import FakeGemini, prompt_hash

FAST = EngineOptions(
    base_backoff_s=0.01, max_backoff_s=0.05, flush_seconds=0.05, tick_seconds=0.05
)


def make_batch(store: Store, texts: list[str], **kwargs) -> str:
    batch = store.create_batch(new_batch_spec(["text"], **kwargs))
    store.add_rows(batch.id, ({"text": t} for t in texts))
    return batch.id


def run(store: Store, batch_id: str, options: EngineOptions = FAST):
    settings = Settings.from_env()
    return asyncio.run(run_stored_batch(settings, store, batch_id, options=options))


def rows_of(store: Store, batch_id: str):
    return list(store.iter_rows(batch_id))


def assert_counters_match(store: Store, batch_id: str) -> None:
    batch = store.get_batch(batch_id)
    rows = rows_of(store, batch_id)
    assert batch.succeeded == sum(r.status is RowStatus.SUCCEEDED for r in rows)
    assert batch.failed == sum(r.status is RowStatus.FAILED for r in rows)
    assert batch.tokens_in == sum(r.tokens_in for r in rows)
    assert batch.tokens_out == sum(r.tokens_out for r in rows)


def assert_no_prompt_answered_twice(gemini: FakeGemini) -> None:
    answers = gemini.stats()["answers_by_prompt"]
    assert all(count == 1 for count in answers.values()), answers


def test_every_row_gets_its_own_answer(gemini: FakeGemini, sqlite_store) -> None:
    texts = [f"row {i}" for i in range(60)]
    batch_id = make_batch(sqlite_store, texts, concurrency=8)

    batch = run(sqlite_store, batch_id)

    assert batch.status is BatchStatus.COMPLETED
    assert (batch.succeeded, batch.failed) == (60, 0)
    assert batch.finished_at is not None and batch.started_at is not None
    rows = rows_of(sqlite_store, batch_id)
    assert [r.output for r in rows] == [f"ANSWER: Say row {i}" for i in range(60)]
    assert all(r.finish_reason == "STOP" and r.tokens_in > 0 for r in rows)
    assert batch.cost_usd > 0
    assert_counters_match(sqlite_store, batch_id)
    stats = gemini.stats()
    assert stats["answered"] == 60
    assert stats["max_in_flight"] <= 8
    assert_no_prompt_answered_twice(gemini)


def test_faults_end_each_row_with_the_right_outcome(
    gemini: FakeGemini, sqlite_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKGPT_REQUEST_TIMEOUT", "1")
    gemini.configure(retry_delay="0.05s", hang_s=5)
    cases = {
        "plain": ("succeeded", None),
        "[[fake:429:2]]": ("succeeded", None),
        "[[fake:503:1]]": ("succeeded", None),
        "[[fake:500:1]]": ("succeeded", None),
        "[[fake:drop:1]]": ("succeeded", None),
        "[[fake:malformed:1]]": ("succeeded", None),
        "[[fake:hang:1]]": ("succeeded", None),
        "[[fake:500]]": ("failed", "server_error"),
        "[[fake:429]]": ("failed", "rate_limited"),
        "[[fake:safety]]": ("failed", "safety"),
        "[[fake:blocked_prompt]]": ("failed", "safety"),
        "[[fake:max_tokens]]": ("failed", "max_tokens"),
        "[[fake:empty]]": ("failed", "empty"),
        "[[fake:400]]": ("failed", "invalid_request"),
    }
    texts = [f"{case} #{n}" for n in (1, 2) for case in cases]
    batch_id = make_batch(sqlite_store, texts, concurrency=6)

    batch = run(sqlite_store, batch_id)

    assert batch.status is BatchStatus.COMPLETED
    for row in rows_of(sqlite_store, batch_id):
        status, kind = cases[row.values["text"].split(" #")[0]]
        assert (row.status.value, row.error_kind) == (status, kind), row
        if status == "succeeded":
            assert row.output == f"ANSWER: Say {row.values['text']}"
        else:
            assert row.error_message
    assert_counters_match(sqlite_store, batch_id)
    assert_no_prompt_answered_twice(gemini)
    # Retryable failures were tried up to the limit of attempts, no more.
    calls = gemini.stats()["calls_by_prompt"]
    assert calls[prompt_hash("Say [[fake:500]] #1")] == 4
    assert calls[prompt_hash("Say [[fake:safety]] #2")] == 1


def test_an_invalid_key_stops_the_batch_within_a_few_calls(
    gemini: FakeGemini, sqlite_store
) -> None:
    gemini.configure(api_key="the-right-key")
    batch_id = make_batch(sqlite_store, [f"row {i}" for i in range(200)], concurrency=4)

    batch = run(sqlite_store, batch_id)

    assert batch.status is BatchStatus.FAILED
    assert "key" in (batch.last_error or "").lower()
    assert gemini.stats()["total"] <= 8
    # Nothing was charged to the rows: they wait, untouched, for a resume.
    assert batch.done == 0
    assert {r.status for r in rows_of(sqlite_store, batch_id)} == {RowStatus.PENDING}


def test_an_unknown_model_stops_the_batch(gemini: FakeGemini, sqlite_store) -> None:
    batch_id = make_batch(sqlite_store, ["a", "b", "c"], model="no-such-model")
    batch = run(sqlite_store, batch_id)
    assert batch.status is BatchStatus.FAILED
    assert "no-such-model" in (batch.last_error or "")


def test_pause_then_resume_answers_every_row_once(
    gemini: FakeGemini, sqlite_store
) -> None:
    gemini.configure(latency_ms=20)
    batch_id = make_batch(sqlite_store, [f"row {i}" for i in range(300)], concurrency=4)
    pauser = threading.Thread(
        target=pause_when_done, args=(sqlite_store, batch_id, 40), daemon=True
    )
    pauser.start()

    batch = run(sqlite_store, batch_id)
    pauser.join()

    assert batch.status is BatchStatus.PAUSED
    assert 40 <= batch.done < 300
    statuses = {r.status for r in rows_of(sqlite_store, batch_id)}
    assert RowStatus.RUNNING not in statuses

    sqlite_store.set_status(batch_id, BatchStatus.PENDING)
    batch = run(sqlite_store, batch_id)

    assert batch.status is BatchStatus.COMPLETED
    assert batch.succeeded == 300
    assert gemini.stats()["answered"] == 300
    assert_no_prompt_answered_twice(gemini)
    assert_counters_match(sqlite_store, batch_id)


def test_cancel_records_calls_in_flight_and_stops(
    gemini: FakeGemini, sqlite_store
) -> None:
    gemini.configure(latency_ms=20)
    batch_id = make_batch(sqlite_store, [f"row {i}" for i in range(300)], concurrency=4)
    canceller = threading.Thread(
        target=cancel_when_done, args=(sqlite_store, batch_id, 30), daemon=True
    )
    canceller.start()

    batch = run(sqlite_store, batch_id)
    canceller.join()

    assert batch.status is BatchStatus.CANCELLED
    # Every answer the server gave was recorded; the rest were never sent.
    assert batch.succeeded == gemini.stats()["answered"]
    assert batch.done < 300
    assert_counters_match(sqlite_store, batch_id)


def test_rows_left_running_by_a_dead_worker_are_picked_up(
    gemini: FakeGemini, sqlite_store
) -> None:
    batch_id = make_batch(sqlite_store, [f"row {i}" for i in range(20)])
    sqlite_store.set_status(batch_id, BatchStatus.RUNNING)
    sqlite_store.claim_rows(batch_id, after_index=-1, limit=10)

    batch = run(sqlite_store, batch_id)

    assert batch.status is BatchStatus.COMPLETED
    assert batch.succeeded == 20


def test_a_shard_runs_only_its_rows(gemini: FakeGemini, sqlite_store) -> None:
    batch_id = make_batch(sqlite_store, [f"row {i}" for i in range(30)])
    options = EngineOptions(flush_seconds=0.05, tick_seconds=0.05, row_range=(10, 20))

    batch = run(sqlite_store, batch_id, options)

    done = [
        r.index for r in rows_of(sqlite_store, batch_id) if r.status.value != "pending"
    ]
    assert done == list(range(10, 20))
    assert batch.status is BatchStatus.RUNNING  # the coordinator settles the batch


def test_budget_pauses_the_batch(gemini: FakeGemini, sqlite_store) -> None:
    gemini.configure(latency_ms=10)
    spec = new_batch_spec(["text"], concurrency=2)
    batch = sqlite_store.create_batch(
        type(spec)(**{**spec.__dict__, "budget_usd": 0.00001})
    )
    sqlite_store.add_rows(batch.id, ({"text": f"{i} " + "x" * 400} for i in range(500)))

    batch = run(sqlite_store, batch.id)

    assert batch.status is BatchStatus.PAUSED
    assert "budget" in (batch.last_error or "")
    assert batch.done < 500


def test_a_prompt_over_the_limit_fails_only_its_row(
    gemini: FakeGemini, sqlite_store
) -> None:
    batch_id = make_batch(sqlite_store, ["short", "x" * 500, "also short"])
    options = EngineOptions(flush_seconds=0.05, tick_seconds=0.05, max_prompt_chars=100)

    run(sqlite_store, batch_id, options)

    rows = rows_of(sqlite_store, batch_id)
    assert [r.status.value for r in rows] == ["succeeded", "failed", "succeeded"]
    assert "BULKGPT_MAX_PROMPT_CHARS" in (rows[1].error_message or "")
    assert gemini.stats()["total"] == 2


def test_the_demo_model_needs_no_key(sqlite_store, monkeypatch) -> None:
    monkeypatch.setenv("BULKGPT_DEMO_DELAY_MS", "1")
    batch_id = make_batch(sqlite_store, ["one", "two"], model="demo")
    batch = run(sqlite_store, batch_id)
    assert batch.status is BatchStatus.COMPLETED
    assert all("demo" in (r.output or "") for r in rows_of(sqlite_store, batch_id))


def test_a_gemini_batch_without_a_key_fails_with_the_fix(sqlite_store) -> None:
    batch_id = make_batch(sqlite_store, ["one"])
    batch = run(sqlite_store, batch_id)
    assert batch.status is BatchStatus.FAILED
    assert "GEMINI_API_KEY" in (batch.last_error or "")


def test_backoff_grows_and_honours_the_server() -> None:
    delays = [backoff_delay(n, None, base=1, cap=8) for n in range(1, 6)]
    assert 0.5 <= delays[0] <= 1
    assert all(d <= 8 for d in delays)
    assert backoff_delay(1, 5.0, base=1, cap=8) >= 5.0


def pause_when_done(store: Store, batch_id: str, rows: int) -> None:
    wait_until(lambda: store.get_batch(batch_id).done >= rows)
    store.set_status(batch_id, BatchStatus.PAUSED)


def cancel_when_done(store: Store, batch_id: str, rows: int) -> None:
    wait_until(lambda: store.get_batch(batch_id).done >= rows)
    store.set_status(batch_id, BatchStatus.CANCELLING)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)
