"""New batch: upload a CSV, write the prompt, try it on a few rows, launch.

``?from=<batch id>`` fills the form with that batch's prompt and settings.
"""

import dataclasses
import json

import streamlit as st

from bulkgpt_core import views
from bulkgpt_core.actions import BatchRequest, launch_batch
from bulkgpt_core.config import DEMO_MODEL
from bulkgpt_core.cost import parse_price_overrides
from bulkgpt_core.estimate import estimate_batch
from bulkgpt_core.models import NO_KEY
from bulkgpt_core.sample_run import (
    DEFAULT_SAMPLE_ROWS,
    MAX_SAMPLE_ROWS,
    choose_rows,
    run_sample,
)
from bulkgpt_core.templates import check_template
from pages import ui

FIRST_ROWS, RANDOM_ROWS = "First rows", "Random rows"

settings = ui.load_settings()
ui.set_defaults(
    model=settings.default_model,
    temperature=1.0,
    max_output_tokens=None,
    concurrency=settings.concurrency,
    rpm=settings.rpm,
    tpm=settings.tpm,
    template="",
    system_prompt="",
    sample_mode=FIRST_ROWS,
    sample_count=DEFAULT_SAMPLE_ROWS,
    sample_seed=1,
    budget_usd=None,
)
started_problem = None
if "from" in st.query_params:
    started_problem = ui.start_from_batch(settings, st.query_params["from"])
st.title("New batch")
ui.show_flash()
if started_problem:
    st.warning(started_problem)

# --- 1. Upload ----------------------------------------------------------------

st.subheader("1. Upload a CSV")
upload = st.file_uploader(
    "CSV file",
    type="csv",
    key="upload",
    on_change=ui.upload_changed,
    max_upload_size=settings.max_upload_mb,
    help="A header row, then one row per item. Any common encoding and "
    "delimiter (comma, semicolon, tab or pipe) works.",
)
held = ui.held_upload(upload, settings)
notice = ui.started_from_notice(held)
if notice:
    st.info(notice, icon=":material/history:")
if held is None:
    st.info("Upload a CSV file to begin: each of its rows gets its own answer.")
    st.stop()
if held.table is None:
    st.error(f"**{ui.md(held.name)}** cannot be read. {held.error}")
    st.stop()
table = held.table
if upload is None:
    st.caption(
        f"Using **{ui.md(held.name)}**, uploaded earlier. Drop a file to replace it."
    )
st.markdown(f"**{ui.md(held.name)}** · {views.table_summary(table)}")
for repair in table.repairs:
    st.info(repair, icon=":material/build:")
st.dataframe(views.preview_frame(table), height=250)

# --- 2. Prompt ----------------------------------------------------------------

st.subheader("2. Write the prompt")
write, preview = st.columns(2, gap="large")
with write:
    picker, insert = st.columns([3, 1], vertical_alignment="bottom")
    picker.selectbox(
        "Column", table.columns, key="column_to_insert", persist_state="session"
    )
    insert.button(
        "Insert",
        on_click=ui.insert_column,
        help="Adds <<column>> at the end of the prompt.",
        width="stretch",
    )
    ui.show_flash_error()
    template = st.text_area(
        "Prompt template",
        key="template",
        persist_state="session",
        height=150,
        placeholder="e.g. Is this review positive or negative? <<review text>>",
        help="Write <<column name>> where a row's value should go.",
    )
    system_prompt = st.text_area(
        "System prompt (optional)",
        key="system_prompt",
        persist_state="session",
        height=90,
        placeholder="e.g. You are a careful analyst. Answer in one word.",
    )
    check = check_template(template, table.columns)
    if check.blank:
        st.info(
            "Write what the model should do with each row, with <<column>> "
            "where a row's value goes."
        )
    for unknown in check.unknown:
        st.error(unknown.message(), icon=":material/help:")
    for warning in [] if check.blank else check.warnings:
        st.warning(warning)

with preview:
    ui.clamp("preview_row", 1, len(table))
    row_number = st.number_input(
        f"Preview row (1 to {len(table):,})",
        min_value=1,
        max_value=len(table),
        key="preview_row",
        persist_state="session",
    )
    prompt = views.rendered_prompt(template, check, table, row_number - 1)
    st.caption("The prompt this row gets")
    if prompt is not None:
        st.code(prompt, language=None, wrap_lines=True)
    else:
        st.caption("…appears here once every placeholder matches a column.")
    ui.show_row(table.row_dict(row_number - 1))

# --- 3. Model and settings ----------------------------------------------------

st.subheader("3. Model and settings")
model_col, temperature_col, tokens_col = st.columns(3)
model = model_col.selectbox(
    "Model",
    ui.model_options(settings),
    key="model",
    persist_state="session",
    accept_new_options=True,
    help=f"'{DEMO_MODEL}' answers offline, free, for trying the app.",
)
temperature = temperature_col.slider(
    "Temperature",
    min_value=0.0,
    max_value=2.0,
    step=0.1,
    key="temperature",
    persist_state="session",
    help="Lower is more predictable; higher is more varied.",
)
max_output_tokens = tokens_col.number_input(
    "Max output tokens",
    min_value=1,
    max_value=settings.max_output_tokens,
    key="max_output_tokens",
    persist_state="session",
    placeholder="The model's default",
    help="Longest answer per row. Thinking models spend part of it thinking.",
)
concurrency, rpm, tpm = ui.rate_limit_inputs(settings)
if model != DEMO_MODEL and not settings.has_gemini_key:
    st.warning(NO_KEY)

st.markdown("**Output fields** (optional)")
st.caption(
    "Leave the table empty for a free-text answer. Add fields to get each "
    "answer as columns, e.g. *sentiment*, one of a list: positive, negative."
)
schema, schema_error = ui.output_fields_editor(ui.BATCH_FIELDS)
if schema_error:
    st.error(schema_error)

request = BatchRequest(
    name=st.session_state.get("batch_name", ""),
    template=template,
    model=model or settings.default_model,
    system_prompt=system_prompt,
    temperature=temperature,
    max_output_tokens=max_output_tokens,
    concurrency=concurrency,
    rpm=rpm,
    tpm=tpm,
    output_schema=schema,
)
signature = (
    held.file_id,
    template,
    system_prompt,
    model,
    temperature,
    max_output_tokens,
    json.dumps(schema, sort_keys=True),
)

# --- 4. Try it ----------------------------------------------------------------

st.subheader("4. Try it on a few rows")
mode_col, count_col, seed_col = st.columns(3)
mode = mode_col.radio(
    "Rows",
    [FIRST_ROWS, RANDOM_ROWS],
    key="sample_mode",
    persist_state="session",
    horizontal=True,
)
ui.clamp("sample_count", 1, min(MAX_SAMPLE_ROWS, len(table)))
count = count_col.number_input(
    "How many rows",
    min_value=1,
    max_value=min(MAX_SAMPLE_ROWS, len(table)),
    key="sample_count",
    persist_state="session",
)
seed = seed_col.number_input(
    "Random seed",
    min_value=0,
    key="sample_seed",
    persist_state="session",
    disabled=mode == FIRST_ROWS,
    help="The same seed picks the same rows again.",
)
ready = check.ok and not schema_error
if st.button("Try it", icon=":material/play_arrow:", disabled=not ready):
    indexes = choose_rows(len(table), count, random_rows=mode == RANDOM_ROWS, seed=seed)
    with ui.attempt(), st.spinner(f"Asking {request.model} about {count} rows…"):
        generation, limits = request.checked(settings)
        sample = run_sample(
            settings,
            table,
            template,
            generation,
            indexes,
            concurrency=min(limits.concurrency, count),
        )
        ui.remember_sample(signature, sample)

remembered = ui.remembered_sample()
if remembered is not None:
    tried_with, sample = remembered
    if tried_with != signature:
        st.caption("The prompt or settings changed since this try: try again to see.")
    st.markdown(
        f"**{len(sample.results)} rows** · {sample.failed} failed · "
        f"{sample.tokens_in:,} tokens in · {sample.tokens_out:,} out · "
        f"{views.format_cost(sample.cost_usd)}"
    )
    for result in sample.results:
        with st.container(border=True):
            st.markdown(f"**Row {result.row_number}**")
            values_col, prompt_col, answer_col = st.columns(3)
            with values_col:
                ui.show_row(result.values)
            prompt_col.caption("Prompt")
            prompt_col.code(result.prompt, language=None, wrap_lines=True)
            answer_col.caption("Answer")
            if result.answer:
                answer_col.code(result.answer, language=None, wrap_lines=True)
            if not result.ok:
                answer_col.error(f"**{result.error}.** {result.fix}")
                answer_col.caption(result.error_detail or "")
            answer_col.caption(views.sample_caption(result))

# --- 5. Launch ----------------------------------------------------------------

st.subheader("5. Launch")
st.text_input("Batch name", key="batch_name", persist_state="session")
if not ready:
    st.info("Fix the prompt or the output fields above to see the estimate.")
    st.stop()
tried = remembered and remembered[0] == signature
generation = request.generation()
estimate = estimate_batch(
    table,
    template,
    generation,
    answer_tokens=remembered[1].answer_tokens() if tried else (),
    prices=parse_price_overrides(settings.prices),
    chars_per_token=ui.counted_chars_per_token(settings, held, template, generation),
)
rows_col, tokens_col, cost_col = st.columns(3)
rows_col.metric("Rows", f"{estimate.rows:,}")
tokens_col.metric(
    "Estimated tokens",
    views.format_tokens_range(estimate.tokens_low, estimate.tokens_high),
)
cost_col.metric(
    "Estimated cost",
    "Free"
    if estimate.free
    else views.format_cost_range(estimate.cost_low, estimate.cost_high),
)
st.caption(
    f"Input: {estimate.input_basis}. Output: {estimate.output_basis}. "
    f"Price of {request.model}: ${estimate.price.input_per_m:g} in and "
    f"${estimate.price.output_per_m:g} out per million tokens "
    f"(checked {estimate.price.checked or 'never'})."
)
budget = st.number_input(
    "Budget: the most to spend, in dollars (optional)",
    min_value=0.01,
    step=1.0,
    format="%.2f",
    key="budget_usd",
    persist_state="session",
    placeholder="No cap",
    help="The batch pauses itself once it has spent this much; raise the "
    "budget on the batch page and resume to go on.",
)
if budget is not None and not estimate.free and budget < estimate.cost_high:
    st.warning(
        "The budget may be below what the batch costs: it will pause itself "
        "if the budget is spent before the last row."
    )
request = dataclasses.replace(request, budget_usd=budget)
store = ui.get_store(settings)
runner_settings = ui.launch_settings(settings)
launch = st.button(
    f"Launch {estimate.rows:,} rows",
    type="primary",
    icon=":material/rocket_launch:",
    disabled=store is None or runner_settings is None,
)
if launch and store is not None and runner_settings is not None:
    with ui.attempt(), st.spinner("Saving the batch and starting its worker…"):
        batch = launch_batch(runner_settings, store, table, request)
        st.session_state.pop("started_from", None)
        ui.flash(
            f"Batch “{ui.md(batch.name)}” launched with {batch.total_rows:,} rows."
        )
        st.switch_page(ui.BATCHES_PAGE, query_params={"batch": batch.id})
