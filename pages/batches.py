"""Batches: every batch, newest first, and the chosen one in detail.

The chosen batch is in the URL (``?batch=<id>``), so it can be bookmarked.
Its progress refreshes itself while a worker has it (pending, running,
cancelling) and stops refreshing once it is paused or finished.
"""

import functools

import streamlit as st

from bulkgpt_core import actions, jobs, runners, views
from bulkgpt_core.actions import Action
from bulkgpt_core.batches import BatchStatus
from bulkgpt_core.errors import BatchNotFound
from bulkgpt_core.export import ExportFormat
from pages import ui

PROGRESS_EVERY_S = 2
DETAILS_EVERY_S = 10

settings = ui.load_settings()
st.title("Batches")
ui.show_flash()
store = ui.get_store(settings)
if store is None:
    st.stop()

# --- The list -----------------------------------------------------------------

batches = store.list_batches()
if not batches:
    st.info("No batches yet: start one on the New batch page.")
    st.page_link(ui.NEW_BATCH_PAGE, label="New batch", icon=":material/upload_file:")
    st.stop()
table = st.dataframe(
    views.batch_list_frame(batches),
    key="batch_table",
    on_select="rerun",
    selection_mode="single-row",
    hide_index=True,
    width="stretch",
    height=min(38 + 35 * len(batches), 300),
    column_config={
        "Progress": st.column_config.ProgressColumn(
            format="%d%%", min_value=0, max_value=100
        ),
    },
)
ui.open_selected_batch([b.id for b in batches], table.selection.rows)
batch_id = st.query_params.get("batch")
if batch_id is None:
    st.caption("Select a batch in the list to see its progress and results.")
    st.stop()
try:
    batch = store.get_batch(batch_id)
except BatchNotFound:
    st.warning("That batch no longer exists (it may have been deleted).")
    st.stop()

# --- The chosen batch ---------------------------------------------------------

st.header(batch.name, divider="gray")
st.caption(
    f"{ui.md(batch.source_name or 'uploaded file')} · created "
    f"{views.format_time(batch.created_at)} · model {batch.model} · runner "
    f"{batch.runner}" + (f" ({batch.call_id})" if batch.call_id else "")
)
with st.expander("Prompt"):
    st.code(batch.template, language=None, wrap_lines=True)
    if batch.system_prompt:
        st.caption("System prompt")
        st.code(batch.system_prompt, language=None, wrap_lines=True)
    if batch.output_schema:
        st.caption("Output fields")
        st.markdown(views.fields_markdown(batch.output_schema))
st.page_link(
    ui.NEW_BATCH_PAGE,
    label="Start a new batch from this one",
    icon=":material/content_copy:",
    query_params={"from": batch.id},
    help="Fills the new batch form with this batch's prompt, model, settings "
    "and output fields.",
)

finished = batch.status.is_finished
refresh = batch.status.is_active


@st.fragment(run_every=PROGRESS_EVERY_S if refresh else None)
@ui.guarded
def live_progress() -> None:
    try:
        current = store.get_batch(batch.id)  # the one query per tick
    except BatchNotFound:
        st.rerun()  # deleted meanwhile: the whole page says so
    if current.status is not batch.status:
        st.rerun()  # the buttons and the polling depend on the status
    st.progress(views.progress_fraction(current), text=views.progress_text(current))
    metrics = views.batch_metrics(current)
    for row in (metrics[:5], metrics[5:]):
        for column, metric in zip(st.columns(len(row)), row, strict=True):
            column.metric(metric.label, metric.value)
    st.caption(
        " · ".join(
            filter(None, [views.budget_text(current), views.reuse_text(current)])
        )
    )
    if current.last_error:
        st.warning(current.last_error)
    if actions.worker_missing(current):
        st.warning(
            "No worker is running this batch (it may have stopped with the "
            "computer or the app). Press **Resume** to start one: finished rows "
            "are kept."
        )


live_progress()

# --- Buttons ------------------------------------------------------------------

LABELS = {
    Action.PAUSE: ("Pause", ":material/pause:"),
    Action.RESUME: ("Resume", ":material/play_arrow:"),
    Action.CANCEL: ("Cancel", ":material/stop:"),
    Action.RETRY_FAILED: (f"Retry {batch.failed:,} failed rows", ":material/replay:"),
    Action.DELETE: ("Delete…", ":material/delete:"),
}
available = actions.available_actions(batch)
clicked = None
with st.container(horizontal=True):
    for action in available:
        label, icon = LABELS[action]
        if st.button(label, icon=icon, key=f"action_{action}"):
            clicked = action

with ui.attempt():
    if clicked is Action.PAUSE:
        jobs.pause_batch(store, batch.id)
        ui.flash("Pausing: the calls in flight finish first.")
        st.rerun()
    if clicked is Action.RESUME:
        actions.resume(settings, store, batch.id)
        ui.flash("Resumed: a worker is running the remaining rows.")
        st.rerun()
    if clicked is Action.CANCEL:
        runners.cancel_worker(settings, store, batch.id)
        ui.flash("Cancelling: finished rows are kept and can be downloaded.")
        st.rerun()
    if clicked is Action.RETRY_FAILED:
        count = actions.retry_failed_rows(settings, store, batch.id)
        ui.flash(f"Retrying {count:,} failed rows.")
        st.rerun()
    if clicked is Action.DELETE:
        st.session_state["confirm_delete"] = batch.id

if not finished:
    with st.expander("Budget", expanded=batch.status is BatchStatus.PAUSED):
        budget_col, save_col = st.columns([2, 1], vertical_alignment="bottom")
        new_budget = budget_col.number_input(
            "Most to spend, in dollars",
            min_value=0.01,
            step=1.0,
            format="%.2f",
            value=batch.budget_usd,
            placeholder="No cap",
            key=f"budget_{batch.id}",
        )
        paused = batch.status is BatchStatus.PAUSED
        label = "Save budget and resume" if paused else "Save budget"
        if save_col.button(label, icon=":material/savings:", width="stretch"):
            with ui.attempt():
                jobs.set_budget(store, batch.id, new_budget)
                if paused:
                    actions.resume(settings, store, batch.id)
                ui.flash("Budget saved" + (": resumed." if paused else "."))
                st.rerun()

if st.session_state.get("confirm_delete") == batch.id:
    st.warning(
        f"Delete “{ui.md(batch.name)}” and all {batch.total_rows:,} of its rows? "
        "Download the results first if you need them: this cannot be undone."
    )
    yes, no, _ = st.columns([1, 1, 3])
    if yes.button("Yes, delete it", type="primary", icon=":material/delete:"):
        with ui.attempt():
            actions.delete(store, batch.id)
            st.session_state.pop("confirm_delete")
            del st.query_params["batch"]
            ui.flash(f"Deleted “{ui.md(batch.name)}”.")
            st.rerun()
    if no.button("Keep it"):
        st.session_state.pop("confirm_delete")
        st.rerun()

# --- Downloads ----------------------------------------------------------------

st.subheader("Download results")
if not finished:
    st.caption("While the batch runs, downloads hold the rows finished so far.")
download_cols = st.columns(5)
for column, fmt in zip(download_cols, ExportFormat, strict=False):
    column.download_button(
        fmt.value.upper(),
        data=functools.partial(views.export_bytes, store, batch.id, fmt),
        file_name=views.download_name(batch, fmt),
        mime=fmt.mime,
        on_click="ignore",
        icon=":material/download:",
        key=f"download_{fmt.value}",
        width="stretch",
    )
download_cols[3].download_button(
    "Failed rows (CSV)",
    data=functools.partial(
        views.export_bytes, store, batch.id, ExportFormat.CSV, failed_only=True
    ),
    file_name=views.download_name(batch, ExportFormat.CSV, failed_only=True),
    mime=ExportFormat.CSV.mime,
    on_click="ignore",
    icon=":material/download:",
    key="download_failed",
    width="stretch",
)
download_cols[4].download_button(
    "Manifest (JSON)",
    data=functools.partial(views.manifest_download, store, batch.id),
    file_name=views.manifest_name(batch),
    mime=ExportFormat.JSON.mime,
    on_click="ignore",
    icon=":material/description:",
    key="download_manifest",
    width="stretch",
    help="What produced these results: prompt, model, settings, output fields, "
    "source file, counts and cost. JSON downloads carry it too.",
)

# --- Throughput, latest results, failures -------------------------------------


@st.fragment(run_every=DETAILS_EVERY_S if refresh else None)
@ui.guarded
def live_details() -> None:
    current = store.get_batch(batch.id)
    st.subheader("Throughput")
    chart = views.throughput_frame(current, store.progress_samples(batch.id))
    if len(chart) > 0:
        st.line_chart(chart, x=chart.columns[0], y="Rows per second", height=220)
    else:
        st.caption("The chart fills in once the batch is running.")

    st.subheader("Latest results")
    latest = store.latest_results(batch.id, limit=20)
    if latest:
        st.dataframe(views.results_frame(latest), hide_index=True, width="stretch")
    else:
        st.caption("No rows have finished yet.")

    groups = views.failure_groups(store.failure_counts(batch.id))
    if groups:
        st.subheader("Failures")
        can_retry = Action.RETRY_FAILED in actions.available_actions(current)
        for group in groups:
            rows = "row" if group.count == 1 else "rows"
            text, button = st.columns([5, 1], vertical_alignment="center")
            text.markdown(f"**{group.title}**: {group.count:,} {rows}. {group.fix}")
            if can_retry and button.button(
                "Retry these", key=f"retry_{group.kind}", icon=":material/replay:"
            ):
                with ui.attempt():
                    count = actions.retry_failed_rows(
                        settings, store, batch.id, kinds=[group.kind]
                    )
                    noun = "row" if count == 1 else "rows"
                    ui.flash(f"Retrying {count:,} {noun}: {group.title.lower()}.")
                    st.rerun()


live_details()
