"""Tests for bulkgpt_core.templates: syntax, matching, rendering, hashing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkgpt_core.errors import TemplateError
from bulkgpt_core.templates import (
    EMPTY_PROMPT_MESSAGE,
    NO_PLACEHOLDER_WARNING,
    CompiledTemplate,
    Placeholder,
    UnknownPlaceholder,
    check_template,
    compile_template,
    find_placeholders,
    insert_placeholder,
    prompt_hash,
    render,
    resolve_column,
)

COLUMNS = ["Company Name", "review text", "Price ($)", "a.b", "x-y"]


def names(template: str) -> list[str]:
    return [placeholder.name for placeholder in find_placeholders(template)]


# Syntax


def test_both_bracket_styles_give_placeholders_with_positions():
    template = "Hi <<Company Name>>, see {{review text}}."

    assert find_placeholders(template) == [
        Placeholder("<<Company Name>>", "Company Name", 3, 19),
        Placeholder("{{review text}}", "review text", 25, 40),
    ]


@pytest.mark.parametrize("name", ["Company Name", "Price ($)", "a.b", "x-y", "é 😀"])
def test_names_may_hold_spaces_and_punctuation(name):
    assert names(f"<<{name}>> {{{{{name}}}}}") == [name, name]


def test_surrounding_spaces_are_stripped_but_kept_in_text():
    [placeholder] = find_placeholders("<<  Company Name\t>>")

    assert placeholder.name == "Company Name"
    assert placeholder.text == "<<  Company Name\t>>"


@pytest.mark.parametrize(
    "template",
    ["<<>>", "{{}}", "<<   >>", "{{ }}", "<<name", "{{name", "<<a\nb>>", "name>>"],
)
def test_blank_unclosed_and_multiline_brackets_are_text(template):
    assert find_placeholders(template) == []


def test_name_ends_at_first_closing_pair():
    assert names("<<a>> and <<b>>") == ["a", "b"]
    assert names("<<a>>>") == ["a"]


@pytest.mark.parametrize(
    ("template", "text", "start"),
    [
        ("<<<a>>>", "<<a>>", 1),
        ("{{{a}}}", "{{a}}", 1),
        ("<<<<a>>>>", "<<a>>", 2),
        ("<<{{a}}>>", "{{a}}", 2),
        ("{{<<a>>}}", "<<a>>", 2),
        ("<<b <<a>>", "<<a>>", 4),
    ],
)
def test_nested_brackets_take_the_innermost_valid_pair(template, text, start):
    assert find_placeholders(template) == [
        Placeholder(text, "a", start, start + len(text))
    ]


def test_nested_brackets_render_outer_brackets_as_text():
    assert render("<<<a>>>", {"a": "1"}) == "<1>"
    assert render("{{{a}}}", {"a": "1"}) == "{1}"


def test_a_name_starting_with_a_bracket_can_be_written_with_a_space():
    assert names("<< <5 years>>") == ["<5 years"]
    assert names("{{<5 years}}") == ["<5 years"]


# Matching names to columns


def test_exact_name_wins_over_case_and_spaces():
    columns = ["name", "Name", " Name "]

    assert resolve_column("Name", columns) == "Name"
    assert resolve_column("name", columns) == "name"
    assert resolve_column(" Name ", columns) == " Name "


def test_case_insensitive_match_wins_over_stripped_match():
    assert resolve_column("NAME", ["name ", "Name"]) == "Name"


def test_stripped_case_insensitive_match():
    assert resolve_column("company name", [" Company Name ", "x"]) == " Company Name "


def test_columns_differing_only_by_case_are_ambiguous():
    assert resolve_column("name", ["Name", "NAME"]) is None
    assert resolve_column("Name", ["Name", "NAME"]) == "Name"


def test_placeholder_with_spaces_matches_tolerantly():
    check = check_template("<< company name >>", COLUMNS)

    assert check.ok
    assert check.resolved == {"company name": "Company Name"}


def test_placeholder_written_with_spaces_prefers_a_column_with_those_spaces():
    template = "<< a>>|<<a>>"
    compiled = compile_template(template, ["a", " a"])

    assert compiled.render({"a": "plain", " a": "spaced"}) == "spaced|plain"


def test_ambiguous_placeholder_is_unknown_with_a_suggestion():
    check = check_template("<<name>>", ["Name", "NAME"])

    assert not check.ok
    assert check.unknown == [UnknownPlaceholder("name", "Name", ("Name", "NAME"))]
    assert check.unknown[0].message() == (
        "<<name>> matches more than one column (Name, NAME): write the name "
        "exactly as one of them, e.g. <<Name>>."
    )


# Unknown placeholders


def test_unknown_with_suggestion_message():
    check = check_template("Rate <<compnay>>", COLUMNS)

    assert check.resolved == {}
    assert check.unknown == [UnknownPlaceholder("compnay", "Company Name")]
    assert check.unknown[0].message() == (
        "<<compnay>> is not a column. Did you mean <<Company Name>>?"
    )


def test_suggestion_is_case_insensitive_and_may_match_one_word():
    [unknown] = check_template("<<REVEIW>>", COLUMNS).unknown

    assert unknown.suggestion == "review text"


def test_unknown_without_suggestion_lists_the_columns():
    [unknown] = check_template("<<zzz>>", ["a", "b", "c"]).unknown

    assert unknown.suggestion is None
    assert unknown.message() == "<<zzz>> is not a column. Columns are: a, b, c"


def test_long_column_lists_are_truncated():
    columns = [f"col{i}" for i in range(25)]
    [unknown] = check_template("<<zzz>>", columns).unknown

    assert unknown.message() == (
        "<<zzz>> is not a column. Columns are: col0, col1, col2, col3, col4, "
        "col5, col6, col7, col8, col9 and 15 more"
    )


def test_unknown_with_no_columns():
    [unknown] = check_template("<<a>>", []).unknown

    assert unknown.message() == "<<a>> is not a column: the table has no columns."


def test_each_unknown_is_reported_once_in_order():
    check = check_template("<<zz>> <<Company Name>> <<yy>> {{zz}} << yy >>", COLUMNS)

    assert [unknown.name for unknown in check.unknown] == ["zz", "yy"]
    assert check.resolved == {"Company Name": "Company Name"}
    assert len(check.placeholders) == 5


def test_compile_raises_listing_every_unknown():
    with pytest.raises(TemplateError) as raised:
        compile_template("<<compnay>> <<zzz>> <<compnay>>", COLUMNS)

    assert str(raised.value) == (
        "2 placeholders do not match a column:\n"
        "- <<compnay>> is not a column. Did you mean <<Company Name>>?\n"
        "- <<zzz>> is not a column. Columns are: Company Name, review text, "
        "Price ($), a.b, x-y"
    )


def test_compile_raises_the_single_unknown_message():
    with pytest.raises(TemplateError, match=r"^<<compnay>> is not a column\."):
        compile_template("<<compnay>>", COLUMNS)


# Warnings and blank templates


@pytest.mark.parametrize("template", ["", "  \n\t "])
def test_blank_template_is_not_ok(template):
    check = check_template(template, COLUMNS)

    assert not check.ok
    assert check.blank
    assert check.warnings == [EMPTY_PROMPT_MESSAGE]
    with pytest.raises(TemplateError) as raised:
        compile_template(template, COLUMNS)
    assert str(raised.value) == EMPTY_PROMPT_MESSAGE
    assert str(raised.value).startswith(
        "The prompt is empty: write what the model should do with each row, e.g. "
    )


def test_template_without_placeholders_is_ok_with_a_warning():
    check = check_template("Write a haiku.", COLUMNS)

    assert check.ok
    assert check.warnings == [NO_PLACEHOLDER_WARNING]
    assert compile_template("Write a haiku.", COLUMNS).render({}) == "Write a haiku."


def test_unclosed_and_blank_brackets_warn_once_each():
    check = check_template("<<a>> <<>> {{ }} <<Company Name> <<b", ["a"])

    assert check.ok
    assert check.warnings == [
        '"<<>>" has no column name inside, so it is sent as written.',
        '"<<Company Name>" starts a placeholder with << that is never closed '
        "with >>, so it is sent as written.",
    ]


def test_clean_template_has_no_warnings():
    check = check_template("Summarise <<review text>>.", COLUMNS)

    assert check.ok
    assert check.warnings == []
    assert check.error_message() is None


# Rendering


def test_render_is_exact():
    template = "  Lead\n\t<<a>>|{{ b }}|<<a>>  \r\n"
    row = {"a": "  spaced  ", "b": "line1\nline2"}

    expected = "  Lead\n\t" + "  spaced  |line1\nline2|  spaced  " + "  \r\n"

    assert render(template, row) == expected


def test_placeholders_inside_values_are_not_expanded():
    row = {"a": "<<b>> {{b}}", "b": "B"}

    assert render("<<a>>/<<b>>", row) == "<<b>> {{b}}/B"


def test_unicode_emoji_and_rtl_text_pass_through():
    template = "שלום <<שם>> — 😀 <<name>>\u200f!"
    row = {"שם": "עולם", "name": "👩\u200d💻 café"}

    assert render(template, row) == "שלום עולם — 😀 👩\u200d💻 café\u200f!"


def test_literal_brackets_are_kept():
    row = {"a": "1"}

    assert render("<<>> {{ }} <<a <<<a>>> x >> y }}", row) == (
        "<<>> {{ }} <<a <1> x >> y }}"
    )


def test_missing_cell_renders_empty_and_extra_cells_are_ignored():
    compiled = compile_template("[<<a>>][<<b>>]", ["a", "b"])

    assert compiled.render({"b": "2", "zzz": "9"}) == "[][2]"


def test_compiled_template_reports_columns_used_once_in_order():
    compiled = compile_template("<<b>> <<a>> {{ B }} <<a.b>>", ["a", "b", "a.b"])

    assert compiled.columns_used == ["b", "a", "a.b"]
    assert compiled.template == "<<b>> <<a>> {{ B }} <<a.b>>"


def test_render_uses_tolerant_matching():
    row = {"Company Name": "Acme", "Price ($)": "3"}

    assert render("<< company name >> costs {{price ($)}}", row) == "Acme costs 3"


def test_render_raises_for_unknown_placeholders():
    with pytest.raises(TemplateError):
        render("<<nope>>", {"a": "1"})


def test_compiled_template_requires_alternating_parts():
    with pytest.raises(ValueError):
        CompiledTemplate("x", ["a"], ["b"])


# insert_placeholder


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("", "<<Company Name>>"),
        ("Summarise", "Summarise <<Company Name>>"),
        ("Summarise ", "Summarise <<Company Name>>"),
        ("Summarise\n", "Summarise\n<<Company Name>>"),
    ],
)
def test_insert_placeholder(template, expected):
    assert insert_placeholder(template, "Company Name") == expected


@pytest.mark.parametrize("column", ["<5 years", "a>", "<a>", " padded ", "{x}"])
def test_insert_placeholder_reads_back_as_the_column(column):
    template = insert_placeholder("Use", column)

    assert compile_template(template, [column, "other"]).columns_used == [column]


@pytest.mark.parametrize("column", ["", "  ", "a\nb", "a>>b}}"])
def test_insert_placeholder_rejects_unnameable_columns(column):
    with pytest.raises(TemplateError):
        insert_placeholder("Use", column)


# prompt_hash

BASE = {
    "model": "gemini-2.5-flash",
    "system_prompt": "Be brief.",
    "settings": {"temperature": 0.2, "max_output_tokens": 100},
    "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
}


def test_prompt_hash_is_stable_sha256_hex():
    digest = prompt_hash("Hi", **BASE)

    assert digest == prompt_hash("Hi", **BASE)
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_prompt_hash_ignores_key_order_and_none_settings():
    reordered = {
        **BASE,
        "settings": {"max_output_tokens": 100, "temperature": 0.2, "top_k": None},
        "schema": {"properties": {"a": {"type": "string"}}, "type": "object"},
    }

    assert prompt_hash("Hi", **reordered) == prompt_hash("Hi", **BASE)
    assert prompt_hash("Hi", model="m", settings={}) == prompt_hash("Hi", model="m")


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gemini-2.5-pro"},
        {"system_prompt": ""},
        {"settings": {"temperature": 0.3, "max_output_tokens": 100}},
        {"settings": {"temperature": 0.2}},
        {"schema": None},
        {"schema": {"type": "string"}},
    ],
)
def test_prompt_hash_changes_with_each_argument(change):
    assert prompt_hash("Hi", **{**BASE, **change}) != prompt_hash("Hi", **BASE)


def test_prompt_hash_changes_with_the_prompt_and_keeps_fields_apart():
    assert prompt_hash("Hi ", **BASE) != prompt_hash("Hi", **BASE)
    assert prompt_hash("ab", model="c") != prompt_hash("a", model="bc")
    assert prompt_hash("a", model="b", system_prompt="") != prompt_hash(
        "a", model="", system_prompt="b"
    )


# Properties

fast = settings(max_examples=200, deadline=None)
LITERAL_PAIRS = ("<<", ">>", "{{", "}}")
column_names = st.text(
    st.characters(exclude_characters="<>{}\r\n", exclude_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda name: name.strip())
literals = st.text(max_size=12).filter(
    lambda text: not any(pair in text for pair in LITERAL_PAIRS)
)


@fast
@given(
    template=st.text(alphabet=st.sampled_from("<>{} ab\nA-é"), max_size=40)
    | st.text(max_size=40),
    row=st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=5),
    columns=st.lists(st.text(max_size=5), max_size=5),
)
def test_rendering_never_raises(template, row, columns):
    check = check_template(template, [*columns, *row])
    if check.ok:
        compiled = compile_template(template, [*columns, *row])
        assert isinstance(compiled.render(row), str)
        assert isinstance(compiled.render({}), str)
    else:
        with pytest.raises(TemplateError):
            compile_template(template, [*columns, *row])
    with contextlib.suppress(TemplateError):
        render(template, row)


@fast
@given(data=st.data(), columns=st.lists(column_names, min_size=1, unique=True))
def test_built_templates_resolve_and_render_exactly(data, columns):
    count = data.draw(st.integers(min_value=1, max_value=6))
    chosen = [data.draw(st.sampled_from(columns)) for _ in range(count)]
    styles = [data.draw(st.sampled_from(["<<{}>>", "{{{{{}}}}}"])) for _ in chosen]
    texts = [data.draw(literals) for _ in range(count + 1)]
    cells = {column: data.draw(st.text(max_size=8)) for column in columns}

    template = texts[0] + "".join(
        style.format(column) + text
        for style, column, text in zip(styles, chosen, texts[1:], strict=True)
    )
    expected = texts[0] + "".join(
        cells[column] + text for column, text in zip(chosen, texts[1:], strict=True)
    )

    check = check_template(template, columns)
    assert check.ok
    assert check.unknown == []
    assert set(check.resolved) == {column.strip() for column in chosen}
    assert [p.name for p in check.placeholders] == [c.strip() for c in chosen]
    assert compile_template(template, columns).render(cells) == expected


any_names = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda name: name.strip() and not any(p in name for p in LITERAL_PAIRS))


@fast
@given(data=st.data(), columns=st.lists(any_names, min_size=1, unique=True))
def test_inserted_placeholder_resolves_to_its_column(data, columns):
    column = data.draw(st.sampled_from(columns))
    inserted = insert_placeholder(data.draw(literals), column)

    compiled = compile_template(inserted, columns)
    assert compiled.columns_used == [column]
    assert compiled.render({column: "V"}).endswith("V")
