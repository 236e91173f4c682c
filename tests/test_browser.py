"""End to end in a real headless Chromium: upload, prompt, try, launch, download;
the prompt lab (two variants on three rows, one promoted); and a launch with
output fields and a budget.

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

from bulkgpt_core.stores.sqlite import SQLiteStore
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
    "lab-03-marked": "prompt-lab.png",
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


# --- The prompt lab, and a launch with output fields and a budget -------------------

LAB_TEMPLATES = (
    "Sum up this review of <<product>>: <<review text>>",
    "One word for <<review text>>",
)


def test_compare_two_variants_and_promote_one(
    app_url: str, browser_page: Page, tmp_path: Path
) -> None:
    page = browser_page
    shots = Shots(page)
    table = reviews_table()
    prompts = [
        [
            compile_template(t, table.columns).render(table.row_dict(i))
            for t in LAB_TEMPLATES
        ]
        for i in range(3)
    ]

    # The lab, from the sidebar: upload the file, write two variants.
    page.goto(app_url)
    page.get_by_role("heading", name="New batch").wait_for()
    page.get_by_role("link", name="Prompt lab").click()
    page.get_by_role("heading", name="Prompt lab").wait_for()
    page.locator("input[type=file]").set_input_files(str(REVIEWS))
    page.get_by_text("120 rows × 5 columns").wait_for()
    page.get_by_role("textbox", name="Prompt template").nth(1).wait_for()
    for box, template in zip(
        page.get_by_role("textbox", name="Prompt template").all(),
        LAB_TEMPLATES,
        strict=True,
    ):
        box.fill(template)
        box.press("Control+Enter")
    page.get_by_text("How many rows").wait_for()
    shots.take("lab-01-variants", page.get_by_role("heading", name="2. Variants"))

    # Run both on the first three rows: a grid of six answers.
    page.get_by_role("button", name="Run 2 variants").click()
    page.get_by_text("reviews.csv: A vs B on 3 rows").first.wait_for()
    for row in prompts:
        for prompt in row:
            page.get_by_text(f"ANSWER: {prompt}", exact=True).wait_for()
    shots.take("lab-02-grid", page.get_by_role("heading", name="4. Results"))

    # Mark B better on the first two rows; the marks are stored.
    for row in range(2):
        marks = page.locator('[data-testid="stRadio"]').filter(has_text="Better answer")
        marks.nth(row).get_by_text("B", exact=True).click()
        page.wait_for_timeout(600)
    run_id = page.url.split("run=")[1]
    with SQLiteStore.in_data_dir(tmp_path / "app" / "data") as store:
        assert store.get_lab_run(run_id)["marks"] == {"0": 1, "1": 1}
    shots.take("lab-03-marked", page.get_by_role("heading", name="4. Results"))

    # Promote B: a batch of the whole file with B's prompt, on the batch page.
    page.get_by_role("button", name="Run B on all 120 rows").click()
    page.wait_for_url("**/batch-list?batch=*")
    page.get_by_text("100% · 120 of 120 rows · completed").wait_for(timeout=90_000)
    page.get_by_role("heading", name="reviews (B)").wait_for()
    shots.take("lab-04-promoted")


def test_launch_with_output_fields_and_a_budget(
    app_url: str, browser_page: Page
) -> None:
    page = browser_page
    shots = Shots(page)

    page.goto(app_url)
    page.locator("input[type=file]").set_input_files(str(REVIEWS))
    page.get_by_text("120 rows × 5 columns").wait_for()
    template_box = page.get_by_role("textbox", name="Prompt template")
    template_box.fill("How does this review feel? <<review text>>")
    template_box.press("Control+Enter")

    # One output field, typed into the field table: sentiment, one of a list.
    # A click on the table's empty last line adds a row; Enter edits a cell.
    page.get_by_text("Estimated cost").wait_for()
    editor = page.locator('[data-testid="stDataFrame"]').last
    # Name, type and choices columns, by their distance from the left edge
    # (negative: from the right edge) of the 1400-pixel-wide page.
    for x, text in ((100, "sentiment"), (260, "one of"), (-60, "positive, negative")):
        editor.evaluate("e => e.scrollIntoView({block: 'center'})")
        box = editor.bounding_box()
        assert box is not None
        left = box["x"] + (x if x > 0 else box["width"] + x)
        page.mouse.click(left, box["y"] + 52)  # the first line under the header
        # Generous pauses: the grid is a canvas, and a busy machine reruns slowly.
        page.keyboard.press("Enter")
        page.wait_for_timeout(700)
        page.keyboard.type(text)
        page.wait_for_timeout(700)
        page.keyboard.press("Enter")
        page.wait_for_timeout(2000)
    page.get_by_role("button", name="Try it").click()
    page.get_by_text('{"sentiment": "positive"}').first.wait_for()
    shots.take("fields-01-try-it", page.get_by_text("Output fields").first)

    # A budget, then launch: the batch page shows it and the answers are columns.
    budget = page.get_by_role("spinbutton", name="Budget: the most to spend")
    budget.fill("5")
    budget.press("Enter")
    page.wait_for_timeout(600)
    shots.take("fields-02-launch", page.get_by_role("heading", name="5. Launch"))
    page.get_by_role("button", name="Launch 120 rows").click()
    page.wait_for_url("**/batch-list?batch=*")
    page.get_by_text("100% · 120 of 120 rows · completed").wait_for(timeout=90_000)
    page.get_by_text("Budget $5.00").wait_for()
    shots.take("fields-03-completed")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="CSV", exact=True).click()
    saved = ARTIFACTS / "fields-results.csv"
    download_info.value.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert len(rows) == 120
    assert {row["sentiment"] for row in rows} == {"positive"}
    assert {row["status"] for row in rows} == {"succeeded"}
