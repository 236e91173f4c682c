"""Every limit is enforced with a message naming its setting, and can be changed.

Upload size, rows, columns and cell size (``BULKGPT_MAX_UPLOAD_MB``,
``_ROWS``, ``_COLUMNS``, ``_CELL_CHARS``) through the CSV module, the command
line and the app; output tokens and concurrency (``BULKGPT_MAX_OUTPUT_TOKENS``,
``BULKGPT_MAX_CONCURRENCY``) through jobs, the command line and the app, even
when the browser's own bounds are bypassed; prompt length
(``BULKGPT_MAX_PROMPT_CHARS``) in the engine, which fails only the row over
it, without calling the model for it. Each is tried just over the limit and
exactly at it, and then with the limit raised.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bulkgpt_core import jobs
from bulkgpt_core.actions import BatchRequest
from bulkgpt_core.batches import GenerationSettings
from bulkgpt_core.config import Settings
from bulkgpt_core.errors import CSVError, LimitError
from bulkgpt_core.tables import MB, CSVLimits, read_csv
from tests.app_fixtures import app, texts, uploaded
from tests.fake_gemini import FakeGemini
from tests.hostile.processes import generate_calls

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CSVLimitCase:
    setting: str
    limit: int
    over: bytes
    at_limit: bytes

    @property
    def id(self) -> str:
        return self.setting


def rows_file(rows: int) -> bytes:
    return ("n\n" + "".join(f"{i}\n" for i in range(rows))).encode()


def columns_file(columns: int) -> bytes:
    header = ",".join(f"c{i}" for i in range(columns))
    return f"{header}\n{','.join('x' * columns)}\n".encode()


def cell_file(chars: int) -> bytes:
    return f"id,text\n1,{'y' * chars}\n".encode()


def sized_file(size: int) -> bytes:
    """A valid CSV of exactly ``size`` bytes, in rows of about a kilobyte."""
    data = bytearray(b"id,text\n")
    while len(data) < size:
        line = b"1," + b"z" * min(1000, size - len(data) - 3) + b"\n"
        data += line
    return bytes(data)


CSV_CASES = [
    CSVLimitCase("BULKGPT_MAX_ROWS", 10, rows_file(11), rows_file(10)),
    CSVLimitCase("BULKGPT_MAX_COLUMNS", 5, columns_file(6), columns_file(5)),
    CSVLimitCase("BULKGPT_MAX_CELL_CHARS", 50, cell_file(51), cell_file(50)),
    CSVLimitCase("BULKGPT_MAX_UPLOAD_MB", 1, sized_file(MB + 1), sized_file(MB)),
]
IDS = [case.setting for case in CSV_CASES]


def limits_with(setting: str, value: int) -> CSVLimits:
    return CSVLimits.from_settings(Settings.from_env({setting: str(value)}))


def assert_names(message: str, setting: str) -> None:
    assert setting in message, message
    assert "\n" not in message


@pytest.mark.parametrize("case", CSV_CASES, ids=IDS)
def test_the_csv_module_enforces_each_limit(case: CSVLimitCase) -> None:
    with pytest.raises(CSVError) as refused:
        read_csv(case.over, limits=limits_with(case.setting, case.limit))
    assert_names(str(refused.value), case.setting)

    read_csv(case.at_limit, limits=limits_with(case.setting, case.limit))
    read_csv(case.over, limits=limits_with(case.setting, case.limit + 1))


def cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulkgpt_core", *args],
        cwd=ROOT,
        env={**os.environ, "BULKGPT_DEMO_DELAY_MS": "0", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_file(tmp_path: Path, data: bytes, *options: str, env: dict[str, str]):
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    out = tmp_path / "out.csv"
    return cli(
        *("run", str(source), "--prompt", "Say hi", "--out", str(out)),
        *("--model", "demo", *options),
        env=env,
    )


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str], setting: str):
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ")
    assert_names(line, setting)


@pytest.mark.parametrize("case", CSV_CASES, ids=IDS)
def test_the_cli_enforces_each_csv_limit(case: CSVLimitCase, tmp_path: Path) -> None:
    limit = {case.setting: str(case.limit)}
    assert_refused_in_one_line(run_file(tmp_path, case.over, env=limit), case.setting)
    assert run_file(tmp_path, case.at_limit, env=limit).returncode == 0


def test_the_app_enforces_each_csv_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    for case in CSV_CASES:
        monkeypatch.setenv(case.setting, str(case.limit))
        at = uploaded(app(), case.over, name="over.csv")
        [error] = texts(at.error)
        assert case.setting in error and "over.csv" in error
        at = uploaded(at, case.at_limit, name="at-limit.csv")
        assert not at.error and not at.exception
        monkeypatch.delenv(case.setting)


# -- what a batch may ask for ---------------------------------------------------


def settings_with(**values: str) -> Settings:
    return Settings.from_env(values)


def test_output_tokens_are_capped_by_their_setting() -> None:
    settings = settings_with(BULKGPT_MAX_OUTPUT_TOKENS="1000")
    for tokens in (0, 1001):
        with pytest.raises(LimitError) as refused:
            jobs.check_generation(
                settings, GenerationSettings("demo", max_output_tokens=tokens)
            )
        assert_names(str(refused.value), "BULKGPT_MAX_OUTPUT_TOKENS")
    for tokens in (1, 1000, None):
        generation = GenerationSettings("demo", max_output_tokens=tokens)
        jobs.check_generation(settings, generation)
    raised = settings_with(BULKGPT_MAX_OUTPUT_TOKENS="2000")
    jobs.check_generation(raised, GenerationSettings("demo", max_output_tokens=1001))


def test_concurrency_is_capped_by_its_setting() -> None:
    settings = settings_with(BULKGPT_MAX_CONCURRENCY="8", BULKGPT_CONCURRENCY="4")
    with pytest.raises(LimitError) as refused:
        jobs.run_limits(settings, concurrency=9)
    assert_names(str(refused.value), "BULKGPT_MAX_CONCURRENCY")
    assert jobs.run_limits(settings, concurrency=8).concurrency == 8
    assert jobs.run_limits(settings).concurrency == 4
    # A default above the cap is refused too, not silently used.
    too_high = settings_with(BULKGPT_MAX_CONCURRENCY="8", BULKGPT_CONCURRENCY="9")
    with pytest.raises(LimitError):
        jobs.run_limits(too_high)
    raised = settings_with(BULKGPT_MAX_CONCURRENCY="16")
    assert jobs.run_limits(raised, concurrency=9).concurrency == 9


@pytest.mark.parametrize(
    ("option", "setting"),
    [
        (("--max-output-tokens", "1001"), "BULKGPT_MAX_OUTPUT_TOKENS"),
        (("--concurrency", "9"), "BULKGPT_MAX_CONCURRENCY"),
    ],
    ids=["output tokens", "concurrency"],
)
def test_the_cli_enforces_what_a_batch_may_ask_for(
    option: tuple[str, str], setting: str, tmp_path: Path
) -> None:
    caps = {
        "BULKGPT_MAX_OUTPUT_TOKENS": "1000",
        "BULKGPT_MAX_CONCURRENCY": "8",
        "BULKGPT_CONCURRENCY": "4",
    }
    data = rows_file(3)
    assert_refused_in_one_line(run_file(tmp_path, data, *option, env=caps), setting)
    raised = {**caps, setting: "5000"}
    assert run_file(tmp_path, data, *option, env=raised).returncode == 0


def test_the_app_bounds_its_inputs_and_checks_them_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BULKGPT_MAX_OUTPUT_TOKENS", "1000")
    monkeypatch.setenv("BULKGPT_MAX_CONCURRENCY", "8")
    monkeypatch.setenv("BULKGPT_CONCURRENCY", "4")
    at = uploaded(app(), rows_file(3), name="three.csv")
    tokens = at.number_input(key="max_output_tokens")
    assert (tokens.max, at.number_input(key="concurrency").max) == (1000, 8)

    # What the page checks before Try it and Launch, whatever the browser sent.
    settings = Settings.from_env()
    for asked, setting in (
        ({"max_output_tokens": 1001}, "BULKGPT_MAX_OUTPUT_TOKENS"),
        ({"concurrency": 9}, "BULKGPT_MAX_CONCURRENCY"),
    ):
        request = BatchRequest(name="x", template="Say <<n>>", model="demo", **asked)
        with pytest.raises(LimitError) as refused:
            request.checked(settings)
        assert_names(str(refused.value), setting)


# -- prompt length -----------------------------------------------------------------


def test_a_prompt_over_its_limit_fails_its_row_without_a_call(
    gemini: FakeGemini, tmp_path: Path
) -> None:
    data = b"text\nshort\n" + b"long " * 40 + b"\n"
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_bytes(data)
    env = {"BULKGPT_MAX_PROMPT_CHARS": "60"}

    done = cli(
        "run", str(source), "--prompt", "Say <<text>>", "--out", str(out), env=env
    )

    assert done.returncode == 0, done.stderr
    assert "1 succeeded, 1 failed" in done.stderr
    with out.open(encoding="utf-8", newline="") as handle:
        short, long = csv.DictReader(handle)
    assert short["status"] == "succeeded"
    assert long["status"] == "failed"
    assert_names(long["error"], "BULKGPT_MAX_PROMPT_CHARS")
    assert "204 characters" in long["error"]
    assert generate_calls(gemini) == 1  # the long row never reached the model

    raised = cli(
        *("run", str(source), "--prompt", "Say <<text>>", "--out", str(out)),
        env={"BULKGPT_MAX_PROMPT_CHARS": "204"},
    )
    assert "2 succeeded, 0 failed" in raised.stderr
