"""Streamlit pieces the frame and the pages share.

Settings and the store, the sidebar, the friendly error frame, and the
session's memory of the uploaded file and the sample run. Everything else
lives in ``bulkgpt_core``; this module only talks to Streamlit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from bulkgpt_core import views
from bulkgpt_core.config import DEMO_MODEL, Settings
from bulkgpt_core.errors import BulkGPTError, ConfigError, CSVError, StoreError
from bulkgpt_core.models import KNOWN_MODELS
from bulkgpt_core.sample_run import SampleRun
from bulkgpt_core.stores import open_store, store_label
from bulkgpt_core.stores.base import Store
from bulkgpt_core.tables import CSVLimits, Table, read_csv
from bulkgpt_core.templates import insert_placeholder

log = logging.getLogger("bulkgpt.app")

P = ParamSpec("P")
T = TypeVar("T")

NEW_BATCH_PAGE = "pages/new_batch.py"
BATCHES_PAGE = "pages/batches.py"

UNEXPECTED = (
    "Something went wrong on our side, sorry. Your batches are safe: they keep "
    "running in the background. Reload the page to go on; if this happens "
    "again, mention reference **{ref}** to whoever runs BulkGPT."
)
DEMO_NOTICE = (
    "No GEMINI_API_KEY is set, so the offline **demo model** answers: every "
    "answer starts with `[demo answer]`. To use Gemini, set GEMINI_API_KEY in "
    "`.streamlit/secrets.toml` (or the environment) and restart the app."
)


def configure_logging() -> None:
    """Log to stderr once per process; Streamlit's own loggers are left alone."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


# --- Errors -------------------------------------------------------------------


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Show our own errors as they are and anything else as a reference id.

    The traceback goes to the log under that reference, never to the screen.
    Streamlit's rerun and stop signals are not exceptions, so they pass.
    """
    try:
        yield
    except BulkGPTError as exc:
        st.error(str(exc))
    except Exception:
        reference = uuid.uuid4().hex[:8]
        log.exception("unexpected error, reference %s", reference)
        st.error(UNEXPECTED.format(ref=reference), icon=":material/error:")


def guarded(fn: Callable[P, T]) -> Callable[P, T | None]:
    """Run ``fn`` (a fragment, which reruns on its own) inside friendly_errors."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | None:
        with friendly_errors():
            return fn(*args, **kwargs)
        return None

    return wrapper


@contextlib.contextmanager
def attempt() -> Iterator[None]:
    """Show a refused action (wrong state, over a limit) as a warning."""
    try:
        yield
    except BulkGPTError as exc:
        st.warning(str(exc))


def flash(message: str) -> None:
    """Say something on the next run, e.g. after an action and a rerun."""
    st.session_state["flash"] = message


def show_flash() -> None:
    """A toast, which outlives the reruns of a page that refreshes itself."""
    message = st.session_state.pop("flash", None)
    if message:
        st.toast(message, icon=":material/check_circle:")


# --- Settings and the store ---------------------------------------------------


def load_settings() -> Settings:
    """The settings; a bad setting is named on screen and the page stops."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        st.error(f"BulkGPT's configuration needs fixing: {exc}")
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_store(key: str, _settings: Settings) -> Store:
    log.info("opening the store: %s", store_label(_settings))
    return open_store(_settings)


def get_store(settings: Settings) -> Store | None:
    """The store, opened once per configuration; ``None`` after saying why not."""
    key = "|".join(
        (
            settings.store,
            str(settings.data_dir.resolve()),
            settings.database_url,
            settings.supabase_url,
        )
    )
    try:
        return _open_store(key, settings)
    except (ConfigError, StoreError) as exc:
        st.error(f"The batch store cannot be used: {exc}")
        return None


# --- The sidebar --------------------------------------------------------------


def sidebar() -> None:
    """What is active: model, store, runner, and whether keys are set."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        st.sidebar.error(str(exc))
        return
    with st.sidebar:
        st.markdown(
            f"**Model** {_model_label(settings)}  \n"
            f"**Store** {store_label(settings)}  \n"
            f"**Runner** {_runner_label(settings)}"
        )
        st.caption(" · ".join(_key_states(settings)))
        if not settings.has_gemini_key:
            st.info(DEMO_NOTICE, icon=":material/science:")


def _model_label(settings: Settings) -> str:
    if settings.has_gemini_key:
        return settings.model
    return f"{DEMO_MODEL} (offline)"


def _runner_label(settings: Settings) -> str:
    if settings.runner == "modal":
        return f"Modal (app {settings.modal_app})"
    return "local worker process"


def _key_states(settings: Settings) -> list[str]:
    """Whether each secret is set; never its value."""
    names = ["GEMINI_API_KEY"]
    if settings.store == "postgres":
        names.append("DATABASE_URL")
    if settings.store == "supabase":
        names += ["SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"]
    return [
        f"{name} {'set' if settings.source.get(name, '').strip() else 'not set'}"
        for name in names
    ]


def model_options(settings: Settings) -> list[str]:
    """The model picker's choices: the known models and the configured one."""
    options = list(KNOWN_MODELS)
    for extra in (settings.model, settings.default_model):
        if extra not in options:
            options.insert(0, extra)
    return options


# --- The batches page -----------------------------------------------------------


def open_selected_batch(ids: list[str], rows: list[int]) -> None:
    """Put a newly selected row's batch in the URL, where the page reads it.

    Only a change of selection counts, so a bookmarked URL is not overridden
    by a row that stayed selected.
    """
    picked = ids[rows[0]] if rows and rows[0] < len(ids) else None
    if picked != st.session_state.get("picked_batch"):
        st.session_state["picked_batch"] = picked
        if picked is not None:
            st.query_params["batch"] = picked


# --- The uploaded file --------------------------------------------------------


@dataclass(frozen=True)
class HeldUpload:
    """The file this session uploaded last, read once."""

    file_id: str
    name: str
    table: Table | None
    error: str | None


def held_upload(upload: UploadedFile | None, settings: Settings) -> HeldUpload | None:
    """The uploaded file, parsed once per file and kept for the session.

    Going to another page and back empties the uploader widget but keeps the
    file; removing it from the uploader forgets it (see :func:`upload_changed`).
    """
    held: HeldUpload | None = st.session_state.get("held_upload")
    if upload is not None and (held is None or held.file_id != upload.file_id):
        held = _read_upload(upload, settings)
        st.session_state["held_upload"] = held
        _reset_for_new_table(held)
    return held


def upload_changed() -> None:
    """The uploader's callback: a removed file is forgotten."""
    if st.session_state.get("upload") is None:
        st.session_state.pop("held_upload", None)
        st.session_state.pop("sample_run", None)


def _read_upload(upload: UploadedFile, settings: Settings) -> HeldUpload:
    try:
        table = read_csv(
            upload.getvalue(),
            limits=CSVLimits.from_settings(settings),
            name=upload.name,
        )
    except CSVError as exc:
        return HeldUpload(upload.file_id, upload.name, None, str(exc))
    return HeldUpload(upload.file_id, upload.name, table, None)


def _reset_for_new_table(held: HeldUpload) -> None:
    st.session_state["preview_row"] = 1
    st.session_state.pop("sample_run", None)
    st.session_state["batch_name"] = held.name.rsplit(".", 1)[0]


def insert_column() -> None:
    """The Insert button's callback: append the picked column to the template."""
    column = st.session_state.get("column_to_insert")
    if column is None:
        return
    template = st.session_state.get("template", "")
    try:
        st.session_state["template"] = insert_placeholder(template, column)
    except BulkGPTError as exc:
        flash_error(str(exc))


def flash_error(message: str) -> None:
    st.session_state["flash_error"] = message


def show_flash_error() -> None:
    message = st.session_state.pop("flash_error", None)
    if message:
        st.error(message)


def show_row(values: dict[str, str]) -> None:
    """One row's cells as a small two-column table that wraps long values."""
    st.table(
        views.row_frame(values), hide_index=True, hide_header=True, border="horizontal"
    )


def set_defaults(**values: Any) -> None:
    """Give form widgets their first values, once per session."""
    for key, value in values.items():
        st.session_state.setdefault(key, value)


def clamp(key: str, low: int, high: int) -> None:
    """Keep a number widget's value within bounds that depend on the file."""
    value = st.session_state.get(key)
    if isinstance(value, int) and not low <= value <= high:
        st.session_state[key] = min(max(value, low), high)


# --- The sample run -----------------------------------------------------------


def remember_sample(signature: tuple[object, ...], run: SampleRun) -> None:
    st.session_state["sample_run"] = (signature, run)


def remembered_sample() -> tuple[tuple[object, ...], SampleRun] | None:
    return st.session_state.get("sample_run")
