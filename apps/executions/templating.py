"""Config templates (DESIGN §4): sandboxed Jinja2 with strict undefined.

Values in the context are wrapped so that a missing lookup knows its full path, which gives the
documented error `Missing variable: nodes.check.output.body`.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, UndefinedError
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from apps.executions.errors import DataError

_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


class ScopedDict(dict):
    """A dict that knows where it sits in the template context.

    The path lives in an underscore attribute: the sandbox never exposes those, so a data key
    named `path` (or `items`) is never shadowed by our bookkeeping.
    """

    __slots__ = ("_scope_path",)


class ScopedList(list):
    __slots__ = ("_scope_path",)


def scoped(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        out = ScopedDict(
            (k, scoped(v, f"{path}.{k}" if path else str(k))) for k, v in value.items()
        )
        out._scope_path = path
        return out
    if isinstance(value, list):
        out_list = ScopedList(scoped(v, f"{path}[{i}]") for i, v in enumerate(value))
        out_list._scope_path = path
        return out_list
    return value


class Namespace:
    """A context entry whose names are looked up on demand (`secrets`): every attribute or item
    read goes to `lookup`, so the sandbox never reaches the object's own attributes."""

    def lookup(self, name: str) -> Any:
        raise NotImplementedError

    def __iter__(self):
        raise DataError("A namespace cannot be listed: name one entry (secrets.NAME)")

    def __str__(self) -> str:
        raise DataError("Name one entry of the namespace (secrets.NAME), not all of it")


class _At:
    """Stands in as the parent of a missing name read below a plain value (a string, a number)."""

    __slots__ = ("_scope_path",)

    def __init__(self, path: str):
        self._scope_path = path


class PathUndefined(StrictUndefined):
    """Strict undefined whose error names the full missing path."""

    __slots__ = ()

    @property
    def missing_path(self) -> str:
        parent = getattr(self._undefined_obj, "_scope_path", None)
        name = self._undefined_name
        if parent and name is not None:
            return f"{parent}[{name}]" if isinstance(name, int) else f"{parent}.{name}"
        return str(name) if name is not None else "?"

    def _fail_with_undefined_error(self, *args, **kwargs):
        if self._undefined_exception is not None and issubclass(
            self._undefined_exception, SecurityError
        ):
            raise DataError(f"Unsafe template: {self._undefined_hint}")
        raise DataError(f"Missing variable: {self.missing_path}")

    __str__ = __iter__ = __len__ = __bool__ = __eq__ = __ne__ = __hash__ = (
        _fail_with_undefined_error  # type: ignore[assignment]
    )
    __getattr__ = __getitem__ = __call__ = __lt__ = __le__ = __gt__ = __ge__ = (
        _fail_with_undefined_error  # type: ignore[assignment]
    )
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __contains__ = __int__ = __float__ = (
        _fail_with_undefined_error  # type: ignore[assignment]
    )


def _size_error(size: int) -> DataError:
    limit = settings.OPSFLOW_TEMPLATE_MAX_BYTES
    return DataError(
        f"A template would make a value of {size} characters; the limit is "
        f"OPSFLOW_TEMPLATE_MAX_BYTES ({limit})"
    )


class _Environment(SandboxedEnvironment):
    """Data keys win over dict/list attributes, and paths survive below plain values.

    `*` and `**` are checked before they run (`'a' * 10**9` would be built in C, where no
    clock can stop it); everything else is bounded by the render clock (`bounded`)."""

    _last = threading.local()
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > settings.OPSFLOW_TEMPLATE_MAX_BYTES
                ):
                    raise _size_error(len(seq) * times)
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * max(abs(left).bit_length(), 1) > 8 * settings.OPSFLOW_TEMPLATE_MAX_BYTES
        ):
            raise DataError(f"A template would compute a number with about {right} digits")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj, attribute):
        if isinstance(obj, Namespace):
            return obj.lookup(attribute)
        if isinstance(obj, ScopedDict) and attribute in obj:
            return self._remember(obj[attribute], f"{obj._scope_path}.{attribute}")
        return self._located(obj, attribute, super().getattr(obj, attribute))

    def getitem(self, obj, argument):
        if isinstance(obj, Namespace):
            return obj.lookup(str(argument))
        if isinstance(obj, ScopedDict) and isinstance(argument, str) and argument in obj:
            return self._remember(obj[argument], f"{obj._scope_path}.{argument}")
        value = super().getitem(obj, argument)
        if (
            isinstance(obj, ScopedList)
            and isinstance(argument, int)
            and not isinstance(value, Undefined)
        ):
            return self._remember(value, f"{obj._scope_path}[{argument}]")
        return self._located(obj, argument, value)

    def _remember(self, value, path: str):
        if not isinstance(value, ScopedDict | ScopedList):
            self._last.entry = (id(value), path)
        return value

    def _located(self, obj, name, value):
        """An undefined read from a plain value gets the path that value was read from."""
        if isinstance(value, Undefined) and not isinstance(obj, ScopedDict | ScopedList):
            entry = getattr(self._last, "entry", None)
            if entry and entry[0] == id(obj):
                return self.undefined(obj=_At(entry[1]), name=name)
        return value


_env = _Environment(undefined=PathUndefined, autoescape=False, keep_trailing_newline=True)
_clock = threading.local()


def _timed_out() -> DataError:
    return DataError(
        "Rendering the templates took longer than OPSFLOW_TEMPLATE_SECONDS "
        f"({settings.OPSFLOW_TEMPLATE_SECONDS} s)"
    )


def _trace_lines(frame, event, arg):
    deadline = getattr(_clock, "deadline", None)  # None: a template frame closed after the render
    if deadline is not None and time.monotonic() > deadline:
        raise _timed_out()
    return _trace_lines


def _trace_templates(frame, event, arg):
    """Only the compiled templates' own frames are followed, line by line."""
    return _trace_lines if frame.f_code.co_filename == "<template>" else None


@contextmanager
def bounded() -> Iterator[None]:
    """Every template rendered inside shares one clock of OPSFLOW_TEMPLATE_SECONDS: a line of
    template code run past it raises DataError (a tracer on this thread, template frames only)."""
    if getattr(_clock, "deadline", None) is not None:  # an outer render holds the clock
        yield
        return
    _clock.deadline = time.monotonic() + settings.OPSFLOW_TEMPLATE_SECONDS
    previous = sys.gettrace()
    sys.settrace(_trace_templates)
    try:
        yield
    finally:
        sys.settrace(previous)
        _clock.deadline = None


def _render(template, context: dict[str, Any]) -> str:
    """Render to a string, stopping as soon as it grows past OPSFLOW_TEMPLATE_MAX_BYTES."""
    limit, size, parts = settings.OPSFLOW_TEMPLATE_MAX_BYTES, 0, []
    for part in template.generate(**context):
        size += len(part)
        if size > limit:
            raise _size_error(size)
        parts.append(part)
    return "".join(parts)


def has_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def template_problem(text: str) -> str | None:
    """The syntax problem of a template string, or None if it parses."""
    try:
        _env.compile(text)  # compiling also rejects unknown filters and tests
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
    try:
        compiled = _env.compile_expression(_strip_braces(expression), undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise DataError(f"Template does not parse: {exc.message}") from exc
    try:
        with bounded():
            value = compiled(**context)
    except SecurityError as exc:
        raise DataError(f"Unsafe template: {exc}") from exc
    except UndefinedError as exc:
        raise DataError(f"Missing variable: {exc.message}") from exc
    if isinstance(value, PathUndefined):
        value._fail_with_undefined_error()
    if isinstance(value, str) and len(value) > settings.OPSFLOW_TEMPLATE_MAX_BYTES:
        raise _size_error(len(value))
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
            with bounded():
                rendered = _render(_env.from_string(value), context)
        except SecurityError as exc:
            raise DataError(f"Unsafe template: {exc}") from exc
        except UndefinedError as exc:
            raise DataError(f"Missing variable: {exc.message}") from exc
        except TemplateSyntaxError as exc:
            raise DataError(f"Template does not parse: {exc.message}") from exc
        return rendered
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
    secrets: Namespace | None = None,
) -> dict[str, Any]:
    context = {
        "vars": scoped(variables, "vars"),
        "trigger": scoped(trigger, "trigger"),
        "nodes": scoped(nodes, "nodes"),
        "execution": scoped(execution, "execution"),
    }
    incident = (
        (trigger.get("data") or {}).get("incident") if trigger.get("type") == "incident" else None
    )
    if isinstance(incident, dict):  # an incident trigger's alert: {{ incident.title }}
        context["incident"] = scoped(incident, "incident")
    if secrets is not None:
        context["secrets"] = secrets
    return context
