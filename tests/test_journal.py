"""The journal keeps results a killed worker had not stored yet."""

from __future__ import annotations

from pathlib import Path

from bulkgpt_core.batches import RowResult, RowStatus
from bulkgpt_core.journal import Journal, leftover_segments, read_segments


def test_segments_hold_results_until_rotated_and_deleted(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "batch-1")
    first = RowResult(0, RowStatus.SUCCEEDED, output="a", parsed={"k": [1]})
    journal.append(first)
    finished = journal.rotate()
    journal.append(RowResult(1, RowStatus.FAILED, error_kind="safety"))

    # A worker that died leaves both segments; a reader sees every result.
    segments = leftover_segments(tmp_path, "batch-1")
    assert len(segments) == 2 and finished in segments
    results = list(read_segments(leftover_segments(tmp_path, "batch-1")))
    assert results[0] == first
    assert results[1].status is RowStatus.FAILED

    finished.unlink()
    journal.discard()
    assert leftover_segments(tmp_path, "batch-1") == []


def test_a_line_cut_short_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "b")
    journal.append(RowResult(0, RowStatus.SUCCEEDED, output="ok"))
    journal.close()
    (segment,) = leftover_segments(tmp_path, "b")
    with segment.open("a") as handle:
        handle.write('{"index": 1, "status": "succ')
    assert [r.index for r in read_segments([segment])] == [0]


def test_no_folder_means_nothing_left_over(tmp_path: Path) -> None:
    assert leftover_segments(tmp_path, "never-ran") == []
