"""Tests for bulkgpt_core.models: the real google-genai SDK against a fake Gemini."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from bulkgpt_core.batches import GenerationSettings
from bulkgpt_core.config import Settings
from bulkgpt_core.errors import ConfigError
from bulkgpt_core.models import (
    KNOWN_MODELS,
    FailureKind,
    ModelError,
    ModelReply,
    open_model,
)
from bulkgpt_core.models.demo import DemoModel, example_for_schema
from bulkgpt_core.models.gemini import (
    GeminiModel,
    parse_duration,
    parse_retry_after_header,
    redact,
)
from tests.fake_gemini import FakeGemini, prompt_hash

KEY = "test-key-not-secret"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "score": {"type": "number", "minimum": 0, "maximum": 10},
        "stars": {"type": "integer"},
        "positive": {"type": "boolean"},
        "tone": {"type": "string", "enum": ["calm", "angry"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "note": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/note"}]},
    },
    "required": ["summary", "score", "stars", "positive", "tone", "tags"],
    "$defs": {"note": {"type": "string", "maxLength": 5}},
}


@pytest.fixture(scope="module")
def fake_process() -> Iterator[FakeGemini]:
    with FakeGemini.start() as server:
        yield server


@pytest.fixture
def fake(fake_process: FakeGemini) -> FakeGemini:
    """The fake Gemini server with default behaviour and zeroed stats."""
    fake_process.configure(**FakeGemini.DEFAULTS)
    fake_process.reset()
    return fake_process


@pytest.fixture
def model(fake: FakeGemini) -> GeminiModel:
    """A Gemini client pointed at the fake server, with a short timeout."""
    return GeminiModel(KEY, "gemini-2.5-flash", base_url=fake.url, timeout_s=2)


def outcome(client: Any, prompt: str, **generation: Any) -> ModelReply | ModelError:
    """One call in a fresh event loop: the reply, or the error it raised."""

    async def run() -> ModelReply | ModelError:
        settings = GenerationSettings(model=client.name, **generation)
        try:
            return await client.generate(prompt, settings)
        except ModelError as exc:
            return exc
        finally:
            await client.aclose()

    return asyncio.run(run())


def failure(client: Any, prompt: str, **generation: Any) -> ModelError:
    result = outcome(client, prompt, **generation)
    assert isinstance(result, ModelError), f"expected a failure, got {result!r}"
    return result


def reply(client: Any, prompt: str, **generation: Any) -> ModelReply:
    result = outcome(client, prompt, **generation)
    assert isinstance(result, ModelReply), f"expected a reply, got {result!r}"
    return result


# --- Gemini: answers ---------------------------------------------------------------


def test_answer_has_text_tokens_finish_reason_and_latency(
    fake: FakeGemini, model: GeminiModel
) -> None:
    fake.configure(latency_ms=150)
    prompt, system = "Summarise row 1: the cat sat.", "Be brief."

    answer = reply(model, prompt, system_prompt=system, temperature=0.2)

    text = f"ANSWER: {prompt}"
    assert answer.text == text
    assert answer.tokens_in == math.ceil((len(prompt) + len(system)) / 4)
    assert answer.tokens_out == math.ceil(len(text) / 4)
    assert answer.finish_reason == "STOP"
    assert 0.15 <= answer.latency_s < 1.5
    assert fake.stats()["answers_by_prompt"] == {prompt_hash(prompt): 1}


def test_thinking_tokens_are_billed_as_output(
    fake: FakeGemini, model: GeminiModel
) -> None:
    fake.configure(thoughts_tokens=7)
    answer = reply(model, "think")
    assert answer.tokens_out == math.ceil(len("ANSWER: think") / 4) + 7


def test_schema_request_gets_json_that_fits(model: GeminiModel) -> None:
    answer = reply(model, "Review: lovely soup", response_schema=SCHEMA)
    data = json.loads(answer.text)
    jsonschema.validate(data, SCHEMA)
    assert "lovely soup" in data["summary"]


def test_count_tokens(fake: FakeGemini, model: GeminiModel) -> None:
    async def run() -> int:
        try:
            return await model.count_tokens("x" * 41)
        finally:
            await model.aclose()

    assert asyncio.run(run()) == 11
    assert fake.stats()["by_method"] == {"countTokens": 1}


def test_client_uses_aiohttp_without_sdk_retries(model: GeminiModel) -> None:
    api = model._client._api_client
    assert api._use_aiohttp()
    assert api._http_options.retry_options.attempts == 1

    async def run() -> bool:
        await model.generate("hi", GenerationSettings(model=model.name))
        session = api._aiohttp_session
        await model.aclose()
        return session.closed

    assert asyncio.run(run())


def test_200_concurrent_calls_all_succeed(fake: FakeGemini, model: GeminiModel) -> None:
    prompts = [f"row {i}: describe item {i}" for i in range(200)]
    settings = GenerationSettings(model=model.name)

    async def run() -> list[ModelReply]:
        try:
            calls = (model.generate(p, settings) for p in prompts)
            return await asyncio.gather(*calls)
        finally:
            await model.aclose()

    answers = asyncio.run(run())

    assert [a.text for a in answers] == [f"ANSWER: {p}" for p in prompts]
    stats = fake.stats()
    assert stats["total"] == 200
    assert stats["calls_by_prompt"] == {prompt_hash(p): 1 for p in prompts}
    assert stats["max_in_flight"] > 1


# --- Gemini: failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "retryable"),
    [
        ("429", FailureKind.RATE_LIMITED, True),
        ("500", FailureKind.SERVER_ERROR, True),
        ("503", FailureKind.SERVER_ERROR, True),
        ("drop", FailureKind.CONNECTION, True),
        ("malformed", FailureKind.CONNECTION, True),
        ("400", FailureKind.INVALID_REQUEST, False),
        ("403", FailureKind.INVALID_KEY, False),
        ("safety", FailureKind.SAFETY, False),
        ("prohibited", FailureKind.SAFETY, False),
        ("blocked_prompt", FailureKind.SAFETY, False),
        ("empty", FailureKind.EMPTY, False),
        ("max_tokens", FailureKind.MAX_TOKENS, False),
    ],
)
def test_fault_maps_to_kind_in_one_request(
    fake: FakeGemini,
    model: GeminiModel,
    fault: str,
    kind: FailureKind,
    retryable: bool,
) -> None:
    error = failure(model, f"row 7 [[fake:{fault}]]")

    assert error.kind is kind
    assert error.retryable is retryable
    assert str(error)
    # The SDK sent exactly one request: it did not retry on its own.
    assert fake.stats()["total"] == 1


def test_retryable_kinds_are_the_transient_ones() -> None:
    retryable = {k for k in FailureKind if k.retryable}
    assert retryable == {
        FailureKind.RATE_LIMITED,
        FailureKind.SERVER_ERROR,
        FailureKind.TIMEOUT,
        FailureKind.CONNECTION,
    }


def test_blocked_answer_still_reports_billed_tokens(model: GeminiModel) -> None:
    error = failure(model, "[[fake:safety]] something")
    assert error.reply is not None
    assert error.reply.finish_reason == "SAFETY"
    assert error.reply.tokens_in > 0


def test_hung_server_times_out_within_the_timeout(fake: FakeGemini) -> None:
    model = GeminiModel(KEY, base_url=fake.url, timeout_s=1)
    started = time.perf_counter()
    error = failure(model, "[[fake:hang]] slow row")
    elapsed = time.perf_counter() - started

    assert error.kind is FailureKind.TIMEOUT
    assert error.retryable
    assert model.timeout_s <= elapsed < model.timeout_s + 1
    assert fake.stats()["total"] == 1


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"retry_delay": "0.5s"}, 0.5),
        ({"retry_delay": "1.5s"}, 1.5),
        ({"retry_delay": "2s"}, 2.0),
        ({"retry_delay": None, "retry_after_header": "3"}, 3.0),
        ({"retry_delay": None}, None),
    ],
)
def test_rate_limit_carries_retry_after(
    fake: FakeGemini,
    model: GeminiModel,
    config: dict[str, Any],
    expected: float | None,
) -> None:
    fake.configure(**config)
    error = failure(model, "[[fake:429]] row")
    assert error.kind is FailureKind.RATE_LIMITED
    assert error.retry_after == expected


def test_rpm_limit_refuses_calls_over_the_rate(
    fake: FakeGemini, model: GeminiModel
) -> None:
    fake.configure(rpm=60, retry_delay="1s")  # a bucket of one request
    results = [outcome(model, f"row {i}") for i in range(3)]

    assert isinstance(results[0], ModelReply)
    assert [getattr(r, "kind", None) for r in results[1:]] == [
        FailureKind.RATE_LIMITED
    ] * 2
    assert fake.stats()["rate_limited"] == 2


def test_invalid_key_is_named_and_never_shown(fake: FakeGemini) -> None:
    secret = "AIzaSy-wrong-key-0123456789"
    fake.configure(api_key="the-right-key")
    client = GeminiModel(secret, base_url=fake.url, timeout_s=2)

    error = failure(client, "row 1")

    assert error.kind is FailureKind.INVALID_KEY
    assert error.kind.fails_every_call and not error.retryable
    assert "GEMINI_API_KEY" in str(error)
    assert secret not in str(error)
    assert secret not in repr(error.args)


def test_unknown_model_names_it_and_suggests_one(fake: FakeGemini) -> None:
    client = GeminiModel(KEY, "gpt-4o", base_url=fake.url, timeout_s=2)

    error = failure(client, "row 1")

    assert error.kind is FailureKind.UNKNOWN_MODEL
    assert "gpt-4o" in str(error)
    assert "gemini-2.5-flash" in str(error)


def test_max_tokens_keeps_partial_text_and_a_bigger_limit_succeeds(
    fake: FakeGemini, model: GeminiModel
) -> None:
    fake.configure(max_tokens_ok_at=2000)
    prompt = "[[fake:max_tokens]] write a long essay about row 3"

    error = failure(model, prompt, max_output_tokens=1000)
    assert error.kind is FailureKind.MAX_TOKENS
    assert error.reply is not None
    assert error.reply.finish_reason == "MAX_TOKENS"
    assert error.reply.text and f"ANSWER: {prompt}".startswith(error.reply.text)
    assert error.reply.tokens_out > 0

    assert reply(model, prompt, max_output_tokens=2000).text == f"ANSWER: {prompt}"


def test_counted_marker_fails_then_succeeds_once(
    fake: FakeGemini, model: GeminiModel
) -> None:
    prompt = "[[fake:503:2]] row 9"
    kinds = [getattr(outcome(model, prompt), "kind", "ok") for _ in range(3)]

    assert kinds == [FailureKind.SERVER_ERROR, FailureKind.SERVER_ERROR, "ok"]
    stats = fake.stats()
    assert stats["calls_by_prompt"] == {prompt_hash(prompt): 3}
    assert stats["answers_by_prompt"] == {prompt_hash(prompt): 1}


def test_random_faults_follow_their_probability(
    fake: FakeGemini, model: GeminiModel
) -> None:
    fake.configure(p_500=1.0)
    assert failure(model, "row 1").kind is FailureKind.SERVER_ERROR
    fake.configure(p_500=0.0, p_empty=1.0)
    assert failure(model, "row 1").kind is FailureKind.EMPTY


def test_parse_duration() -> None:
    assert parse_duration("2s") == 2.0
    assert parse_duration("0.500s") == 0.5
    assert parse_duration({"seconds": 1, "nanos": 500_000_000}) == 1.5
    assert parse_duration("soon") is None
    assert parse_retry_after_header("3") == 3.0
    assert parse_retry_after_header("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after_header("later") is None


def test_redact_blanks_the_key_out_of_messages() -> None:
    secret = "AIzaSyA-very-secret-key"
    error = ModelError(
        FailureKind.OTHER, f"bad request for key={secret}", retry_after=1
    )
    clean = redact(error, secret)
    assert secret not in str(clean)
    assert (clean.kind, clean.retry_after) == (FailureKind.OTHER, 1)


# --- Demo model ----------------------------------------------------------------------


def test_demo_answers_are_labelled_and_deterministic() -> None:
    demo = DemoModel(delay_s=0)
    prompt = "Summarise this review: the soup was cold but the staff were kind."

    first, second = reply(demo, prompt), reply(demo, prompt)

    assert first.text == second.text
    assert first.text.startswith("[demo answer]")
    assert "Summarise this review" in first.text
    assert f"{len(prompt.split())} words, {len(prompt)} characters" in first.text
    assert first.finish_reason == "STOP"
    assert first.tokens_in == math.ceil(len(prompt) / 4)
    assert first.tokens_out == math.ceil(len(first.text) / 4)
    assert reply(demo, "another row").text != first.text


def test_demo_honours_its_delay() -> None:
    answer = reply(DemoModel(delay_s=0.2), "row")
    assert 0.2 <= answer.latency_s < 1


def test_demo_fills_the_schema() -> None:
    answer = reply(DemoModel(delay_s=0), "row 4", response_schema=SCHEMA)
    data = json.loads(answer.text)
    jsonschema.validate(data, SCHEMA)
    assert data["summary"].startswith("[demo answer]")


def test_example_for_schema_covers_plain_types() -> None:
    assert example_for_schema({"type": "integer", "minimum": 5}) == 5
    assert example_for_schema({"type": ["null", "boolean"]}) is True
    assert example_for_schema({"type": "array", "items": {"const": 3}}) == [3]
    assert example_for_schema({"type": "string"}, "hi") == "hi"


def test_demo_counts_tokens() -> None:
    assert asyncio.run(DemoModel().count_tokens("x" * 9)) == 3


# --- open_model ----------------------------------------------------------------------


def test_open_model_gives_demo_without_key() -> None:
    model = open_model(Settings(demo_delay_s=0.05), "demo")
    assert isinstance(model, DemoModel)
    assert model.delay_s == 0.05


def test_open_model_refuses_gemini_without_key() -> None:
    with pytest.raises(ConfigError, match="GEMINI_API_KEY is not set"):
        open_model(Settings(), "gemini-2.5-flash")


def test_open_model_blank_name_without_key_is_demo() -> None:
    assert isinstance(open_model(Settings(), " "), DemoModel)


def test_open_model_gives_gemini_with_key(fake: FakeGemini) -> None:
    settings = Settings(
        gemini_api_key=KEY, gemini_base_url=fake.url, request_timeout_s=5
    )
    model = open_model(settings, "gemini-2.5-flash-lite")

    assert isinstance(model, GeminiModel)
    assert model.name == "gemini-2.5-flash-lite"
    assert model.timeout_s == 5
    assert reply(model, "row 1").text == "ANSWER: row 1"


def test_known_models_include_demo_and_default() -> None:
    assert "demo" in KNOWN_MODELS
    assert "gemini-2.5-flash" in KNOWN_MODELS
