"""How fast each store ingests and records a batch, and Supabase's request count.

    python bench/stores.py                  # 100,000 rows into each store
    python bench/stores.py --rows 20000     # a quicker run

For each store (SQLite in a temporary folder; PostgreSQL 15 started for the
run, as the tests start it, with fsync off; Supabase through the tests'
PostgREST-compatible gateway over that same PostgreSQL) it times ingesting the
rows, then claiming and recording them in flushes of 500 as the engine does.
For Supabase it also reports the HTTP requests per 1,000 rows that ingest,
claims and result flushes take, which is what a hosted project bills and
rate-limits. The gateway runs in this process, so Supabase times include no
network latency: multiply the requests by your round trip to estimate it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bulkgpt_core.batches import (  # noqa: E402
    GenerationSettings,
    NewBatch,
    RowResult,
    RowStatus,
)
from bulkgpt_core.stores.base import Store  # noqa: E402
from bulkgpt_core.stores.postgres import PostgresStore  # noqa: E402
from bulkgpt_core.stores.sqlite import SQLiteStore  # noqa: E402
from bulkgpt_core.stores.supabase import SupabaseStore  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402
from tests.postgrest_gateway import PostgrestGateway  # noqa: E402

FLUSH_ROWS = 500
STEP_LABELS = {
    "ingest": "ingest (chunks of 1,000)",
    "claims": f"claims ({FLUSH_ROWS} rows each)",
    "flushes": f"result flushes ({FLUSH_ROWS} rows each)",
}
T = TypeVar("T")


@dataclass
class Figures:
    store: str
    rows: int
    ingest_s: float
    process_s: float
    requests: dict[str, int]

    def per_thousand(self, step: str) -> float:
        return self.requests.get(step, 0) * 1000 / self.rows


def company_rows(count: int) -> Iterator[dict[str, str]]:
    for i in range(count):
        yield {
            "company": f"Company {i}",
            "country": ("France", "Kenya", "Peru", "Japan")[i % 4],
            "about": f"Company {i} makes parts for bicycles and sells them online.",
        }


def new_batch(store: Store) -> str:
    spec = NewBatch(
        name="bench",
        template="Summarise <<about>>",
        columns=["company", "country", "about"],
        generation=GenerationSettings(model="gemini-2.5-flash"),
    )
    return store.create_batch(spec).id


class Steps:
    """Runs a store's calls, counting the HTTP requests each step sends."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.requests: Counter[str] = Counter()

    def run(self, step: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        before = self._sent()
        result = call(*args, **kwargs)
        self.requests[step] += self._sent() - before
        return result

    def _sent(self) -> int:
        store = self.store
        return store.requests_sent if isinstance(store, SupabaseStore) else 0


def measure(store: Store, rows: int) -> Figures:
    """Ingest ``rows``, then claim and record them all, 500 at a time."""
    batch_id = new_batch(store)
    steps = Steps(store)

    began = time.perf_counter()
    steps.run("ingest", store.add_rows, batch_id, company_rows(rows))
    ingest_s = time.perf_counter() - began

    began, after = time.perf_counter(), -1
    while page := steps.run(
        "claims", store.claim_rows, batch_id, after_index=after, limit=FLUSH_ROWS
    ):
        results = [answer(row.index) for row in page]
        steps.run("flushes", store.record_results, batch_id, results)
        after = page[-1].index
    process_s = time.perf_counter() - began

    assert store.get_batch(batch_id).succeeded == rows
    return Figures(store.label, rows, ingest_s, process_s, dict(steps.requests))


def answer(index: int) -> RowResult:
    return RowResult(
        index=index,
        status=RowStatus.SUCCEEDED,
        output=f"A maker of bicycle parts, number {index}.",
        prompt_hash=f"{index:064x}",
        tokens_in=40,
        tokens_out=12,
        cost_usd=0.00002,
        latency_ms=800,
        finish_reason="STOP",
    )


def report(all_figures: list[Figures], start_s: float) -> None:
    print(f"\nPostgreSQL 15 started (initdb, start, migrations) in {start_s:.2f} s\n")
    print(
        f"{'store':<12}{'rows':>9}{'ingest s':>10}{'rows/s':>10}{'claim+record s':>16}"
    )
    for f in all_figures:
        rate = f"{f.rows / f.ingest_s:,.0f}"
        print(
            f"{f.store:<12}{f.rows:>9,}{f.ingest_s:>10.2f}{rate:>10}{f.process_s:>16.2f}"
        )
    for f in all_figures:
        if f.store == "Supabase":
            print("\nSupabase HTTP requests per 1,000 rows:")
            for step, label in STEP_LABELS.items():
                count = f"({f.requests.get(step, 0)} in all)"
                print(f"  {label:<32}{f.per_thousand(step):>6.2f}   {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    rows = parser.parse_args().rows

    server = PostgresServer.create()
    gateway = PostgrestGateway(server.url_for("authenticator")).start()
    figures = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            openers: list[Callable[[], Store]] = [
                lambda: SQLiteStore(Path(folder) / "bench.sqlite3"),
                lambda: PostgresStore(server.url),
                lambda: SupabaseStore(gateway.url, gateway.service_role_key),
            ]
            for open_store in openers:
                store = open_store()
                try:
                    figures.append(measure(store, rows))
                    print(f"{store.label}: done", flush=True)
                finally:
                    store.close()
    finally:
        gateway.stop()
        server.destroy()
    report(figures, server.start_seconds)


if __name__ == "__main__":
    main()
