"""One owner can do nothing at all to another owner's batch.

Through every store (SQLite, PostgreSQL, Supabase) scoped to a second owner,
and through what the app and the command line call on top (jobs, actions,
exports, downloads): each read says "not found", each change is refused or
does nothing, and afterwards everything stored about the batch is exactly as
it was. On PostgreSQL the same holds with row-level security alone: a
signed-in user's own token, with no owner filter in the store, reaches
nothing, and every table and function of the schema is locked down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bulkgpt_core import actions, jobs, views
from bulkgpt_core.batches import BatchStatus, RowResult, RowStatus
from bulkgpt_core.config import Settings
from bulkgpt_core.errors import BatchNotFound
from bulkgpt_core.export import ExportFormat, export_chunks
from bulkgpt_core.stores.base import Store
from bulkgpt_core.stores.supabase import SupabaseStore
from tests.conftest import new_batch_spec
from tests.pg import TEST_USERS, PostgresServer
from tests.postgrest_gateway import PostgrestGateway
from tests.store_fixtures import FAST_RETRIES

ALICE, BOB = TEST_USERS["alice"], TEST_USERS["bob"]
Attempt = Callable[[], Any]


def alices_batch(store: Store) -> str:
    """Alice's batch of 4 rows: succeeded, failed, running, pending; paused."""
    batch = store.create_batch(new_batch_spec(["text"], user_id=ALICE))
    store.add_rows(batch.id, ({"text": f"secret {i}"} for i in range(4)))
    store.claim_rows(batch.id, after_index=-1, limit=3)
    store.record_results(
        batch.id,
        [
            RowResult(
                0, RowStatus.SUCCEEDED, output="alice's answer", prompt_hash="h0"
            ),
            RowResult(1, RowStatus.FAILED, error_kind="safety", error_message="no"),
        ],
    )
    store.add_progress_sample(batch.id)
    store.set_status(batch.id, BatchStatus.PAUSED)
    return batch.id


def snapshot(store: Store, batch_id: str) -> tuple[Any, ...]:
    """Everything stored about a batch, read by the unscoped store."""
    return (
        store.get_batch(batch_id),
        list(store.iter_rows(batch_id)),
        store.progress_samples(batch_id),
    )


def attempts(store: Store, batch_id: str, alices: Store) -> dict[str, Attempt]:
    """Everything a second owner could try, by name; each must find nothing."""
    batch = alices.get_batch(batch_id)  # as if the id and more had leaked
    settings = Settings.from_env()
    fmt = ExportFormat
    return {
        "get": lambda: store.get_batch(batch_id),
        "rows": lambda: list(store.iter_rows(batch_id)),
        "failed rows": lambda: list(store.iter_rows(batch_id, status=RowStatus.FAILED)),
        "latest": lambda: store.latest_results(batch_id),
        "failures": lambda: store.failure_counts(batch_id),
        "progress": lambda: store.progress_samples(batch_id),
        "export csv": lambda: b"".join(export_chunks(store, batch, fmt.CSV)),
        "export json": lambda: b"".join(export_chunks(store, batch, fmt.JSON)),
        "export jsonl": lambda: b"".join(export_chunks(store, batch, fmt.JSONL)),
        "download": lambda: views.export_bytes(store, batch_id, fmt.CSV),
        "manifest": lambda: views.manifest_download(store, batch_id),
        "pause": lambda: jobs.pause_batch(store, batch_id),
        "resume": lambda: jobs.resume_batch(store, batch_id),
        "resume in the app": lambda: actions.resume(settings, store, batch_id),
        "cancel": lambda: jobs.cancel_batch(store, batch_id),
        "retry": lambda: jobs.retry_failed(store, batch_id),
        "retry in the app": lambda: actions.retry_failed_rows(
            settings, store, batch_id
        ),
        "budget": lambda: jobs.set_budget(store, batch_id, 1.0),
        "delete": lambda: store.delete_batch(batch_id),
        "delete in the app": lambda: actions.delete(store, batch_id),
        "rename": lambda: store.update_batch(batch_id, name="bob's now"),
        "status": lambda: store.set_status(batch_id, BatchStatus.CANCELLED),
        "add rows": lambda: store.add_rows(batch_id, [{"text": "bob's row"}]),
        "claim": lambda: store.claim_rows(batch_id, after_index=-1, limit=10),
        "record": lambda: store.record_results(
            batch_id, [RowResult(2, RowStatus.SUCCEEDED, output="bob was here")]
        ),
        "requeue": lambda: store.requeue_running(batch_id),
        "reset failed": lambda: store.reset_failed(batch_id),
    }


#: Changes that report nothing either way, as the SQL functions do: they must
#: simply change nothing.
QUIET: dict[str, Callable[[Store, str], Any]] = {
    "release": lambda store, batch_id: store.release_rows(batch_id, [2]),
    "sample": lambda store, batch_id: store.add_progress_sample(batch_id),
}


def outcome(attempt: Attempt) -> str:
    try:
        attempt()
    except BatchNotFound:
        return "not found"
    except Exception as exc:  # any other outcome is the failure
        return f"{type(exc).__name__}: {exc}"
    return "went through"


def assert_nothing_reachable(
    alices: Store, intruder: Store, batch_id: str, *, listed: bool = True
) -> None:
    before = snapshot(alices, batch_id)

    found = {
        name: outcome(attempt)
        for name, attempt in attempts(intruder, batch_id, alices).items()
    }
    for quiet in QUIET.values():
        assert outcome(lambda q=quiet: q(intruder, batch_id)) in (
            "not found",
            "went through",
        )

    assert found == dict.fromkeys(found, "not found")
    if listed:
        assert intruder.list_batches() == []
    assert intruder.find_reusable(["h0"]) == {}
    assert snapshot(alices, batch_id) == before


@pytest.fixture
def intruder(store: Store) -> Iterator[Store]:
    """The same store, scoped to Bob."""
    scoped = store.scoped(BOB)
    yield scoped
    scoped.close()


def test_a_second_owner_reaches_nothing_through_the_store_jobs_and_exports(
    store: Store, intruder: Store
) -> None:
    batch_id = alices_batch(store)

    assert_nothing_reachable(store, intruder, batch_id)


def test_the_owner_still_reaches_everything(store: Store) -> None:
    batch_id = alices_batch(store)
    alice = store.scoped(ALICE)
    try:
        assert [b.id for b in alice.list_batches()] == [batch_id]
        assert (
            len(
                b"".join(
                    export_chunks(alice, alice.get_batch(batch_id), ExportFormat.CSV)
                )
            )
            > 0
        )
        assert jobs.retry_failed(alice, batch_id) == 1
        assert set(alice.find_reusable(["h0"])) == {"h0"}
        jobs.cancel_batch(alice, batch_id)
        alice.delete_batch(batch_id)
    finally:
        alice.close()
    with pytest.raises(BatchNotFound):
        store.get_batch(batch_id)


# -- PostgreSQL: row-level security on its own ---------------------------------


@pytest.mark.postgres
def test_a_users_own_token_reaches_nothing_of_another_user(
    supabase_store: SupabaseStore, gateway: PostgrestGateway
) -> None:
    """The store with Bob's JWT and no owner filter: only RLS stands between."""
    batch_id = alices_batch(supabase_store)
    bobs_token = SupabaseStore(
        gateway.url, gateway.user_jwt(BOB), retry_delays=FAST_RETRIES
    )
    try:
        assert bobs_token.owner is None
        assert_nothing_reachable(supabase_store, bobs_token, batch_id)
    finally:
        bobs_token.close()


@pytest.mark.postgres
def test_every_table_and_function_of_the_schema_is_locked_down(
    clean_database: PostgresServer,
) -> None:
    """Not just the tables the tests know: any table a migration adds."""
    with clean_database.connect() as conn:
        tables = dict(
            conn.execute(
                "select c.relname, c.relrowsecurity from pg_class c "
                "where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'"
            ).fetchall()
        )
        anon_tables = conn.execute(
            "select table_name, privilege_type from information_schema."
            "role_table_grants where table_schema = 'public' and grantee = 'anon'"
        ).fetchall()
        functions = conn.execute(
            "select p.proname, p.prosecdef, "
            "has_function_privilege('anon', p.oid, 'execute') "
            "from pg_proc p where p.pronamespace = 'public'::regnamespace"
        ).fetchall()

    assert {"batches", "batch_results", "batch_progress"} <= set(tables)
    assert [name for name, secured in tables.items() if not secured] == []
    assert anon_tables == []
    assert [f for f in functions if f[1] or f[2]] == []  # no definer, no anon
