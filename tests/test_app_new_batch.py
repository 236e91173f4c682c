"""The new batch page under AppTest: upload, prompt, preview, try it, launch.

Also the frame around it (the sidebar, the friendly error handler) and the
configuration files the app ships with.
"""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bulkgpt_core import actions, jobs, views
from bulkgpt_core.batches import BatchStatus, GenerationSettings, RowStatus
from bulkgpt_core.config import SETTINGS, Settings
from bulkgpt_core.models import NO_KEY
from bulkgpt_core.sample_run import choose_rows
from bulkgpt_core.schema import FieldType, OutputField, fields_to_schema
from bulkgpt_core.templates import compile_template
from pages import ui
from tests.app_fixtures import (
    APP,
    ROOT,
    TEMPLATE,
    all_text,
    app,
    button,
    reviews_bytes,
    reviews_table,
    store_for_app,
    texts,
    uploaded,
    wait_until_finished,
    workers_stopped,
)
from tests.conftest import TEST_KEY
from tests.fake_gemini import FakeGemini


def prompt_for(row: int) -> str:
    table = reviews_table()
    return compile_template(TEMPLATE, table.columns).render(table.row_dict(row))


def with_template(template: str = TEMPLATE):
    at = uploaded(app(), reviews_bytes())
    at.text_area(key="template").input(template)
    return at.run()


# --- Upload ----------------------------------------------------------------------


def test_upload_shows_size_encoding_delimiter_and_preview() -> None:
    at = uploaded(app(), reviews_bytes())

    assert not at.exception
    assert "120 rows × 5 columns · UTF-8 · comma-separated" in all_text(at)
    preview = at.dataframe[0].value
    assert list(preview.columns) == reviews_table().columns
    assert len(preview) == views.PREVIEW_ROWS
    assert preview.iloc[0]["review_id"] == "R0000"


def test_repairs_are_listed() -> None:
    at = uploaded(app(), b"name,name,\nAda,Lovelace,x\n", name="people.csv")

    assert "1 row × 3 columns" in all_text(at)
    assert at.info, "each repair of the header is listed"
    assert all(str(i.value) for i in at.info)


def test_a_bad_file_shows_the_csv_message_and_the_page_stays_usable() -> None:
    at = uploaded(app(), b"%PDF-1.7 not a table", name="report.csv")

    assert not at.exception
    assert "report.csv" in texts(at.error)[0]
    assert "PDF document" in texts(at.error)[0]

    at.file_uploader(key="upload").clear().run()
    at = uploaded(at, reviews_bytes())
    assert not at.error
    assert "120 rows × 5 columns" in all_text(at)


def test_the_file_is_read_once_not_on_every_rerun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = []
    real_read_csv = ui.read_csv

    def counting_read_csv(*args, **kwargs):
        reads.append(kwargs.get("name"))
        return real_read_csv(*args, **kwargs)

    monkeypatch.setattr(ui, "read_csv", counting_read_csv)
    at = with_template()
    at.number_input(key="preview_row").set_value(7).run()
    at.text_area(key="system_prompt").input("Be brief.").run()

    assert reads == ["reviews.csv"]


def test_the_file_is_kept_when_coming_back_from_the_batches_page() -> None:
    at = with_template()
    at.switch_page("pages/batches.py").run()
    at.switch_page("pages/new_batch.py").run()

    assert "uploaded earlier" in all_text(at)
    assert at.text_area(key="template").value == TEMPLATE


# --- Prompt ----------------------------------------------------------------------


def test_unknown_placeholders_are_listed_with_suggestions() -> None:
    at = with_template("Sum up <<review txt>> for <<shop>>")

    errors = texts(at.error)
    assert "<<review txt>> is not a column. Did you mean <<review text>>?" in errors
    assert any(e.startswith("<<shop>> is not a column. Columns are:") for e in errors)
    assert not [b for b in at.button if b.label.startswith("Launch")]
    assert button(at, "Try it").disabled


def test_insert_appends_the_chosen_column() -> None:
    at = uploaded(app(), reviews_bytes())
    at.selectbox(key="column_to_insert").select("review text")
    button(at, "Insert").click().run()
    assert at.text_area(key="template").value == "<<review text>>"

    at.text_area(key="template").input("Sum up").run()
    button(at, "Insert").click().run()
    assert at.text_area(key="template").value == "Sum up <<review text>>"


def test_the_preview_follows_the_selected_row() -> None:
    at = with_template()
    assert prompt_for(0) in texts(at.code)

    at.number_input(key="preview_row").set_value(42).run()
    assert prompt_for(41) in texts(at.code)
    assert prompt_for(0) not in texts(at.code)


# --- Model, try it, estimate -------------------------------------------------------


def test_without_a_key_the_demo_model_is_used_and_said_so() -> None:
    at = with_template()

    assert "demo model" in texts(at.sidebar.info)[0]
    assert "GEMINI_API_KEY not set" in all_text(at.sidebar)
    assert "**Model** demo (offline)" in all_text(at.sidebar)
    assert at.selectbox(key="model").value == "demo"
    button(at, "Try it").click().run()
    assert sum(c.startswith("[demo answer]") for c in texts(at.code)) == 5
    assert "Free" in texts(at.metric)


def test_a_gemini_model_without_a_key_is_refused_in_plain_words() -> None:
    at = with_template()
    at.selectbox(key="model").select("gemini-2.5-flash").run()
    assert NO_KEY in texts(at.warning)

    button(at, "Try it").click().run()
    assert not at.exception
    assert texts(at.warning).count(NO_KEY) == 2


def test_try_it_runs_the_first_rows_against_gemini(gemini: FakeGemini) -> None:
    at = with_template()
    sidebar = all_text(at.sidebar)
    assert "GEMINI_API_KEY set" in sidebar
    assert TEST_KEY not in sidebar
    assert "**Model** gemini-2.5-flash" in sidebar

    button(at, "Try it").click().run()

    assert not at.exception
    answers = [c for c in texts(at.code) if c.startswith("ANSWER: ")]
    assert answers == [f"ANSWER: {prompt_for(i)}" for i in range(5)]
    assert "5 rows** · 0 failed" in all_text(at)
    assert gemini.stats()["answered"] == 5
    assert "from the 5 answers of your sample run" in all_text(at)


def test_try_it_on_random_rows_with_a_seed(gemini: FakeGemini) -> None:
    at = with_template()
    at.radio(key="sample_mode").set_value("Random rows").run()
    at.number_input(key="sample_count").set_value(3)
    at.number_input(key="sample_seed").set_value(7).run()
    button(at, "Try it").click().run()

    chosen = choose_rows(120, 3, random_rows=True, seed=7)
    answers = [c for c in texts(at.code) if c.startswith("ANSWER: ")]
    assert answers == [f"ANSWER: {prompt_for(i)}" for i in chosen]


def test_try_it_shows_a_failed_row_in_plain_words(gemini: FakeGemini) -> None:
    data = b"id,text\n1,hello\n2,please block [[fake:safety]]\n"
    at = uploaded(app(), data, name="two.csv")
    at.text_area(key="template").input("Say <<text>>").run()
    button(at, "Try it").click().run()

    assert "ANSWER: Say hello" in texts(at.code)
    assert any("Blocked by safety filters" in e for e in texts(at.error))
    assert "2 rows** · 1 failed" in all_text(at)


def test_the_estimate_is_shown_before_launch(gemini: FakeGemini) -> None:
    at = with_template()
    metrics = {m.label: m.value for m in at.metric}

    assert metrics["Rows"] == "120"
    assert "–" in metrics["Estimated tokens"]
    assert metrics["Estimated cost"].startswith("$")
    assert "assuming answers of 50 to 500 tokens" in all_text(at)


# --- Launch ----------------------------------------------------------------------


def test_launch_stores_every_row_and_opens_the_batch_page(
    gemini: FakeGemini, isolated_env: Path
) -> None:
    at = with_template()
    at.text_input(key="batch_name").input("My reviews").run()
    with workers_stopped(isolated_env):
        button(at, "Launch 120 rows").click().run()

        batch_id = at.query_params["batch"]
        assert [t.value for t in at.title] == ["Batches"]
        assert "My reviews" in texts(at.toast)[0]
        with store_for_app() as store:
            batch = wait_until_finished(store, batch_id)
            rows = list(store.iter_rows(batch_id))

    assert batch.name == "My reviews"
    assert batch.status is BatchStatus.COMPLETED
    assert batch.total_rows == 120
    assert [r.index for r in rows] == list(range(120))
    assert all(r.status is RowStatus.SUCCEEDED for r in rows)
    assert [r.output for r in rows] == [f"ANSWER: {prompt_for(i)}" for i in range(120)]


def test_a_worker_that_cannot_start_leaves_the_batch_ready_to_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_worker(settings, store, batch_id):
        raise OSError("no process slots left")

    monkeypatch.setattr(actions, "start_worker", no_worker)
    at = with_template()
    button(at, "Launch").click().run()

    assert not at.exception
    assert at.query_params["batch"]
    warnings = " ".join(texts(at.warning))
    assert "The worker could not be started: no process slots left" in warnings
    assert "No worker is running this batch" in warnings
    assert button(at, "Resume")
    with store_for_app() as store:
        [batch] = store.list_batches()
    assert batch.status is BatchStatus.PENDING
    assert batch.total_rows == 120


# --- The frame: configuration problems and unexpected errors -------------------------


def test_a_bad_setting_is_named() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BULKGPT_MAX_ROWS", "lots")
        at = app()

    assert not at.exception
    assert any(
        "BULKGPT_MAX_ROWS='lots' is not a whole number" in e for e in texts(at.error)
    )


def test_a_store_that_cannot_open_leaves_the_page_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BULKGPT_STORE", "postgres")
    at = with_template()

    assert "120 rows × 5 columns" in all_text(at)
    assert any("DATABASE_URL is not set" in e for e in texts(at.error))
    assert button(at, "Launch").disabled
    assert "DATABASE_URL not set" in all_text(at.sidebar)


def test_an_unexpected_error_shows_a_reference_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(table):
        raise RuntimeError("the summary broke")

    monkeypatch.setattr(views, "table_summary", broken)
    with caplog.at_level(logging.ERROR, logger="bulkgpt.app"):
        at = uploaded(app(), reviews_bytes())

    assert not at.exception
    [message] = texts(at.error)
    assert "Something went wrong" in message
    assert "the summary broke" not in message
    reference = message.split("reference **")[1].split("**")[0]
    [record] = [r for r in caplog.records if reference in r.getMessage()]
    assert record.exc_info is not None
    assert "the summary broke" in str(record.exc_info[1])


# --- Configuration files -----------------------------------------------------------


def test_secrets_example_lists_every_setting() -> None:
    text = (ROOT / ".streamlit" / "secrets.toml.example").read_text()
    tomllib.loads(text)
    missing = [s.name for s in SETTINGS if f"{s.name} = " not in text]
    assert missing == []


def test_streamlit_config_matches_the_upload_limit() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())

    assert config["server"]["maxUploadSize"] == Settings().max_upload_mb
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] == "none"


# --- Output fields, budget, and starting from an earlier batch -----------------------

FIELD_EDITS = {
    "edited_rows": {},
    "added_rows": [
        {
            "Field name": "sentiment",
            "Type": "one of a list",
            "Description": "How the review feels",
            "Choices": "positive, negative",
        },
        {"Field name": "stars", "Type": "integer", "Required": False},
    ],
    "deleted_rows": [],
}
FIELDS = [
    OutputField(
        "sentiment",
        FieldType.CHOICE,
        "How the review feels",
        choices=("positive", "negative"),
    ),
    OutputField("stars", FieldType.INTEGER, required=False),
]


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Launches store the batch but start no worker; the ids started are listed."""
    started: list[str] = []
    monkeypatch.setattr(
        actions,
        "start_worker",
        lambda settings, store, batch_id: started.append(batch_id),
    )
    return started


def field_editor(at) -> object:
    [editor] = [d for d in at.dataframe if d.editing_mode == "dynamic"]
    return editor


def test_the_field_table_makes_the_output_schema(
    gemini: FakeGemini, no_worker: list[str]
) -> None:
    at = with_template()
    at.session_state["output_fields_editor_0"] = FIELD_EDITS
    at.run()

    assert not at.error
    button(at, "Try it").click().run()
    structured = [json.loads(c) for c in texts(at.code) if c.startswith("{")]
    assert len(structured) == 5
    assert all(answer["sentiment"] == "positive" for answer in structured)
    button(at, "Launch 120 rows").click().run()
    with store_for_app() as store:
        [batch] = store.list_batches()
    assert batch.output_schema == fields_to_schema(FIELDS)
    assert no_worker == [batch.id]


def test_the_field_table_is_kept_when_coming_back(gemini: FakeGemini) -> None:
    at = with_template()
    at.session_state["output_fields_editor_0"] = FIELD_EDITS
    at.run()
    at.switch_page("pages/batches.py").run()
    at.switch_page("pages/new_batch.py").run()

    assert views.fields_from_frame(field_editor(at).value) == FIELDS


def test_a_field_table_that_cannot_be_used_says_why() -> None:
    at = with_template()
    at.session_state["output_fields_editor_0"] = {
        "edited_rows": {},
        "added_rows": [{"Field name": "mood", "Type": "one of a list"}],
        "deleted_rows": [],
    }
    at.run()

    assert "Field 'mood' is 'one of a list': give the choices." in texts(at.error)
    assert button(at, "Try it").disabled
    assert not [b for b in at.button if b.label.startswith("Launch")]


def test_the_budget_goes_into_the_batch(no_worker: list[str]) -> None:
    at = with_template()
    at.selectbox(key="model").select("gemini-2.5-flash").run()
    at.number_input(key="budget_usd").set_value(0.01).run()
    assert "budget may be below what the batch costs" in " ".join(texts(at.warning))

    at.number_input(key="budget_usd").set_value(2.5).run()
    button(at, "Launch 120 rows").click().run()

    with store_for_app() as store:
        [batch] = store.list_batches()
    assert batch.budget_usd == 2.5


def test_a_batch_can_be_started_from_an_earlier_one(no_worker: list[str]) -> None:
    settings = Settings.from_env()
    with store_for_app() as store:
        earlier = jobs.create_batch(
            store,
            reviews_table(),
            name="Moods",
            template=TEMPLATE,
            generation=GenerationSettings(
                model="gemini-2.5-flash-lite",
                system_prompt="Be brief.",
                temperature=0.3,
                max_output_tokens=200,
                response_schema=fields_to_schema(FIELDS),
            ),
            limits=jobs.run_limits(settings, concurrency=4, rpm=100),
            budget_usd=3.0,
        )
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["from"] = earlier.id
    at.run()

    assert "from" not in at.query_params
    assert "come from batch “Moods”. Upload reviews.csv again" in texts(at.info)[0]
    at = uploaded(at, reviews_bytes())
    notice = texts(at.info)[0]
    assert "The file uploaded earlier, reviews.csv, has the columns" in notice
    assert at.text_area(key="template").value == TEMPLATE
    assert at.text_area(key="system_prompt").value == "Be brief."
    assert at.selectbox(key="model").value == "gemini-2.5-flash-lite"
    assert at.slider(key="temperature").value == 0.3
    assert at.number_input(key="max_output_tokens").value == 200
    assert at.number_input(key="concurrency").value == 4
    assert at.number_input(key="rpm").value == 100
    assert at.number_input(key="budget_usd").value == 3.0
    assert list(field_editor(at).value["Field name"]) == ["sentiment", "stars"]

    at.text_input(key="batch_name").input("Moods again").run()
    button(at, "Launch 120 rows").click().run()
    with store_for_app() as store:
        again = store.get_batch(at.query_params["batch"])
    assert again.id != earlier.id
    for name in ("template", "system_prompt", "model", "generation", "budget_usd"):
        assert getattr(again, name) == getattr(earlier, name)
    assert again.output_schema == earlier.output_schema
    assert again.limits == earlier.limits


def test_starting_from_a_deleted_batch_says_so() -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["from"] = "no-such-batch"
    at.run()

    assert "That batch no longer exists" in texts(at.warning)[0]
    at = uploaded(at, reviews_bytes())
    assert at.text_area(key="template").value == ""
    assert not at.warning


def test_modal_that_cannot_run_offers_this_computer(
    no_worker: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKGPT_RUNNER", "modal")
    at = with_template()
    warnings = " ".join(texts(at.warning))
    assert "Use Supabase or PostgreSQL" in warnings
    assert button(at, "Launch 120 rows").disabled

    at.checkbox(key="run_locally").check().run()
    button(at, "Launch 120 rows").click().run()

    assert len(no_worker) == 1
    with store_for_app() as store:
        assert store.get_batch(no_worker[0]).runner == "local"
