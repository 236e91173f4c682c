"""The batches page under AppTest: the list, a batch's progress and buttons,
downloads, and what a user sees when something is wrong."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st

from bulkgpt_core import views
from bulkgpt_core.batches import BatchStatus, ProgressSample, RowResult, RowStatus
from bulkgpt_core.config import Settings
from bulkgpt_core.export import ExportFormat
from bulkgpt_core.stores.base import Store
from bulkgpt_core.stores.sqlite import SQLiteStore
from bulkgpt_core.worker import run_stored_batch
from tests.app_fixtures import (
    advance,
    all_text,
    app,
    button,
    create_batch,
    small_table,
    store_for_app,
    texts,
    wait_until_finished,
    workers_stopped,
)


@pytest.fixture
def store(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The app's store, with a demo model that answers at once."""
    monkeypatch.setenv("BULKGPT_DEMO_DELAY_MS", "0")
    app_store = store_for_app()
    yield app_store
    app_store.close()


def batch_page(batch_id: str | None = None):
    at = app("pages/batches.py")
    if batch_id is not None:
        at.query_params["batch"] = batch_id
        at.run()
    return at


@pytest.fixture
def refresh_intervals(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The ``run_every`` of every fragment the page creates, in order."""
    seen: list[object] = []
    real_fragment = st.fragment

    def recording_fragment(func=None, *, run_every=None, **kwargs):
        seen.append(run_every)
        return real_fragment(func, run_every=run_every, **kwargs)

    monkeypatch.setattr(st, "fragment", recording_fragment)
    return seen


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def finish(store: Store, batch_id: str) -> None:
    """Run a batch to its end in this process, with the demo model."""
    asyncio.run(run_stored_batch(Settings.from_env(), store, batch_id))


# --- The list ----------------------------------------------------------------------


def test_no_batches_yet(store: Store) -> None:
    at = batch_page()

    assert "No batches yet" in texts(at.info)[0]
    assert not at.exception


def test_batches_are_listed_newest_first(store: Store) -> None:
    older = create_batch(store, small_table(4))
    newer = create_batch(store, small_table(7))
    store.update_batch(newer.id, name="newer")
    advance(store, older, succeeded=1)

    at = batch_page()
    listed = at.dataframe[0].value

    assert list(listed.columns) == [
        "Name",
        "Created",
        "Status",
        "Progress",
        "Rows",
        "Cost",
    ]
    assert list(listed["Name"]) == ["newer", "known batch"]
    assert list(listed["Rows"]) == [7, 4]
    assert list(listed["Status"]) == ["pending", "running"]
    assert list(listed["Progress"]) == [0, 25]
    assert "Select a batch" in texts(at.caption)[0]


def test_selecting_a_row_puts_the_batch_in_the_url(store: Store) -> None:
    first = create_batch(store)
    second = create_batch(store)
    at = batch_page()

    at.session_state["batch_table"] = {"selection": {"rows": [1], "columns": []}}
    at.run()

    assert at.query_params["batch"] == first.id
    assert second.id != first.id
    assert [h.value for h in at.header] == ["known batch"]


def test_an_unknown_batch_in_the_url_is_explained(store: Store) -> None:
    create_batch(store)
    at = batch_page("no-such-batch")

    assert "no longer exists" in texts(at.warning)[0]
    assert not at.exception


# --- One batch -----------------------------------------------------------------------


def test_a_running_batch_shows_its_progress(
    store: Store, refresh_intervals: list[object]
) -> None:
    batch = create_batch(store, small_table(10))
    advance(store, batch, succeeded=4, failed=1)
    at = batch_page(batch.id)

    assert refresh_intervals[-2:] == [2, 10]
    assert at.query_params["batch"] == batch.id
    assert at.get("progress")[0].value == 50
    assert "50% · 5 of 10 rows · running" in at.get("progress")[0].proto.text
    shown = metrics(at)
    assert shown["Done"] == "5 of 10"
    assert shown["Failed"] == "1"
    assert shown["Remaining"] == "5"
    assert shown["Tokens in"] == "50"
    assert shown["Cost"] == "$0.00"
    assert "Blocked by safety filters**: 1 row." in all_text(at)
    latest = at.dataframe[1].value
    assert sorted(latest["Row"]) == [1, 2, 3, 4, 5]
    assert [b.label for b in at.get("download_button")] == [
        "CSV",
        "JSON",
        "JSONL",
        "Failed rows (CSV)",
        "Manifest (JSON)",
    ]
    assert "rows finished so far" in all_text(at)


def test_a_running_batch_without_its_worker_offers_resume(store: Store) -> None:
    batch = create_batch(store, small_table(10))
    advance(store, batch, succeeded=3)  # the worker's pid is not a process
    at = batch_page(batch.id)

    assert "No worker is running this batch" in " ".join(texts(at.warning))
    labels = [b.label for b in at.button]
    assert labels[:3] == ["Pause", "Resume", "Cancel"]


def test_a_finished_batch_shows_its_results_and_stops_refreshing(
    store: Store, refresh_intervals: list[object]
) -> None:
    batch = create_batch(store, small_table(3))
    finish(store, batch.id)
    at = batch_page(batch.id)

    assert refresh_intervals[-2:] == [None, None]
    assert "100% · 3 of 3 rows · completed" in at.get("progress")[0].proto.text
    assert metrics(at)["Done"] == "3 of 3"
    assert [b.label for b in at.button] == ["Delete…"]
    assert not at.warning
    assert len(at.dataframe[1].value) == 3
    assert len(at.get("download_button")) == 5
    assert "rows finished so far" not in all_text(at)


def test_the_prompt_of_a_batch_is_shown(store: Store) -> None:
    batch = create_batch(store)
    at = batch_page(batch.id)

    assert "Say <<text>>" in texts(at.code)


# --- Buttons -------------------------------------------------------------------------


def test_pause_then_cancel(store: Store) -> None:
    batch = create_batch(store)
    store.update_batch(batch.id, call_id="pid:999999999")
    at = batch_page(batch.id)

    button(at, "Pause").click().run()
    assert store.get_batch(batch.id).status is BatchStatus.PAUSED
    assert "Pausing" in texts(at.toast)[0]
    assert [b.label for b in at.button][:2] == ["Resume", "Cancel"]

    button(at, "Cancel").click().run()
    assert store.get_batch(batch.id).status is BatchStatus.CANCELLED


def test_resume_starts_a_worker_that_finishes_the_batch(
    store: Store, isolated_env: Path
) -> None:
    batch = create_batch(store, small_table(5))
    advance(store, batch, succeeded=2)
    store.set_status(batch.id, BatchStatus.PAUSED)
    at = batch_page(batch.id)

    with workers_stopped(isolated_env):
        button(at, "Resume").click().run()
        assert "Resumed" in texts(at.toast)[0]
        done = wait_until_finished(store, batch.id)

    assert done.status is BatchStatus.COMPLETED
    assert done.succeeded == 5
    assert store.get_batch(batch.id).call_id.startswith("pid:")


def test_retry_failed_rows(store: Store, isolated_env: Path) -> None:
    batch = create_batch(store, small_table(4))
    advance(store, batch, succeeded=2, failed=2)
    finish(store, batch.id)
    at = batch_page(batch.id)

    with workers_stopped(isolated_env):
        button(at, "Retry 2 failed rows").click().run()
        assert "Retrying 2 failed rows" in texts(at.toast)[0]
        done = wait_until_finished(store, batch.id)

    assert (done.succeeded, done.failed) == (4, 0)
    statuses = [r.status for r in store.iter_rows(batch.id)]
    assert statuses == [RowStatus.SUCCEEDED] * 4


def test_retry_failed_rows_of_one_reason(store: Store, isolated_env: Path) -> None:
    batch = create_batch(store, small_table(4))
    advance(store, batch, succeeded=1, failed=2)
    store.record_results(
        batch.id,
        [RowResult(3, RowStatus.FAILED, error_kind="timeout", error_message="slow")],
    )
    finish(store, batch.id)
    at = batch_page(batch.id)

    with workers_stopped(isolated_env):
        at.button(key="retry_timeout").click().run()
        assert "Retrying 1 row: no answer before the timeout" in texts(at.toast)[0]
        done = wait_until_finished(store, batch.id)

    assert (done.succeeded, done.failed) == (2, 2)
    assert store.failure_counts(batch.id) == {"safety": 2}


def test_resume_waits_for_a_worker_still_winding_down(store: Store) -> None:
    batch = create_batch(store)
    advance(store, batch, succeeded=1)
    store.set_status(batch.id, BatchStatus.PAUSED)
    # A live process stands in for the paused worker finishing its calls.
    store.update_batch(batch.id, call_id=f"pid:{os.getpid()}")
    at = batch_page(batch.id)

    button(at, "Resume").click().run()

    assert "still finishing its calls in flight" in " ".join(texts(at.warning))
    assert store.get_batch(batch.id).status is BatchStatus.PAUSED
    assert not at.exception


def test_delete_asks_first(store: Store) -> None:
    batch = create_batch(store)
    finish(store, batch.id)
    at = batch_page(batch.id)

    button(at, "Delete").click().run()
    assert "cannot be undone" in texts(at.warning)[0]
    button(at, "Keep it").click().run()
    assert store.get_batch(batch.id)
    assert not at.warning

    button(at, "Delete").click().run()
    button(at, "Yes, delete it").click().run()
    assert store.list_batches() == []
    assert "batch" not in at.query_params
    assert "Deleted" in texts(at.toast)[0]


def test_a_running_batch_cannot_be_deleted(store: Store) -> None:
    batch = create_batch(store)
    advance(store, batch, succeeded=1)
    store.update_batch(batch.id, call_id="modal-call-1", runner="modal")
    at = batch_page(batch.id)

    button(at, "Delete").click().run()
    button(at, "Yes, delete it").click().run()

    assert "still running" in " ".join(texts(at.warning))
    assert store.get_batch(batch.id)


# --- Downloads -----------------------------------------------------------------------


def test_downloads_hold_every_row_and_the_failed_ones(store: Store) -> None:
    batch = create_batch(store, small_table(4))
    advance(store, batch, succeeded=2, failed=1)  # one row still to do

    data = views.export_bytes(store, batch.id, ExportFormat.CSV)
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert [r["status"] for r in rows] == [
        "succeeded",
        "succeeded",
        "failed",
        "pending",
    ]
    assert rows[0]["output"] == "answer 0"

    failed = views.export_bytes(store, batch.id, ExportFormat.CSV, failed_only=True)
    assert [r["id"] for r in csv.DictReader(io.StringIO(failed.decode()))] == ["2"]

    exported = json.loads(views.export_bytes(store, batch.id, ExportFormat.JSON))
    assert len(exported["rows"]) == 4
    assert exported["manifest"]["counts"] == {
        "rows": 4,
        "succeeded": 2,
        "failed": 1,
        "remaining": 1,
        "reused": 0,
    }
    manifest = json.loads(views.manifest_download(store, batch.id))
    assert manifest["template"] == "Say <<text>>"
    assert manifest["batch_id"] == batch.id
    assert views.manifest_name(batch) == "known-batch-manifest.json"
    lines = views.export_bytes(store, batch.id, ExportFormat.JSONL).splitlines()
    assert len(lines) == 4
    assert views.download_name(batch, ExportFormat.JSONL) == "known-batch-results.jsonl"


# --- Problems ------------------------------------------------------------------------


def test_a_store_that_cannot_open_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKGPT_STORE", "supabase")
    at = batch_page()

    assert not at.exception
    [error] = texts(at.error)
    assert "SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY is not set" in error


def test_an_unexpected_error_shows_a_reference(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    create_batch(store)

    def broken(self, *, limit=200):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(SQLiteStore, "list_batches", broken)
    with caplog.at_level(logging.ERROR, logger="bulkgpt.app"):
        at = batch_page()

    assert not at.exception
    [message] = texts(at.error)
    assert "Something went wrong" in message
    assert "disk on fire" not in message
    assert any("disk on fire" in str(r.exc_info[1]) for r in caplog.records)


# --- What the page shows, as data ----------------------------------------------------


def test_throughput_is_bracketed_by_the_start_and_the_end(store: Store) -> None:
    batch = create_batch(store, small_table(10))
    start = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    batch.started_at = start
    batch.finished_at = start + timedelta(seconds=20)
    batch.succeeded, batch.failed = 9, 1
    samples = [ProgressSample(start + timedelta(seconds=10), 4, 0)]

    chart = views.throughput_frame(batch, samples)

    assert list(chart.columns) == ["Seconds", "Rows done", "Rows per second"]
    assert list(chart["Seconds"]) == [10, 20]
    assert list(chart["Rows done"]) == [4, 10]
    assert list(chart["Rows per second"]) == [0.4, 0.6]


def test_a_batch_that_never_started_has_no_throughput(store: Store) -> None:
    batch = create_batch(store)

    assert views.throughput_frame(batch, []).empty


def test_failures_are_grouped_in_plain_words() -> None:
    groups = views.failure_groups({"safety": 2, "mystery": 1, "other": 3})

    assert [(g.title, g.count) for g in groups] == [
        ("Unexpected error", 4),
        ("Blocked by safety filters", 2),
    ]
    assert all(g.fix for g in groups)


def test_costs_show_cents_and_small_amounts() -> None:
    assert views.format_cost(0) == "$0.00"
    assert views.format_cost(0.00123) == "$0.0012"
    assert views.format_cost(1234.5) == "$1,234.50"
    assert views.format_cost_range(0.1, 0.1) == "$0.1000"
    assert views.format_cost_range(0.1, 2) == "$0.1000 – $2.00"


# --- Reuse, budget, history ----------------------------------------------------------


def test_reused_rows_and_the_budget_are_shown(store: Store) -> None:
    batch = create_batch(store, small_table(4))
    store.update_batch(batch.id, budget_usd=1.0)
    store.set_status(batch.id, BatchStatus.RUNNING)
    store.claim_rows(batch.id, after_index=-1, limit=2)
    reused = [
        RowResult(i, RowStatus.SUCCEEDED, output="again", reused=True, saved_usd=0.001)
        for i in (0, 1)
    ]
    store.record_results(batch.id, reused)
    at = batch_page(batch.id)

    text = all_text(at)
    assert "Budget $1.00 · $0.00 spent (0%)" in text
    assert "2 rows reused, about $0.0020 saved" in text


def test_raise_the_budget_and_resume(store: Store, isolated_env: Path) -> None:
    batch = create_batch(store, small_table(3))
    store.update_batch(batch.id, budget_usd=0.01)
    store.set_status(
        batch.id, BatchStatus.PAUSED, last_error="Paused: the budget is spent."
    )
    at = batch_page(batch.id)
    assert at.number_input(key=f"budget_{batch.id}").value == 0.01

    at.number_input(key=f"budget_{batch.id}").set_value(5.0)
    with workers_stopped(isolated_env):
        button(at, "Save budget and resume").click().run()
        assert "Budget saved: resumed." in texts(at.toast)[0]
        done = wait_until_finished(store, batch.id)

    assert done.budget_usd == 5.0
    assert done.status is BatchStatus.COMPLETED


def test_the_budget_cap_can_be_removed(store: Store) -> None:
    batch = create_batch(store)
    store.update_batch(batch.id, call_id="pid:999999999")
    at = batch_page(batch.id)

    at.number_input(key=f"budget_{batch.id}").set_value(None)
    button(at, "Save budget").click().run()
    assert store.get_batch(batch.id).budget_usd is None
    assert "Budget saved." in texts(at.toast)[0]


def test_a_batch_links_to_a_new_batch_like_it(store: Store) -> None:
    batch = create_batch(store)
    at = batch_page(batch.id)

    [link] = at.get("page_link")
    assert link.proto.label == "Start a new batch from this one"
    assert link.proto.query_string == f"from={batch.id}"
