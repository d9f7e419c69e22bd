"""Checks on single TOML values, shared by the inventory loader and the role manifest reader.

They raise ValueProblem without a location: the caller knows where the value is written and
turns it into its own located error (InventoryError, RoleError).
"""

from __future__ import annotations

import datetime as dt


class ValueProblem(Exception):
    """A value is wrong; the caller knows where it is written."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


_TOML_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: bool is an int subclass
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
    (dt.datetime, "datetime"),  # before date: datetime is a date subclass
    (dt.date, "date"),
    (dt.time, "time"),
)


def toml_type_name(value: object) -> str:
    for python_type, name in _TOML_TYPE_NAMES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def shown(text: str) -> str:
    """A value for a message: quoted, and short enough to read."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def expect_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueProblem(f"expected string, got {toml_type_name(value)}")
    return value
