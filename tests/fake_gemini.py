"""A local server that speaks Gemini's REST API, for tests and benchmarks.

The real google-genai SDK is pointed at it with
``HttpOptions(base_url=server.url)``. It runs as its own process, so the client
under test and the server do not share a GIL::

    python tests/fake_gemini.py --port 0 --latency-ms 200 --rpm 3000

prints ``LISTENING http://127.0.0.1:PORT`` once, then serves until killed.
From Python, :class:`FakeGemini` starts, steers and stops that process.

Answers are ``"ANSWER: " + prompt``. A prompt containing ``[[fake:KIND]]``
always gets that fault and ``[[fake:KIND:N]]`` gets it for the first N calls
whose prompt has that same marker line. KIND is one of :data:`FAULT_KINDS`.
The same faults can be drawn at random with ``p_KIND`` probabilities (see
:class:`FakeConfig`).

Control endpoints: ``POST /_control`` (JSON config changes), ``GET /_stats``,
``POST /_reset`` (zero the stats, the per-prompt counts and the rate bucket).
This module needs nothing from the ``bulkgpt_core`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import random
import re
import select
import signal
import subprocess
import sys
import time
import typing
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from aiohttp import web

FAULT_KINDS = (
    "429",
    "500",
    "503",
    "400",
    "403",
    "hang",
    "safety",
    "prohibited",
    "blocked_prompt",
    "max_tokens",
    "empty",
    "bad_json",
    "malformed",
    "drop",
)
# Faults that can also be drawn at random, each with a ``p_<kind>`` setting.
RANDOM_FAULTS = (
    "429",
    "500",
    "503",
    "hang",
    "safety",
    "max_tokens",
    "empty",
    "malformed",
    "drop",
)
MARKER = re.compile(r"\[\[fake:([a-z0-9_]+)(?::(\d+))?\]\]")

INVALID_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
NO_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established "
    "identity). Please use API Key or other form of API consumer identity to "
    "call this API."
)
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing "
    "details. For more information on this error, head to: "
    "https://ai.google.dev/gemini-api/docs/rate-limits."
)
HARM_CATEGORIES = (
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)


def prompt_hash(text: str) -> str:
    """The key the server's per-prompt counts use: sha256 of the prompt text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- Configuration -----------------------------------------------------------


@dataclass
class FakeConfig:
    """How the server behaves; every field can be changed at run time."""

    api_key: str | None = None  # None: any non-empty key is accepted
    models: list[str] | None = None  # None: any name starting with "gemini"
    mode: str = "echo"  # "echo" or "fixed"
    fixed_text: str = "ANSWER"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rpm: float | None = None  # None: no rate limit
    burst_seconds: float = 1.0
    retry_delay: str | None = "2s"  # RetryInfo on 429s; None leaves it out
    retry_after_header: str | None = None  # a Retry-After header on 429s
    hang_s: float = 30.0
    max_tokens_ok_at: int | None = 4096  # maxOutputTokens that cures max_tokens
    thoughts_tokens: int = 0  # reported as thoughtsTokenCount
    model_version: str | None = None  # None: the requested model's name
    seed: int = 0
    p_429: float = 0.0
    p_500: float = 0.0
    p_503: float = 0.0
    p_hang: float = 0.0
    p_safety: float = 0.0
    p_max_tokens: float = 0.0
    p_empty: float = 0.0
    p_malformed: float = 0.0
    p_drop: float = 0.0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply changes, refusing unknown names and values of the wrong type."""
        hints = typing.get_type_hints(FakeConfig)
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fake Gemini settings: {', '.join(unknown)}")
        values = {k: _coerce(k, hints[k], v) for k, v in changes.items()}
        if values.get("mode", self.mode) not in ("echo", "fixed"):
            raise ValueError(f"mode={values['mode']!r}: use echo or fixed")
        for name, value in values.items():
            setattr(self, name, value)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Turn a JSON or command-line value into the type a setting declares."""
    options = typing.get_args(hint) or (hint,)
    kinds = [k for k in options if k is not type(None)]
    if value is None:
        if len(kinds) == len(options):
            raise ValueError(f"{name} cannot be null")
        return None
    kind = typing.get_origin(kinds[0]) or kinds[0]
    if kind is list and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [str(v) for v in value] if kind is list else kind(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} is not a {kind.__name__}") from exc


class TokenBucket:
    """Requests per minute, smoothed: ``burst_seconds`` worth may come at once."""

    def __init__(self, rpm: float, burst_seconds: float) -> None:
        self.rate = rpm / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        elapsed = now - self.stamp
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


# --- Statistics --------------------------------------------------------------


@dataclass
class Stats:
    """What the server saw since it started or was last reset."""

    started: float = field(default_factory=time.monotonic)
    total: int = 0
    by_method: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    calls_by_prompt: Counter[str] = field(default_factory=Counter)
    answers_by_prompt: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    # Per second since the start: [arrived, answered, rate limited].
    timeline: list[list[int]] = field(default_factory=list)

    def _second(self) -> list[int]:
        second = int(time.monotonic() - self.started)
        while len(self.timeline) <= second:
            self.timeline.append([0, 0, 0])
        return self.timeline[second]

    def arrived(self, method: str) -> None:
        self.total += 1
        self.by_method[method] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._second()[0] += 1

    def responded(self, status: int, *, answered: str | None = None) -> None:
        """Count a response; ``answered`` is the prompt hash of a good answer."""
        self.by_status[str(status)] += 1
        if status == 429:
            self._second()[2] += 1
        if answered is not None:
            self.answers_by_prompt[answered] += 1
            self._second()[1] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_method": dict(self.by_method),
            "by_status": dict(self.by_status),
            "rate_limited": self.by_status.get("429", 0),
            "answered": sum(self.answers_by_prompt.values()),
            "faults": dict(self.faults),
            "calls_by_prompt": dict(self.calls_by_prompt),
            "answers_by_prompt": dict(self.answers_by_prompt),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "timeline": [
                {"second": i, "requests": r, "answered": a, "rate_limited": q}
                for i, (r, a, q) in enumerate(self.timeline)
            ],
        }


class FakeState:
    """The server's configuration, randomness, rate bucket and statistics."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.ids = itertools.count(1)
        self.rng = random.Random(config.seed)
        self.bucket = self._new_bucket()
        self.marker_counts: Counter[str] = Counter()

    def _new_bucket(self) -> TokenBucket | None:
        if not self.config.rpm:
            return None
        return TokenBucket(self.config.rpm, self.config.burst_seconds)

    def configure(self, changes: dict[str, Any]) -> None:
        self.config.update(changes)
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        if {"rpm", "burst_seconds"} & set(changes):
            self.bucket = self._new_bucket()

    def reset(self) -> None:
        # Requests still in flight will count themselves out of the new stats.
        busy = self.stats.in_flight
        self.stats = Stats(in_flight=busy, max_in_flight=busy)
        self.marker_counts.clear()
        self.bucket = self._new_bucket()

    def over_rate(self) -> bool:
        return self.bucket is not None and not self.bucket.take()

    def marker_calls(self, prompt: str) -> int:
        """Calls so far whose marker line matched this prompt's.

        ``[[fake:KIND:N]]`` counts by the line that holds the marker, so a
        follow-up prompt that quotes the original (a repair request) counts
        as another call of the same row.
        """
        marker = MARKER.search(prompt)
        if marker is None:
            return 0
        end = prompt.find("\n", marker.end())
        line = prompt[: len(prompt) if end < 0 else end]
        self.marker_counts[line] += 1
        return self.marker_counts[line]

    def pick_fault(self, prompt: str, calls: int) -> str | None:
        """The marker's fault if the prompt has one, else a random draw."""
        marker = MARKER.search(prompt)
        if marker:
            kind, limit = marker.group(1), marker.group(2)
            if limit is None or calls <= int(limit):
                return kind
            return None
        return self._random_fault()

    def _random_fault(self) -> str | None:
        draw = self.rng.random()
        for kind in RANDOM_FAULTS:
            draw -= getattr(self.config, f"p_{kind}")
            if draw < 0:
                return kind
        return None

    def latency_s(self) -> float:
        cfg = self.config
        jitter = self.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms) if cfg.jitter_ms else 0
        return max(0.0, cfg.latency_ms + jitter) / 1000.0


# --- Reading requests ----------------------------------------------------------


def _texts(content: Any) -> list[str]:
    parts = content.get("parts", []) if isinstance(content, dict) else []
    return [p["text"] for p in parts if isinstance(p, dict) and "text" in p]


def prompt_of(body: dict[str, Any]) -> str:
    """The user's text: every text part of every content, one per line."""
    contents = body.get("contents") or []
    return "\n".join("".join(_texts(c)) for c in contents)


def system_of(body: dict[str, Any]) -> str:
    return "".join(_texts(body.get("systemInstruction") or {}))


def tokens_for(text: str) -> int:
    return math.ceil(len(text) / 4)


# --- Writing responses ---------------------------------------------------------


def json_reply(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_reply(
    code: int,
    status: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in the shape Google APIs use: ``{"error": {code, message, ...}}``."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return json_reply({"error": error}, code, headers)


def invalid_key_reply() -> web.Response:
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": INVALID_KEY_MESSAGE,
        },
    ]
    return error_reply(400, "INVALID_ARGUMENT", INVALID_KEY_MESSAGE, details)


def unknown_model_reply(model: str, version: str, method: str) -> web.Response:
    message = (
        f"models/{model} is not found for API version {version}, or is not "
        f"supported for {method}. Call ListModels to see the list of available "
        "models and their supported methods."
    )
    return error_reply(404, "NOT_FOUND", message)


def rate_limited_reply(config: FakeConfig) -> web.Response:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/"
                    "generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                }
            ],
        }
    ]
    if config.retry_delay is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": config.retry_delay,
            }
        )
    headers = None
    if config.retry_after_header is not None:
        headers = {"Retry-After": config.retry_after_header}
    return error_reply(429, "RESOURCE_EXHAUSTED", QUOTA_MESSAGE, details, headers)


FIXED_ERRORS: dict[str, tuple[int, str, str]] = {
    "500": (
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    "503": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "400": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "403": (403, "PERMISSION_DENIED", "The caller does not have permission"),
}


def safety_ratings(blocked: bool) -> list[dict[str, Any]]:
    ratings: list[dict[str, Any]] = [
        {"category": c, "probability": "NEGLIGIBLE"} for c in HARM_CATEGORIES
    ]
    if blocked:
        ratings[-1] = {
            "category": HARM_CATEGORIES[-1],
            "probability": "HIGH",
            "blocked": True,
        }
    return ratings


# --- Answers -------------------------------------------------------------------


def example_for(schema: Any, text: str, root: Any = None) -> Any:
    """A value that validates against a JSON (or Gemini OpenAPI) schema."""
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return text
    if "$ref" in schema:
        return example_for(_resolve(schema["$ref"], root), text, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [s for s in schema[key] if _type_of(s) != "null"]
            return example_for((options or schema[key])[0], text, root)
    return _example_of_type(schema, _type_of(schema), text, root)


def _type_of(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "string"
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    return str(kind).lower()


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def _example_of_type(schema: dict[str, Any], kind: str, text: str, root: Any) -> Any:
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: example_for(v, f"{k}: {text}", root) for k, v in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [example_for(schema.get("items", {}), text, root)] * count
    if kind in ("number", "integer"):
        low = schema.get("minimum", 1)
        high = schema.get("maximum", max(1, low))
        value = min(max(1, low), high)
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    max_length = schema.get("maxLength")
    return text[:max_length] if max_length else text


def answer_text(config: FakeConfig, prompt: str, generation: dict[str, Any]) -> str:
    """The normal answer: the prompt echoed, or JSON when a schema asks for it."""
    base = config.fixed_text if config.mode == "fixed" else f"ANSWER: {prompt}"
    schema = generation.get("responseJsonSchema") or generation.get("responseSchema")
    if schema and generation.get("responseMimeType") == "application/json":
        return json.dumps(example_for(schema, base))
    return base


@dataclass
class Call:
    """One generateContent request, as the answer builders need it."""

    model: str
    prompt: str
    prompt_key: str
    prompt_chars: int
    generation: dict[str, Any]


class Answers:
    """Builds 200 responses: normal, cut off, blocked or empty."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def _envelope(self, call: Call, out_text: str, body: dict[str, Any]) -> Any:
        cfg = self.state.config
        prompt_tokens = math.ceil(call.prompt_chars / 4)
        out_tokens = tokens_for(out_text)
        usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "totalTokenCount": prompt_tokens + out_tokens + cfg.thoughts_tokens,
        }
        if out_tokens:
            usage["candidatesTokenCount"] = out_tokens
        if cfg.thoughts_tokens:
            usage["thoughtsTokenCount"] = cfg.thoughts_tokens
        return {
            **body,
            "usageMetadata": usage,
            "modelVersion": cfg.model_version or call.model,
            "responseId": f"fake-{next(self.state.ids)}",
        }

    def text(self, call: Call, text: str, finish: str) -> web.Response:
        candidate = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": finish,
            "index": 0,
        }
        return json_reply(self._envelope(call, text, {"candidates": [candidate]}))

    def normal(self, call: Call) -> web.Response:
        text = answer_text(self.state.config, call.prompt, call.generation)
        self.state.stats.responded(200, answered=call.prompt_key)
        return self.text(call, text, "STOP")

    def max_tokens(self, call: Call) -> web.Response:
        limit = call.generation.get("maxOutputTokens")
        ok_at = self.state.config.max_tokens_ok_at
        if limit is not None and ok_at is not None and limit >= ok_at:
            return self.normal(call)
        full = answer_text(self.state.config, call.prompt, {})
        cut = max(1, min(len(full) // 2, (limit or len(full)) * 4))
        self.state.stats.responded(200)
        return self.text(call, full[:cut], "MAX_TOKENS")

    def blocked(self, call: Call, finish: str) -> web.Response:
        candidate = {
            "finishReason": finish,
            "index": 0,
            "safetyRatings": safety_ratings(blocked=True),
        }
        self.state.stats.responded(200)
        return json_reply(self._envelope(call, "", {"candidates": [candidate]}))

    def blocked_prompt(self, call: Call) -> web.Response:
        feedback = {"blockReason": "SAFETY", "safetyRatings": safety_ratings(True)}
        self.state.stats.responded(200)
        return json_reply(self._envelope(call, "", {"promptFeedback": feedback}))

    def empty(self, call: Call) -> web.Response:
        candidate = {"content": {"role": "model"}, "finishReason": "STOP", "index": 0}
        self.state.stats.responded(200)
        return json_reply(self._envelope(call, "", {"candidates": [candidate]}))


# --- Handlers ------------------------------------------------------------------

STATE = web.AppKey("state", FakeState)


class Dropped(Exception):
    """The connection was cut on purpose; there is no response to send."""


async def handle_model(request: web.Request) -> web.StreamResponse:
    """``POST /{version}/models/{model}:{method}``."""
    state = request.app[STATE]
    model, _, method = request.match_info["target"].rpartition(":")
    state.stats.arrived(method)
    try:
        return await _model_call(request, state, model, method)
    except Dropped:
        # Nothing may be written on a closed transport; end the handler quietly.
        raise asyncio.CancelledError from None
    finally:
        state.stats.in_flight -= 1


async def _model_call(
    request: web.Request, state: FakeState, model: str, method: str
) -> web.StreamResponse:
    refusal = _check_caller(request, state, model, method)
    if refusal is not None:
        state.stats.responded(refusal.status)
        return refusal
    try:
        body = await request.json()
    except ValueError:
        state.stats.responded(400)
        return error_reply(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
    if method == "countTokens":
        return _count_tokens(state, body)
    return await _generate(request, state, model, body)


def _check_caller(
    request: web.Request, state: FakeState, model: str, method: str
) -> web.Response | None:
    """The key, the model and the method are checked before anything else."""
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    expected = state.config.api_key
    if not key:
        return error_reply(403, "PERMISSION_DENIED", NO_KEY_MESSAGE)
    if expected is not None and key != expected:
        return invalid_key_reply()
    version = request.match_info["version"]
    if method not in ("generateContent", "countTokens"):
        return error_reply(404, "NOT_FOUND", f"Method {method} is not found.")
    if not _known_model(state.config, model):
        return unknown_model_reply(model, version, method)
    return None


def _known_model(config: FakeConfig, model: str) -> bool:
    model = model.removeprefix("models/")
    if config.models is None:
        return model.startswith("gemini")
    return model in config.models


def _count_tokens(state: FakeState, body: dict[str, Any]) -> web.Response:
    inner = body.get("generateContentRequest") or body
    chars = len(prompt_of(inner)) + len(system_of(inner))
    state.stats.responded(200)
    return json_reply({"totalTokens": math.ceil(chars / 4)})


async def _generate(
    request: web.Request, state: FakeState, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    prompt = prompt_of(body)
    key = prompt_hash(prompt)
    state.stats.calls_by_prompt[key] += 1
    call = Call(
        model=model,
        prompt=prompt,
        prompt_key=key,
        prompt_chars=len(prompt) + len(system_of(body)),
        generation=body.get("generationConfig") or {},
    )
    if state.over_rate():
        state.stats.responded(429)
        return rate_limited_reply(state.config)
    fault = state.pick_fault(prompt, state.marker_calls(prompt))
    if fault is not None:
        state.stats.faults[fault] += 1
    if fault == "429":
        state.stats.responded(429)
        return rate_limited_reply(state.config)
    # Always yield once, so that concurrent requests overlap even at zero latency.
    await asyncio.sleep(state.latency_s())
    return await _respond(request, state, call, fault)


async def _respond(
    request: web.Request, state: FakeState, call: Call, fault: str | None
) -> web.StreamResponse:
    answers = Answers(state)
    if fault is None:
        return answers.normal(call)
    if fault in FIXED_ERRORS:
        code, status, message = FIXED_ERRORS[fault]
        state.stats.responded(code)
        return error_reply(code, status, message)
    if fault == "hang":
        await asyncio.sleep(state.config.hang_s)
        return answers.normal(call)
    if fault == "drop":
        if request.transport is not None:
            request.transport.abort()
        raise Dropped
    if fault == "malformed":
        state.stats.responded(200)
        garbage = b'{"candidates": [{"content": <html>Bad Gateway</html>'
        return web.Response(body=garbage, content_type="application/json")
    return _content_fault(answers, call, fault)


def _content_fault(answers: Answers, call: Call, fault: str) -> web.Response:
    if fault == "safety":
        return answers.blocked(call, "SAFETY")
    if fault == "prohibited":
        return answers.blocked(call, "PROHIBITED_CONTENT")
    if fault == "blocked_prompt":
        return answers.blocked_prompt(call)
    if fault == "max_tokens":
        return answers.max_tokens(call)
    if fault == "empty":
        return answers.empty(call)
    if fault == "bad_json":
        return answers.text(call, '{"not quite": JSON', "STOP")
    # An unknown marker is a mistake in the test; say so loudly.
    return error_reply(400, "INVALID_ARGUMENT", f"unknown fake fault {fault!r}")


async def handle_control(request: web.Request) -> web.Response:
    """``POST /_control`` with JSON settings; ``GET /_control`` shows them."""
    state = request.app[STATE]
    if request.method == "POST":
        try:
            state.configure(await request.json())
        except (ValueError, TypeError) as exc:
            return json_reply({"error": str(exc)}, 400)
    return json_reply(asdict(state.config))


async def handle_stats(request: web.Request) -> web.Response:
    return json_reply(request.app[STATE].stats.to_json())


async def handle_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return json_reply({"ok": True})


def make_app(config: FakeConfig) -> web.Application:
    """The aiohttp application; usable in-process too (e.g. with TestServer)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = FakeState(config)
    app.router.add_route("*", "/_control", handle_control)
    app.router.add_get("/_stats", handle_stats)
    app.router.add_post("/_reset", handle_reset)
    app.router.add_post("/{version}/models/{target}", handle_model)
    return app


# --- Running as a process --------------------------------------------------------


async def serve(config: FakeConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, after printing the LISTENING line."""
    runner = web.AppRunner(
        make_app(config),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=0.5,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound_port = runner.addresses[0][1]
    print(f"LISTENING http://{host}:{bound_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(argv: list[str] | None) -> tuple[FakeConfig, str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config-json", default="{}", help="settings as JSON")
    for f in fields(FakeConfig):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, type=_parse_value, default=None)
    args = parser.parse_args(argv)

    config = FakeConfig()
    config.update(json.loads(args.config_json))
    flags = {f.name: getattr(args, f.name) for f in fields(FakeConfig)}
    config.update({k: v for k, v in flags.items() if v is not None})
    return config, args.host, args.port


def main(argv: list[str] | None = None) -> None:
    config, host, port = parse_args(argv)
    asyncio.run(serve(config, host, port))


# --- Handle for tests and benchmarks ---------------------------------------------

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeGemini:
    """A fake Gemini server running in its own process.

    ``FakeGemini.start(latency_ms=50, rpm=600)`` takes any :class:`FakeConfig`
    field; :meth:`configure` changes them later, and ``configure(**DEFAULTS)``
    puts them all back.
    """

    DEFAULTS: typing.ClassVar[dict[str, Any]] = asdict(FakeConfig())

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    @classmethod
    def start(
        cls, *, host: str = "127.0.0.1", timeout_s: float = 15.0, **config: Any
    ) -> FakeGemini:
        """Spawn the server on a free port and wait until it listens."""
        FakeConfig().update(config)  # fail here, not in the child
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--host",
            host,
            "--port",
            "0",
            "--config-json",
            json.dumps(config),
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        try:
            url = _wait_for_listening(process, timeout_s)
        except BaseException:
            _terminate(process)
            raise
        return cls(process, url)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with _NO_PROXY.open(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", str(exc))
            raise ValueError(detail) from exc

    def configure(self, **config: Any) -> None:
        """Change settings at run time (any :class:`FakeConfig` field)."""
        self._call("POST", "/_control", config)

    def config(self) -> dict[str, Any]:
        """The server's current settings."""
        return self._call("GET", "/_control")

    def stats(self) -> dict[str, Any]:
        """Counts since start or the last :meth:`reset` (see ``Stats.to_json``)."""
        return self._call("GET", "/_stats")

    def reset(self) -> None:
        """Zero the stats and per-prompt counts and refill the rate bucket."""
        self._call("POST", "/_reset", {})

    def stop(self) -> None:
        """Stop the server process."""
        _terminate(self.process)

    def __enter__(self) -> FakeGemini:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _wait_for_listening(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            raise RuntimeError(f"the fake Gemini server exited with code {code}")
        if line.startswith("LISTENING "):
            return line.split(maxsplit=1)[1].strip()
    raise TimeoutError(f"the fake Gemini server did not start in {timeout_s} s")


def _terminate(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def fake_gemini_server(**config: Any) -> Iterator[FakeGemini]:
    """Run a fake Gemini server for the duration of a ``with`` block."""
    server = FakeGemini.start(**config)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    main()
