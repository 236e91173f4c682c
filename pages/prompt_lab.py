"""Prompt lab: variants of a prompt side by side on the same rows, then promote one.

A run is stored as soon as its answers are back and its id goes in the URL
(``?run=<id>``), so a refresh, a bookmark or a later visit brings it back.
"""

import streamlit as st

from bulkgpt_core import lab, views
from bulkgpt_core.config import DEMO_MODEL
from bulkgpt_core.errors import LabRunNotFound
from bulkgpt_core.lab import (
    DEFAULT_LAB_ROWS,
    MAX_LAB_ROWS,
    MAX_VARIANTS,
    MIN_VARIANTS,
    VARIANT_NAMES,
    LabRun,
    RowChoice,
    Variant,
)
from bulkgpt_core.tables import Table
from bulkgpt_core.templates import check_template
from pages import ui

ROW_CHOICES = {
    RowChoice.FIRST: "First rows",
    RowChoice.RANDOM: "Random rows",
    RowChoice.CHOSEN: "Rows by number",
}
NO_MARK = -1

settings = ui.load_settings()
ui.set_defaults(
    lab_variant_count=MIN_VARIANTS,
    lab_row_choice=RowChoice.FIRST,
    lab_row_count=DEFAULT_LAB_ROWS,
    lab_seed=1,
    lab_rows_chosen="",
    lab_concurrency=settings.concurrency,
    lab_rpm=settings.rpm,
    lab_tpm=settings.tpm,
)
st.title("Prompt lab")
ui.show_flash()
st.caption(
    "Try versions of a prompt (wording, model, temperature, output fields) on "
    "the same few rows, mark the better answers, then run the winner on the "
    "whole file."
)
store = ui.get_store(settings)
if store is None:
    st.stop()


def variant_form(number: int, table: Table) -> tuple[Variant, bool]:
    """One variant's settings; says whether they can be run."""
    prefix = f"lab_{number}"
    ui.set_defaults(
        **{
            f"{prefix}_name": VARIANT_NAMES[number],
            f"{prefix}_template": st.session_state.get("template", ""),
            f"{prefix}_system": st.session_state.get("system_prompt", ""),
            f"{prefix}_model": settings.default_model,
            f"{prefix}_temperature": 1.0,
            f"{prefix}_max_tokens": None,
        }
    )
    name = st.text_input("Name", key=f"{prefix}_name", persist_state="session")
    template = st.text_area(
        "Prompt template",
        key=f"{prefix}_template",
        persist_state="session",
        height=120,
        help="Write <<column name>> where a row's value should go.",
    )
    check = check_template(template, table.columns)
    for unknown in check.unknown:
        st.error(unknown.message(), icon=":material/help:")
    system_prompt = st.text_area(
        "System prompt (optional)",
        key=f"{prefix}_system",
        persist_state="session",
        height=68,
    )
    model = st.selectbox(
        "Model",
        ui.model_options(settings),
        key=f"{prefix}_model",
        persist_state="session",
        accept_new_options=True,
        help=f"'{DEMO_MODEL}' answers offline, free.",
    )
    temperature = st.slider(
        "Temperature",
        min_value=0.0,
        max_value=2.0,
        step=0.1,
        key=f"{prefix}_temperature",
        persist_state="session",
    )
    max_tokens = st.number_input(
        "Max output tokens",
        min_value=1,
        max_value=settings.max_output_tokens,
        key=f"{prefix}_max_tokens",
        persist_state="session",
        placeholder="The model's default",
    )
    st.caption("Output fields (optional: empty for a free-text answer)")
    schema, schema_error = ui.output_fields_editor(f"{prefix}_fields")
    if schema_error:
        st.error(schema_error)
    variant = Variant(
        name=name.strip(),
        template=template,
        model=model or settings.default_model,
        system_prompt=system_prompt,
        temperature=temperature,
        max_output_tokens=max_tokens,
        output_schema=schema,
    )
    return variant, check.ok and not schema_error


def show_cell(cell: lab.Cell) -> None:
    """One answer of the grid, with its tokens, time and cost."""
    if cell.answer:
        st.code(cell.answer, language=None, wrap_lines=True)
    if not cell.ok:
        st.error(f"**{cell.error}.** {cell.fix}")
        st.caption(cell.error_detail or "")
    st.caption(views.cell_caption(cell))


# --- 1. The file --------------------------------------------------------------

st.subheader("1. The file")
upload = st.file_uploader(
    "CSV file",
    type="csv",
    key="lab_upload",
    on_change=ui.upload_changed,
    args=("lab_upload",),
    max_upload_size=settings.max_upload_mb,
    help="The same file as on the New batch page: an upload on either page "
    "is used by both.",
)
held = ui.held_upload(upload, settings)
table = held.table if held is not None else None
if held is None:
    st.info("Upload a CSV file to define variants and try them on its rows.")
elif table is None:
    st.error(f"**{ui.md(held.name)}** cannot be read. {held.error}")
else:
    if upload is None:
        st.caption(f"Using **{ui.md(held.name)}**, uploaded earlier.")
    st.markdown(f"**{ui.md(held.name)}** · {views.table_summary(table)}")

# --- 2. Variants and 3. Rows --------------------------------------------------

if table is not None:
    st.subheader("2. Variants")
    count = st.number_input(
        "How many variants",
        min_value=MIN_VARIANTS,
        max_value=MAX_VARIANTS,
        key="lab_variant_count",
        persist_state="session",
    )
    variants, ready = [], True
    for number, column in enumerate(st.columns(count, gap="medium")):
        with column, st.container(border=True):
            variant, ok = variant_form(number, table)
        variants.append(variant)
        ready = ready and ok

    st.subheader("3. Rows")
    choice_col, count_col, seed_col = st.columns(3)
    chosen, rows_wanted = "", DEFAULT_LAB_ROWS
    choice = choice_col.radio(
        "Rows",
        list(ROW_CHOICES),
        format_func=ROW_CHOICES.get,
        key="lab_row_choice",
        persist_state="session",
        horizontal=True,
    )
    if choice is RowChoice.CHOSEN:
        chosen = count_col.text_input(
            "Row numbers",
            key="lab_rows_chosen",
            persist_state="session",
            placeholder="e.g. 1, 4, 10-12",
        )
    else:
        ui.clamp("lab_row_count", 1, min(MAX_LAB_ROWS, len(table)))
        rows_wanted = count_col.number_input(
            "How many rows",
            min_value=1,
            max_value=min(MAX_LAB_ROWS, len(table)),
            key="lab_row_count",
            persist_state="session",
        )
    seed = seed_col.number_input(
        "Random seed",
        min_value=0,
        key="lab_seed",
        persist_state="session",
        disabled=choice is not RowChoice.RANDOM,
    )
    concurrency, rpm, tpm = ui.rate_limit_inputs(
        settings, key_prefix="lab_", calls_label="Calls at once (all variants together)"
    )
    run_label = f"Run {count} variants"
    if st.button(run_label, icon=":material/science:", disabled=not ready):
        with ui.attempt(), st.spinner("Asking every variant about every row…"):
            indexes = lab.pick_rows(
                len(table),
                choice,
                count=rows_wanted,
                seed=seed,
                chosen=chosen,
            )
            new_run = lab.run_lab(
                settings,
                table,
                variants,
                indexes,
                concurrency=concurrency,
                rpm=rpm,
                tpm=tpm,
            )
            lab.save_run(store, new_run)
            st.query_params["run"] = new_run.id
    if not ready:
        st.caption("Fix the variants above to run them.")

# --- 4. The open run ----------------------------------------------------------

run: LabRun | None = None
run_id = st.query_params.get("run")
if run_id:
    try:
        run = lab.load_run(store, run_id)
    except LabRunNotFound:
        st.warning("That lab run no longer exists (it may have been deleted).")

if run is not None:
    st.subheader("4. Results")
    st.markdown(f"**{ui.md(run.name)}**")
    created = views.format_time(run.created_at) if run.created_at else ""
    st.caption(f"Saved {created}: it stays here until you delete it.")
    st.dataframe(views.lab_summary_frame(run), hide_index=True, width="stretch")

    names = [v.name for v in run.variants]
    for row in run.rows:
        with st.container(border=True):
            widths = [2] + [3] * len(run.variants)
            values_col, *answer_cols = st.columns(widths)
            with values_col:
                st.markdown(f"**Row {row.row_number}**")
                ui.show_row(row.values)
            for variant, cell, column in zip(
                run.variants, row.cells, answer_cols, strict=True
            ):
                with column:
                    st.caption(f"**{ui.md(variant.name)}** · {variant.model}")
                    show_cell(cell)
            marked = st.radio(
                "Better answer",
                [NO_MARK, *range(len(names))],
                format_func=lambda i: "No mark" if i == NO_MARK else names[i],
                index=run.marks.get(row.index, NO_MARK) + 1,
                key=f"mark_{run.id}_{row.index}",
                horizontal=True,
            )
            chosen_mark = None if marked == NO_MARK else marked
            if chosen_mark != run.marks.get(row.index):
                run.mark(row.index, chosen_mark)
                lab.save_run(store, run)
                st.rerun()  # the tally above counts the new mark

    st.markdown("**Promote**: run one variant on every row of the file.")
    fits = table is not None and run.fits(table)
    if not fits:
        st.info(
            f"Upload {ui.md(run.source_name or 'the file')} (or any CSV with the "
            "columns the variants use) above to run a variant on all its rows."
        )
    tally = run.tally()
    rows_label = f"all {len(table):,} rows" if table is not None else "all rows"
    with st.container(horizontal=True):
        for number, variant in enumerate(run.variants):
            leads = tally[number] > 0 and tally[number] == max(tally)
            promoted = st.button(
                f"Run {ui.md(variant.name)} on {rows_label}",
                icon=":material/rocket_launch:",
                type="primary" if leads else "secondary",
                disabled=not fits,
                key=f"promote_{number}",
            )
            if promoted and table is not None:
                with ui.attempt(), st.spinner("Saving the batch and starting it…"):
                    batch = lab.promote(settings, store, table, run, number)
                    ui.flash(
                        f"Batch “{ui.md(batch.name)}” launched with variant "
                        f"{ui.md(variant.name)} on {batch.total_rows:,} rows."
                    )
                    st.switch_page(ui.BATCHES_PAGE, query_params={"batch": batch.id})

    if st.button("Delete this lab run", icon=":material/delete:"):
        st.session_state["confirm_lab_delete"] = run.id
    if st.session_state.get("confirm_lab_delete") == run.id:
        st.warning(f"Delete “{ui.md(run.name)}” with all its answers and marks?")
        yes, no, _ = st.columns([1, 1, 3])
        if yes.button("Yes, delete it", type="primary", icon=":material/delete:"):
            with ui.attempt():
                store.delete_lab_run(run.id)
                st.session_state.pop("confirm_lab_delete")
                del st.query_params["run"]
                ui.flash(f"Deleted “{ui.md(run.name)}”.")
                st.rerun()
        if no.button("Keep it"):
            st.session_state.pop("confirm_lab_delete")
            st.rerun()

# --- 5. Saved runs ------------------------------------------------------------

saved = [LabRun.from_record(r) for r in store.list_lab_runs()]
if saved:
    st.subheader("Saved lab runs")
    ids = [r.id or "" for r in saved]
    picked = st.dataframe(
        views.lab_runs_frame(saved),
        # A new key when the list changes, so a selection never shifts rows.
        key=f"lab_runs_{hash(tuple(ids))}",
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
    )
    if ui.open_selected_row(ids, picked.selection.rows, param="run"):
        st.rerun()  # the run opens above the list
    st.caption("Select a run to open it.")
