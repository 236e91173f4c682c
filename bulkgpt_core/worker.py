"""One batch, run to its end in this process: what a detached worker or Modal runs."""

from __future__ import annotations

import asyncio
import logging

from .batches import Batch, BatchStatus
from .config import Settings
from .cost import parse_price_overrides
from .engine import EngineOptions, run_batch
from .errors import BulkGPTError
from .models import open_model
from .stores import open_store
from .stores.base import Store

log = logging.getLogger(__name__)


def engine_options(
    settings: Settings, row_range: tuple[int, int] | None = None
) -> EngineOptions:
    return EngineOptions(
        max_prompt_chars=settings.max_prompt_chars,
        max_output_tokens_cap=settings.max_output_tokens,
        row_range=row_range,
        prices=parse_price_overrides(settings.prices),
        journal_dir=settings.data_dir / "journal",
        store_outage_s=settings.store_outage_s,
    )


async def run_stored_batch(
    settings: Settings,
    store: Store,
    batch_id: str,
    *,
    row_range: tuple[int, int] | None = None,
    options: EngineOptions | None = None,
) -> Batch:
    """Run one batch (or one shard) with the model it names."""
    batch = store.get_batch(batch_id)
    try:
        model = open_model(settings, batch.model)
    except BulkGPTError as exc:
        store.set_status(batch_id, BatchStatus.FAILED, last_error=str(exc))
        return store.get_batch(batch_id)
    try:
        return await run_batch(
            store, batch_id, model, options or engine_options(settings, row_range)
        )
    finally:
        await model.aclose()


def run_worker(settings: Settings, batch_id: str) -> Batch:
    """Open the configured store and run the batch to its end."""
    with open_store(settings) as store:
        batch = asyncio.run(run_stored_batch(settings, store, batch_id))
    log.info("batch %s is %s", batch_id, batch.status.value)
    return batch
