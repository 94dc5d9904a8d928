"""Config templates (DESIGN §4): sandboxed Jinja2 with strict undefined.

Values in the context are wrapped so that a missing lookup knows its full path, which gives the
documented error `Missing variable: nodes.check.output.body`.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from apps.executions.errors import DataError

_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


class ScopedDict(dict):
    """A dict that knows where it sits in the template context."""

    __slots__ = ("path",)


class ScopedList(list):
    __slots__ = ("path",)


def scoped(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        out = ScopedDict((k, scoped(v, f"{path}.{k}" if path else str(k))) for k, v in value.items())
        out.path = path
        return out
    if isinstance(value, list):
        out_list = ScopedList(scoped(v, f"{path}[{i}]") for i, v in enumerate(value))
        out_list.path = path
        return out_list
    return value


class PathUndefined(StrictUndefined):
    """Strict undefined whose error names the full missing path."""

    __slots__ = ()

    @property
    def missing_path(self) -> str:
        parent = getattr(self._undefined_obj, "path", None)
        name = self._undefined_name
        if parent and name is not None:
            return f"{parent}[{name}]" if isinstance(name, int) else f"{parent}.{name}"
        return str(name) if name is not None else "?"

    def _fail_with_undefined_error(self, *args, **kwargs):
        raise DataError(f"Missing variable: {self.missing_path}")

    __str__ = __iter__ = __len__ = __bool__ = __eq__ = __ne__ = __hash__ = _fail_with_undefined_error  # type: ignore[assignment]
    __getattr__ = __getitem__ = __call__ = __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error  # type: ignore[assignment]
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __contains__ = __int__ = __float__ = _fail_with_undefined_error  # type: ignore[assignment]


_env = SandboxedEnvironment(undefined=PathUndefined, autoescape=False, keep_trailing_newline=True)
_env.filters["tojson_compact"] = lambda v: __import__("json").dumps(v, default=str)


def has_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def template_problem(text: str) -> str | None:
    """The syntax problem of a template string, or None if it parses."""
    try:
        _env.parse(text)
    except TemplateSyntaxError as exc:
        return f"template does not parse: {exc.message} (line {exc.lineno})"
    return None


def _strip_braces(expression: str) -> str:
    match = _WHOLE_EXPRESSION.match(expression)
    return match.group("expr") if match else expression


def expression_problem(expression: str) -> str | None:
    try:
        _env.compile_expression(_strip_braces(expression))
    except TemplateSyntaxError as exc:
        return f"expression does not parse: {exc.message}"
    return None


def evaluate_expression(expression: str, context: dict[str, Any]) -> Any:
    """Evaluate an expression (with or without surrounding braces) to a native value."""
    compiled = _env.compile_expression(_strip_braces(expression), undefined_to_none=False)
    try:
        value = compiled(**context)
    except UndefinedError as exc:
        raise DataError(f"Missing variable: {exc.message}") from exc
    if isinstance(value, PathUndefined):
        value._fail_with_undefined_error()
    return unscoped(value)


def unscoped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: unscoped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unscoped(v) for v in value]
    return value


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render every template string inside a config value.

    A string that is exactly one `{{ expression }}` keeps the expression's native type, so a JSON
    body can carry numbers, lists and mappings from upstream outputs.
    """
    if isinstance(value, str):
        if not has_template(value):
            return value
        match = _WHOLE_EXPRESSION.match(value)
        if match and "{{" not in match.group("expr") and "{%" not in value:
            return evaluate_expression(match.group("expr"), context)
        try:
            return _env.from_string(value).render(**context)
        except UndefinedError as exc:
            raise DataError(f"Missing variable: {exc.message}") from exc
        except TemplateSyntaxError as exc:
            raise DataError(f"Template does not parse: {exc.message}") from exc
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value


def iter_template_strings(value: Any, path: str = ""):
    """Yield (path, text) for every string in a config that contains template markup."""
    if isinstance(value, str):
        if has_template(value):
            yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_template_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_template_strings(v, f"{path}[{i}]")


def build_context(
    variables: dict[str, Any],
    trigger: dict[str, Any],
    nodes: dict[str, dict[str, Any]],
    execution: dict[str, Any],
) -> dict[str, Any]:
    return {
        "vars": scoped(variables, "vars"),
        "trigger": scoped(trigger, "trigger"),
        "nodes": scoped(nodes, "nodes"),
        "execution": scoped(execution, "execution"),
    }
