"""Structured output: answers as named fields instead of free text.

People describe the fields in a small table (name, type, description,
required); the command line also takes a JSON Schema. Both become the JSON
Schema sent to Gemini as the response schema. Each answer is parsed and
checked against it, and exports get one column per field.

Only the part of JSON Schema that the field table can express is checked: an
object of named properties, each text, number, integer, yes/no, one of a list,
or a list of text.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BulkGPTError


class SchemaError(BulkGPTError):
    """An output schema that cannot be used; the message says how to fix it."""


class AnswerError(ValueError):
    """An answer that does not parse or does not fit the schema."""


class FieldType(enum.StrEnum):
    TEXT = "text"
    NUMBER = "number"
    INTEGER = "integer"
    BOOLEAN = "yes/no"
    CHOICE = "one of a list"
    LIST = "list of text"


JSON_TYPES = {
    FieldType.TEXT: "string",
    FieldType.NUMBER: "number",
    FieldType.INTEGER: "integer",
    FieldType.BOOLEAN: "boolean",
    FieldType.CHOICE: "string",
}
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_ -]{0,63}$")


@dataclass(frozen=True)
class OutputField:
    """One column of structured output."""

    name: str
    type: FieldType = FieldType.TEXT
    description: str = ""
    required: bool = True
    choices: tuple[str, ...] = field(default_factory=tuple)

    def json_schema(self) -> dict[str, Any]:
        if self.type is FieldType.LIST:
            schema: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
        else:
            schema = {"type": JSON_TYPES[self.type]}
        if self.type is FieldType.CHOICE:
            schema["enum"] = list(self.choices)
        if self.description:
            schema["description"] = self.description
        return schema


def fields_to_schema(fields: Sequence[OutputField]) -> dict[str, Any] | None:
    """The JSON Schema for a list of fields; None when there are none."""
    fields = [f for f in fields if f.name.strip()]
    if not fields:
        return None
    _check_fields(fields)
    return {
        "type": "object",
        "properties": {f.name: f.json_schema() for f in fields},
        "required": [f.name for f in fields if f.required],
        "propertyOrdering": [f.name for f in fields],
    }


def _check_fields(fields: Sequence[OutputField]) -> None:
    seen: set[str] = set()
    for f in fields:
        if not NAME_PATTERN.match(f.name):
            raise SchemaError(
                f"Field name {f.name!r} is not usable: start with a letter and use "
                "letters, digits, spaces, _ or - (at most 64 characters)."
            )
        if f.name in seen:
            raise SchemaError(f"Field {f.name!r} is listed twice: rename one.")
        seen.add(f.name)
        if f.type is FieldType.CHOICE and not [c for c in f.choices if c.strip()]:
            raise SchemaError(f"Field {f.name!r} is 'one of a list': give the choices.")


def schema_to_fields(schema: Mapping[str, Any]) -> list[OutputField]:
    """The field table for a JSON Schema (for editing, and for export columns)."""
    if schema.get("type") != "object" or not isinstance(
        schema.get("properties"), Mapping
    ):
        raise SchemaError(
            'An output schema must be a JSON object schema: {"type": "object", '
            '"properties": {...}}.'
        )
    required = set(schema.get("required", []))
    return [
        _field_from_property(name, prop, name in required)
        for name, prop in schema["properties"].items()
    ]


def _field_from_property(
    name: str, prop: Mapping[str, Any], required: bool
) -> OutputField:
    kind = prop.get("type")
    if "enum" in prop:
        ftype = FieldType.CHOICE
    elif kind == "array":
        ftype = FieldType.LIST
    else:
        by_json = {v: k for k, v in JSON_TYPES.items() if k is not FieldType.CHOICE}
        if kind not in by_json:
            raise SchemaError(
                f"Field {name!r} has type {kind!r}: use string, number, integer, "
                "boolean, an enum, or an array of strings."
            )
        ftype = by_json[kind]
    return OutputField(
        name=name,
        type=ftype,
        description=str(prop.get("description", "")),
        required=required,
        choices=tuple(str(c) for c in prop.get("enum", [])),
    )


def load_schema(text: str) -> dict[str, Any]:
    """Read a JSON Schema given as text (the CLI's ``--schema``)."""
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"The output schema is not valid JSON: {exc}") from exc
    fields = schema_to_fields(schema)
    _check_fields(fields)
    return schema


def field_names(schema: Mapping[str, Any] | None) -> list[str]:
    return list(schema["properties"]) if schema else []


FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_answer(text: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The answer as a dict that fits the schema, or :class:`AnswerError`."""
    fenced = FENCE.match(text)
    body = fenced.group(1) if fenced else text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"the answer is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise AnswerError("the answer is not a JSON object")
    problems = list(_problems(value, schema))
    if problems:
        raise AnswerError("; ".join(problems))
    return value


def _problems(value: dict[str, Any], schema: Mapping[str, Any]) -> list[str]:
    found = []
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value or value[name] is None:
            found.append(f"{name!r} is missing")
    for name, prop in properties.items():
        if name in value and value[name] is not None:
            problem = _type_problem(value[name], prop)
            if problem:
                found.append(f"{name!r} {problem}")
    return found


def _type_problem(value: Any, prop: Mapping[str, Any]) -> str | None:
    kind = prop.get("type")
    if "enum" in prop and value not in prop["enum"]:
        return f"must be one of {', '.join(map(str, prop['enum']))}"
    checks = {
        "string": lambda v: isinstance(v, str),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    }
    check = checks.get(kind)
    if check is not None and not check(value):
        words = {"array": "a list of text", "boolean": "true or false"}
        return f"must be {words.get(kind, kind)}"
    return None


def repair_prompt(prompt: str, answer: str, problem: str) -> str:
    """The prompt again, with what was wrong with the last answer."""
    return (
        f"{prompt}\n\nYour previous answer could not be used: {problem}. "
        "Answer again with only a JSON object that follows the response schema. "
        f"Previous answer:\n{answer[:2000]}"
    )
