"""The PostgreSQL side of the migrations, exercised on a real PostgreSQL 15.

Row-level security: a second user sees, changes and deletes nothing of the
first user's batches, through SQL (``SET ROLE authenticated`` with the JWT
claims set, as PostgREST does) and through the gateway with signed JWTs, and
``anon`` sees nothing at all. Then what the functions promise (SKIP LOCKED
claims, the state words), and the PostgreSQL store surviving a restart.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from bulkgpt_core.batches import BatchStatus, RowResult, RowStatus
from bulkgpt_core.errors import StoreError
from bulkgpt_core.stores.postgres import PostgresStore
from tests.conftest import new_batch_spec
from tests.pg import TEST_USERS, PostgresServer
from tests.postgrest_gateway import PostgrestGateway

pytestmark = pytest.mark.postgres

ALICE, BOB = TEST_USERS["alice"], TEST_USERS["bob"]
MISSING = "00000000-0000-0000-0000-000000000000"


@contextmanager
def session_as(
    server: PostgresServer, role: str, user_id: str | None = None
) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A connection as PostgREST makes it: authenticator, then the JWT's role."""
    claims = {"role": role} | ({"sub": user_id} if user_id else {})
    with server.connect("authenticator", autocommit=True, row_factory=dict_row) as conn:
        conn.execute(f"set role {role}")
        conn.execute(
            "select set_config('request.jwt.claims', %s, false)", (json.dumps(claims),)
        )
        yield conn


def ok(index: int) -> RowResult:
    return RowResult(index, RowStatus.SUCCEEDED, output="yes", prompt_hash=f"h{index}")


@pytest.fixture
def alice_batch(postgres_store: PostgresStore) -> str:
    """Alice's batch of 5 rows: row 0 succeeded, 1 failed, 2 running."""
    batch = postgres_store.create_batch(new_batch_spec(["text"], user_id=ALICE))
    postgres_store.add_rows(batch.id, ({"text": f"a{i}"} for i in range(5)))
    postgres_store.claim_rows(batch.id, after_index=-1, limit=3)
    failed = RowResult(1, RowStatus.FAILED, error_kind="safety", error_message="no")
    postgres_store.record_results(batch.id, [ok(0), failed])
    postgres_store.add_progress_sample(batch.id)
    return batch.id


def snapshot(server: PostgresServer, batch_id: str) -> tuple[Any, ...]:
    """Everything stored about a batch, read as the superuser."""
    with server.connect() as conn:
        batch = conn.execute("select * from batches where id = %s", (batch_id,))
        rows = conn.execute(
            "select * from batch_results where batch_id = %s order by row_index",
            (batch_id,),
        )
        samples = conn.execute(
            "select * from batch_progress where batch_id = %s", (batch_id,)
        )
        return batch.fetchall(), rows.fetchall(), samples.fetchall()


# -- row-level security, in SQL ------------------------------------------------------


def test_another_user_sees_and_changes_nothing(
    clean_database: PostgresServer, alice_batch: str
) -> None:
    before = snapshot(clean_database, alice_batch)
    with session_as(clean_database, "authenticated", BOB) as bob:
        for table, column in (
            ("batches", "id"),
            ("batch_results", "batch_id"),
            ("batch_progress", "batch_id"),
        ):
            where, args = f" where {column} = %s", (alice_batch,)
            found = bob.execute(f"select * from {table}{where}", args).fetchall()
            updated = bob.execute(
                f"update {table} set {column} = {column}{where}", args
            )
            deleted = bob.execute(f"delete from {table}{where}", args)
            assert (found, updated.rowcount, deleted.rowcount) == ([], 0, 0)
    assert snapshot(clean_database, alice_batch) == before


def test_another_user_cannot_write_into_a_batch(
    clean_database: PostgresServer, alice_batch: str
) -> None:
    with session_as(clean_database, "authenticated", BOB) as bob:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            bob.execute(
                "insert into batch_results (batch_id, row_index, input) "
                "values (%s, 99, '{}')",
                (alice_batch,),
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            bob.execute(
                "insert into batches (name, template, model, user_id) "
                "values ('x', 't', 'm', %s)",
                (ALICE,),
            )
        own = bob.execute(
            "insert into batches (name, template, model, user_id) "
            "values ('mine', 't', 'm', %s) returning id",
            (BOB,),
        ).fetchone()
        assert own is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            bob.execute(
                "update batches set user_id = %s where id = %s", (ALICE, own["id"])
            )


CALLS_ON_A_BATCH = [
    "select bulkgpt_claim_rows(%s, -1, 10)",
    'select bulkgpt_record_results(%s, \'[{"row_index": 2, "status": "succeeded"}]\')',
    "select bulkgpt_requeue_running(%s)",
    "select bulkgpt_reset_failed(%s)",
    "select bulkgpt_set_status(%s, 'cancelled')",
    "select bulkgpt_failure_counts(%s)",
    'select bulkgpt_add_rows(%s, 5, \'[{"text": "b"}]\')',
    "select bulkgpt_require_batch(%s)",
]


@pytest.mark.parametrize("call", CALLS_ON_A_BATCH)
def test_functions_do_not_find_another_users_batch(
    clean_database: PostgresServer, alice_batch: str, call: str
) -> None:
    before = snapshot(clean_database, alice_batch)
    with session_as(clean_database, "authenticated", BOB) as bob:
        with pytest.raises(psycopg.Error) as caught:
            bob.execute(call, (alice_batch,))
        assert caught.value.sqlstate == "PT404"
    assert snapshot(clean_database, alice_batch) == before


def test_quiet_functions_do_nothing_for_another_user(
    clean_database: PostgresServer, alice_batch: str
) -> None:
    before = snapshot(clean_database, alice_batch)
    with session_as(clean_database, "authenticated", BOB) as bob:
        released = bob.execute(
            "select bulkgpt_release_rows(%s, '{2}') as n", (alice_batch,)
        )
        assert released.fetchone() == {"n": 0}
        bob.execute("select bulkgpt_add_progress_sample(%s)", (alice_batch,))
        found = bob.execute("select * from bulkgpt_find_reusable('{h0}')")
        assert found.fetchall() == []
    assert snapshot(clean_database, alice_batch) == before


def test_the_owner_works_through_the_same_functions(
    clean_database: PostgresServer, alice_batch: str
) -> None:
    with session_as(clean_database, "authenticated", ALICE) as alice:
        claimed = alice.execute(
            "select * from bulkgpt_claim_rows(%s, -1, 10)", (alice_batch,)
        )
        assert [r["row_index"] for r in claimed.fetchall()] == [3, 4]
        results = json.dumps(
            [{"row_index": i, "status": "succeeded"} for i in (2, 3, 4)]
        )
        recorded = alice.execute(
            "select bulkgpt_record_results(%s, %s) as n", (alice_batch, results)
        )
        assert recorded.fetchone() == {"n": 3}
        batch = alice.execute("select succeeded, failed from batches").fetchone()
        assert batch == {"succeeded": 4, "failed": 1}
        assert alice.execute(
            "select bulkgpt_reset_failed(%s) as n", (alice_batch,)
        ).fetchone() == {"n": 1}
        alice.execute("delete from batches where id = %s", (alice_batch,))
    assert snapshot(clean_database, alice_batch) == ([], [], [])


def test_anon_sees_nothing_and_may_do_nothing(
    clean_database: PostgresServer, alice_batch: str
) -> None:
    with session_as(clean_database, "anon") as anon:
        for statement in (
            "select * from batches",
            "select * from batch_results",
            "select * from batch_progress",
            "insert into batches (name, template, model) values ('x', 't', 'm')",
            "select bulkgpt_requeue_running('" + alice_batch + "')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                anon.execute(statement)


def test_the_service_role_sees_everything(
    clean_database: PostgresServer, alice_batch: str
) -> None:
    with session_as(clean_database, "service_role") as service:
        assert service.execute(
            "select count(*) as n from batch_results"
        ).fetchone() == {"n": 5}


# -- row-level security, through the gateway ------------------------------------------


def test_another_users_jwt_gets_nothing_through_the_gateway(
    gateway: PostgrestGateway, clean_database: PostgresServer, alice_batch: str
) -> None:
    before = snapshot(clean_database, alice_batch)
    token = gateway.user_jwt(BOB)
    headers = {"apikey": gateway.anon_key, "Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway.url + "/rest/v1", headers=headers) as bob:
        only_alice = {"id": f"eq.{alice_batch}"}
        assert bob.get("/batches", params=only_alice).json() == []
        assert (
            bob.get("/batch_results", params={"batch_id": f"eq.{alice_batch}"}).json()
            == []
        )
        representation = {"Prefer": "return=representation"}
        patched = bob.patch(
            "/batches",
            params=only_alice,
            json={"name": "bob's"},
            headers=representation,
        )
        assert (patched.status_code, patched.json()) == (200, [])
        deleted = bob.delete("/batches", params=only_alice, headers=representation)
        assert (deleted.status_code, deleted.json()) == (200, [])
        claim = bob.post(
            "/rpc/bulkgpt_claim_rows",
            json={"p_batch_id": alice_batch, "p_after": -1, "p_limit": 5},
        )
        assert (claim.status_code, claim.json()["code"]) == (404, "PT404")
    assert snapshot(clean_database, alice_batch) == before


def test_lab_runs_are_each_users_own_through_the_gateway(
    gateway: PostgrestGateway, postgres_store: PostgresStore
) -> None:
    with postgres_store.scoped(ALICE) as as_alice:
        run_id = as_alice.save_lab_run({"name": "alice's", "x": 1})

    def client(token: str | None) -> httpx.Client:
        headers = {"apikey": gateway.anon_key}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=gateway.url + "/rest/v1", headers=headers)

    only_it = {"id": f"eq.{run_id}"}
    representation = {"Prefer": "return=representation"}
    with client(gateway.user_jwt(ALICE)) as alice:
        [own] = alice.get("/lab_runs", params=only_it).json()
        assert (own["name"], own["data"]) == ("alice's", {"x": 1})
    with client(gateway.user_jwt(BOB)) as bob:
        assert bob.get("/lab_runs", params=only_it).json() == []
        deleted = bob.delete("/lab_runs", params=only_it, headers=representation)
        assert deleted.json() == []
        stolen = bob.post("/lab_runs", json={"name": "mine", "user_id": ALICE})
        assert stolen.status_code in (401, 403)
    with client(None) as anon:
        assert anon.get("/lab_runs").status_code == 401
    assert postgres_store.get_lab_run(run_id)["name"] == "alice's"


def test_the_anon_key_gets_nothing_through_the_gateway(
    gateway: PostgrestGateway, alice_batch: str
) -> None:
    headers = {"apikey": gateway.anon_key}
    with httpx.Client(base_url=gateway.url + "/rest/v1", headers=headers) as anon:
        listed = anon.get("/batches")
        assert (listed.status_code, listed.json()["code"]) == (401, "42501")
        inserted = anon.post(
            "/batches", json={"name": "x", "template": "t", "model": "m"}
        )
        assert inserted.status_code == 401
        called = anon.post(
            "/rpc/bulkgpt_requeue_running", json={"p_batch_id": alice_batch}
        )
        assert called.status_code == 401


# -- what the schema promises -------------------------------------------------


def test_the_schema_holds_the_state_words(clean_database: PostgresServer) -> None:
    with clean_database.connect() as conn:
        comments = dict(
            conn.execute(
                "select c.relname, col_description(c.oid, a.attnum) from pg_class c "
                "join pg_attribute a on a.attrelid = c.oid and a.attname = 'status' "
                "where c.relname in ('batches', 'batch_results')"
            ).fetchall()
        )
        secured = conn.execute(
            "select bool_and(relrowsecurity) from pg_class where relname in "
            "('batches', 'batch_results', 'batch_progress')"
        ).fetchone()
        definers = conn.execute(
            "select count(*) from pg_proc where proname like 'bulkgpt%%' and prosecdef"
        ).fetchone()
        anon_may_call = conn.execute(
            "select count(*) from pg_proc where proname like 'bulkgpt%%' "
            "and has_function_privilege('anon', oid, 'execute')"
        ).fetchone()
    assert comments["batches"].split(", ") == [s.value for s in BatchStatus]
    assert comments["batch_results"].split(", ") == [s.value for s in RowStatus]
    assert secured == (True,)
    assert definers == (0,)  # every function runs as its caller, under RLS
    assert anon_may_call == (0,)


def test_concurrent_claims_never_share_a_row(
    clean_database: PostgresServer, postgres_store: PostgresStore
) -> None:
    batch = postgres_store.create_batch(new_batch_spec(["text"]))
    postgres_store.add_rows(batch.id, ({"text": str(i)} for i in range(10)))
    claim = "select row_index from bulkgpt_claim_rows(%s, -1, 5)"
    with clean_database.connect() as first, clean_database.connect() as second:
        held = [r[0] for r in first.execute(claim, (batch.id,))]  # not committed
        other = [r[0] for r in second.execute(claim, (batch.id,))]
        first.commit()
        second.commit()
    assert (held, other) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])


def test_parallel_workers_claim_each_row_once(
    clean_database: PostgresServer, postgres_store: PostgresStore
) -> None:
    batch = postgres_store.create_batch(new_batch_spec(["text"]))
    postgres_store.add_rows(batch.id, ({"text": str(i)} for i in range(400)))
    claimed: list[int] = []

    def work() -> None:
        store = PostgresStore(clean_database.url)
        try:
            while page := store.claim_rows(batch.id, after_index=-1, limit=7):
                claimed.extend(r.index for r in page)
                store.record_results(batch.id, [ok(r.index) for r in page])
        finally:
            store.close()

    workers = [threading.Thread(target=work) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(claimed) == list(range(400))
    assert postgres_store.get_batch(batch.id).succeeded == 400


# -- the PostgreSQL store and an outage ---------------------------------------


def test_the_store_fails_fast_while_down_and_recovers(
    clean_database: PostgresServer, postgres_store: PostgresStore
) -> None:
    batch = postgres_store.create_batch(new_batch_spec(["text"]))
    clean_database.stop()
    try:
        began = time.monotonic()
        for _ in range(3):
            with pytest.raises(StoreError, match="DATABASE_URL") as caught:
                postgres_store.get_batch(batch.id)
        assert time.monotonic() - began < 5
        assert "cannot be reached" in str(caught.value)
    finally:
        clean_database.start()
    assert postgres_store.get_batch(batch.id).id == batch.id


def test_missing_tables_name_the_fix(clean_database: PostgresServer) -> None:
    url = clean_database.url_for(database="postgres")
    with pytest.raises(StoreError, match="supabase db push"):
        PostgresStore(url)


@pytest.mark.parametrize("kind", ["postgres", "supabase"])
def test_nul_characters_are_replaced_not_refused(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL text cannot hold NUL; a model's answer may contain one."""
    store = request.getfixturevalue(f"{kind}_store")
    batch = store.create_batch(new_batch_spec(["text"]))
    store.add_rows(batch.id, [{"text": "a\x00b"}])
    store.claim_rows(batch.id, after_index=-1, limit=1)
    answer = RowResult(0, RowStatus.SUCCEEDED, output="x\x00y", parsed={"k": "\x00"})
    assert store.record_results(batch.id, [answer]) == 1
    [row] = store.iter_rows(batch.id)
    assert (row.values, row.output, row.parsed) == (
        {"text": "a\ufffdb"},
        "x\ufffdy",
        {"k": "\ufffd"},
    )
