"""Fixtures shared by every test: an isolated environment, stores, a fake Gemini."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkgpt_core.batches import GenerationSettings, NewBatch, RunLimits
from bulkgpt_core.config import Settings
from bulkgpt_core.stores.sqlite import SQLiteStore
from tests.fake_gemini import FakeGemini
from tests.store_fixtures import (  # noqa: F401
    PROJECT_STORE_KINDS,
    clean_database,
    gateway,
    postgres_server,
    postgres_store,
    postgrest_gateway,
    supabase_project_store,
    supabase_store,
)

TEST_KEY = "test-key-not-secret"
SETTING_PREFIXES = ("GEMINI_", "BULKGPT_", "SUPABASE_", "DATABASE_URL", "MODAL_")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Keep real keys and settings out of tests; give each test its own data folder."""
    for name in list(os.environ):
        if name.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BULKGPT_SECRETS_FILE", str(tmp_path / "no-secrets.toml"))
    data_dir = tmp_path / "data"
    monkeypatch.setenv("BULKGPT_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture(scope="session")
def fake_gemini_server() -> Iterator[FakeGemini]:
    server = FakeGemini.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gemini(
    fake_gemini_server: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> FakeGemini:
    """The fake Gemini server, reset, with the environment pointing at it."""
    fake_gemini_server.reset()
    fake_gemini_server.configure(**FakeGemini.DEFAULTS)
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    monkeypatch.setenv("GEMINI_BASE_URL", fake_gemini_server.url)
    return fake_gemini_server


@pytest.fixture
def settings(isolated_env: Path) -> Settings:
    return Settings.from_env()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.sqlite3")
    yield store
    store.close()


def new_batch_spec(
    columns: list[str] | None = None,
    *,
    template: str = "Say <<text>>",
    model: str = "gemini-2.5-flash",
    concurrency: int = 8,
    rpm: int | None = None,
    user_id: str | None = None,
    **generation: object,
) -> NewBatch:
    return NewBatch(
        name="test batch",
        template=template,
        columns=columns or ["text"],
        generation=GenerationSettings(model=model, **generation),  # type: ignore[arg-type]
        limits=RunLimits(concurrency=concurrency, rpm=rpm, max_attempts=4),
        source_name="test.csv",
        user_id=user_id,
    )


#: Every store the contract suite runs against; each names a fixture ``<kind>_store``.
STORE_KINDS = ["sqlite", "postgres", "supabase", *PROJECT_STORE_KINDS]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest):
    """Each store in turn, empty."""
    return request.getfixturevalue(f"{request.param}_store")
