"""A small validator for JSON-schema-like dicts: the parameters of tools.

``register_tool(name, target, schema=...)`` takes a dict in the familiar
JSON-schema shape; every call of the tool is checked against it before the
tool runs, and a call whose params do not fit fails with one message naming
the field (``params.city: expected string, got int``).

Supported keywords (others are refused at registration, so a typo never
silently turns a check off):

* ``type``: ``"string"``, ``"number"`` (int or float), ``"integer"``,
  ``"boolean"``, ``"object"``, ``"array"``, ``"null"``, or a list of them.
  ``True``/``False`` are booleans only, never numbers.
* ``properties`` (name -> schema), ``required`` (names),
  ``additionalProperties`` (``False`` refuses unknown keys; a schema checks them).
* ``items`` (one schema for every element), ``minItems``, ``maxItems``.
* ``enum`` (allowed values), ``const``.
* ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``,
  ``minLength``, ``maxLength``, ``pattern`` (a regex searched in the string).
* Annotations that are not checked: ``description``, ``title``, ``default``,
  ``examples``, ``$schema``, ``format``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._exceptions import MessageError

__all__ = ["check_schema", "validate"]

_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
_CHECKED = frozenset(
    (
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
    )
)
_ANNOTATIONS = frozenset(("description", "title", "default", "examples", "$schema", "format"))
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_COUNT_KEYS = ("minItems", "maxItems", "minLength", "maxLength")


def check_schema(schema: Any, where: str = "schema") -> None:
    """Raise ``MessageError`` naming the place when ``schema`` is not a schema
    this validator understands."""
    if not isinstance(schema, Mapping):
        raise MessageError(f"must be a dict, got {type(schema).__name__}", where=where)
    for key in schema:
        if not isinstance(key, str):
            raise MessageError(f"keys must be strings, got {key!r}", where=where)
        if key not in _CHECKED and key not in _ANNOTATIONS:
            raise MessageError(f"unknown schema keyword {key!r}", where=where)
    tp = schema.get("type")
    if tp is not None:
        names = tp if isinstance(tp, list) else [tp]
        for name in names:
            if name not in _TYPES:
                raise MessageError(
                    f"unknown type {name!r}; use one of {', '.join(_TYPES)}", where=f"{where}.type"
                )
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, Mapping):
            raise MessageError("must be a dict of schemas", where=f"{where}.properties")
        for name, sub in props.items():
            check_schema(sub, f"{where}.properties.{name}")
    required = schema.get("required")
    if required is not None and (
        not isinstance(required, list) or not all(isinstance(r, str) for r in required)
    ):
        raise MessageError("must be a list of property names", where=f"{where}.required")
    extra = schema.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        check_schema(extra, f"{where}.additionalProperties")
    items = schema.get("items")
    if items is not None:
        check_schema(items, f"{where}.items")
    enum = schema.get("enum")
    if enum is not None and (not isinstance(enum, list) or not enum):
        raise MessageError("must be a non-empty list", where=f"{where}.enum")
    for key in _NUMBER_KEYS:
        v = schema.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise MessageError("must be a number", where=f"{where}.{key}")
    for key in _COUNT_KEYS:
        v = schema.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise MessageError("must be an int >= 0", where=f"{where}.{key}")
    pattern = schema.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise MessageError("must be a regex string", where=f"{where}.pattern")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise MessageError(f"not a valid regex: {exc}", where=f"{where}.pattern") from None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _is(value: Any, tp: str) -> bool:
    if tp == "string":
        return isinstance(value, str)
    if tp == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if tp == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp == "boolean":
        return isinstance(value, bool)
    if tp == "object":
        return isinstance(value, Mapping)
    if tp == "array":
        return isinstance(value, (list, tuple))
    return value is None  # "null"


def validate(value: Any, schema: Mapping[str, Any], path: str = "params") -> str | None:
    """The first way ``value`` does not fit ``schema``, as ``"<path>: <what>"``;
    None when it fits. ``schema`` must have passed ``check_schema``."""
    tp = schema.get("type")
    if tp is not None:
        names = tp if isinstance(tp, list) else [tp]
        if not any(_is(value, n) for n in names):
            want = " or ".join(names)
            return f"{path}: expected {want}, got {_type_name(value)}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: must be {schema['const']!r}, got {value!r}"
    enum = schema.get("enum")
    if enum is not None and not any(
        value == e and isinstance(value, bool) == isinstance(e, bool) for e in enum
    ):
        allowed = ", ".join(repr(e) for e in enum)
        return f"{path}: {value!r} is not one of {allowed}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = _check_number(value, schema, path)
        if problem:
            return problem
    if isinstance(value, str):
        problem = _check_string(value, schema, path)
        if problem:
            return problem
    if isinstance(value, Mapping):
        problem = _check_object(value, schema, path)
        if problem:
            return problem
    if isinstance(value, (list, tuple)):
        problem = _check_array(value, schema, path)
        if problem:
            return problem
    return None


def _check_number(value: float, schema: Mapping[str, Any], path: str) -> str | None:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and value < lo:
        return f"{path}: must be >= {lo}, got {value}"
    if hi is not None and value > hi:
        return f"{path}: must be <= {hi}, got {value}"
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if xlo is not None and value <= xlo:
        return f"{path}: must be > {xlo}, got {value}"
    if xhi is not None and value >= xhi:
        return f"{path}: must be < {xhi}, got {value}"
    return None


def _check_string(value: str, schema: Mapping[str, Any], path: str) -> str | None:
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    if lo is not None and len(value) < lo:
        return f"{path}: must be at least {lo} characters long"
    if hi is not None and len(value) > hi:
        return f"{path}: must be at most {hi} characters long"
    pattern = schema.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        return f"{path}: {value!r} does not match {pattern!r}"
    return None


def _check_object(value: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> str | None:
    for name in schema.get("required") or ():
        if name not in value:
            return f"{path}.{name}: required but missing"
    props: Mapping[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties", True)
    for key, sub in value.items():
        where = f"{path}.{key}"
        if key in props:
            problem = validate(sub, props[key], where)
        elif extra is False:
            known = ", ".join(sorted(props)) or "none"
            return f"{where}: unknown field (known: {known})"
        elif isinstance(extra, Mapping):
            problem = validate(sub, extra, where)
        else:
            problem = None
        if problem:
            return problem
    return None


def _check_array(
    value: list[Any] | tuple[Any, ...], schema: Mapping[str, Any], path: str
) -> str | None:
    lo, hi = schema.get("minItems"), schema.get("maxItems")
    if lo is not None and len(value) < lo:
        return f"{path}: must have at least {lo} items, got {len(value)}"
    if hi is not None and len(value) > hi:
        return f"{path}: must have at most {hi} items, got {len(value)}"
    items = schema.get("items")
    if items is not None:
        for i, item in enumerate(value):
            problem = validate(item, items, f"{path}[{i}]")
            if problem:
                return problem
    return None
