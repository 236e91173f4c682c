"""The ``bulkgpt`` command line: ``python -m bulkgpt_core COMMAND``.

``run`` takes a CSV, a prompt and an output file and does the whole job in
the terminal, with a progress bar on stderr. The other commands work on
batches already stored: ``worker`` (what the app starts), ``status``,
``export``, ``cancel``, ``resume`` and ``retry``.

Exit codes: 0 the batch completed (some rows may have failed); 1 the batch
failed or was cancelled; 2 bad input or configuration; 130 paused by Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import jobs
from .actions import worker_missing
from .batches import Batch, BatchStatus, GenerationSettings
from .config import DEMO_MODEL, Settings
from .errors import BulkGPTError, ConfigError
from .export import ExportFormat, write_export
from .modal_launch import launch_on_modal_command, prepare_for_launch
from .progress import format_duration, progress
from .runners import cancel_worker, start_worker
from .schema import load_schema
from .stores import open_store
from .stores.base import Store
from .tables import CSVLimits, read_csv_path
from .worker import run_stored_batch, run_worker

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CommandError(BulkGPTError):
    """A reason to stop with a one-line message and a non-zero exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bulkgpt_core",
        description="Run a language model over every row of a CSV.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="Run a prompt over a CSV file")
    run.add_argument("input", type=Path, help="CSV file to read")
    run.add_argument("--prompt", required=True, help="Template, e.g. 'Sum up <<text>>'")
    run.add_argument("--out", required=True, type=Path, help="Output .csv/.json/.jsonl")
    run.add_argument("--system", default="", help="System prompt")
    run.add_argument("--model", help="Model name, or 'demo' to run offline")
    run.add_argument("--name", default="", help="Batch name")
    run.add_argument("--temperature", type=float)
    run.add_argument("--max-output-tokens", type=int)
    run.add_argument("--concurrency", type=int, help="Calls in flight at once")
    run.add_argument("--rpm", type=int, help="Requests per minute limit")
    run.add_argument("--tpm", type=int, help="Tokens per minute limit")
    run.add_argument("--bom", action="store_true", help="Write a BOM for Excel")
    run.add_argument(
        "--schema", help="Output fields as JSON Schema: a file path or the JSON itself"
    )
    run.add_argument(
        "--budget", type=float, help="Pause when this many dollars are spent"
    )
    run.add_argument(
        "--no-reuse",
        action="store_true",
        help="Do not reuse answers from earlier batches",
    )

    worker = commands.add_parser("worker", help="Run a stored batch to its end")
    worker.add_argument("batch_id")

    status = commands.add_parser("status", help="Show one batch, or list them all")
    status.add_argument("batch_id", nargs="?")

    export = commands.add_parser("export", help="Write a batch's results to a file")
    export.add_argument("batch_id")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--failed-only", action="store_true")
    export.add_argument("--bom", action="store_true", help="Write a BOM for Excel")

    cancel = commands.add_parser("cancel", help="Stop a batch for good")
    cancel.add_argument("batch_id")

    launch = commands.add_parser(
        "launch", help="Start a stored batch in the background"
    )
    launch.add_argument("batch_id")
    launch.add_argument(
        "--runner",
        choices=("local", "modal"),
        help="Where it runs (default: BULKGPT_RUNNER)",
    )

    for name, text in (
        ("resume", "Go on with a paused, failed or cancelled batch"),
        ("retry", "Run a batch's failed rows again"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("batch_id")
        sub.add_argument(
            "--detach", action="store_true", help="Start a background worker instead"
        )
        if name == "retry":
            sub.add_argument(
                "--reason", action="append", help="Only failures of this kind"
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.command == "worker" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env()
        return COMMANDS[args.command](settings, args)
    except CommandError as exc:
        _say(f"error: {exc}")
        return exc.code
    except BulkGPTError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except OSError as exc:  # a file that cannot be written: say which, in a line
        _say(f"error: {exc.filename or 'a file'} cannot be written ({exc.strerror}).")
        return EXIT_USAGE


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    model = args.model or settings.model
    if model != DEMO_MODEL and not settings.has_gemini_key:
        raise ConfigError(
            "GEMINI_API_KEY is not set: set it in the environment or in "
            ".streamlit/secrets.toml, or pass --model demo to run offline."
        )
    fmt = _export_format(args.out)
    table = read_csv_path(args.input, limits=CSVLimits.from_settings(settings))
    generation = GenerationSettings(
        model=model,
        system_prompt=args.system,
        temperature=args.temperature,
        max_output_tokens=args.max_output_tokens,
        response_schema=_schema_argument(args.schema),
    )
    jobs.check_generation(settings, generation)
    limits = jobs.run_limits(
        settings,
        concurrency=args.concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        reuse=not args.no_reuse,
    )
    with open_store(settings) as store:
        batch = jobs.create_batch(
            store,
            table,
            name=args.name or args.input.name,
            template=args.prompt,
            generation=generation,
            limits=limits,
            runner="cli",
            budget_usd=args.budget,
        )
        _say(f"batch {batch.id}: {batch.total_rows:,} rows with {model}")
        batch = _run_in_foreground(settings, store, batch.id)
        sidecar = write_export(store, batch, args.out, fmt, excel_bom=args.bom)
    _say(f"wrote {args.out}" + _and_manifest(sidecar))
    return _exit_code(batch)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    batch = run_worker(settings, args.batch_id)
    return EXIT_OK if batch.status is not BatchStatus.FAILED else EXIT_FAILED


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    with open_store(settings) as store:
        if args.batch_id:
            print(describe(store.get_batch(args.batch_id)))
        else:
            for batch in store.list_batches():
                print(summary_line(batch))
    return EXIT_OK


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    fmt = _export_format(args.out)
    with open_store(settings) as store:
        batch = store.get_batch(args.batch_id)
        sidecar = write_export(
            store,
            batch,
            args.out,
            fmt,
            failed_only=args.failed_only,
            excel_bom=args.bom,
        )
    _say(
        f"wrote {args.out} ({batch.status.value}, {batch.done:,} rows done)"
        + _and_manifest(sidecar)
    )
    return EXIT_OK


def cmd_launch(settings: Settings, args: argparse.Namespace) -> int:
    if (args.runner or settings.runner) == "modal":
        _say(launch_on_modal_command(settings, args.batch_id))
        return EXIT_OK
    local = dataclasses.replace(settings, runner="local")
    with open_store(local) as store:
        prepare_for_launch(store, args.batch_id)
        _say(f"worker started ({start_worker(local, store, args.batch_id)})")
    return EXIT_OK


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    with open_store(settings) as store:
        batch = cancel_worker(settings, store, args.batch_id)
    _say(f"batch {batch.id} is {batch.status.value}")
    return EXIT_OK


def cmd_resume(settings: Settings, args: argparse.Namespace) -> int:
    with open_store(settings) as store:
        batch = store.get_batch(args.batch_id)
        # A batch left running by a worker that died goes on as it is.
        if not (batch.status is BatchStatus.RUNNING and worker_missing(batch)):
            jobs.resume_batch(store, args.batch_id)
        return _continue(settings, store, args)


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    with open_store(settings) as store:
        count = jobs.retry_failed(store, args.batch_id, args.reason)
        if count == 0:
            _say("no failed rows to retry")
            return EXIT_OK
        _say(f"{count:,} failed rows queued again")
        return _continue(settings, store, args)


def _continue(settings: Settings, store: Store, args: argparse.Namespace) -> int:
    if args.detach:
        call_id = start_worker(settings, store, args.batch_id)
        _say(f"worker started ({call_id})")
        return EXIT_OK
    batch = _run_in_foreground(settings, store, args.batch_id)
    return _exit_code(batch)


COMMANDS = {
    "run": cmd_run,
    "worker": cmd_worker,
    "status": cmd_status,
    "export": cmd_export,
    "cancel": cmd_cancel,
    "launch": cmd_launch,
    "resume": cmd_resume,
    "retry": cmd_retry,
}


# -- running in the terminal


def _run_in_foreground(settings: Settings, store: Store, batch_id: str) -> Batch:
    """Run the batch here, drawing progress; Ctrl-C pauses it cleanly."""
    return asyncio.run(_run_with_progress(settings, store, batch_id))


async def _run_with_progress(settings: Settings, store: Store, batch_id: str) -> Batch:
    watcher = open_store(settings)
    loop = asyncio.get_running_loop()
    paused = False

    def pause() -> None:
        nonlocal paused
        paused = True
        _say("\npausing after the calls in flight…")
        jobs.pause_batch(watcher, batch_id)

    loop.add_signal_handler(signal.SIGINT, pause)
    bar = asyncio.create_task(_draw_progress(watcher, batch_id, sys.stderr))
    try:
        batch = await run_stored_batch(settings, store, batch_id)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        bar.cancel()
        watcher.close()
    _say("\r" + progress_line(batch))
    _say(outcome_line(batch))
    if paused:
        raise CommandError(
            f"paused; go on with: python -m bulkgpt_core resume {batch_id}",
            EXIT_INTERRUPTED,
        )
    return batch


async def _draw_progress(store: Store, batch_id: str, out: TextIO) -> None:
    interactive = out.isatty()
    last_line = 0.0
    while True:
        await asyncio.sleep(0.5)
        try:
            batch = await asyncio.to_thread(store.get_batch, batch_id)
        except BulkGPTError:
            continue
        if interactive:
            out.write("\r" + progress_line(batch) + "\033[K")
            out.flush()
        elif time.monotonic() - last_line >= 5:
            last_line = time.monotonic()
            print(progress_line(batch), file=out, flush=True)


def progress_line(batch: Batch, width: int = 24) -> str:
    p = progress(batch)
    filled = int(p.fraction * width)
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {p.done:,}/{p.total:,} {p.fraction:5.1%} · {p.failed:,} failed · "
        f"{p.rows_per_second:.1f} rows/s · ETA {format_duration(p.eta_seconds)} · "
        f"${p.cost_usd:.4f}"
    )


def outcome_line(batch: Batch) -> str:
    text = (
        f"batch {batch.id} {batch.status.value}: {batch.succeeded:,} succeeded, "
        f"{batch.failed:,} failed of {batch.total_rows:,} rows"
    )
    if batch.last_error:
        text += f" ({batch.last_error})"
    return text


def summary_line(batch: Batch) -> str:
    return (
        f"{batch.id}  {batch.created_at:%Y-%m-%d %H:%M}  {batch.status.value:<10} "
        f"{batch.done:>9,}/{batch.total_rows:<9,} ${batch.cost_usd:<9.4f} {batch.name}"
    )


def describe(batch: Batch) -> str:
    p = progress(batch)
    lines = [
        f"batch      {batch.id}",
        f"name       {batch.name}",
        f"status     {batch.status.value}",
        f"model      {batch.model}",
        f"rows       {p.total:,} ({p.succeeded:,} succeeded, {p.failed:,} failed, "
        f"{p.remaining:,} remaining)",
        f"speed      {p.rows_per_second:.1f} rows/s, "
        f"ETA {format_duration(p.eta_seconds)}",
        f"elapsed    {format_duration(p.elapsed_seconds)}",
        f"tokens     {p.tokens_in:,} in, {p.tokens_out:,} out",
        f"cost       ${p.cost_usd:.4f}",
        f"runner     {batch.runner} {batch.call_id or ''}".rstrip(),
    ]
    if batch.last_error:
        lines.append(f"error      {batch.last_error}")
    return "\n".join(lines)


def _exit_code(batch: Batch) -> int:
    if batch.status is BatchStatus.COMPLETED:
        return EXIT_OK
    raise CommandError(outcome_line(batch), EXIT_FAILED)


def _schema_argument(value: str | None) -> dict[str, Any] | None:
    """``--schema``: a path to a JSON Schema file, or the JSON itself."""
    if not value:
        return None
    path = Path(value)
    if not value.lstrip().startswith("{") and path.is_file():
        value = path.read_text(encoding="utf-8")
    return load_schema(value)


def _and_manifest(sidecar: Path | None) -> str:
    return f" and its manifest {sidecar}" if sidecar else ""


def _export_format(path: Path) -> ExportFormat:
    """The format an export's name asks for, checked before any work is done."""
    try:
        fmt = ExportFormat.from_path(path)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not path.parent.is_dir():
        raise CommandError(
            f"There is no folder {path.parent} to write {path.name} in: create "
            "it, or give --out a path in a folder that exists."
        )
    return fmt


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
