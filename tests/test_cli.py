"""The command line, run as a real process the way people and scripts run it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bulkgpt_core.batches import BatchStatus
from bulkgpt_core.config import Settings
from bulkgpt_core.stores import open_store
from tests.fake_gemini import FakeGemini

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulkgpt_core", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def people_csv(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(
        'id,name,note\n007,Ann,"likes =cats, dogs"\n008,Bob,\n009,=1+1,plain\n',
        encoding="utf-8",
    )
    return path


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def only_batch_id() -> str:
    with open_store(Settings.from_env()) as store:
        (batch,) = store.list_batches()
        return batch.id


def test_run_writes_every_row_with_its_answer(
    gemini: FakeGemini, people_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    done = cli("run", str(people_csv), "--prompt", "Greet <<name>>", "--out", str(out))

    assert done.returncode == 0, done.stderr
    assert "3 succeeded, 0 failed" in done.stderr
    rows = read_csv_rows(out)
    assert list(rows[0]) == [
        "id",
        "name",
        "note",
        "output",
        "status",
        "error",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "finish_reason",
    ]
    assert [r["id"] for r in rows] == ["007", "008", "009"]
    assert [r["output"] for r in rows] == [
        "ANSWER: Greet Ann",
        "ANSWER: Greet Bob",
        "ANSWER: Greet =1+1",
    ]
    # A formula in an input cell is neutralised in CSV.
    assert rows[2]["name"] == "'=1+1"
    assert {r["status"] for r in rows} == {"succeeded"}
    # Beside the CSV, a manifest says what produced it.
    manifest = json.loads((tmp_path / "out.csv.manifest.json").read_text())
    assert manifest["template"] == "Greet <<name>>"
    assert manifest["source_file"] == "people.csv"
    assert manifest["counts"]["rows"] == 3
    assert "out.csv.manifest.json" in done.stderr


def test_run_to_json_keeps_values_as_they_are(
    gemini: FakeGemini, people_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    done = cli("run", str(people_csv), "--prompt", "Hi <<name>>", "--out", str(out))
    assert done.returncode == 0, done.stderr
    exported = json.loads(out.read_text(encoding="utf-8"))
    records = exported["rows"]
    assert [r["name"] for r in records] == ["Ann", "Bob", "=1+1"]
    assert records[0]["output"] == "ANSWER: Hi Ann"
    assert exported["manifest"]["template"] == "Hi <<name>>"
    assert exported["manifest"]["counts"]["succeeded"] == 3


def test_run_counts_failed_rows_but_completes(
    gemini: FakeGemini, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nfine\n[[fake:safety]]\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = cli("run", str(source), "--prompt", "<<text>>", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "1 succeeded, 1 failed" in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["succeeded", "failed"]
    assert lines[1]["error"]


def test_without_a_key_the_cli_refuses_unless_demo(
    people_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    refused = cli("run", str(people_csv), "--prompt", "<<name>>", "--out", str(out))
    assert refused.returncode == 2
    assert "GEMINI_API_KEY" in refused.stderr and "--model demo" in refused.stderr
    assert "Traceback" not in refused.stderr

    demo = cli(
        "run",
        str(people_csv),
        "--prompt",
        "<<name>>",
        "--out",
        str(out),
        "--model",
        "demo",
    )
    assert demo.returncode == 0, demo.stderr
    assert all("demo" in r["output"] for r in read_csv_rows(out))


@pytest.mark.parametrize(
    ("content", "prompt", "words"),
    [
        (b"", "<<a>>", "empty"),
        (b"a,b\n", "<<a>>", "no data"),
        (b"PK\x03\x04xl/workbook", "<<a>>", "Excel"),
        (b"name\nAnn\n", "<<nmae>>", "<<name>>"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    gemini: FakeGemini, tmp_path: Path, content: bytes, prompt: str, words: str
) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(content)
    done = cli("run", str(source), "--prompt", prompt, "--out", str(tmp_path / "o.csv"))
    assert done.returncode == 2
    assert words.lower() in done.stderr.lower()
    assert "Traceback" not in done.stderr


def test_a_failed_batch_exits_non_zero(
    gemini: FakeGemini, people_csv: Path, tmp_path: Path
) -> None:
    gemini.configure(api_key="another-key")
    done = cli(
        "run", str(people_csv), "--prompt", "<<name>>", "--out", str(tmp_path / "o.csv")
    )
    assert done.returncode == 1
    assert "failed" in done.stderr and "key" in done.stderr.lower()
    assert "Traceback" not in done.stderr


def test_status_export_cancel_resume_on_a_stored_batch(
    gemini: FakeGemini, people_csv: Path, tmp_path: Path
) -> None:
    gemini.configure(api_key="another-key")
    cli(
        "run", str(people_csv), "--prompt", "<<name>>", "--out", str(tmp_path / "o.csv")
    )
    batch_id = only_batch_id()

    status = cli("status", batch_id)
    assert status.returncode == 0
    assert "failed" in status.stdout and "0 succeeded" in status.stdout
    assert batch_id in cli("status").stdout

    # Fix the key, then resume: the batch finishes the rows it never sent.
    gemini.configure(api_key=None)
    resumed = cli("resume", batch_id)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 succeeded" in resumed.stderr

    out = tmp_path / "again.jsonl"
    exported = cli("export", batch_id, "--out", str(out))
    assert exported.returncode == 0
    assert len(out.read_text().splitlines()) == 3

    cancelled = cli("cancel", batch_id)
    assert cancelled.returncode == 2
    assert "completed batch cannot be cancelled" in cancelled.stderr


def test_cancel_a_pending_batch(gemini: FakeGemini, people_csv: Path) -> None:
    settings = Settings.from_env()
    with open_store(settings) as store:
        from tests.conftest import new_batch_spec

        batch = store.create_batch(new_batch_spec())
        store.add_rows(batch.id, [{"text": "a"}])
    done = cli("cancel", batch.id)
    assert done.returncode == 0
    with open_store(settings) as store:
        assert store.get_batch(batch.id).status is BatchStatus.CANCELLED


def test_unknown_batch_is_a_clear_error() -> None:
    done = cli("status", "no-such-batch")
    assert done.returncode == 2
    assert "No batch with id 'no-such-batch'" in done.stderr


def test_run_with_a_schema_file_gives_field_columns(
    gemini: FakeGemini, people_csv: Path, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {
                    "mood": {"type": "string", "enum": ["happy", "sad"]},
                    "age": {"type": "integer"},
                },
                "required": ["mood", "age"],
            }
        )
    )
    out = tmp_path / "out.csv"
    done = cli(
        "run", str(people_csv), "--prompt", "<<name>>", "--out", str(out),
        "--schema", str(schema),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = read_csv_rows(out)
    assert [r["mood"] for r in rows] == ["happy"] * 3
    assert all(r["age"].isdigit() for r in rows)


def test_a_broken_schema_is_refused(people_csv: Path, tmp_path: Path) -> None:
    done = cli(
        "run", str(people_csv), "--prompt", "<<name>>", "--out",
        str(tmp_path / "o.csv"), "--model", "demo", "--schema", '{"type": "list"}',
    )  # fmt: skip
    assert done.returncode == 2
    assert "JSON object schema" in done.stderr


def test_retry_failed_rows_by_reason(gemini: FakeGemini, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nfine\n[[fake:safety:1]]\n[[fake:empty:1]]\n")
    done = cli(
        "run", str(source), "--prompt", "<<text>>", "--out", str(tmp_path / "o.csv")
    )
    assert "1 succeeded, 2 failed" in done.stderr
    batch_id = only_batch_id()

    retried = cli("retry", batch_id, "--reason", "safety")
    assert retried.returncode == 0, retried.stderr
    assert "1 failed rows queued again" in retried.stderr
    assert "2 succeeded, 1 failed" in retried.stderr
    status = cli("status", batch_id).stdout
    assert "2 succeeded, 1 failed" in status


def test_resume_goes_on_with_a_batch_left_running_by_a_dead_worker(
    gemini: FakeGemini,
) -> None:
    settings = Settings.from_env()
    with open_store(settings) as store:
        from tests.conftest import new_batch_spec

        batch = store.create_batch(new_batch_spec())
        store.add_rows(batch.id, [{"text": "a"}, {"text": "b"}])
        store.set_status(batch.id, BatchStatus.RUNNING)
        store.claim_rows(batch.id, after_index=-1, limit=1)
    done = cli("resume", batch.id)
    assert done.returncode == 0, done.stderr
    assert "2 succeeded" in done.stderr
