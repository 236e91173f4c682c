"""The models BulkGPT can call, behind one small interface.

``open_model(settings, name)`` gives a :class:`ModelClient`: the offline demo
model, or Gemini when a key is set.
"""

from __future__ import annotations

from ..config import DEMO_MODEL, Settings
from ..errors import ConfigError
from .base import FailureKind, ModelClient, ModelError, ModelReply
from .demo import DemoModel

__all__ = [
    "KNOWN_MODELS",
    "FailureKind",
    "ModelClient",
    "ModelError",
    "ModelReply",
    "open_model",
]

# What the app's model picker offers; any other Gemini model name also works.
KNOWN_MODELS: list[str] = [
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.5-pro",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    DEMO_MODEL,
]
NO_KEY = (
    "GEMINI_API_KEY is not set: set it in .streamlit/secrets.toml or as an "
    "environment variable, or choose the demo model."
)


def open_model(settings: Settings, model: str) -> ModelClient:
    """A client for ``model`` ("demo" or a Gemini model name).

    Raises :class:`ConfigError` when Gemini is asked for without a key.
    """
    model = model.strip() or settings.default_model
    if model == DEMO_MODEL:
        return DemoModel.from_settings(settings)
    if not settings.gemini_api_key:
        raise ConfigError(NO_KEY)
    # Imported here so that the demo model works without the Gemini SDK loaded.
    from .gemini import GeminiModel

    return GeminiModel.from_settings(settings, model)
