"""BulkGPT on Modal: a stored batch runs to its end in the cloud.

Deploy with ``modal deploy -m bulkgpt_core.modal_app``. The app and the CLI
start a batch by looking ``process_batch`` up by name and spawning it (see
:mod:`bulkgpt_core.modal_launch`). Both functions here are thin shells: the
engine, the shards and the store do the work, exactly as on a laptop.
"""

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import modal

if TYPE_CHECKING:
    from bulkgpt_core.config import Settings
    from bulkgpt_core.shards import RunShards, ShardResult, ShardSpec
    from bulkgpt_core.stores.base import Store

log = logging.getLogger(__name__)

# ## The app
#
# The launching side looks the app up by this name, so both read the same
# setting. The image below carries the whole package, so the functions'
# own source is not added a second time.

APP_NAME = os.environ.get("BULKGPT_MODAL_APP", "").strip() or "bulkgpt"
app = modal.App(APP_NAME, include_source=False)

MINUTES = 60  # seconds
HOURS = 60 * MINUTES

# ## The container image
#
# Only what the worker imports, pinned to the versions in requirements.txt
# (a test checks that they agree). Streamlit and pandas stay out.

WORKER_REQUIREMENTS = (
    "google-genai==3.3.0",
    "aiohttp==3.14.5",
    "psycopg[binary]==3.3.9",
    "supabase==2.34.1",
)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .uv_pip_install(*WORKER_REQUIREMENTS)
    .add_local_python_source("bulkgpt_core")
)

# ## Settings
#
# Containers read the same settings as the app, from environment variables
# that a Modal secret provides: GEMINI_API_KEY, BULKGPT_STORE and the store's
# connection (SUPABASE_URL with SUPABASE_SERVICE_ROLE_KEY, or DATABASE_URL).
# A container can't see a SQLite file on your laptop, so BULKGPT_STORE must
# be in the secret; Modal refuses to run without it.

SECRET_NAME = "bulkgpt-secrets"
secret = modal.Secret.from_name(SECRET_NAME, required_keys=["BULKGPT_STORE"])

# ## Retries
#
# A call that fails, or whose container is lost, is started again. That is
# safe because the engine picks up only rows that are not finished: every
# result is stored once, and a crash costs at most the calls in flight and
# the answers not yet written (about a second's worth), which are asked again.

RETRIES = modal.Retries(max_retries=3, backoff_coefficient=2.0, initial_delay=10.0)

# Each worker is an asyncio loop waiting on the network: one core and 1 GiB
# keep hundreds of calls in flight.
CPU = 1.0
MEMORY_MB = 1024


# ## Running a batch
#
# `process_batch` runs a small batch in its own container. A batch of more
# than BULKGPT_SHARD_ROWS rows (default 50,000) is split into row ranges that
# `process_shard` containers run at once, each paced to its share of the
# batch's rate limits; `process_batch` waits for all of them and then gives
# the batch its final status. A retried `process_batch` runs the shards
# again, and they skip the rows already done.


@app.function(
    image=image,
    secrets=[secret],
    cpu=CPU,
    memory=MEMORY_MB,
    timeout=24 * HOURS,
    retries=RETRIES,
)
def process_batch(batch_id: str) -> str:
    """Run one stored batch to its end; return its final status."""
    from bulkgpt_core.errors import BatchNotFound
    from bulkgpt_core.shards import run_batch_job

    settings = _settings()
    try:
        batch = run_batch_job(
            settings, _store_factory(settings), batch_id, run_shards=_shard_runner()
        )
    except BatchNotFound:
        # Deleted while it waited: nothing to do, and nothing to retry.
        log.warning("batch %s no longer exists", batch_id)
        return "deleted"
    return batch.status.value


@app.function(
    image=image,
    secrets=[secret],
    cpu=CPU,
    memory=MEMORY_MB,
    timeout=24 * HOURS,
    retries=RETRIES,
)
def process_shard(
    batch_id: str,
    lo: int,
    hi: int,
    rpm_share: int | None,
    tpm_share: int | None,
) -> dict[str, Any]:
    """Run rows ``lo <= index < hi`` of a batch at the given share of its limits."""
    from bulkgpt_core.shards import ShardSpec, run_shard

    settings = _settings()
    spec = ShardSpec(batch_id, lo, hi, rpm_share, tpm_share)
    outcome = run_shard(settings, _store_factory(settings), spec)
    return dataclasses.asdict(outcome)


# ## Helpers, run inside the container


def _settings() -> "Settings":
    """The settings from the environment; SQLite is refused in the cloud."""
    from bulkgpt_core.config import Settings
    from bulkgpt_core.errors import ConfigError

    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    if settings.store == "sqlite" and not modal.is_local():
        raise ConfigError(
            f"BULKGPT_STORE is sqlite in the Modal secret {SECRET_NAME!r}: a "
            "container can't see your computer's SQLite file. Set BULKGPT_STORE "
            "to supabase or postgres there, with the store's connection settings."
        )
    return settings


def _store_factory(settings: "Settings") -> Callable[[], "Store"]:
    from bulkgpt_core.stores import open_store

    return lambda: open_store(settings)


def _shard_runner() -> "RunShards":
    """How shards run: in containers of their own, or in threads under `.local()`."""
    from bulkgpt_core.shards import run_shards_in_threads

    if modal.is_local():
        return run_shards_in_threads(
            lambda spec: _outcome(process_shard.local(*spec.args))
        )
    return _starmap_shards


def _starmap_shards(specs: Sequence["ShardSpec"]) -> list["ShardResult"]:
    """Every shard in a container of its own, at once; a failed one as its error."""
    results = process_shard.starmap(
        [spec.args for spec in specs], return_exceptions=True
    )
    return [_outcome(result) for result in results]


def _outcome(result: Any) -> "ShardResult":
    from bulkgpt_core.shards import ShardOutcome

    if isinstance(result, BaseException):
        return result
    return ShardOutcome(**result)
