"""How fast the engine runs a batch, against a fake Gemini with a set latency and limit.

    python bench/throughput.py                 # every scenario (about 4 minutes)
    python bench/throughput.py --only paced    # paced, adaptive, fast, speedup, scale

Each scenario starts the fake Gemini server (its own process), stores a batch
in a fresh SQLite store, runs ``python -m bulkgpt_core worker`` as a separate
process exactly as the app does, and reports rows/s against the ideal
``min(rpm / 60, concurrency / latency)``, the 429s the server sent and the
worker's peak memory. ``speedup`` also runs the naive design (one row at a
time, one store write per row) for comparison; ``scale`` ingests a million
rows and processes 100,000 of them, sampling the worker's memory as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bulkgpt_core.batches import (  # noqa: E402
    GenerationSettings,
    NewBatch,
    RowResult,
    RowStatus,
    RunLimits,
)
from bulkgpt_core.config import Settings  # noqa: E402
from bulkgpt_core.models import open_model  # noqa: E402
from bulkgpt_core.stores.sqlite import SQLiteStore  # noqa: E402
from bulkgpt_core.templates import compile_template  # noqa: E402
from tests.fake_gemini import FakeGemini  # noqa: E402

MODEL = "gemini-2.5-flash"
TEMPLATE = "Classify the sentiment of this review: <<text>>"


@dataclass
class Outcome:
    rows: int
    seconds: float
    rate: float
    ideal: float | None
    rate_limited: int
    peak_rss_mb: float
    rss_samples_mb: list[tuple[int, float]]

    @property
    def efficiency(self) -> float | None:
        return self.rate / self.ideal if self.ideal else None


def review_rows(count: int) -> Iterator[dict[str, str]]:
    for i in range(count):
        yield {"text": f"Review {i}: arrived on time, works as described, 4 stars."}


def create_batch(store: SQLiteStore, rows: int, limits: RunLimits) -> str:
    batch = store.create_batch(
        NewBatch(
            name="bench",
            template=TEMPLATE,
            columns=["text"],
            generation=GenerationSettings(model=MODEL, max_output_tokens=64),
            limits=limits,
        )
    )
    store.add_rows(batch.id, review_rows(rows))
    return batch.id


def worker_env(server: FakeGemini, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGPT_")}
    env.update(
        GEMINI_API_KEY="bench-key",
        GEMINI_BASE_URL=server.url,
        BULKGPT_DATA_DIR=str(data_dir),
        BULKGPT_SECRETS_FILE=str(data_dir / "none.toml"),
        PYTHONPATH=str(ROOT),
    )
    return env


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak so far (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_worker(
    server: FakeGemini, data_dir: Path, store: SQLiteStore, batch_id: str
) -> tuple[float, float, list[tuple[int, float]]]:
    """Run the worker process; return its seconds, peak RSS and RSS samples."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bulkgpt_core", "worker", batch_id],
        cwd=ROOT,
        env=worker_env(server, data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[tuple[int, float]] = []
    peak = 0.0
    while process.poll() is None:
        time.sleep(0.25)
        peak = max(peak, memory_mb(process.pid, "VmHWM"))
        samples.append((store.get_batch(batch_id).done, memory_mb(process.pid)))
    batch = store.get_batch(batch_id)
    if batch.started_at is None or batch.finished_at is None:
        raise RuntimeError(f"worker ended with the batch {batch.status}")
    seconds = (batch.finished_at - batch.started_at).total_seconds()
    return seconds, peak, samples


def scenario(
    rows: int,
    *,
    latency_ms: float,
    server_rpm: float | None,
    limits: RunLimits,
) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        server = FakeGemini.start(latency_ms=latency_ms, rpm=server_rpm)
        try:
            store = SQLiteStore.in_data_dir(data_dir)
            batch_id = create_batch(store, rows, limits)
            seconds, peak, samples = run_worker(server, data_dir, store, batch_id)
            batch = store.get_batch(batch_id)
            limited = server.stats()["rate_limited"]
            store.close()
        finally:
            server.stop()
    assert batch.succeeded == rows, f"only {batch.succeeded} of {rows} succeeded"
    return Outcome(
        rows=rows,
        seconds=seconds,
        rate=rows / seconds,
        ideal=ideal_rate(limits, latency_ms),
        rate_limited=limited,
        peak_rss_mb=peak,
        rss_samples_mb=samples,
    )


def ideal_rate(limits: RunLimits, latency_ms: float) -> float | None:
    bounds = []
    if limits.rpm:
        bounds.append(limits.rpm / 60)
    if latency_ms:
        bounds.append(limits.concurrency / (latency_ms / 1000))
    return min(bounds) if bounds else None


def naive_rate(rows: int, latency_ms: float) -> float:
    """One row at a time, one store write (and commit) per row."""
    with tempfile.TemporaryDirectory() as tmp:
        server = FakeGemini.start(latency_ms=latency_ms)
        try:
            store = SQLiteStore.in_data_dir(tmp)
            batch_id = create_batch(store, rows, RunLimits(concurrency=1))
            settings = Settings.from_env(worker_env(server, Path(tmp)))
            started = time.monotonic()
            asyncio.run(_naive(settings, store, batch_id))
            seconds = time.monotonic() - started
            assert store.get_batch(batch_id).succeeded == rows
            store.close()
        finally:
            server.stop()
    return rows / seconds


async def _naive(settings: Settings, store: SQLiteStore, batch_id: str) -> None:
    batch = store.get_batch(batch_id)
    template = compile_template(batch.template, batch.columns)
    model = open_model(settings, batch.model)
    for row in store.claim_rows(batch_id, after_index=-1, limit=10**9):
        reply = await model.generate(
            template.render(row.values), batch.generation_settings()
        )
        result = RowResult(
            index=row.index,
            status=RowStatus.SUCCEEDED,
            output=reply.text,
            tokens_in=reply.tokens_in,
            tokens_out=reply.tokens_out,
        )
        store.record_results(batch_id, [result])
    await model.aclose()


def ingest_million() -> tuple[float, float]:
    """Seconds to store 1,000,000 rows, and the rows per second."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore.in_data_dir(tmp)
        started = time.monotonic()
        create_batch(store, 1_000_000, RunLimits())
        seconds = time.monotonic() - started
        store.close()
    return seconds, 1_000_000 / seconds


def report(title: str, outcome: Outcome) -> None:
    print(f"\n## {title}")
    print(f"rows            {outcome.rows:,}")
    print(f"time            {outcome.seconds:.1f} s")
    print(f"rows/s          {outcome.rate:.1f}")
    if outcome.ideal:
        print(f"ideal rows/s    {outcome.ideal:.1f}")
        print(f"efficiency      {outcome.efficiency:.3f}")
    share = outcome.rate_limited / outcome.rows
    print(f"429s received   {outcome.rate_limited} ({share:.2%} of rows)")
    print(f"worker peak RSS {outcome.peak_rss_mb:.0f} MB")


def run_paced() -> None:
    limits = RunLimits(concurrency=16, rpm=3000)
    outcome = scenario(4500, latency_ms=200, server_rpm=3000, limits=limits)
    report("200 ms latency, 3,000 RPM (server and engine), concurrency 16", outcome)


def run_adaptive() -> None:
    limits = RunLimits(concurrency=32)
    outcome = scenario(4500, latency_ms=200, server_rpm=3000, limits=limits)
    outcome.ideal = 3000 / 60
    report(
        "200 ms latency, server limit 3,000 RPM unknown to the engine, concurrency 32",
        outcome,
    )


def run_fast() -> None:
    outcome = scenario(
        20_000, latency_ms=0, server_rpm=None, limits=RunLimits(concurrency=64)
    )
    report("zero latency, no limit, concurrency 64", outcome)


def run_speedup() -> None:
    naive = naive_rate(50, latency_ms=200)
    outcome = scenario(
        10_000, latency_ms=200, server_rpm=None, limits=RunLimits(concurrency=128)
    )
    report("200 ms latency, no limit, concurrency 128", outcome)
    print(f"naive rows/s    {naive:.2f} (one row at a time, one commit per row)")
    print(f"speed-up        {outcome.rate / naive:.0f}x")


def run_scale() -> None:
    seconds, rate = ingest_million()
    print("\n## 1,000,000 rows ingested into SQLite")
    print(f"time            {seconds:.1f} s ({rate:,.0f} rows/s)")
    outcome = scenario(
        100_000, latency_ms=0, server_rpm=None, limits=RunLimits(concurrency=64)
    )
    report("100,000 rows at zero latency", outcome)
    marks = [s for s in outcome.rss_samples_mb if s[0] > 0 and s[1] > 0]
    if marks:
        early = next(mb for done, mb in marks if done >= outcome.rows * 0.1)
        print(f"RSS at 10% done {early:.0f} MB; at the end {marks[-1][1]:.0f} MB")


SCENARIOS = {
    "paced": run_paced,
    "adaptive": run_adaptive,
    "fast": run_fast,
    "speedup": run_speedup,
    "scale": run_scale,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    args = parser.parse_args()
    for name in args.only or list(SCENARIOS):
        SCENARIOS[name]()


if __name__ == "__main__":
    main()
