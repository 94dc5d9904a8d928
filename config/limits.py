"""Bounds on every document a person or a machine sends in (issue 10 item 1).

API bodies, webhook bodies, definitions, variables and edited bundles are all checked by
`document_problem` after parsing: nesting depth (OPSFLOW_MAX_DEPTH) and parsed size
(OPSFLOW_MAX_BODY_BYTES, counted as the value would be written as JSON, so a YAML alias counts
each time it is used and nested aliases cannot blow a small text up), and what PostgreSQL's
jsonb cannot store. It walks without recursion. `loads_json` parses JSON without letting a
deeply nested text reach Python's recursion limit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.conf import settings

_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


def depth_message() -> str:
    return f"nested deeper than OPSFLOW_MAX_DEPTH ({settings.OPSFLOW_MAX_DEPTH} levels)"


def size_message() -> str:
    return (
        f"larger than OPSFLOW_MAX_BODY_BYTES ({settings.OPSFLOW_MAX_BODY_BYTES} bytes) once "
        "parsed (a YAML alias counts each time it is used)"
    )


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def document_problem(value: Any) -> tuple[str, str] | None:
    """(path, message) of the first limit `value` breaks, or None."""
    max_depth, budget = settings.OPSFLOW_MAX_DEPTH, settings.OPSFLOW_MAX_BODY_BYTES
    size = 0
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        size += 2  # brackets, quotes, separators: roughly what JSON spends on each value
        if size > budget:
            return path, size_message()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                return path, depth_message()
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str):
                        size += len(key) + 3
                        if _UNSTORABLE_TEXT.search(key):
                            return path, "a key holds a NUL character or a lone surrogate"
                    stack.append((child, _child(path, key), depth + 1))
            else:
                stack.extend((child, _child(path, i), depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            size += len(item)
            if size > budget:
                return path, size_message()
            if _UNSTORABLE_TEXT.search(item):
                return path, "a string holds a NUL character or a lone surrogate"
        elif isinstance(item, float) and not math.isfinite(item):
            return path, "a number is not finite (NaN or Infinity)"
        else:
            size += 8
    return None


def problem_text(problem: tuple[str, str], whole: str = "") -> str:
    """A document problem as one line: `path: message`, naming `whole` when the path is the
    document itself (or just the message when `whole` is empty too)."""
    path, message = problem
    where = path or whole
    return f"{where}: {message}" if where else message


def loads_json(text: str | bytes, **kwargs: Any) -> Any:
    """json.loads, with a text nested past Python's recursion limit refused as ValueError
    (the parser is recursive in C; the limit check above runs on what it returns)."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise ValueError(depth_message()) from None
