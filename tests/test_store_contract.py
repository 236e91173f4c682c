"""The contract every store keeps, run against each of them."""

from __future__ import annotations

import pytest

from bulkgpt_core.batches import BatchStatus, RowResult, RowStatus
from bulkgpt_core.errors import BatchNotFound, LabRunNotFound
from bulkgpt_core.stores.base import Store
from tests.conftest import new_batch_spec


def ok(index: int, text: str = "fine", tokens: int = 10) -> RowResult:
    return RowResult(
        index=index,
        status=RowStatus.SUCCEEDED,
        output=text,
        prompt_hash=f"h{index}",
        tokens_in=tokens,
        tokens_out=tokens,
        cost_usd=0.001,
        latency_ms=5,
        finish_reason="STOP",
    )


def bad(index: int, kind: str = "safety") -> RowResult:
    return RowResult(
        index=index,
        status=RowStatus.FAILED,
        error_kind=kind,
        error_message=f"{kind} happened",
        tokens_in=3,
        cost_usd=0.0001,
    )


def make_batch(store: Store, rows: int = 10, **kwargs):
    batch = store.create_batch(new_batch_spec(["text", "n"], **kwargs))
    added = store.add_rows(
        batch.id,
        ({"text": f"row {i}", "n": f"{i:03d}"} for i in range(rows)),
        chunk_rows=4,
    )
    assert added == rows
    return store.get_batch(batch.id)


def statuses(store: Store, batch_id: str) -> list[str]:
    return [r.status.value for r in store.iter_rows(batch_id)]


def assert_counters_match_rows(store: Store, batch_id: str) -> None:
    batch = store.get_batch(batch_id)
    rows = list(store.iter_rows(batch_id))
    assert batch.total_rows == len(rows)
    assert batch.succeeded == sum(r.status is RowStatus.SUCCEEDED for r in rows)
    assert batch.failed == sum(r.status is RowStatus.FAILED for r in rows)


def test_create_and_read_back(store: Store) -> None:
    batch = make_batch(store, 10, temperature=0.5, max_output_tokens=100)
    assert batch.status is BatchStatus.PENDING
    assert batch.total_rows == 10
    assert batch.columns == ["text", "n"]
    assert batch.generation == {"temperature": 0.5, "max_output_tokens": 100}
    assert batch.limits["concurrency"] == 8
    assert batch.template == "Say <<text>>"
    assert (batch.succeeded, batch.failed, batch.tokens_in, batch.cost_usd) == (
        0,
        0,
        0,
        0.0,
    )
    rows = list(store.iter_rows(batch.id, page_rows=3))
    assert [r.index for r in rows] == list(range(10))
    assert rows[7].values == {"text": "row 7", "n": "007"}
    assert all(r.status is RowStatus.PENDING for r in rows)


def test_unknown_batch_is_not_found(store: Store) -> None:
    with pytest.raises(BatchNotFound):
        store.get_batch("00000000-0000-0000-0000-000000000000")


def test_list_is_newest_first(store: Store) -> None:
    first = make_batch(store, 1)
    second = make_batch(store, 1)
    listed = [b.id for b in store.list_batches()]
    assert listed.index(second.id) < listed.index(first.id)


def test_claim_pages_in_order_and_marks_running(store: Store) -> None:
    batch = make_batch(store, 10)
    page = store.claim_rows(batch.id, after_index=-1, limit=4)
    assert [r.index for r in page] == [0, 1, 2, 3]
    assert page[2].values["n"] == "002"
    page2 = store.claim_rows(batch.id, after_index=3, limit=4)
    assert [r.index for r in page2] == [4, 5, 6, 7]
    assert statuses(store, batch.id)[:8] == ["running"] * 8
    # Claimed rows are not handed out again.
    assert [r.index for r in store.claim_rows(batch.id, after_index=-1, limit=10)] == [
        8,
        9,
    ]


def test_claim_within_a_row_range(store: Store) -> None:
    batch = make_batch(store, 10)
    page = store.claim_rows(batch.id, after_index=-1, limit=100, row_range=(3, 6))
    assert [r.index for r in page] == [3, 4, 5]


def test_record_results_bumps_counters_once(store: Store) -> None:
    batch = make_batch(store, 5)
    store.claim_rows(batch.id, after_index=-1, limit=5)
    changed = store.record_results(batch.id, [ok(0), ok(1), bad(2)])
    assert changed == 3
    # The same results again (a retried flush) change nothing.
    assert store.record_results(batch.id, [ok(0), bad(2)]) == 0
    batch = store.get_batch(batch.id)
    assert (batch.succeeded, batch.failed) == (2, 1)
    assert batch.tokens_in == 23 and batch.tokens_out == 20
    assert batch.cost_usd == pytest.approx(0.0021)
    rows = list(store.iter_rows(batch.id))
    assert rows[0].output == "fine" and rows[0].finish_reason == "STOP"
    assert rows[2].error_kind == "safety" and rows[2].error_message == "safety happened"
    assert statuses(store, batch.id) == [
        "succeeded",
        "succeeded",
        "failed",
        "running",
        "running",
    ]
    assert_counters_match_rows(store, batch.id)


def test_requeue_and_release(store: Store) -> None:
    batch = make_batch(store, 6)
    store.claim_rows(batch.id, after_index=-1, limit=6)
    store.record_results(batch.id, [ok(0)])
    store.release_rows(batch.id, [5])
    assert statuses(store, batch.id)[5] == "pending"
    assert store.requeue_running(batch.id, (1, 3)) == 2
    assert statuses(store, batch.id) == [
        "succeeded",
        "pending",
        "pending",
        "running",
        "running",
        "pending",
    ]
    assert store.requeue_running(batch.id) == 2


def test_reset_failed_by_kind(store: Store) -> None:
    batch = make_batch(store, 4)
    store.claim_rows(batch.id, after_index=-1, limit=4)
    store.record_results(batch.id, [ok(0), bad(1, "safety"), bad(2, "timeout")])
    assert store.failure_counts(batch.id) == {"safety": 1, "timeout": 1}
    assert store.reset_failed(batch.id, ["timeout"]) == 1
    assert statuses(store, batch.id) == ["succeeded", "failed", "pending", "running"]
    assert store.get_batch(batch.id).failed == 1
    assert store.reset_failed(batch.id) == 1
    assert store.get_batch(batch.id).failed == 0
    assert_counters_match_rows(store, batch.id)


def test_status_changes(store: Store) -> None:
    batch = make_batch(store, 1)
    assert store.set_status(batch.id, BatchStatus.RUNNING)
    assert not store.set_status(
        batch.id, BatchStatus.RUNNING, only_from=[BatchStatus.PAUSED]
    )
    assert store.set_status(
        batch.id, BatchStatus.FAILED, only_from=[BatchStatus.RUNNING], last_error="boom"
    )
    batch = store.get_batch(batch.id)
    assert batch.status is BatchStatus.FAILED
    assert batch.last_error == "boom"
    assert batch.finished_at is not None
    store.update_batch(batch.id, call_id="pid:1", runner="local", rows_per_second=2.5)
    batch = store.get_batch(batch.id)
    assert (batch.call_id, batch.rows_per_second) == ("pid:1", 2.5)


def test_iter_rows_filters_and_latest(store: Store) -> None:
    batch = make_batch(store, 5)
    store.claim_rows(batch.id, after_index=-1, limit=5)
    store.record_results(batch.id, [bad(1)])
    store.record_results(batch.id, [ok(3)])
    failed = list(store.iter_rows(batch.id, status=RowStatus.FAILED))
    assert [r.index for r in failed] == [1]
    latest = store.latest_results(batch.id, limit=5)
    assert [r.index for r in latest] == [3, 1]


def test_find_reusable(store: Store) -> None:
    batch = make_batch(store, 3)
    store.claim_rows(batch.id, after_index=-1, limit=3)
    store.record_results(batch.id, [ok(0), bad(1)])
    found = store.find_reusable(["h0", "h1", "nope"])
    assert set(found) == {"h0"}
    assert found["h0"].output == "fine"


def test_delete_removes_rows(store: Store) -> None:
    batch = make_batch(store, 3)
    store.delete_batch(batch.id)
    with pytest.raises(BatchNotFound):
        store.get_batch(batch.id)
    with pytest.raises(BatchNotFound):
        list(store.iter_rows(batch.id))


def test_owner_scoping(store: Store) -> None:
    alice = "11111111-1111-1111-1111-111111111111"
    bob = "22222222-2222-2222-2222-222222222222"
    batch = make_batch(store, 2, user_id=alice)
    as_bob = store.scoped(bob)
    as_alice = store.scoped(alice)
    try:
        assert [b.id for b in as_alice.list_batches()] == [batch.id]
        assert as_bob.list_batches() == []
        for action in (
            lambda: as_bob.get_batch(batch.id),
            lambda: list(as_bob.iter_rows(batch.id)),
            lambda: as_bob.set_status(batch.id, BatchStatus.CANCELLED),
            lambda: as_bob.delete_batch(batch.id),
            lambda: as_bob.update_batch(batch.id, name="mine now"),
        ):
            with pytest.raises(BatchNotFound):
                action()
        assert store.get_batch(batch.id).name == "test batch"
        assert store.get_batch(batch.id).status is BatchStatus.PENDING
    finally:
        as_bob.close()
        as_alice.close()


def test_progress_samples(store: Store) -> None:
    batch = make_batch(store, 3)
    store.add_progress_sample(batch.id)
    store.claim_rows(batch.id, after_index=-1, limit=3)
    store.record_results(batch.id, [ok(0), bad(1)])
    store.add_progress_sample(batch.id)
    samples = store.progress_samples(batch.id)
    assert [(s.succeeded, s.failed) for s in samples] == [(0, 0), (1, 1)]
    assert samples[0].at <= samples[1].at


# -- prompt-lab runs ---------------------------------------------------------------

ALICE = "11111111-1111-1111-1111-111111111111"
BOB = "22222222-2222-2222-2222-222222222222"


def lab_run(name: str = "two prompts", **extra: object) -> dict:
    return {
        "name": name,
        "variants": [{"name": "A", "template": "Say <<text>>", "temperature": 0.2}],
        "rows": [{"index": 0, "values": {"text": "héllo \u2603"}}],
        "marks": {"0": 1},
        **extra,
    }


def test_lab_runs_are_saved_listed_and_replaced(store: Store) -> None:
    first = store.save_lab_run(lab_run("first"))
    second = store.save_lab_run(lab_run("second"))

    assert [r["id"] for r in store.list_lab_runs()] == [second, first]
    saved = store.get_lab_run(first)
    assert saved["name"] == "first"
    assert saved["variants"] == lab_run()["variants"]
    assert saved["rows"][0]["values"]["text"] == "héllo \u2603"
    assert saved["marks"] == {"0": 1}
    assert saved["created_at"] <= saved["updated_at"]

    changed = {**saved, "marks": {"0": 0}, "name": "first, marked"}
    assert store.save_lab_run(changed) == first
    again = store.get_lab_run(first)
    assert (again["name"], again["marks"]) == ("first, marked", {"0": 0})
    assert again["created_at"] == saved["created_at"]
    assert len(store.list_lab_runs()) == 2
    assert [r["id"] for r in store.list_lab_runs(limit=1)] == [second]


def test_lab_runs_can_be_deleted(store: Store) -> None:
    run_id = store.save_lab_run(lab_run())
    store.delete_lab_run(run_id)

    assert store.list_lab_runs() == []
    for action in (
        lambda: store.get_lab_run(run_id),
        lambda: store.delete_lab_run(run_id),
        lambda: store.save_lab_run({**lab_run(), "id": run_id}),
        lambda: store.get_lab_run("not-a-run"),
    ):
        with pytest.raises(LabRunNotFound):
            action()


def test_lab_runs_are_owner_scoped(store: Store) -> None:
    as_alice, as_bob = store.scoped(ALICE), store.scoped(BOB)
    try:
        run_id = as_alice.save_lab_run(lab_run("alice's"))
        assert [r["id"] for r in as_alice.list_lab_runs()] == [run_id]
        assert as_bob.list_lab_runs() == []
        for action in (
            lambda: as_bob.get_lab_run(run_id),
            lambda: as_bob.save_lab_run({**lab_run("bob's now"), "id": run_id}),
            lambda: as_bob.delete_lab_run(run_id),
        ):
            with pytest.raises(LabRunNotFound):
                action()
        assert store.get_lab_run(run_id)["name"] == "alice's"
    finally:
        as_alice.close()
        as_bob.close()
