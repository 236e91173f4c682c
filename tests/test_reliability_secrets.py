"""A planted key never shows up anywhere BulkGPT writes or shows.

The test plants recognisable secrets (a Gemini key the fake server refuses,
a Supabase service role key, a PostgreSQL password), then does what people
do: runs batches from the command line and from the app, lets a key be
refused, has rows fail, kills a worker mid-batch, exports every format, and
opens the app on stores that cannot be reached. Then it scans everything
written or shown: every page element (sidebar included), every file under
the data folder (worker logs, journals, the SQLite store and its WAL, byte
for byte and dumped as SQL), every export and manifest, every command's
output, every stored error message.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bulkgpt_core.batches import BatchStatus
from bulkgpt_core.config import Settings
from bulkgpt_core.errors import BulkGPTError
from bulkgpt_core.stores import open_store
from bulkgpt_core.stores.sqlite import DB_FILE_NAME
from tests.app_fixtures import (
    app,
    button,
    store_for_app,
    texts,
    uploaded,
    wait_until_finished,
    workers_stopped,
)
from tests.fake_gemini import FakeGemini
from tests.hostile.processes import make_batch, running_worker, wait_for_done

ROOT = Path(__file__).resolve().parents[1]
MARK = "PLANTED"  # in every secret, and nowhere else
GEMINI_KEY = "AIza-PLANTED-SECRET-1234567890"
SERVICE_ROLE_KEY = "eyJ-PLANTED-SERVICE-ROLE-0987654321"
DB_PASSWORD = "PLANTED-DB-PASSWORD-5555"
DATABASE_URL = f"postgresql://bulkgpt:{DB_PASSWORD}@127.0.0.1:1/bulkgpt"
PEOPLE = b"id,name,note\n1,Ann,plain\n2,Bob,[[fake:400]]\n3,Cy,[[fake:500]]\n"


@pytest.fixture
def planted(gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> FakeGemini:
    """Every secret set, and a fake Gemini that takes another key."""
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_ROLE_KEY)
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("BULKGPT_MAX_ATTEMPTS", "2")
    gemini.configure(api_key="the-only-key-this-server-takes", retry_delay="0.05s")
    return gemini


class Seen:
    """Everything written or shown, by where it came from."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("latin-1")  # byte for byte, whatever the format
        self.texts[where] = self.texts.get(where, "") + text

    def add_page(self, where: str, at: AppTest) -> None:
        assert not at.exception, at.exception
        self.add(where, page_text(at))

    def leaks(self) -> list[str]:
        return [where for where, text in self.texts.items() if MARK in text]


def page_text(at: AppTest) -> str:
    """Every element of the page, sidebar included, as its protobuf text."""
    parts: list[str] = []

    def walk(node: object) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def cli(seen: Seen, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "bulkgpt_core", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seen.add(f"cli {args[0]}", done.stdout + done.stderr)
    return done


def files_under(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())


# -- what people do ------------------------------------------------------------


def run_on_the_command_line(seen: Seen, gemini: FakeGemini, tmp_path: Path) -> None:
    source = tmp_path / "people.csv"
    source.write_bytes(PEOPLE)
    out = tmp_path / "exports"
    out.mkdir()
    refused = cli(seen, "run", str(source), "--prompt", "Hi <<name>>: <<note>>",
                  "--out", str(out / "refused.csv"))  # fmt: skip
    assert refused.returncode == 1 and "key" in refused.stderr.lower()

    gemini.configure(api_key=None)  # now any key works
    done = cli(seen, "run", str(source), "--prompt", "Hi <<name>>: <<note>>",
               "--out", str(out / "answered.csv"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 succeeded, 2 failed" in done.stderr
    with open_store(Settings.from_env()) as store:
        for batch in store.list_batches():
            for suffix in ("json", "jsonl"):
                target = out / f"{batch.id}.{suffix}"
                assert (
                    cli(seen, "export", batch.id, "--out", str(target)).returncode == 0
                )
            cli(seen, "status", batch.id)
    cli(seen, "status")


def kill_a_worker_mid_batch(gemini: FakeGemini, data_dir: Path) -> None:
    """Leave a journal behind, as a crash does."""
    gemini.configure(latency_ms=30)
    with open_store(Settings.from_env()) as store:
        batch_id = make_batch(store, 400, concurrency=4)
        with running_worker(batch_id, data_dir / "logs" / "killed.log") as worker:
            wait_for_done(store, batch_id, 20)
            worker.kill()
    gemini.configure(latency_ms=0)
    assert any((data_dir / "journal").rglob("*.jsonl")), "no journal was left"


def use_the_app(seen: Seen, gemini: FakeGemini, data_dir: Path) -> None:
    gemini.configure(api_key="the-only-key-this-server-takes")
    at = uploaded(app(), PEOPLE, name="people.csv")
    assert "GEMINI_API_KEY set" in texts(at.sidebar.caption)
    at.text_area(key="template").input("Hi <<name>>").run()
    button(at, "Try it").click().run()
    assert any("key" in e.lower() for e in texts(at.error) + texts(at.warning))
    seen.add_page("app: try it", at)

    with workers_stopped(data_dir):
        button(at, "Launch").click().run()
        batch_id = at.query_params["batch"]
        with store_for_app() as store:
            failed = wait_until_finished(store, batch_id)
    assert failed.status is BatchStatus.FAILED
    assert "key" in (failed.last_error or "").lower()
    at.run()
    seen.add_page("app: the failed batch", at)
    at.switch_page("pages/batches.py").run()
    seen.add_page("app: the batch list", at)


def open_the_app_on_stores_that_fail(
    seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    for store, url in (("postgres", None), ("supabase", "not a url")):
        monkeypatch.setenv("BULKGPT_STORE", store)
        if url:
            monkeypatch.setenv("SUPABASE_URL", url)
        at = app()
        shown = " ".join(texts(at.sidebar.caption))
        secret = "DATABASE_URL" if store == "postgres" else "SUPABASE_SERVICE_ROLE_KEY"
        assert f"{secret} set" in shown
        at.switch_page("pages/batches.py").run()
        assert any("store" in e.lower() for e in texts(at.error)), texts(at.error)
        seen.add_page(f"app on {store}", at)
        try:
            open_store(Settings.from_env()).list_batches()
        except BulkGPTError as exc:
            seen.add(f"{store} error", str(exc))
    monkeypatch.setenv("BULKGPT_STORE", "sqlite")


def everything_stored(seen: Seen, data_dir: Path, tmp_path: Path) -> None:
    for path in files_under(tmp_path):
        seen.add(str(path.relative_to(tmp_path)), path.read_bytes())
    with sqlite3.connect(data_dir / DB_FILE_NAME) as conn:
        seen.add("store dump", "\n".join(conn.iterdump()))
    with open_store(Settings.from_env()) as store:
        for batch in store.list_batches():
            seen.add("batch errors", batch.last_error or "")
            for row in store.iter_rows(batch.id):
                seen.add("row errors", row.error_message or "")
    seen.add("settings", repr(Settings.from_env()) + str(Settings.from_env()))


def test_no_secret_appears_in_anything_written_or_shown(
    planted: FakeGemini,
    isolated_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = Seen()

    run_on_the_command_line(seen, planted, tmp_path)
    kill_a_worker_mid_batch(planted, isolated_env)
    use_the_app(seen, planted, isolated_env)
    open_the_app_on_stores_that_fail(seen, monkeypatch)
    everything_stored(seen, isolated_env, tmp_path)

    assert seen.leaks() == []
    # The scan did see the places a key could have gone.
    written = set(seen.texts)
    assert any(w.startswith("data/logs/worker-") for w in written), written
    assert any(w.startswith("data/journal/") for w in written), written
    assert any(w.endswith(".manifest.json") for w in written), written
    assert any(w == "row errors" for w in written)
    assert "Gemini" in seen.texts["row errors"]
