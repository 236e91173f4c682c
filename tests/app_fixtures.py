"""Helpers for the app's tests: the app under AppTest, a sample file, batches in
known states, and waiting for (and cleaning up after) detached workers."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block, Button, Element

from bulkgpt_core import jobs
from bulkgpt_core.batches import (
    Batch,
    BatchStatus,
    GenerationSettings,
    RowResult,
    RowStatus,
    utcnow,
)
from bulkgpt_core.config import Settings
from bulkgpt_core.stores import open_store
from bulkgpt_core.stores.base import Store
from bulkgpt_core.stores.sqlite import DB_FILE_NAME, SQLiteStore
from bulkgpt_core.tables import Table, read_csv

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "streamlit_app.py"
REVIEWS = Path(__file__).resolve().parent / "data" / "reviews.csv"
TEMPLATE = "Classify this review of <<product>>: <<review text>>"


def reviews_bytes() -> bytes:
    return REVIEWS.read_bytes()


def reviews_table() -> Table:
    return read_csv(reviews_bytes(), name="reviews.csv")


def small_table(rows: int = 3) -> Table:
    lines = ["id,text", *(f"{i},text number {i}" for i in range(rows))]
    return read_csv("\n".join(lines).encode(), name="small.csv")


def app(page: str | None = None) -> AppTest:
    """The whole app (frame and pages), run once, on ``page`` if given."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def uploaded(at: AppTest, data: bytes, name: str = "reviews.csv") -> AppTest:
    """Drop a file on the new batch page's uploader, as a user would."""
    at.file_uploader(key="upload").upload(name, data, "text/csv")
    return at.run()


def button(at: AppTest, label: str) -> Button:
    """The button whose label starts with ``label``."""
    found = [b for b in at.button if b.label.startswith(label)]
    assert found, f"no button {label!r} in {[b.label for b in at.button]}"
    return found[0]


def texts(elements: Iterable[Element]) -> list[str]:
    return [str(e.value) for e in elements]


def all_text(at: AppTest | Block) -> str:
    """Every message, markdown, caption and code block on screen, joined."""
    parts = [
        *texts(at.markdown),
        *texts(at.caption),
        *texts(at.code),
        *texts(at.info),
        *texts(at.warning),
        *texts(at.error),
        *texts(at.success),
    ]
    return "\n".join(parts)


def store_for_app() -> Store:
    """The store the app uses in this test (settings from the environment)."""
    return open_store(Settings.from_env())


def create_batch(
    store: Store, table: Table | None = None, *, model: str = "demo"
) -> Batch:
    """A pending batch with no worker, as after launching with the runner down."""
    settings = Settings.from_env()
    return jobs.create_batch(
        store,
        table or small_table(),
        name="known batch",
        template="Say <<text>>",
        generation=GenerationSettings(model=model),
        limits=jobs.run_limits(settings),
    )


def advance(store: Store, batch: Batch, *, succeeded: int, failed: int = 0) -> Batch:
    """Finish some rows by hand, as a worker would, and mark the batch running."""
    store.set_status(batch.id, BatchStatus.RUNNING)
    store.update_batch(batch.id, started_at=utcnow(), call_id="pid:999999999")
    rows = store.claim_rows(batch.id, after_index=-1, limit=succeeded + failed)
    results = [
        RowResult(
            index=row.index,
            status=RowStatus.SUCCEEDED if n < succeeded else RowStatus.FAILED,
            output=f"answer {row.index}" if n < succeeded else None,
            error_kind=None if n < succeeded else "safety",
            error_message=None if n < succeeded else "Blocked: SAFETY",
            tokens_in=10,
            tokens_out=5,
            latency_ms=120,
        )
        for n, row in enumerate(rows)
    ]
    store.record_results(batch.id, results)
    store.add_progress_sample(batch.id)
    return store.get_batch(batch.id)


def wait_until_finished(store: Store, batch_id: str, timeout_s: float = 60) -> Batch:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = store.get_batch(batch_id)
        if batch.status.is_finished:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout_s}s")


@contextlib.contextmanager
def workers_stopped(data_dir: Path) -> Iterator[None]:
    """After the block, stop any worker a test started that is still running."""
    try:
        yield
    finally:
        stop_workers(data_dir)


def stop_workers(data_dir: Path) -> None:
    """Terminate the local workers (by their pid) of the active batches stored
    in ``data_dir``: the ones a test started and left running."""
    if not (data_dir / DB_FILE_NAME).exists():
        return
    with SQLiteStore.in_data_dir(data_dir) as store:
        for batch in store.list_batches():
            pid = _pid(batch.call_id)
            if pid is not None and batch.status.is_active:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)


def _pid(call_id: str | None) -> int | None:
    if call_id and call_id.startswith("pid:") and call_id[4:].isdigit():
        return int(call_id[4:])
    return None
