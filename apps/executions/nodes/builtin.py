"""Small built-in node types: noop, set, condition, delay."""

from __future__ import annotations

from typing import Any

from apps.executions.errors import DataError
from apps.executions.nodes.base import NodeContext, NodeType, Problem, register
from apps.executions.templating import evaluate_expression, expression_problem


@register
class NoopNode(NodeType):
    """Does nothing; its output is `config.output` (rendered)."""

    name = "noop"

    def check_config(self, config):
        if "output" in config and not isinstance(config["output"], dict):
            return [("output", "must be a mapping")]
        return []

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        return dict(ctx.config.get("output") or {})


@register
class SetNode(NodeType):
    """Computes new values from templates; they become the output and update `vars`."""

    name = "set"

    def check_config(self, config):
        values = config.get("values")
        if not isinstance(values, dict) or not values:
            return [("values", "required (a mapping of names to values or templates)")]
        return []

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        return dict(ctx.config["values"])


@register
class ConditionNode(NodeType):
    """Evaluates `config.expression` and fires the `true` or `false` edge."""

    name = "condition"
    outcomes = frozenset({"true", "false", "success", "error"})
    raw_keys = frozenset({"expression"})
    fired_uses_output = True

    def check_config(self, config) -> list[Problem]:
        expression = config.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            return [("expression", "required")]
        problem = expression_problem(expression)
        return [("expression", problem)] if problem else []

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        expression = ctx.raw_config["expression"]
        try:
            value = evaluate_expression(expression, ctx.template_context)
        except DataError:
            raise
        except Exception as exc:  # a bad expression at run time (type errors and the like)
            raise DataError(f"Condition could not be evaluated: {exc}") from exc
        return {"result": bool(value)}

    def fired(self, output: dict[str, Any]) -> set[str]:
        return {"true"} if output.get("result") else {"false"}


@register
class DelayNode(NodeType):
    """Waits N seconds without holding a worker: the step is parked in the RQ schedule."""

    name = "delay"

    def check_config(self, config):
        seconds = config.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            return [("seconds", "required (a number of seconds)")]
        if seconds < 0 or seconds > 31 * 24 * 3600:
            return [("seconds", "must be between 0 and 2678400")]
        return []

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        return {"waited_seconds": ctx.config["seconds"]}
