"""Reading JSON-lines files whose rows must have given fields, with errors that point at the line.

Every malformed row raises ``ValueError("<path>:<line>: <what is wrong>; expected <what>")`` with
the 1-based line number. Lines that hold only whitespace are skipped (a trailing newline is
common); nothing else is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any


def row_error(path: str | os.PathLike, line: int, message: str) -> ValueError:
    """A ``ValueError`` for row ``line`` (1-based) of ``path``."""
    return ValueError(f"{os.fspath(path)}:{line}: {message}")


def _describe(fields: Mapping[str, type]) -> str:
    return "a JSON object with fields " + ", ".join(
        f"{name!r} ({kind.__name__})" for name, kind in fields.items()
    )


def read_jsonl(
    path: str | os.PathLike, fields: Mapping[str, type]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for each non-blank line of ``path``.

    Args:
      path: a UTF-8 file with one JSON object a line.
      fields: the fields every row must have and their exact types (extra fields are allowed).

    Raises:
      ValueError: on text that is not UTF-8, bad JSON, a row that is not an object, a missing
        field or a wrong type, naming the path, the 1-based line and what was expected.
    """
    expected = _describe(fields)
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise row_error(path, line_number, f"not UTF-8 ({err.reason})") from err
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise row_error(
                    path, line_number, f"invalid JSON ({err.msg}); expected {expected}"
                ) from err
            if not isinstance(row, dict):
                raise row_error(
                    path, line_number, f"got a JSON {type(row).__name__}; expected {expected}"
                )
            for name, kind in fields.items():
                if name not in row:
                    raise row_error(
                        path, line_number, f"missing field {name!r}; expected {expected}"
                    )
                if not isinstance(row[name], kind):
                    raise row_error(
                        path,
                        line_number,
                        f"field {name!r} is a {type(row[name]).__name__}, expected {kind.__name__}",
                    )
            yield line_number, row
