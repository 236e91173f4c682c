"""Answers worth their cost: structured output, cut-offs, reuse and the budget."""

from __future__ import annotations

import asyncio
import json

import pytest

from bulkgpt_core import jobs
from bulkgpt_core.batches import BatchStatus, GenerationSettings, NewBatch, RunLimits
from bulkgpt_core.config import Settings
from bulkgpt_core.engine import EngineOptions
from bulkgpt_core.export import ExportFormat, export_chunks
from bulkgpt_core.schema import (
    AnswerError,
    FieldType,
    OutputField,
    SchemaError,
    fields_to_schema,
    parse_answer,
    schema_to_fields,
)
from bulkgpt_core.stores.base import Store
from bulkgpt_core.worker import run_stored_batch
from tests.fake_gemini import FakeGemini, prompt_hash

FAST = EngineOptions(
    base_backoff_s=0.01, max_backoff_s=0.05, flush_seconds=0.05, tick_seconds=0.05
)
FIELDS = [
    OutputField("sentiment", FieldType.CHOICE, choices=("positive", "negative")),
    OutputField("score", FieldType.INTEGER, "1 to 5"),
    OutputField("topics", FieldType.LIST, required=False),
    OutputField("urgent", FieldType.BOOLEAN),
]


def make_batch(
    store: Store,
    texts: list[str],
    *,
    schema: dict | None = None,
    max_output_tokens: int | None = None,
    reuse: bool = True,
    budget: float | None = None,
) -> str:
    batch = store.create_batch(
        NewBatch(
            name="answers",
            template="Review: <<text>>",
            columns=["text"],
            generation=GenerationSettings(
                model="gemini-2.5-flash",
                max_output_tokens=max_output_tokens,
                response_schema=schema,
            ),
            limits=RunLimits(concurrency=4, max_attempts=3, reuse=reuse),
            budget_usd=budget,
        )
    )
    store.add_rows(batch.id, ({"text": t} for t in texts))
    return batch.id


def run(store: Store, batch_id: str):
    settings = Settings.from_env()
    return asyncio.run(run_stored_batch(settings, store, batch_id, options=FAST))


def calls_for(gemini: FakeGemini, prompt: str) -> int:
    return gemini.stats()["calls_by_prompt"].get(prompt_hash(prompt), 0)


def test_fields_round_trip_through_json_schema() -> None:
    schema = fields_to_schema(FIELDS)
    assert schema["required"] == ["sentiment", "score", "urgent"]
    assert schema["properties"]["sentiment"]["enum"] == ["positive", "negative"]
    assert schema_to_fields(schema) == FIELDS


@pytest.mark.parametrize(
    "fields",
    [
        [OutputField("1bad")],
        [OutputField("a"), OutputField("a")],
        [OutputField("pick", FieldType.CHOICE)],
    ],
)
def test_unusable_fields_say_why(fields) -> None:
    with pytest.raises(SchemaError):
        fields_to_schema(fields)


def test_answers_are_checked_against_the_schema() -> None:
    schema = fields_to_schema(FIELDS)
    good = '```json\n{"sentiment": "positive", "score": 4, "urgent": false}\n```'
    assert parse_answer(good, schema)["score"] == 4
    with pytest.raises(AnswerError, match="'score' must be integer"):
        parse_answer('{"sentiment": "positive", "score": "4", "urgent": true}', schema)
    with pytest.raises(AnswerError, match="'urgent' is missing"):
        parse_answer('{"sentiment": "negative", "score": 1}', schema)
    with pytest.raises(AnswerError, match="must be one of"):
        parse_answer('{"sentiment": "meh", "score": 1, "urgent": true}', schema)
    with pytest.raises(AnswerError, match="not valid JSON"):
        parse_answer("Sure! Here it is", schema)


def test_structured_answers_become_export_columns(
    gemini: FakeGemini, sqlite_store
) -> None:
    batch_id = make_batch(
        sqlite_store, ["great", "awful"], schema=fields_to_schema(FIELDS)
    )
    batch = run(sqlite_store, batch_id)
    assert batch.succeeded == 2
    rows = list(sqlite_store.iter_rows(batch_id))
    assert rows[0].parsed["sentiment"] == "positive"
    assert isinstance(rows[0].parsed["score"], int)

    records = json.loads(
        b"".join(export_chunks(sqlite_store, batch, ExportFormat.JSON)).decode()
    )["rows"]
    assert list(records[0])[:7] == [
        "text",
        "output",
        "sentiment",
        "score",
        "topics",
        "urgent",
        "status",
    ]
    assert records[0]["sentiment"] == "positive"
    assert json.loads(records[0]["output"]) == rows[0].parsed
    csv_text = b"".join(export_chunks(sqlite_store, batch, ExportFormat.CSV)).decode()
    assert "sentiment,score,topics,urgent" in csv_text.splitlines()[0]


def test_an_unusable_answer_is_repaired_once_then_fails(
    gemini: FakeGemini, sqlite_store
) -> None:
    schema = fields_to_schema(FIELDS)
    batch_id = make_batch(
        sqlite_store, ["[[fake:bad_json:1]]", "[[fake:bad_json]]"], schema=schema
    )
    run(sqlite_store, batch_id)
    repaired, broken = sqlite_store.iter_rows(batch_id)
    assert repaired.status.value == "succeeded"
    assert repaired.attempts == 2 and repaired.parsed["sentiment"] == "positive"
    assert broken.status.value == "failed"
    assert broken.error_kind == "invalid_json"
    assert broken.output == '{"not quite": JSON'
    assert broken.attempts == 2
    assert calls_for(gemini, "Review: [[fake:bad_json]]") == 1


def test_a_cut_off_answer_is_retried_with_twice_the_limit(
    gemini: FakeGemini, sqlite_store
) -> None:
    gemini.configure(max_tokens_ok_at=4096)
    widened = make_batch(
        sqlite_store, ["[[fake:max_tokens]] a"], max_output_tokens=2048
    )
    still_short = make_batch(
        sqlite_store, ["[[fake:max_tokens]] b"], max_output_tokens=100
    )
    run(sqlite_store, widened)
    run(sqlite_store, still_short)
    (ok,) = sqlite_store.iter_rows(widened)
    (cut,) = sqlite_store.iter_rows(still_short)
    assert ok.status.value == "succeeded" and ok.attempts == 2
    assert cut.status.value == "failed" and cut.error_kind == "max_tokens"
    assert cut.attempts == 2 and cut.tokens_out > 0


def test_identical_rows_are_called_once_and_reused_across_batches(
    gemini: FakeGemini, sqlite_store
) -> None:
    texts = ["same", "other", "same", "same", "other", "third"]
    first = run(sqlite_store, make_batch(sqlite_store, texts))
    assert first.succeeded == 6
    assert first.reused == 3
    assert gemini.stats()["answered"] == 3
    assert first.saved_usd > 0

    second = run(sqlite_store, make_batch(sqlite_store, texts))
    assert second.reused == 6 and second.cost_usd == 0
    assert gemini.stats()["answered"] == 3

    no_reuse = run(sqlite_store, make_batch(sqlite_store, texts, reuse=False))
    assert no_reuse.reused == 3  # identical rows in one file are still called once
    assert gemini.stats()["answered"] == 6
    outputs = [r.output for r in sqlite_store.iter_rows(second.id)]
    assert outputs == [f"ANSWER: Review: {t}" for t in texts]


def test_the_budget_pauses_then_a_higher_budget_resumes(
    gemini: FakeGemini, sqlite_store
) -> None:
    gemini.configure(latency_ms=5)
    texts = [f"{i} " + "x" * 400 for i in range(200)]
    batch_id = make_batch(sqlite_store, texts, budget=0.001)

    paused = run(sqlite_store, batch_id)
    assert paused.status is BatchStatus.PAUSED
    assert "budget" in paused.last_error
    assert paused.cost_usd >= 0.001 and paused.done < 200

    jobs.set_budget(sqlite_store, batch_id, 10.0)
    jobs.resume_batch(sqlite_store, batch_id)
    finished = run(sqlite_store, batch_id)
    assert finished.status is BatchStatus.COMPLETED
    assert finished.succeeded == 200
    assert gemini.stats()["answered"] == 200
