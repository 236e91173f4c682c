"""The prompt lab page under AppTest: variants, grid, marks, stored runs, promote."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bulkgpt_core import actions
from bulkgpt_core.batches import BatchStatus, RowStatus
from bulkgpt_core.templates import compile_template
from tests.app_fixtures import (
    APP,
    all_text,
    app,
    button,
    reviews_bytes,
    reviews_table,
    store_for_app,
    texts,
    wait_until_finished,
    workers_stopped,
)
from tests.fake_gemini import FakeGemini

LAB = "pages/prompt_lab.py"
SHORT = "Sum up <<review text>>"
TERSE = "One word for <<review text>> about <<product>>"


def prompt_for(template: str, row: int) -> str:
    table = reviews_table()
    return compile_template(template, table.columns).render(table.row_dict(row))


def lab_page() -> AppTest:
    """The lab with the sample file uploaded and two variants written."""
    at = app(LAB)
    at.file_uploader(key="lab_upload").upload(
        "reviews.csv", reviews_bytes(), "text/csv"
    )
    at.run()
    at.text_area(key="lab_0_template").input(SHORT)
    at.text_area(key="lab_1_template").input(TERSE)
    at.selectbox(key="lab_1_model").select("gemini-2.5-flash-lite")
    at.slider(key="lab_1_temperature").set_value(0.2)
    return at.run()


def ran(at: AppTest, rows: str = "2, 5, 9") -> AppTest:
    """Run the variants on rows chosen by number."""
    at.radio(key="lab_row_choice").set_value("chosen").run()
    at.text_input(key="lab_rows_chosen").input(rows)
    return button(at, "Run 2 variants").click().run()


def answers(at: AppTest) -> list[str]:
    return [c for c in texts(at.code) if c.startswith("ANSWER: ")]


def summary(at: AppTest):
    """The summary table, one line per variant."""
    [found] = [d.value for d in at.dataframe if "Marked better" in d.value.columns]
    return found


def test_without_a_file_the_page_says_what_to_do() -> None:
    at = app(LAB)

    assert not at.exception
    assert [t.value for t in at.title] == ["Prompt lab"]
    assert "Upload a CSV file to define variants" in texts(at.info)[0]
    assert not at.button


def test_two_variants_answer_the_chosen_rows_side_by_side(gemini: FakeGemini) -> None:
    at = ran(lab_page())

    assert not at.exception
    assert at.query_params["run"]
    expected = [
        f"ANSWER: {prompt_for(template, row)}"
        for row in (1, 4, 8)
        for template in (SHORT, TERSE)
    ]
    assert answers(at) == expected
    assert gemini.stats()["answered"] == 6
    shown = summary(at)
    assert list(shown["Variant"]) == ["A", "B"]
    assert list(shown["Model"]) == ["gemini-2.5-flash", "gemini-2.5-flash-lite"]
    assert list(shown["Failed"]) == ["0 of 3", "0 of 3"]
    assert all(cost.startswith("$") for cost in shown["Cost per 1,000 rows"])
    assert list(shown["Marked better"]) == [0, 0]
    text = all_text(at)
    assert "reviews.csv: A vs B on 3 rows" in text
    assert "**Row 2**" in text and "**Row 9**" in text
    assert "**B** · gemini-2.5-flash-lite" in text
    assert text.count("tokens in · ") == 6


def test_a_failed_answer_is_shown_in_plain_words(
    gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKGPT_MODEL", "nope-model")  # so the picker offers it
    at = lab_page()
    at.selectbox(key="lab_0_model").select("gemini-2.5-flash")
    at.selectbox(key="lab_1_model").select("nope-model").run()
    at = ran(at, "1-2")

    assert not at.exception
    assert any("Unknown model" in e for e in texts(at.error))
    assert list(summary(at)["Failed"]) == ["0 of 2", "2 of 2"]


def test_a_variant_that_cannot_run_is_named() -> None:
    at = lab_page()
    at.text_area(key="lab_1_template").input("One word for <<review txt>>").run()

    assert "<<review txt>> is not a column" in " ".join(texts(at.error))
    assert button(at, "Run 2 variants").disabled
    at.text_area(key="lab_1_template").input(TERSE).run()
    at.radio(key="lab_row_choice").set_value("chosen").run()
    at.text_input(key="lab_rows_chosen").input("500").run()
    button(at, "Run 2 variants").click().run()
    assert "Row numbers go from 1 to 120" in " ".join(texts(at.warning))


def test_marks_are_tallied_per_variant_and_saved(gemini: FakeGemini) -> None:
    at = ran(lab_page())
    run_id = at.query_params["run"]

    at.radio(key=f"mark_{run_id}_1").set_value(1).run()
    at.radio(key=f"mark_{run_id}_4").set_value(1).run()
    at.radio(key=f"mark_{run_id}_8").set_value(0).run()

    assert list(summary(at)["Marked better"]) == [1, 2]
    with store_for_app() as store:
        assert store.get_lab_run(run_id)["marks"] == {"1": 1, "4": 1, "8": 0}
    assert button(at, "Run B on all 120 rows").proto.type == "primary"


def test_a_stored_run_survives_a_new_session_and_can_be_deleted(
    gemini: FakeGemini,
) -> None:
    first = ran(lab_page())
    run_id = first.query_params["run"]
    first.radio(key=f"mark_{run_id}_4").set_value(0).run()

    # A new session (a refresh, or another day) with the run in the URL.
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(LAB)
    at.query_params["run"] = run_id
    at.run()

    assert answers(at) == answers(first)
    assert list(summary(at)["Marked better"]) == [1, 0]
    assert "Upload reviews.csv" in " ".join(texts(at.info))
    assert button(at, "Run A on all rows").disabled
    listed = at.dataframe[-1].value
    assert list(listed["Name"]) == ["reviews.csv: A vs B on 3 rows"]

    button(at, "Delete this lab run").click().run()
    button(at, "Yes, delete it").click().run()
    assert "run" not in at.query_params
    assert "Deleted" in texts(at.toast)[0]
    with store_for_app() as store:
        assert store.list_lab_runs() == []


def test_a_saved_run_opens_from_the_list(gemini: FakeGemini) -> None:
    at = ran(lab_page())
    run_id = at.query_params["run"]
    del at.query_params["run"]
    at.run()
    assert not answers(at)

    key = at.dataframe[-1].key
    at.session_state[key] = {"selection": {"rows": [0], "columns": []}}
    at.run()

    assert at.query_params["run"] == run_id
    assert len(answers(at)) == 6


def test_promote_runs_a_variant_on_the_whole_file(
    gemini: FakeGemini, isolated_env: Path
) -> None:
    at = ran(lab_page())
    with workers_stopped(isolated_env):
        button(at, "Run B on all 120 rows").click().run()

        batch_id = at.query_params["batch"]
        assert [t.value for t in at.title] == ["Batches"]
        assert "variant B on 120 rows" in texts(at.toast)[0]
        with store_for_app() as store:
            batch = wait_until_finished(store, batch_id)
            rows = list(store.iter_rows(batch_id))

    assert batch.name == "reviews (B)"
    assert batch.template == TERSE
    assert batch.model == "gemini-2.5-flash-lite"
    assert batch.generation["temperature"] == 0.2
    assert batch.status is BatchStatus.COMPLETED
    assert [r.output for r in rows] == [
        f"ANSWER: {prompt_for(TERSE, i)}" for i in range(120)
    ]
    assert all(r.status is RowStatus.SUCCEEDED for r in rows)


def test_a_variant_gets_its_output_fields_from_the_field_table(
    gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched = []
    monkeypatch.setattr(actions, "start_worker", lambda *args: launched.append(args))
    at = app(LAB)
    at.session_state["lab_1_fields_editor_0"] = {
        "edited_rows": {},
        "added_rows": [
            {"Field name": "sentiment", "Type": "one of a list", "Choices": "up, down"},
            {"Field name": "score", "Type": "integer", "Required": False},
        ],
        "deleted_rows": [],
    }
    at.file_uploader(key="lab_upload").upload(
        "reviews.csv", reviews_bytes(), "text/csv"
    )
    at.run()
    at.text_area(key="lab_0_template").input(SHORT)
    at.text_area(key="lab_1_template").input(TERSE)
    at = ran(at.run(), "3")

    structured = [c for c in texts(at.code) if c.startswith("{")]
    assert len(structured) == 1
    assert '"sentiment": "up"' in structured[0]
    button(at, "Run B on all 120 rows").click().run()
    with store_for_app() as store:
        [batch] = store.list_batches()
    assert batch.output_schema["properties"]["sentiment"]["enum"] == ["up", "down"]
    assert batch.output_schema["required"] == ["sentiment"]
    assert launched
