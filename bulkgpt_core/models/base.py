"""The small interface every model implements, and how its failures are told apart."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

from ..batches import GenerationSettings
from ..errors import BulkGPTError

#: The rule of thumb for English text, used wherever a count is not asked for.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """About one token per four characters."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class FailureKind(enum.StrEnum):
    """Why a call failed, in the words the store and the batch page use."""

    # Retryable: worth another try after a pause.
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    # Permanent for every row: the batch stops.
    INVALID_KEY = "invalid_key"
    UNKNOWN_MODEL = "unknown_model"
    # Permanent for this row only.
    INVALID_REQUEST = "invalid_request"
    # The call worked but the answer cannot be used.
    SAFETY = "safety"
    EMPTY = "empty"
    MAX_TOKENS = "max_tokens"
    INVALID_JSON = "invalid_json"
    OTHER = "other"

    @property
    def retryable(self) -> bool:
        return self in RETRYABLE

    @property
    def fails_every_call(self) -> bool:
        return self in FAILS_EVERY_CALL


RETRYABLE = frozenset(
    {
        FailureKind.RATE_LIMITED,
        FailureKind.SERVER_ERROR,
        FailureKind.TIMEOUT,
        FailureKind.CONNECTION,
    }
)
FAILS_EVERY_CALL = frozenset({FailureKind.INVALID_KEY, FailureKind.UNKNOWN_MODEL})
CONTENT_FAILURES = frozenset(
    {FailureKind.SAFETY, FailureKind.EMPTY, FailureKind.MAX_TOKENS}
)


@dataclass(frozen=True)
class ModelReply:
    """One answer: its text, what it cost in tokens and how long it took."""

    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str
    latency_s: float


class ModelError(BulkGPTError):
    """A call that did not produce a usable answer.

    ``reply`` carries what the provider did send (tokens are billed even for a
    blocked or cut-off answer). ``retry_after`` is the provider's suggested
    pause in seconds, when it gave one.
    """

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        retry_after: float | None = None,
        reply: ModelReply | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        self.reply = reply

    @property
    def retryable(self) -> bool:
        return self.kind.retryable


class ModelClient(Protocol):
    """Prompt and settings in; text, token counts, finish reason and latency out."""

    name: str

    async def generate(self, prompt: str, settings: GenerationSettings) -> ModelReply:
        """Answer one prompt, or raise :class:`ModelError`."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
