"""The Supabase store beyond the contract: requests, retries, errors, ownership.

The real supabase client talks HTTP to the PostgREST-compatible gateway over
the session's PostgreSQL, so every request counted here is one the store
would send to a Supabase project.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from bulkgpt_core.batches import BatchStatus, RowResult, RowStatus
from bulkgpt_core.config import Settings
from bulkgpt_core.engine import EngineOptions
from bulkgpt_core.errors import BatchNotFound, StoreError
from bulkgpt_core.stores.supabase import MIN_CHUNK_ROWS, SupabaseStore
from bulkgpt_core.worker import run_stored_batch
from tests.conftest import new_batch_spec
from tests.pg import TEST_USERS, free_port
from tests.postgrest_gateway import PostgrestGateway, make_jwt
from tests.store_fixtures import FAST_RETRIES

pytestmark = pytest.mark.postgres

ALICE, BOB = TEST_USERS["alice"], TEST_USERS["bob"]
RPC = "/rest/v1/rpc/"


def ok(index: int) -> RowResult:
    return RowResult(
        index=index,
        status=RowStatus.SUCCEEDED,
        output=f"answer {index}",
        prompt_hash=f"h{index}",
        tokens_in=2,
        tokens_out=3,
        cost_usd=0.0001,
    )


def new_batch(store: SupabaseStore, rows: int, **kwargs: object) -> str:
    batch = store.create_batch(new_batch_spec(["text"], **kwargs))  # type: ignore[arg-type]
    store.add_rows(batch.id, ({"text": f"row {i}"} for i in range(rows)))
    return batch.id


# -- requests per operation -------------------------------------------------


def test_rows_go_in_chunks_of_at_least_500(
    supabase_store: SupabaseStore, gateway: PostgrestGateway
) -> None:
    batch = supabase_store.create_batch(new_batch_spec(["text"]))
    gateway.reset()
    before = supabase_store.requests_sent
    rows = ({"text": f"row {i}"} for i in range(5000))

    added = supabase_store.add_rows(batch.id, rows, chunk_rows=4)

    assert added == 5000
    assert gateway.count("POST", RPC + "bulkgpt_add_rows") == 5000 // MIN_CHUNK_ROWS
    assert gateway.count() == 1 + 10  # one read of total_rows, ten chunks
    assert supabase_store.requests_sent - before == 11
    stored = list(supabase_store.iter_rows(batch.id))
    assert [r.index for r in stored] == list(range(5000))
    assert stored[4321].values == {"text": "row 4321"}
    assert supabase_store.get_batch(batch.id).total_rows == 5000


def test_default_chunks_hold_a_thousand_rows(
    supabase_store: SupabaseStore, gateway: PostgrestGateway
) -> None:
    batch = supabase_store.create_batch(new_batch_spec(["text"]))
    gateway.reset()
    supabase_store.add_rows(batch.id, ({"text": "x"} for _ in range(5000)))
    assert gateway.count("POST", RPC + "bulkgpt_add_rows") == 5


def test_a_flush_of_results_is_one_request(
    supabase_store: SupabaseStore, gateway: PostgrestGateway
) -> None:
    batch_id = new_batch(supabase_store, 500)
    claimed = supabase_store.claim_rows(batch_id, after_index=-1, limit=500)
    before = supabase_store.requests_sent
    gateway.reset()

    changed = supabase_store.record_results(batch_id, [ok(r.index) for r in claimed])

    assert changed == 500
    assert supabase_store.requests_sent - before == 1
    assert [(r.method, r.path) for r in gateway.requests] == [
        ("POST", RPC + "bulkgpt_record_results")
    ]
    batch = supabase_store.get_batch(batch_id)
    assert (batch.succeeded, batch.tokens_in, batch.tokens_out) == (500, 1000, 1500)
    assert batch.cost_usd == pytest.approx(0.05)


def test_progress_is_one_row_read(
    supabase_store: SupabaseStore, gateway: PostgrestGateway
) -> None:
    batch_id = new_batch(supabase_store, 10)
    gateway.reset()
    assert supabase_store.get_batch(batch_id).total_rows == 10
    [request] = gateway.requests
    assert (request.method, request.path) == ("GET", "/rest/v1/batches")
    assert f"id=eq.{batch_id}" in request.query


def test_a_retried_chunk_or_flush_counts_once(supabase_store: SupabaseStore) -> None:
    """A request whose answer was lost may be sent again: nothing doubles."""
    batch_id = new_batch(supabase_store, 3)
    rpc = supabase_store.client.rpc
    chunk = {"p_batch_id": batch_id, "p_start": 3, "p_rows": [{"text": "again"}]}
    assert rpc("bulkgpt_add_rows", chunk).execute().data == 1
    assert rpc("bulkgpt_add_rows", chunk).execute().data == 0
    supabase_store.claim_rows(batch_id, after_index=-1, limit=4)
    assert supabase_store.record_results(batch_id, [ok(0), ok(3)]) == 2
    assert supabase_store.record_results(batch_id, [ok(0), ok(3)]) == 0
    batch = supabase_store.get_batch(batch_id)
    assert (batch.total_rows, batch.succeeded, batch.tokens_in) == (4, 2, 4)


# -- retries and errors -----------------------------------------------------


def test_503_then_success_is_retried_with_backoff(gateway: PostgrestGateway) -> None:
    store = SupabaseStore(gateway.url, gateway.service_role_key)  # default backoff
    try:
        batch_id = new_batch(store, 2)
        store.claim_rows(batch_id, after_index=-1, limit=2)
        gateway.fail_next(1)
        before, began = store.requests_sent, time.monotonic()

        assert store.record_results(batch_id, [ok(0), ok(1)]) == 2

        assert time.monotonic() - began >= 0.5
        assert store.requests_sent - before == 2
        assert [r.status for r in gateway.requests[-2:]] == [503, 200]
        assert store.get_batch(batch_id).succeeded == 2
    finally:
        store.close()


def test_a_dropped_connection_is_retried(
    supabase_store: SupabaseStore, gateway: PostgrestGateway
) -> None:
    batch_id = new_batch(supabase_store, 2)
    gateway.fail_next(2, status=None)
    assert [
        r.index for r in supabase_store.claim_rows(batch_id, after_index=-1, limit=5)
    ] == [0, 1]


def test_persistent_failure_is_a_store_error_with_supabase_message(
    supabase_store: SupabaseStore, gateway: PostgrestGateway
) -> None:
    batch_id = new_batch(supabase_store, 1)
    gateway.fail_for(60)
    before = supabase_store.requests_sent

    with pytest.raises(StoreError) as caught:
        supabase_store.get_batch(batch_id)

    message = str(caught.value)
    assert "Database client error. Retrying the connection." in message
    assert "HTTP 503" in message and "4 attempts" in message
    assert supabase_store.requests_sent - before == 1 + len(FAST_RETRIES)
    gateway.reset()
    assert supabase_store.get_batch(batch_id).total_rows == 1


def test_a_refused_request_carries_supabase_message(
    supabase_store: SupabaseStore,
) -> None:
    batch_id = new_batch(supabase_store, 1)
    before = supabase_store.requests_sent
    with pytest.raises(StoreError) as caught:
        supabase_store.update_batch(batch_id, name=None)
    assert 'null value in column "name"' in str(caught.value)
    assert "code 23502" in str(caught.value)
    assert supabase_store.requests_sent - before == 1  # a 400 is not retried


def test_a_wrong_key_is_named_and_not_shown(gateway: PostgrestGateway) -> None:
    key = make_jwt("service_role", secret="another-projects-secret-of-32-chars!!")
    store = SupabaseStore(gateway.url, key, retry_delays=FAST_RETRIES)
    try:
        with pytest.raises(StoreError) as caught:
            store.list_batches()
    finally:
        store.close()
    assert "SUPABASE_SERVICE_ROLE_KEY" in str(caught.value)
    assert key not in str(caught.value)
    assert store.requests_sent == 1


def test_an_unreachable_project_names_the_url_setting() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = SupabaseStore(url, "key", retry_delays=FAST_RETRIES)
    try:
        with pytest.raises(StoreError, match=r"cannot be reached.*SUPABASE_URL"):
            store.list_batches()
    finally:
        store.close()
    assert store.requests_sent == 1 + len(FAST_RETRIES)


def test_an_invalid_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="SUPABASE_URL"):
        SupabaseStore("not a url", "key")


def test_missing_functions_point_to_the_migrations(
    supabase_store: SupabaseStore,
) -> None:
    request = supabase_store.client.rpc("bulkgpt_not_there", {})
    with pytest.raises(StoreError, match="supabase db push"):
        supabase_store._execute("calling a function", request)


def test_an_unknown_batch_is_not_found_in_functions(
    supabase_store: SupabaseStore,
) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(BatchNotFound):
        supabase_store.claim_rows(missing, after_index=-1, limit=5)
    with pytest.raises(BatchNotFound):
        supabase_store.get_batch("not-a-uuid")


# -- ownership --------------------------------------------------------------


def test_an_owner_filters_every_request(
    supabase_store: SupabaseStore, gateway: PostgrestGateway
) -> None:
    alice_batch = new_batch(supabase_store, 4, user_id=ALICE)
    as_bob = supabase_store.scoped(BOB)
    try:
        for action in (
            lambda: as_bob.claim_rows(alice_batch, after_index=-1, limit=4),
            lambda: as_bob.record_results(alice_batch, [ok(0)]),
            lambda: as_bob.reset_failed(alice_batch),
            lambda: as_bob.requeue_running(alice_batch),
            lambda: as_bob.failure_counts(alice_batch),
            lambda: as_bob.add_rows(alice_batch, [{"text": "mine"}]),
            lambda: as_bob.latest_results(alice_batch),
        ):
            with pytest.raises(BatchNotFound):
                action()
        as_bob.add_progress_sample(alice_batch)
        as_bob.release_rows(alice_batch, [0])
        assert as_bob.find_reusable(["h0"]) == {}
    finally:
        as_bob.close()
    rows = list(supabase_store.iter_rows(alice_batch))
    assert [r.status for r in rows] == [RowStatus.PENDING] * 4
    assert supabase_store.progress_samples(alice_batch) == []
    assert supabase_store.get_batch(alice_batch).total_rows == 4


def test_a_user_token_works_through_row_level_security(
    gateway: PostgrestGateway,
) -> None:
    """The store, with a signed-in user's JWT instead of the service role."""
    store = SupabaseStore(
        gateway.url, gateway.user_jwt(ALICE), owner=ALICE, retry_delays=FAST_RETRIES
    )
    try:
        batch_id = new_batch(store, 600)
        claimed = store.claim_rows(batch_id, after_index=-1, limit=600)
        store.record_results(batch_id, [ok(r.index) for r in claimed[:550]])
        store.add_progress_sample(batch_id)
        batch = store.get_batch(batch_id)
        assert (batch.total_rows, batch.succeeded, batch.user_id) == (600, 550, ALICE)
        assert len(store.progress_samples(batch_id)) == 1
        store.delete_batch(batch_id)
        assert store.list_batches() == []
    finally:
        store.close()


# -- the engine on it -------------------------------------------------------


def test_a_batch_runs_to_completion(
    supabase_store: SupabaseStore, gateway: PostgrestGateway, gemini
) -> None:
    batch_id = new_batch(supabase_store, 40)
    gateway.reset()
    options = EngineOptions(flush_seconds=0.05, tick_seconds=0.05)

    batch = asyncio.run(
        run_stored_batch(Settings.from_env(), supabase_store, batch_id, options=options)
    )

    assert batch.status is BatchStatus.COMPLETED
    rows = list(supabase_store.iter_rows(batch_id))
    assert all(r.status is RowStatus.SUCCEEDED and r.output for r in rows)
    assert batch.succeeded == 40 and batch.tokens_in == sum(r.tokens_in for r in rows)
    assert gateway.count("POST", RPC + "bulkgpt_record_results") <= 40


# -- the gateway speaks PostgREST -------------------------------------------


@pytest.fixture
def rest(gateway: PostgrestGateway) -> Iterator[httpx.Client]:
    """Plain HTTP to the gateway, with the service role key."""
    key = gateway.service_role_key
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gateway.url + "/rest/v1", headers=headers) as client:
        yield client


def test_gateway_counts_filters_and_orders(
    rest: httpx.Client, supabase_store: SupabaseStore
) -> None:
    batch_id = new_batch(supabase_store, 30)
    answer = rest.get(
        "/batch_results",
        params={
            "select": "row_index,input",
            "batch_id": f"eq.{batch_id}",
            "row_index": "in.(3,5,7,9,11)",
            "status": "not.is.null",
            "order": "row_index.desc",
            "limit": "2",
            "offset": "1",
        },
        headers={"Prefer": "count=exact"},
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Range"] == "1-2/5"
    assert answer.json() == [
        {"row_index": 9, "input": {"text": "row 9"}},
        {"row_index": 7, "input": {"text": "row 7"}},
    ]


def test_gateway_upserts_and_reports_conflicts(
    rest: httpx.Client, supabase_store: SupabaseStore
) -> None:
    batch_id = new_batch(supabase_store, 1)
    row = {"batch_id": batch_id, "row_index": 0, "input": {"text": "new"}}
    conflict = rest.post("/batch_results", json=[row])
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "23505"
    merged = rest.post(
        "/batch_results",
        params={"on_conflict": "batch_id,row_index", "select": "input"},
        json=[row],
        headers={"Prefer": "return=representation,resolution=merge-duplicates"},
    )
    assert (merged.status_code, merged.json()) == (201, [{"input": {"text": "new"}}])
    patched = rest.patch(
        "/batches", params={"id": f"eq.{batch_id}"}, json={"name": "renamed"}
    )
    assert patched.status_code == 204
    assert supabase_store.get_batch(batch_id).name == "renamed"


def test_gateway_answers_unknown_functions_and_keys(
    rest: httpx.Client, gateway: PostgrestGateway
) -> None:
    unknown = rest.post("/rpc/bulkgpt_claim_rows", json={"p_nope": 1})
    assert (unknown.status_code, unknown.json()["code"]) == (404, "PGRST202")
    keyless = httpx.get(gateway.url + "/rest/v1/batches")
    assert keyless.status_code == 401


def test_real_project_smoke(supabase_project_store: SupabaseStore) -> None:
    """Runs only with SUPABASE_TEST_URL and SUPABASE_TEST_SERVICE_ROLE_KEY."""
    batch_id = new_batch(supabase_project_store, 3)
    assert supabase_project_store.get_batch(batch_id).total_rows == 3
