"""Google Gemini through the google-genai SDK.

The SDK never retries on its own here: the engine owns retries, pacing and
timeouts, so every failure comes back at once as a :class:`ModelError` whose
kind says whether another try is worth it. The async client uses aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import httpx
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..batches import GenerationSettings
from ..config import DEFAULT_GEMINI_MODEL, Settings
from ..errors import ConfigError
from .base import FailureKind, ModelError, ModelReply

logger = logging.getLogger(__name__)

T = TypeVar("T")

KEY_REFUSED = (
    "The Gemini API key was refused. Check GEMINI_API_KEY in .streamlit/secrets.toml."
)
# Finish reasons that mean the answer was withheld by a content filter.
BLOCKED_FINISHES = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
    }
)
COMPLETE_FINISHES = frozenset({"STOP", "FINISH_REASON_UNSPECIFIED"})
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,  # asyncio.timeout and aiohttp's ServerTimeoutError
    httpx.TimeoutException,
)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    ConnectionError,
    httpx.TransportError,
)
# A 200 whose body is not the JSON Gemini promises: a garbled or cut reply.
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (
    json.JSONDecodeError,
    genai_errors.UnknownApiResponseError,
    pydantic.ValidationError,
)
MIN_SECRET_CHARS = 8
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")


class GeminiModel:
    """A :class:`~.base.ModelClient` for one Gemini model.

    One SDK client (and so one aiohttp session per event loop) serves every
    call; :meth:`aclose` releases it. The model called is the one this client
    was opened for, whatever ``GenerationSettings.model`` says.
    """

    def __init__(
        self,
        api_key: str,
        model: str = DEFAULT_GEMINI_MODEL,
        *,
        base_url: str = "",
        timeout_s: float = 60.0,
    ) -> None:
        if not api_key:
            raise ConfigError("GEMINI_API_KEY is empty: set it to use Gemini.")
        self.name = model.removeprefix("models/")
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._client = genai.Client(
            vertexai=False,
            api_key=api_key,
            http_options=sdk_http_options(base_url, timeout_s),
        )

    @classmethod
    def from_settings(cls, settings: Settings, model: str) -> GeminiModel:
        """A client for ``model`` with the key, endpoint and timeout of settings."""
        return cls(
            settings.gemini_api_key,
            model,
            base_url=settings.gemini_base_url,
            timeout_s=settings.request_timeout_s,
        )

    async def generate(self, prompt: str, settings: GenerationSettings) -> ModelReply:
        """Answer one prompt, or raise :class:`ModelError`."""
        config = generation_config(settings)
        started = time.perf_counter()
        response = await self._call(
            self._client.aio.models.generate_content(
                model=self.name, contents=prompt, config=config
            )
        )
        return read_response(response, time.perf_counter() - started)

    async def count_tokens(
        self, text: str, settings: GenerationSettings | None = None
    ) -> int:
        """How many input tokens ``text`` (and the system prompt) would cost."""
        contents: Any = text
        if settings is not None and settings.system_prompt:
            contents = [settings.system_prompt, text]
        response = await self._call(
            self._client.aio.models.count_tokens(model=self.name, contents=contents)
        )
        return response.total_tokens or 0

    async def aclose(self) -> None:
        """Close the SDK's HTTP sessions."""
        await self._client.aio.aclose()
        self._client.close()

    async def _call(self, request: Awaitable[T]) -> T:
        """Await an SDK call under our timeout, translating what goes wrong."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await request
        except Exception as exc:
            error = translate_error(exc, model=self.name, timeout_s=self.timeout_s)
            error = redact(error, self._api_key)
            logger.debug("Gemini call failed (%s): %s", error.kind, error)
            raise error from exc


def sdk_http_options(base_url: str, timeout_s: float) -> types.HttpOptions:
    """HTTP options that leave retrying to the engine.

    Setting ``retry_options`` also turns off the SDK's implicit aiohttp retry,
    which would otherwise sleep 1-10 s after a dropped connection. The SDK's
    own timeout is a second longer than ours so that ours is the one that fires.
    """
    return types.HttpOptions(
        base_url=base_url or None,
        timeout=int((timeout_s + 1) * 1000),
        retry_options=types.HttpRetryOptions(attempts=1),
    )


def generation_config(settings: GenerationSettings) -> types.GenerateContentConfig:
    """The SDK config for a batch's settings; a JSON schema asks for JSON."""
    schema = settings.response_schema
    try:
        return types.GenerateContentConfig(
            system_instruction=settings.system_prompt or None,
            temperature=settings.temperature,
            max_output_tokens=settings.max_output_tokens,
            response_mime_type="application/json" if schema else None,
            response_json_schema=schema or None,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(
                disable=True
            ),
        )
    except pydantic.ValidationError as exc:
        raise ModelError(
            FailureKind.INVALID_REQUEST,
            f"The generation settings are not valid: {exc.errors()[0]['msg']}.",
        ) from exc


# --- Reading an answer ---------------------------------------------------------


def read_response(
    response: types.GenerateContentResponse, latency_s: float
) -> ModelReply:
    """The reply in a response, or a :class:`ModelError` saying why it is unusable."""
    tokens_in, tokens_out = token_counts(response.usage_metadata)
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        reason = _name(feedback.block_reason)
        reply = ModelReply("", tokens_in, tokens_out, f"PROMPT_{reason}", latency_s)
        raise ModelError(
            FailureKind.SAFETY,
            f"Gemini refused the prompt ({reason}).",
            reply=reply,
        )
    if not response.candidates:
        reply = ModelReply("", tokens_in, tokens_out, "NO_CANDIDATES", latency_s)
        raise ModelError(FailureKind.EMPTY, "Gemini returned no answer.", reply=reply)

    candidate = response.candidates[0]
    finish = _name(candidate.finish_reason) or "FINISH_REASON_UNSPECIFIED"
    reply = ModelReply(answer_text(candidate), tokens_in, tokens_out, finish, latency_s)
    failure = unusable_answer(reply)
    if failure is not None:
        kind, message = failure
        raise ModelError(kind, message, reply=reply)
    return reply


def token_counts(
    usage: types.GenerateContentResponseUsageMetadata | None,
) -> tuple[int, int]:
    """Input and output tokens; thinking tokens are billed as output."""
    if usage is None:
        return 0, 0
    output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    return usage.prompt_token_count or 0, output


def answer_text(candidate: types.Candidate) -> str:
    """The visible text of a candidate, leaving out any thought summaries."""
    if candidate.content is None or not candidate.content.parts:
        return ""
    return "".join(
        part.text for part in candidate.content.parts if part.text and not part.thought
    )


def unusable_answer(reply: ModelReply) -> tuple[FailureKind, str] | None:
    """Why a reply cannot be used, from its finish reason and text; None if it can."""
    finish = reply.finish_reason
    if finish in BLOCKED_FINISHES:
        return FailureKind.SAFETY, f"Gemini withheld the answer ({finish})."
    if finish == "MAX_TOKENS":
        return (
            FailureKind.MAX_TOKENS,
            "The answer was cut off at the output token limit "
            f"after {reply.tokens_out} tokens; raise the maximum output tokens.",
        )
    if finish not in COMPLETE_FINISHES:
        return FailureKind.OTHER, f"Gemini stopped without finishing ({finish})."
    if not reply.text.strip():
        return FailureKind.EMPTY, "Gemini returned an empty answer."
    return None


def _name(value: Any) -> str:
    """An SDK enum's wire name (``FinishReason.STOP`` -> ``"STOP"``)."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


# --- Translating failures ------------------------------------------------------


def translate_error(exc: BaseException, *, model: str, timeout_s: float) -> ModelError:
    """The :class:`ModelError` for anything an SDK call raised."""
    if isinstance(exc, genai_errors.APIError):
        return api_error(exc, model)
    if isinstance(exc, TIMEOUT_ERRORS):
        return ModelError(
            FailureKind.TIMEOUT, f"Gemini did not answer within {timeout_s:g} s."
        )
    if isinstance(exc, CONNECTION_ERRORS):
        return ModelError(
            FailureKind.CONNECTION,
            f"The connection to Gemini failed: {connection_detail(exc)}.",
        )
    if isinstance(exc, UNREADABLE_ERRORS):
        return ModelError(
            FailureKind.CONNECTION, "Gemini sent a reply that could not be read."
        )
    return ModelError(
        FailureKind.OTHER,
        f"The call to Gemini failed unexpectedly: {type(exc).__name__}: {exc}",
    )


def connection_detail(exc: BaseException) -> str:
    """What went wrong with the connection, in a few plain words."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return f"cannot connect to {exc.host}:{exc.port} ({reason})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off in transit"
    return str(exc) or type(exc).__name__


def api_error(exc: genai_errors.APIError, model: str) -> ModelError:
    """Translate an HTTP error from Gemini by its code, status and details."""
    code = exc.code or 0
    said = (exc.message or exc.status or f"HTTP {code}").strip()
    if code == 429 or exc.status == "RESOURCE_EXHAUSTED":
        return _rate_limited(exc)
    if code == 408:
        return ModelError(FailureKind.TIMEOUT, f"Gemini timed out: {said}")
    if code >= 500:
        return ModelError(
            FailureKind.SERVER_ERROR, f"Gemini had a server error ({code}): {said}"
        )
    if code in (401, 403) or "API_KEY_INVALID" in error_reasons(exc):
        return ModelError(FailureKind.INVALID_KEY, KEY_REFUSED)
    if code == 404:
        return ModelError(
            FailureKind.UNKNOWN_MODEL,
            f"Gemini has no model called {model!r}. "
            f"Choose another model, such as {DEFAULT_GEMINI_MODEL}.",
        )
    if 400 <= code < 500:
        return ModelError(
            FailureKind.INVALID_REQUEST, f"Gemini refused the request: {said}"
        )
    return ModelError(FailureKind.OTHER, f"Gemini answered with HTTP {code}: {said}")


def _rate_limited(exc: genai_errors.APIError) -> ModelError:
    delay = retry_after(exc)
    wait = f" Gemini asks to wait {delay:g} s." if delay is not None else ""
    return ModelError(
        FailureKind.RATE_LIMITED,
        f"Gemini's rate limit or quota was reached.{wait}",
        retry_after=delay,
    )


def _error_details(exc: genai_errors.APIError) -> list[dict[str, Any]]:
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details or [] if isinstance(d, dict)]


def error_reasons(exc: genai_errors.APIError) -> set[str]:
    """The ``reason`` of every ErrorInfo detail, such as ``API_KEY_INVALID``."""
    return {str(d["reason"]) for d in _error_details(exc) if "reason" in d}


def retry_after(exc: genai_errors.APIError) -> float | None:
    """Seconds to wait, from RetryInfo's ``retryDelay`` or a Retry-After header."""
    for detail in _error_details(exc):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = parse_duration(detail.get("retryDelay"))
            if delay is not None:
                return delay
    headers = getattr(exc.response, "headers", None)
    header = headers.get("Retry-After") if headers is not None else None
    return parse_retry_after_header(header) if header else None


def parse_duration(value: Any) -> float | None:
    """A protobuf Duration as JSON (``"2s"``, ``"0.5s"``) in seconds."""
    if isinstance(value, dict):
        return float(value.get("seconds", 0)) + value.get("nanos", 0) / 1e9
    match = _DURATION.match(str(value or ""))
    return float(match.group(1)) if match else None


def parse_retry_after_header(value: str) -> float | None:
    """A Retry-After header: seconds, or an HTTP date."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def redact(error: ModelError, secret: str) -> ModelError:
    """The same error with ``secret`` blanked out of its message.

    Strings too short to be a real key are left alone: blanking them would only
    garble the message.
    """
    message = str(error)
    if len(secret) < MIN_SECRET_CHARS or secret not in message:
        return error
    return ModelError(
        error.kind,
        message.replace(secret, "[redacted]"),
        retry_after=error.retry_after,
        reply=error.reply,
    )
