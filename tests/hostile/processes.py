"""Workers as their own processes, the stores they write to, and whole outcomes.

The reliability tests run ``python -m bulkgpt_core worker BATCH_ID`` the way
the app does, with its output in a log file, and judge a batch by everything
stored about it: every row's status and answer, the counters, and the calls
the fake Gemini server saw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulkgpt_core.batches import Batch, BatchStatus, RowStatus, StoredRow
from bulkgpt_core.config import Settings
from bulkgpt_core.errors import StoreError
from bulkgpt_core.stores import open_store
from bulkgpt_core.stores.base import Store
from tests.conftest import new_batch_spec
from tests.fake_gemini import FakeGemini, prompt_hash

ROOT = Path(__file__).resolve().parents[2]


def make_batch(store: Store, rows: int, *, concurrency: int = 8) -> str:
    """A pending batch of ``rows`` rows, ``Say row N`` each."""
    batch = store.create_batch(new_batch_spec(["text"], concurrency=concurrency))
    store.add_rows(batch.id, ({"text": f"row {i}"} for i in range(rows)))
    return batch.id


def expected_answer(index: int) -> str:
    return f"ANSWER: Say row {index}"


@dataclass
class Worker:
    """One ``worker`` process, its output going to ``log_path``."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to tidy up."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_worker(batch_id: str, log_path: Path) -> Worker:
    """``python -m bulkgpt_core worker BATCH_ID`` with this test's environment."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bulkgpt_core", "worker", batch_id],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Worker(process, log_path)


@contextlib.contextmanager
def running_worker(batch_id: str, log_path: Path) -> Iterator[Worker]:
    """A worker that is killed if the test leaves before it ends."""
    worker = start_worker(batch_id, log_path)
    try:
        yield worker
    finally:
        if worker.alive():
            worker.kill()


@contextlib.contextmanager
def watching_store() -> Iterator[Store]:
    """The store the environment names, opened by the test itself."""
    with open_store(Settings.from_env()) as store:
        yield store


def done_rows(store: Store, batch_id: str) -> int | None:
    """Rows finished so far, or None while the store cannot be read."""
    try:
        return store.get_batch(batch_id).done
    except StoreError:
        return None


def wait_for_done(
    store: Store, batch_id: str, at_least: int, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while (done_rows(store, batch_id) or 0) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} rows done"
        time.sleep(0.02)


def rss_kib(pid: int) -> int | None:
    """The resident memory of a process, from /proc (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


@dataclass
class MemorySample:
    done_fraction: float
    rss_kib: int


@dataclass
class MemoryWatch:
    """Samples a worker's memory against its batch's progress, in a thread."""

    pid: int
    progress: Callable[[], float | None]
    every_s: float = 0.25
    samples: list[MemorySample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemoryWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            rss, fraction = rss_kib(self.pid), self.progress()
            if rss is not None and fraction is not None:
                self.samples.append(MemorySample(fraction, rss))

    def growth_kib(self, after_fraction: float) -> tuple[int, int]:
        """RSS when ``after_fraction`` was first reached, and the rise after."""
        later = [s for s in self.samples if s.done_fraction >= after_fraction]
        assert later, f"no memory sample past {after_fraction:.0%} of the rows"
        start = later[0].rss_kib
        return start, max(s.rss_kib for s in later) - start


# -- whole outcomes


def assert_counters_match_rows(store: Store, batch_id: str) -> list[StoredRow]:
    """The batch's counters equal its rows' statuses, tokens and cost."""
    batch = store.get_batch(batch_id)
    rows = list(store.iter_rows(batch_id))
    assert batch.total_rows == len(rows)
    assert batch.succeeded == sum(r.status is RowStatus.SUCCEEDED for r in rows)
    assert batch.failed == sum(r.status is RowStatus.FAILED for r in rows)
    assert batch.tokens_in == sum(r.tokens_in for r in rows)
    assert batch.tokens_out == sum(r.tokens_out for r in rows)
    return rows


def assert_every_row_answered_once(
    store: Store, batch_id: str, gemini: FakeGemini, rows: int
) -> Batch:
    """Completed; each row succeeded with its own answer, answered exactly once."""
    batch = store.get_batch(batch_id)
    stored = assert_counters_match_rows(store, batch_id)
    assert batch.status is BatchStatus.COMPLETED, batch.last_error
    assert (batch.succeeded, batch.failed) == (rows, 0)
    assert [r.output for r in stored] == [expected_answer(i) for i in range(rows)]
    answers = gemini.stats()["answers_by_prompt"]
    assert len(answers) == rows
    assert set(answers.values()) == {1}, "a prompt was answered twice"
    assert answers[prompt_hash("Say row 0")] == 1
    return batch


def generate_calls(gemini: FakeGemini) -> int:
    """generateContent requests the fake server has seen."""
    stats: dict[str, Any] = gemini.stats()
    return int(stats["by_method"].get("generateContent", 0))
