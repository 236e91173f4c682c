"""Why rows fail, in plain words, with what to do about it."""

from __future__ import annotations

from dataclasses import dataclass

from .models.base import FailureKind


@dataclass(frozen=True)
class Reason:
    kind: str
    title: str
    fix: str


REASONS: dict[str, Reason] = {
    r.kind: r
    for r in (
        Reason(
            FailureKind.SAFETY,
            "Blocked by safety filters",
            "Reword the prompt, or check these rows' content.",
        ),
        Reason(
            FailureKind.MAX_TOKENS,
            "Answer cut off at the token limit",
            "Raise max output tokens (for thinking models, the thinking budget "
            "uses part of it), or ask for a shorter answer.",
        ),
        Reason(
            FailureKind.EMPTY,
            "Empty answer",
            "Retry these rows; if it persists, make the prompt more specific.",
        ),
        Reason(
            FailureKind.INVALID_JSON,
            "Answer was not valid JSON for the output fields",
            "Simplify the output fields or describe them more clearly, then retry.",
        ),
        Reason(
            FailureKind.RATE_LIMITED,
            "Rate limit still hit after retries",
            "Lower concurrency or the requests-per-minute limit, then retry.",
        ),
        Reason(
            FailureKind.SERVER_ERROR,
            "Gemini had a server error after retries",
            "Retry these rows later.",
        ),
        Reason(
            FailureKind.TIMEOUT,
            "No answer before the timeout",
            "Retry these rows; raise BULKGPT_REQUEST_TIMEOUT for long answers.",
        ),
        Reason(
            FailureKind.CONNECTION,
            "Connection to Gemini failed",
            "Check the network, then retry these rows.",
        ),
        Reason(
            FailureKind.INVALID_KEY,
            "Invalid API key",
            "Set a valid GEMINI_API_KEY in .streamlit/secrets.toml, then resume.",
        ),
        Reason(
            FailureKind.UNKNOWN_MODEL,
            "Unknown model",
            "Pick another model (for example gemini-2.5-flash) in a new batch.",
        ),
        Reason(
            FailureKind.INVALID_REQUEST,
            "Gemini refused the request",
            "Read the error on the row: the prompt may be too long or a setting "
            "out of range.",
        ),
        Reason(
            FailureKind.OTHER,
            "Unexpected error",
            "Retry these rows; if it persists, report the error shown on the row.",
        ),
    )
}


def reason_for(kind: str | None) -> Reason:
    """The plain-words reason for an error kind (unknown kinds read as 'other')."""
    return REASONS.get(kind or FailureKind.OTHER, REASONS[FailureKind.OTHER])
