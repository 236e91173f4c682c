"""A local write-ahead journal of results, so a killed worker never re-bills a row.

Results reach the store in batches (every few hundred rows or every second),
which is what keeps a big batch fast. Between two writes, each result is also
appended to a small journal file, one JSON line per row, with a plain
``write()``: the operating system keeps it even if the worker process is
killed outright. When the next run of the batch starts, it first records what
dead workers' journals hold, so the only calls a crash can cost are those that
were waiting for an answer.

The journal is a series of segments. Each store write takes the results of
one segment; once the write has succeeded, that segment is deleted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO

from .batches import RowResult, RowStatus

log = logging.getLogger(__name__)


def _encode(result: RowResult) -> str:
    data = asdict(result)
    data["status"] = result.status.value
    return json.dumps(data, ensure_ascii=False) + "\n"


def _decode(line: str) -> RowResult | None:
    try:
        data = json.loads(line)
        data["status"] = RowStatus(data["status"])
        return RowResult(**data)
    except (ValueError, TypeError, KeyError):
        return None  # a line cut short by a kill


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Journal:
    """This worker's journal for one batch."""

    def __init__(self, folder: Path, batch_id: str) -> None:
        self.folder = Path(folder) / batch_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self._number = 0
        self._handle: IO[str] | None = None
        self._path = self._open_next()

    def _open_next(self) -> Path:
        self._number += 1
        path = self.folder / f"{self._pid}-{self._number:08d}.jsonl"
        self._handle = path.open("a", encoding="utf-8", buffering=1)
        return path

    def append(self, result: RowResult) -> None:
        """Write one result through to the operating system."""
        assert self._handle is not None
        self._handle.write(_encode(result))

    def rotate(self) -> Path:
        """Start a new segment; return the finished one (delete it once stored)."""
        finished = self._path
        self.close()
        self._path = self._open_next()
        return finished

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def discard(self) -> None:
        """Remove the current segment (everything in it was stored)."""
        self.close()
        self._path.unlink(missing_ok=True)


def leftover_segments(folder: Path, batch_id: str) -> list[Path]:
    """Segments written by workers of this batch that are no longer running."""
    batch_folder = Path(folder) / batch_id
    if not batch_folder.is_dir():
        return []
    segments = []
    for path in sorted(batch_folder.glob("*.jsonl")):
        pid = int(path.name.split("-", 1)[0])
        if pid == os.getpid() or not _pid_alive(pid):
            segments.append(path)
    return segments


def read_segments(paths: list[Path]) -> Iterator[RowResult]:
    for path in paths:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                result = _decode(line)
                if result is not None:
                    yield result
