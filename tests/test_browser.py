"""End to end in a real headless Chromium: upload, prompt, try, launch, download.

The app runs under ``streamlit run`` on 127.0.0.1 with the fake Gemini server
behind it; Playwright drives Debian's Chromium (never a downloaded browser).
Each step leaves a screenshot in ``test-artifacts/``; with
``UPDATE_DOCS_SCREENSHOTS=1`` the README's screenshots in ``docs/`` are
refreshed too.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bulkgpt_core.templates import compile_template
from tests.app_fixtures import REVIEWS, ROOT, reviews_table, stop_workers
from tests.fake_gemini import FakeGemini

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
DOCS = ROOT / "docs"
DOCS_SHOTS = {
    "03-preview": "new-batch.png",
    "04-try-it": "try-it.png",
    "06-running": "batch-page.png",
}
TEMPLATE = "Is this review of <<product>> positive or negative? <<review text>>"
STEP_TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}")
        with (
            contextlib.suppress(OSError),
            opener.open(f"{url}/_stcore/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} in {timeout_s}s")


@pytest.fixture
def app_url(gemini: FakeGemini, tmp_path: Path) -> Iterator[str]:
    """``streamlit run`` on a free port, pointed at the fake Gemini server.

    It runs in a folder of its own holding the app's Streamlit config, with
    the default data folder, as a fresh install would. Answers take a moment,
    so the batch page is seen running before it completes (about five seconds
    for the 120 rows).
    """
    gemini.configure(latency_ms=150)
    workdir = tmp_path / "app"
    (workdir / ".streamlit").mkdir(parents=True)
    shutil.copy(ROOT / ".streamlit" / "config.toml", workdir / ".streamlit")
    env = {
        **os.environ,
        "BULKGPT_DATA_DIR": "data",
        "BULKGPT_CONCURRENCY": "4",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "streamlit_app.py"),
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
    ]
    log_path = tmp_path / "streamlit.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, timeout_s=30)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stop_workers(workdir / "data")
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / "streamlit.log")


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is not installed: run scripts/install-test-deps.sh"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


class Shots:
    """A screenshot of each step, scrolled to what the step is about."""

    def __init__(self, page: Page) -> None:
        self.page = page
        ARTIFACTS.mkdir(exist_ok=True)

    def take(self, name: str, anchor: Locator | None = None) -> None:
        if anchor is not None:
            anchor.evaluate("e => e.scrollIntoView({block: 'start'})")
        self.page.wait_for_timeout(400)  # let the last rerun paint
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        if os.environ.get("UPDATE_DOCS_SCREENSHOTS") and name in DOCS_SHOTS:
            self.page.screenshot(path=str(DOCS / DOCS_SHOTS[name]))


def test_upload_prompt_try_launch_and_download(
    app_url: str, browser_page: Page
) -> None:
    page = browser_page
    shots = Shots(page)
    table = reviews_table()
    compiled = compile_template(TEMPLATE, table.columns)
    first_prompt = compiled.render(table.row_dict(0))

    # The new batch page, with the sidebar saying a Gemini key is set.
    page.goto(app_url)
    page.get_by_role("heading", name="New batch").wait_for()
    page.get_by_text("GEMINI_API_KEY set").wait_for()
    shots.take("01-start")

    # Upload the sample file: its size, encoding and a preview appear.
    page.locator("input[type=file]").set_input_files(str(REVIEWS))
    page.get_by_text("120 rows × 5 columns").wait_for()
    shots.take("02-uploaded", page.get_by_role("heading", name="1. Upload a CSV"))

    # Type the template: the first row's prompt appears in the preview.
    template_box = page.get_by_role("textbox", name="Prompt template")
    template_box.fill(TEMPLATE)
    template_box.press("Control+Enter")
    page.get_by_text(first_prompt, exact=True).first.wait_for()
    shots.take("03-preview", page.get_by_text("120 rows × 5 columns"))

    # Try it on the first five rows: each answer is the fake server's echo.
    page.get_by_role("button", name="Try it").click()
    page.get_by_text("5 rows · 0 failed").wait_for()
    page.get_by_text(f"ANSWER: {first_prompt}", exact=True).wait_for()
    shots.take("04-try-it", page.get_by_role("heading", name="4. Try it"))

    # Launch: the estimate is on screen, then the batch page takes over.
    page.get_by_text("Estimated cost").wait_for()
    shots.take("05-launch", page.get_by_role("heading", name="5. Launch"))
    page.get_by_role("button", name="Launch 120 rows").click()
    page.wait_for_url("**/batch-list?batch=*")
    page.get_by_text("· running").first.wait_for()
    shots.take("06-running")

    # Wait for the batch to complete; the page refreshes itself.
    page.get_by_text("100% · 120 of 120 rows · completed").wait_for(timeout=90_000)
    shots.take("07-completed")
    shots.take("08-details", page.get_by_role("heading", name="Download results"))

    # Download the CSV: every row has its answer.
    with page.expect_download() as download_info:
        page.get_by_role("button", name="CSV", exact=True).click()
    download = download_info.value
    saved = ARTIFACTS / download.suggested_filename
    download.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert len(rows) == len(table)
    for index, row in enumerate(rows):
        assert row["status"] == "succeeded"
        assert row["output"] == f"ANSWER: {compiled.render(table.row_dict(index))}"
