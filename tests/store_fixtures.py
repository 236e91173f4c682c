"""Fixtures for the PostgreSQL and Supabase stores.

One PostgreSQL starts per test session (``postgres_server``), and one
PostgREST-compatible gateway over it (``postgrest_gateway``). Every test that
asks for a store gets an emptied database, with the test users of
``tests.pg.TEST_USERS`` in ``auth.users``; a test that owns batches as other
users adds them with ``postgres_server.create_users(...)``.

``supabase_project_store`` runs against a real Supabase project when
SUPABASE_TEST_URL and SUPABASE_TEST_SERVICE_ROLE_KEY are set (read when this
module is imported, before the tests hide every SUPABASE_ variable).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from bulkgpt_core.batches import Batch, NewBatch
from bulkgpt_core.errors import BatchNotFound
from bulkgpt_core.stores.postgres import PostgresStore
from bulkgpt_core.stores.supabase import SupabaseStore
from tests.pg import INSTALL_HINT, TEST_USERS, PostgresServer, postgres_available
from tests.postgrest_gateway import PostgrestGateway

#: Test retries quickly; the default backoff is tested on its own.
FAST_RETRIES = (0.01, 0.02, 0.04)

REAL_SUPABASE_URL = os.environ.get("SUPABASE_TEST_URL", "")
REAL_SUPABASE_KEY = os.environ.get("SUPABASE_TEST_SERVICE_ROLE_KEY", "")
#: Store kinds the contract suite adds when a real project is configured.
PROJECT_STORE_KINDS = (
    ["supabase_project"] if REAL_SUPABASE_URL and REAL_SUPABASE_KEY else []
)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 with the Supabase basics and the migrations applied."""
    if not postgres_available():
        pytest.skip(INSTALL_HINT)
    server = PostgresServer.create()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgrest_gateway(postgres_server: PostgresServer) -> Iterator[PostgrestGateway]:
    """The PostgREST-compatible gateway over the session's PostgreSQL."""
    gateway = PostgrestGateway(postgres_server.url_for("authenticator")).start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def clean_database(postgres_server: PostgresServer) -> PostgresServer:
    """The session's PostgreSQL, emptied, with the test users."""
    postgres_server.reset()
    return postgres_server


@pytest.fixture
def postgres_store(clean_database: PostgresServer) -> Iterator[PostgresStore]:
    """An empty PostgresStore."""
    store = PostgresStore(clean_database.url)
    yield store
    store.close()


@pytest.fixture
def gateway(
    postgrest_gateway: PostgrestGateway, clean_database: PostgresServer
) -> PostgrestGateway:
    """The gateway with no faults planned and its request log emptied."""
    postgrest_gateway.reset()
    return postgrest_gateway


@pytest.fixture
def supabase_store(gateway: PostgrestGateway) -> Iterator[SupabaseStore]:
    """An empty SupabaseStore talking to the gateway with the service role key."""
    store = SupabaseStore(
        gateway.url, gateway.service_role_key, retry_delays=FAST_RETRIES
    )
    yield store
    store.close()


class _CleanUpStore(SupabaseStore):
    """A SupabaseStore that remembers the batches it created, to delete them."""

    created: list[str]

    def create_batch(self, spec: NewBatch) -> Batch:
        batch = super().create_batch(spec)
        self.created.append(batch.id)
        return batch


@pytest.fixture
def supabase_project_store() -> Iterator[SupabaseStore]:
    """A SupabaseStore on a real project (SUPABASE_TEST_URL and ..._KEY)."""
    if not (REAL_SUPABASE_URL and REAL_SUPABASE_KEY):
        pytest.skip(
            "Set SUPABASE_TEST_URL and SUPABASE_TEST_SERVICE_ROLE_KEY to run the "
            "store contract against a real Supabase project."
        )
    store = _CleanUpStore(REAL_SUPABASE_URL, REAL_SUPABASE_KEY)
    store.created = []
    _ensure_test_users(store)
    _delete_test_batches(store)
    yield store
    _delete_test_batches(store)
    store.close()


def _ensure_test_users(store: SupabaseStore) -> None:
    """The contract's owners must exist in the project's auth.users."""
    admin = store.client.auth.admin
    for name, user_id in TEST_USERS.items():
        try:
            admin.get_user_by_id(user_id)
        except Exception:  # any failure to find the user: create it
            admin.create_user(
                {
                    "id": user_id,
                    "email": f"bulkgpt-test-{name}@example.com",
                    "email_confirm": True,
                }
            )


def _delete_test_batches(store: _CleanUpStore) -> None:
    for user_id in TEST_USERS.values():
        scoped = store.scoped(user_id)
        try:
            for batch in scoped.list_batches():
                scoped.delete_batch(batch.id)
        finally:
            scoped.close()
    for batch_id in store.created:
        with contextlib.suppress(BatchNotFound):
            store.delete_batch(batch_id)
