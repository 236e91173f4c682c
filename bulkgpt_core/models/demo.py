"""The demo model: offline, deterministic answers, so BulkGPT works without a key.

Every answer starts with ``[demo answer]`` so that nobody mistakes it for a
real model's output. With an output schema the answer is JSON that fits it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from ..batches import GenerationSettings
from ..config import DEMO_MODEL, Settings
from .base import ModelReply, estimate_tokens

logger = logging.getLogger(__name__)

DEMO_LABEL = "[demo answer]"
SUMMARY_CHARS = 80


class DemoModel:
    """A :class:`~.base.ModelClient` that summarises the prompt after a pause."""

    name = DEMO_MODEL

    def __init__(self, delay_s: float = 0.3) -> None:
        self.delay_s = delay_s

    @classmethod
    def from_settings(cls, settings: Settings) -> DemoModel:
        return cls(delay_s=settings.demo_delay_s)

    async def generate(self, prompt: str, settings: GenerationSettings) -> ModelReply:
        """A labelled summary of the prompt (or schema-shaped JSON)."""
        started = time.perf_counter()
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        text = demo_answer(prompt, settings.response_schema)
        return ModelReply(
            text=text,
            tokens_in=estimate_tokens(settings.system_prompt + prompt),
            tokens_out=estimate_tokens(text),
            finish_reason="STOP",
            latency_s=time.perf_counter() - started,
        )

    async def count_tokens(
        self, text: str, settings: GenerationSettings | None = None
    ) -> int:
        """About one token per four characters, as for English text."""
        system = settings.system_prompt if settings is not None else ""
        return estimate_tokens(system + text)

    async def aclose(self) -> None:
        """Nothing to release."""


def summarize(prompt: str) -> str:
    """The prompt's start on one line, with its word and character counts."""
    flat = " ".join(prompt.split())
    head = flat[:SUMMARY_CHARS] + ("..." if len(flat) > SUMMARY_CHARS else "")
    words = len(prompt.split())
    return f'"{head}" ({words} words, {len(prompt)} characters)'


def demo_answer(prompt: str, schema: dict[str, Any] | None = None) -> str:
    """The demo model's whole answer to a prompt."""
    answer = f"{DEMO_LABEL} {summarize(prompt)}"
    if schema:
        return json.dumps(example_for_schema(schema, answer), ensure_ascii=False)
    return answer


def example_for_schema(schema: Any, text: str = "", root: Any = None) -> Any:
    """A value that validates against a JSON schema, with ``text`` in strings.

    Covers what output schemas use: types, ``properties``, ``items`` and
    ``minItems``, ``enum``, ``const``, ``anyOf``/``oneOf``/``allOf``, local
    ``$ref``, ``minimum``/``maximum`` and ``maxLength``.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return text
    if "$ref" in schema:
        return example_for_schema(_resolve(schema["$ref"], root), text, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            choices = [s for s in schema[key] if _type(s) != "null"] or schema[key]
            return example_for_schema(choices[0], text, root)
    return _example_of_type(schema, text, root)


def _type(schema: Any) -> str:
    """The schema's type in lower case; the first non-null one of a list."""
    if not isinstance(schema, dict):
        return "string"
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    return str(kind).lower()


def _resolve(ref: str, root: Any) -> Any:
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def _example_of_type(schema: dict[str, Any], text: str, root: Any) -> Any:
    kind = _type(schema)
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            name: example_for_schema(sub, text, root)
            for name, sub in properties.items()
        }
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [example_for_schema(schema.get("items", {}), text, root)] * count
    if kind in ("number", "integer"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    limit = schema.get("maxLength")
    return text[:limit] if limit is not None else text


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    """1, unless ``minimum``/``maximum`` rule it out."""
    low = schema.get("minimum", 1)
    high = schema.get("maximum", max(1, low))
    value = min(max(1, low), high)
    return math.ceil(value) if integer else value
