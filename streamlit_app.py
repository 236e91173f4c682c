"""BulkGPT: run Gemini over every row of a CSV.

This file is the frame: page setup, the sidebar, the pages, and the handler
that turns an unexpected error into a friendly message. Each page is a file in
``pages/``; the work itself is done by ``bulkgpt_core``.

A page's ``url_path`` must differ from its file name: Streamlit still scans
a ``pages/`` folder on the first run of a process (and on every AppTest run),
and a matching name would run that page on its own, without this frame.
"""

import streamlit as st

from pages import ui

st.set_page_config(
    page_title="BulkGPT",
    page_icon=":material/table_view:",
    layout="wide",
)
ui.configure_logging()

page = st.navigation(
    [
        st.Page(
            ui.NEW_BATCH_PAGE,
            title="New batch",
            icon=":material/upload_file:",
            url_path="new-batch",
            default=True,
        ),
        st.Page(
            ui.PROMPT_LAB_PAGE,
            title="Prompt lab",
            icon=":material/science:",
            url_path="prompt-lab",
        ),
        st.Page(
            ui.BATCHES_PAGE,
            title="Batches",
            icon=":material/view_list:",
            url_path="batch-list",
        ),
    ]
)
with ui.friendly_errors():
    ui.sidebar()
    page.run()
