"""The tool-params validator: what fits, what does not, and the message naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell import MessageError
from llmspell.schema import check_schema, validate

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "days": {"type": "array", "items": {"type": "integer", "minimum": 1}, "maxItems": 3},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
        },
        "note": {"type": ["string", "null"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "params",
    [
        {"city": "Oslo"},
        {"city": "Oslo", "unit": "F", "days": [1, 2], "note": None},
        {"city": "Oslo", "where": {"lat": 59.9, "lon": 10}},
    ],
)
def test_params_that_fit(params: dict[str, Any]) -> None:
    check_schema(SCHEMA)
    assert validate(params, SCHEMA) is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "params.city: required but missing"),
        ({"city": 3}, "params.city: expected string, got int"),
        ({"city": ""}, "params.city: must be at least 1 characters long"),
        ({"city": "x", "unit": "K"}, "params.unit: 'K' is not one of 'C', 'F'"),
        ({"city": "x", "days": [1, 0]}, "params.days[1]: must be >= 1, got 0"),
        ({"city": "x", "days": [1, True]}, "params.days[1]: expected integer, got boolean"),
        ({"city": "x", "days": [1, 2, 3, 4]}, "params.days: must have at most 3 items, got 4"),
        ({"city": "x", "where": {"lat": 1}}, "params.where.lon: required but missing"),
        ({"city": "x", "where": {"lat": "n", "lon": 1}}, "params.where.lat: expected number"),
        ({"city": "x", "colour": "red"}, "params.colour: unknown field (known: city, days"),
        ({"city": "x", "note": 5}, "params.note: expected string or null, got int"),
    ],
)
def test_params_that_do_not_fit_name_the_field(params: dict[str, Any], message: str) -> None:
    problem = validate(params, SCHEMA)
    assert problem is not None
    assert problem.startswith(message), problem


def test_a_bool_is_never_a_number() -> None:
    assert validate(True, {"type": "number"}) == "params: expected number, got boolean"
    assert validate(1, {"type": "integer"}) is None
    assert validate(1.5, {"type": "integer"}) == "params: expected integer, got float"


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "strng"}, "schema.type"),
        ({"properties": {"a": {"typo": 1}}}, "schema.properties.a"),
        ({"required": "a"}, "schema.required"),
        ({"enum": []}, "schema.enum"),
        ({"minimum": "1"}, "schema.minimum"),
        ({"pattern": "("}, "schema.pattern"),
        ([], "schema"),
    ],
)
def test_bad_schemas_are_refused_at_registration(schema: Any, where: str) -> None:
    with pytest.raises(MessageError) as info:
        check_schema(schema)
    assert info.value.where == where


def test_patterns_and_exclusive_bounds() -> None:
    schema = {"type": "string", "pattern": "^[a-z]+$"}
    assert validate("abc", schema) is None
    assert "does not match" in (validate("ABC", schema) or "")
    assert validate(5, {"exclusiveMaximum": 5}) == "params: must be < 5, got 5"
