"""Where a batch runs: a detached local process by default, or Modal.

Starting a worker never blocks: the app returns at once and the worker
writes its progress to the store, so closing the browser or restarting the
app does not stop a job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from .batches import Batch
from .config import Settings
from .stores.base import Store

log = logging.getLogger(__name__)


def worker_log_path(settings: Settings, batch_id: str) -> Path:
    return settings.data_dir / "logs" / f"worker-{batch_id}.log"


def start_local_worker(settings: Settings, batch_id: str) -> int:
    """Start ``python -m bulkgpt_core worker BATCH_ID`` in its own session."""
    log_path = worker_log_path(settings, batch_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bulkgpt_core", "worker", batch_id],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ.copy(),
        )
    log.info("started local worker %s for batch %s", process.pid, batch_id)
    return process.pid


def start_worker(settings: Settings, store: Store, batch_id: str) -> str:
    """Start the configured runner for a batch; record and return its call id."""
    if settings.runner == "modal":
        from .modal_launch import spawn_on_modal

        call_id = spawn_on_modal(settings, batch_id)
        store.update_batch(batch_id, runner="modal", call_id=call_id)
        return call_id
    pid = start_local_worker(settings, batch_id)
    call_id = f"pid:{pid}"
    store.update_batch(batch_id, runner="local", call_id=call_id)
    return call_id


def cancel_worker(settings: Settings, store: Store, batch_id: str) -> Batch:
    """Cancel a batch: set its flag, and stop its Modal call when it runs there."""
    from .jobs import cancel_batch

    batch = cancel_batch(store, batch_id)
    if batch.runner == "modal" and batch.call_id:
        from .modal_launch import stop_modal_batch

        batch = stop_modal_batch(store, batch)
    return batch


def local_worker_alive(call_id: str | None) -> bool:
    """Whether the local worker process behind a call id is still running."""
    if not call_id or not call_id.startswith("pid:") or not call_id[4:].isdigit():
        return False
    pid = int(call_id[4:])
    # A worker this process started stays a zombie until reaped: reap it.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
