"""Streamlit pieces the frame and the pages share.

Settings and the store, the sidebar, the friendly error frame, and the
session's memory of the uploaded file and the sample run. Everything else
lives in ``bulkgpt_core``; this module only talks to Streamlit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from bulkgpt_core import estimate, views
from bulkgpt_core.actions import BatchRequest
from bulkgpt_core.batches import GenerationSettings
from bulkgpt_core.config import DEMO_MODEL, Settings
from bulkgpt_core.errors import (
    BatchNotFound,
    BulkGPTError,
    ConfigError,
    CSVError,
    StoreError,
)
from bulkgpt_core.modal_launch import check_modal_ready
from bulkgpt_core.models import KNOWN_MODELS
from bulkgpt_core.sample_run import SampleRun
from bulkgpt_core.schema import FieldType, OutputField, SchemaError, schema_to_fields
from bulkgpt_core.stores import open_store, store_label
from bulkgpt_core.stores.base import Store
from bulkgpt_core.tables import CSVLimits, Table, read_csv
from bulkgpt_core.templates import check_template, insert_placeholder

log = logging.getLogger("bulkgpt.app")

P = ParamSpec("P")
T = TypeVar("T")

NEW_BATCH_PAGE = "pages/new_batch.py"
BATCHES_PAGE = "pages/batches.py"
PROMPT_LAB_PAGE = "pages/prompt_lab.py"
#: The new batch page's field table (each lab variant has its own).
BATCH_FIELDS = "output_fields"

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


MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>#|~$])")


def md(text: str) -> str:
    """User text (a file or batch name) shown literally inside markdown."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", text)


@st.cache_data(ttl=60, show_spinner=False)
def _modal_problem(key: str, _settings: Settings) -> str | None:
    return check_modal_ready(_settings)


def launch_settings(settings: Settings) -> Settings | None:
    """The settings to launch with: Modal when it is ready, else the user may
    choose this computer; ``None`` while neither is possible."""
    if settings.runner != "modal":
        return settings
    key = "|".join(
        (
            settings.modal_app,
            settings.store,
            settings.database_url,
            settings.supabase_url,
        )
    )
    problem = _modal_problem(key, settings)
    if problem is None:
        return settings
    st.warning(problem)
    if st.checkbox("Run on this computer instead", key="run_locally"):
        return dataclasses.replace(settings, runner="local")
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
    open_selected_row(ids, rows, param="batch")


def open_selected_row(ids: list[str], rows: list[int], *, param: str) -> bool:
    """Put a newly selected row's id in the URL as ``param`` (see above);
    say whether the URL changed."""
    picked = ids[rows[0]] if rows and rows[0] < len(ids) else None
    if picked == st.session_state.get(f"picked_{param}"):
        return False
    st.session_state[f"picked_{param}"] = picked
    if picked is None or st.query_params.get(param) == picked:
        return False
    st.query_params[param] = picked
    return True


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


def upload_changed(key: str = "upload") -> None:
    """An uploader's callback: a removed file is forgotten."""
    if st.session_state.get(key) is None:
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


# --- Output fields ------------------------------------------------------------


def fields_editor_key(key: str) -> str:
    """The widget key of a field table's editor (it changes when it is refilled)."""
    return f"{key}_editor_{st.session_state.get(key + '_version', 0)}"


def set_output_fields(key: str, fields: list[OutputField]) -> None:
    """Refill a field table, e.g. from an earlier batch's schema."""
    st.session_state[key] = views.fields_frame(fields)
    st.session_state[key + "_version"] = st.session_state.get(key + "_version", 0) + 1
    st.session_state.pop(key + "_base", None)


def output_fields_editor(key: str) -> tuple[dict[str, Any] | None, str | None]:
    """The output-field table; returns its JSON Schema (None: free text) or why
    it cannot be used.

    The edited table is kept under ``key`` so it outlives a visit to another
    page (which empties the editor): the editor starts from it when shown anew.
    """
    editor = fields_editor_key(key)
    latest = st.session_state.get(key)
    if latest is None:
        latest = views.fields_frame()
    if editor not in st.session_state or key + "_base" not in st.session_state:
        st.session_state[key + "_base"] = latest
    edited = st.data_editor(
        st.session_state[key + "_base"],
        key=editor,
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        column_config=_FIELD_COLUMN_CONFIG,
    )
    st.session_state[key] = edited
    try:
        return views.schema_from_frame(edited), None
    except SchemaError as exc:
        return None, str(exc)


_FIELD_COLUMN_CONFIG = {
    views.FIELD_NAME: st.column_config.TextColumn(
        help="A column name for the answer, e.g. sentiment."
    ),
    views.FIELD_TYPE: st.column_config.SelectboxColumn(
        options=[t.value for t in FieldType], default=FieldType.TEXT.value
    ),
    views.FIELD_DESCRIPTION: st.column_config.TextColumn(
        help="What the model should put here."
    ),
    views.FIELD_REQUIRED: st.column_config.CheckboxColumn(default=True),
    views.FIELD_CHOICES: st.column_config.TextColumn(
        help="For 'one of a list': the choices, separated by commas."
    ),
}


# --- Filling the new batch form -----------------------------------------------


def fill_new_batch_form(request: BatchRequest, fields: list[OutputField]) -> None:
    """Put an earlier batch's settings in the new batch form's widgets."""
    st.session_state.update(
        template=request.template,
        system_prompt=request.system_prompt,
        model=request.model,
        temperature=1.0 if request.temperature is None else request.temperature,
        max_output_tokens=request.max_output_tokens,
        concurrency=request.concurrency,
        rpm=request.rpm,
        tpm=request.tpm,
        budget_usd=request.budget_usd,
        batch_name=f"{request.name} (again)",
    )
    st.session_state.pop("sample_run", None)
    set_output_fields(BATCH_FIELDS, fields)


@dataclass(frozen=True)
class StartedFrom:
    """The earlier batch whose settings fill the new batch form."""

    name: str
    source_name: str
    template: str


def start_from_batch(settings: Settings, batch_id: str) -> str | None:
    """Fill the new batch form from a stored batch (``?from=<id>``), once;
    say why not when it cannot be."""
    del st.query_params["from"]
    store = get_store(settings)
    if store is None:
        return "The earlier batch cannot be read, so nothing was filled in."
    try:
        batch = store.get_batch(batch_id)
    except BatchNotFound:
        return "That batch no longer exists, so nothing was filled in."
    schema = batch.output_schema
    fields = schema_to_fields(schema) if schema else []
    fill_new_batch_form(BatchRequest.from_batch(batch), fields)
    st.session_state["started_from"] = StartedFrom(
        batch.name, batch.source_name, batch.template
    )
    return None


def started_from_notice(held: HeldUpload | None) -> str | None:
    """What the page says about a form filled from an earlier batch."""
    origin: StartedFrom | None = st.session_state.get("started_from")
    if origin is None:
        return None
    said = (
        f"The prompt, model, settings and output fields come from batch "
        f"“{origin.name}”."
    )
    table = held.table if held is not None else None
    fits = table is not None and check_template(origin.template, table.columns).ok
    if held is not None and fits:
        return (
            f"{said} The file uploaded earlier, {held.name}, has the columns "
            "its prompt uses."
        )
    source = origin.source_name or "its file"
    return f"{said} Upload {source} again, or any CSV with the columns its prompt uses."


# --- The sample run -----------------------------------------------------------


def rate_limit_inputs(
    settings: Settings, *, key_prefix: str = "", calls_label: str = "Calls at once"
) -> tuple[int, int | None, int | None]:
    """The "Advanced" expander: concurrency, requests and tokens per minute."""
    with st.expander("Advanced"):
        concurrency_col, rpm_col, tpm_col = st.columns(3)
        concurrency = concurrency_col.number_input(
            calls_label,
            min_value=1,
            max_value=settings.max_concurrency,
            key=f"{key_prefix}concurrency",
            persist_state="session",
        )
        rpm = rpm_col.number_input(
            "Requests per minute",
            min_value=1,
            key=f"{key_prefix}rpm",
            persist_state="session",
            placeholder="No limit",
        )
        tpm = tpm_col.number_input(
            "Tokens per minute",
            min_value=1,
            key=f"{key_prefix}tpm",
            persist_state="session",
            placeholder="No limit",
        )
    return concurrency, rpm, tpm


def counted_chars_per_token(
    settings: Settings,
    held: HeldUpload,
    template: str,
    generation: GenerationSettings,
) -> float | None:
    """Gemini's count of characters per token for this file and prompt,
    asked once per file, prompt and model and kept for the session."""
    key = ("counted", held.file_id, template, generation.model)
    cache = st.session_state.setdefault("counted_ratios", {})
    if key not in cache and held.table is not None:
        cache[key] = estimate.counted_chars_per_token(
            settings, generation, held.table, template
        )
    return cache.get(key)


def remember_sample(signature: tuple[object, ...], run: SampleRun) -> None:
    st.session_state["sample_run"] = (signature, run)


def remembered_sample() -> tuple[tuple[object, ...], SampleRun] | None:
    return st.session_state.get("sample_run")
