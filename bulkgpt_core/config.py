"""Settings, read in one place.

Values come from the environment first, then from the root keys of
``.streamlit/secrets.toml`` (the same file the app's ``st.secrets`` reads), so
the app, the detached worker, the Modal job and the command line all see the
same configuration. Every setting is listed, with its default, in ``SETTINGS``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEMO_MODEL = "demo"
DEFAULT_GEMINI_MODEL = "gemini-2.5-flash"
SECRETS_HINT = "set it in .streamlit/secrets.toml or as an environment variable"


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("GEMINI_API_KEY", "", "Gemini API key; without it the demo model answers"),
    Setting("GEMINI_BASE_URL", "", "Another endpoint that speaks Gemini's REST API"),
    Setting("BULKGPT_MODEL", DEFAULT_GEMINI_MODEL, "Model used when none is chosen"),
    Setting("BULKGPT_DATA_DIR", "data", "Folder for the SQLite store and worker logs"),
    Setting("BULKGPT_STORE", "sqlite", "Store: sqlite, postgres or supabase"),
    Setting("DATABASE_URL", "", "PostgreSQL connection string (store postgres)"),
    Setting("SUPABASE_URL", "", "Supabase project URL (store supabase)"),
    Setting("SUPABASE_SERVICE_ROLE_KEY", "", "Supabase service role key, server only"),
    Setting("BULKGPT_RUNNER", "local", "Where batches run: local or modal"),
    Setting("BULKGPT_MODAL_APP", "bulkgpt", "Name of the deployed Modal app"),
    Setting("BULKGPT_SHARD_ROWS", "50000", "On Modal, batches above this split"),
    Setting("BULKGPT_MAX_SHARDS", "20", "Most Modal containers one batch uses"),
    Setting("BULKGPT_MAX_UPLOAD_MB", "200", "Largest CSV accepted, in megabytes"),
    Setting("BULKGPT_MAX_ROWS", "1000000", "Most rows accepted in one file"),
    Setting("BULKGPT_MAX_COLUMNS", "500", "Most columns accepted in one file"),
    Setting("BULKGPT_MAX_CELL_CHARS", "100000", "Longest cell accepted, in characters"),
    Setting("BULKGPT_MAX_PROMPT_CHARS", "200000", "Longest rendered prompt accepted"),
    Setting("BULKGPT_MAX_OUTPUT_TOKENS", "65536", "Highest max-output-tokens allowed"),
    Setting("BULKGPT_MAX_CONCURRENCY", "256", "Highest concurrency allowed"),
    Setting("BULKGPT_CONCURRENCY", "16", "Calls in flight at once, by default"),
    Setting("BULKGPT_RPM", "", "Requests per minute, by default (empty: no limit)"),
    Setting("BULKGPT_TPM", "", "Tokens per minute, by default (empty: no limit)"),
    Setting("BULKGPT_MAX_ATTEMPTS", "6", "Tries per row for retryable errors"),
    Setting("BULKGPT_REQUEST_TIMEOUT", "60", "Seconds before one call is abandoned"),
    Setting("BULKGPT_STORE_OUTAGE_S", "120", "Seconds the store may fail, then pause"),
    Setting("BULKGPT_DEMO_DELAY_MS", "300", "How long the demo model takes to answer"),
    Setting("BULKGPT_PRICES", "", 'Price overrides, JSON: {"model": [in, out]} per 1M'),
)
_DEFAULTS = {s.name: s.default for s in SETTINGS}


def _read_secrets_file(path: Path) -> dict[str, str]:
    """Root keys of a secrets.toml; tables (sections) are not settings."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}. Fix or remove it.") from exc
    return {
        key: str(value)
        for key, value in data.items()
        if isinstance(value, str | int | float | bool)
    }


def _default_secrets_path(env: Mapping[str, str]) -> Path:
    explicit = env.get("BULKGPT_SECRETS_FILE")
    if explicit:
        return Path(explicit)
    return Path.cwd() / ".streamlit" / "secrets.toml"


@dataclass(frozen=True)
class Settings:
    """The whole configuration, as plain values."""

    gemini_api_key: str = field(default="", repr=False)  # a secret
    gemini_base_url: str = ""
    model: str = DEFAULT_GEMINI_MODEL
    data_dir: Path = Path("data")
    store: str = "sqlite"
    database_url: str = field(default="", repr=False)  # a secret
    supabase_url: str = ""
    supabase_service_role_key: str = field(default="", repr=False)  # a secret
    runner: str = "local"
    modal_app: str = "bulkgpt"
    shard_rows: int = 50_000
    max_shards: int = 20
    max_upload_mb: int = 200
    max_rows: int = 1_000_000
    max_columns: int = 500
    max_cell_chars: int = 100_000
    max_prompt_chars: int = 200_000
    max_output_tokens: int = 65_536
    max_concurrency: int = 256
    concurrency: int = 16
    rpm: int | None = None
    tpm: int | None = None
    max_attempts: int = 6
    request_timeout_s: float = 60.0
    store_outage_s: float = 120.0
    demo_delay_s: float = 0.3
    prices: str = ""
    source: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, secrets_path: Path | None = None
    ) -> Settings:
        env = os.environ if env is None else env
        path = secrets_path or _default_secrets_path(env)
        values = {**_DEFAULTS, **_read_secrets_file(path)}
        values.update({k: v for k, v in env.items() if k in _DEFAULTS})
        return cls._from_values(values)

    @classmethod
    def _from_values(cls, v: dict[str, str]) -> Settings:
        return cls(
            gemini_api_key=v["GEMINI_API_KEY"].strip(),
            gemini_base_url=v["GEMINI_BASE_URL"].strip(),
            model=v["BULKGPT_MODEL"].strip() or DEFAULT_GEMINI_MODEL,
            data_dir=Path(v["BULKGPT_DATA_DIR"] or "data"),
            store=_choice(v, "BULKGPT_STORE", ("sqlite", "postgres", "supabase")),
            database_url=v["DATABASE_URL"].strip(),
            supabase_url=v["SUPABASE_URL"].strip(),
            supabase_service_role_key=v["SUPABASE_SERVICE_ROLE_KEY"].strip(),
            runner=_choice(v, "BULKGPT_RUNNER", ("local", "modal")),
            modal_app=v["BULKGPT_MODAL_APP"].strip() or "bulkgpt",
            shard_rows=_positive(v, "BULKGPT_SHARD_ROWS"),
            max_shards=_positive(v, "BULKGPT_MAX_SHARDS"),
            max_upload_mb=_int(v, "BULKGPT_MAX_UPLOAD_MB"),
            max_rows=_int(v, "BULKGPT_MAX_ROWS"),
            max_columns=_int(v, "BULKGPT_MAX_COLUMNS"),
            max_cell_chars=_int(v, "BULKGPT_MAX_CELL_CHARS"),
            max_prompt_chars=_int(v, "BULKGPT_MAX_PROMPT_CHARS"),
            max_output_tokens=_int(v, "BULKGPT_MAX_OUTPUT_TOKENS"),
            max_concurrency=_int(v, "BULKGPT_MAX_CONCURRENCY"),
            concurrency=_int(v, "BULKGPT_CONCURRENCY"),
            rpm=_optional_int(v, "BULKGPT_RPM") or None,
            tpm=_optional_int(v, "BULKGPT_TPM") or None,
            max_attempts=_int(v, "BULKGPT_MAX_ATTEMPTS"),
            request_timeout_s=_float(v, "BULKGPT_REQUEST_TIMEOUT"),
            store_outage_s=_float(v, "BULKGPT_STORE_OUTAGE_S"),
            demo_delay_s=_float(v, "BULKGPT_DEMO_DELAY_MS") / 1000,
            prices=v["BULKGPT_PRICES"],
            source=dict(v),
        )

    @property
    def has_gemini_key(self) -> bool:
        return bool(self.gemini_api_key)

    @property
    def default_model(self) -> str:
        """The model a new batch gets: the demo model when no key is set."""
        return self.model if self.has_gemini_key else DEMO_MODEL

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def require(self, *names: str) -> None:
        """Fail with every missing setting named, and where to set it."""
        missing = [n for n in names if not self.source.get(n, "").strip()]
        if missing:
            listed = ", ".join(missing)
            raise ConfigError(f"{listed} is not set: {SECRETS_HINT}.")


def _choice(v: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = (v[name] or allowed[0]).strip().lower()
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not valid: use one of {', '.join(allowed)}."
        )
    return value


def _int(v: Mapping[str, str], name: str) -> int:
    value = _optional_int(v, name)
    if value is None:
        raise ConfigError(f"{name} must be a whole number: {SECRETS_HINT}.")
    return value


def _positive(v: Mapping[str, str], name: str) -> int:
    value = _int(v, name)
    if value < 1:
        raise ConfigError(f"{name} must be at least 1: {SECRETS_HINT}.")
    return value


def _optional_int(v: Mapping[str, str], name: str) -> int | None:
    raw = str(v[name]).strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number: {SECRETS_HINT}."
        ) from None
    if value < 0:
        raise ConfigError(f"{name} cannot be negative: {SECRETS_HINT}.")
    return value


def _float(v: Mapping[str, str], name: str) -> float:
    raw = str(v[name]).strip()
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number: {SECRETS_HINT}.") from None
