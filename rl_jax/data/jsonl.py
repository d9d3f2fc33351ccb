"""Reading JSON-lines files whose rows must have given fields, with errors that point at the line.

Every malformed row raises ``ValueError("<path>:<line>: <what is wrong>; expected <what>")`` with
the 1-based line number. Lines that hold only whitespace are skipped (a trailing newline is
common); nothing else is skipped unless the caller passes ``on_error``. A path ending in ``.gz`` is
read through gzip.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any


def row_error(path: str | os.PathLike, line: int, message: str) -> ValueError:
    """A ``ValueError`` for row ``line`` (1-based) of ``path``."""
    return ValueError(f"{os.fspath(path)}:{line}: {message}")


def _describe(fields: Mapping[str, type]) -> str:
    if not fields:
        return "a JSON object"
    return "a JSON object with fields " + ", ".join(
        f"{name!r} ({kind.__name__})" for name, kind in fields.items()
    )


def read_jsonl(
    path: str | os.PathLike,
    fields: Mapping[str, type],
    on_error: Callable[[ValueError], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for each non-blank line of ``path``.

    Args:
      path: a UTF-8 file with one JSON object a line (gzip-compressed if it ends in ``.gz``).
      fields: the fields every row must have and their exact types (extra fields are allowed).
      on_error: if given, a malformed row's ``ValueError`` is passed to it and the row is skipped
        (the caller counts or re-raises); by default the error is raised.

    Raises:
      ValueError: on text that is not UTF-8, bad JSON, a row that is not an object, a missing
        field or a wrong type, naming the path, the 1-based line and what was expected.
    """
    expected = _describe(fields)
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield line_number, _parse_row(path, line_number, raw, fields, expected)
            except ValueError as err:
                if on_error is None:
                    raise
                on_error(err)


def _parse_row(
    path: str | os.PathLike, line_number: int, raw: bytes, fields: Mapping[str, type], expected: str
) -> dict[str, Any]:
    """The JSON object on one line, checked against ``fields``."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise row_error(path, line_number, f"not UTF-8 ({err.reason})") from err
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise row_error(
            path, line_number, f"invalid JSON ({err.msg}); expected {expected}"
        ) from err
    if not isinstance(row, dict):
        raise row_error(path, line_number, f"got a JSON {type(row).__name__}; expected {expected}")
    for name, kind in fields.items():
        if name not in row:
            raise row_error(path, line_number, f"missing field {name!r}; expected {expected}")
        if not isinstance(row[name], kind):
            raise row_error(
                path,
                line_number,
                f"field {name!r} is a {type(row[name]).__name__}, expected {kind.__name__}",
            )
    return row
