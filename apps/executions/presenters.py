"""What the portal shows of a step: its input and output laid out for reading (stdout with its
line breaks, an HTTP exchange as request and response), its attempts, and the fields that can
be downloaded whole. Pure functions of stored rows; nothing here changes state."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from apps.executions.choices import StepStatus
from apps.executions.models import Step
from apps.executions.nodes.base import waiting_types

DOWNLOADABLE = ("input", "output", "stdout", "stderr", "body")


def pretty(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


@dataclass
class Block:
    """A titled piece of the step: text shown as is (monospace), or key-value rows."""

    title: str
    text: str = ""
    rows: list[tuple[str, str]] = field(default_factory=list)
    download: str = ""  # a DOWNLOADABLE name when the whole field can be downloaded
    empty: str = "(empty)"


def _output(step: Step) -> dict[str, Any]:
    return step.output if isinstance(step.output, dict) else {}


def _input(step: Step) -> dict[str, Any]:
    return step.input if isinstance(step.input, dict) else {}


def blocks(step: Step) -> list[Block]:
    """The step's input and output as the node type means them."""
    if step.node_type == "shell.command" and isinstance(step.output, dict):
        return _shell(step)
    if step.node_type == "http.request" and isinstance(step.input, dict):
        return _http(step)
    return [
        Block("Input", pretty(step.input), download="input"),
        Block("Output", pretty(step.output), download="output", empty="(no output)"),
    ]


def _shell(step: Step) -> list[Block]:
    out = _output(step)
    command = _input(step).get("command")
    shown = " ".join(map(str, command)) if isinstance(command, list) else str(command or "")
    rows = [("Command", shown), ("Exit code", str(out.get("exit_code", "—")))]
    if out.get("truncated"):
        rows.append(("Truncated", "yes: the output was longer than the stored cap"))
    return [
        Block("Command", rows=rows),
        Block("stdout", str(out.get("stdout") or ""), download="stdout"),
        Block("stderr", str(out.get("stderr") or ""), download="stderr"),
        Block("Input", pretty(step.input), download="input"),
    ]


def _http(step: Step) -> list[Block]:
    given, out = _input(step), _output(step)
    request = [
        ("Method", str(given.get("method") or "GET").upper()),
        ("URL", str(given.get("url") or "")),
    ]
    request += [(f"Header {k}", str(v)) for k, v in (given.get("headers") or {}).items()]
    sent = given.get("json") if "json" in given else given.get("body")
    result = [Block("Request", rows=request)]
    if sent is not None:
        result.append(Block("Request body", sent if isinstance(sent, str) else pretty(sent)))
    if out:
        response = [("Status", str(out.get("status_code", "—")))]
        if out.get("elapsed_ms") is not None:
            response.append(("Elapsed", f"{out['elapsed_ms']} ms"))
        response += [(f"Header {k}", str(v)) for k, v in (out.get("headers") or {}).items()]
        result.append(Block("Response", rows=response))
        body = pretty(out["json"]) if out.get("json") is not None else str(out.get("body") or "")
        result.append(Block("Response body", body, download="body"))
    result.append(Block("Input", pretty(step.input), download="input"))
    return result


def download(step: Step, name: str) -> str | None:
    """The whole text of a downloadable field, or None when the step has no such field."""
    if name == "input":
        return pretty(step.input)
    if name == "output":
        return pretty(step.output)
    out = _output(step)
    if name in ("stdout", "stderr") and name in out:
        return str(out[name] or "")
    if name == "body" and "body" in out:
        return pretty(out["json"]) if out.get("json") is not None else str(out["body"] or "")
    return None


@dataclass
class Attempt:
    step: Step
    is_this: bool


def attempts(step: Step) -> list[Attempt]:
    """Every attempt of the step's node in its execution, first to last."""
    rows = Step.objects.filter(execution_id=step.execution_id, node_id=step.node_id).order_by(
        "attempt", "id"
    )
    return [Attempt(row, row.pk == step.pk) for row in rows]


def waiting_note(step: Step) -> str:
    """What a step that waits for a person is doing, or ""."""
    if step.status == StepStatus.RUNNING and step.node_type in waiting_types():
        since = step.started_at.strftime("%Y-%m-%d %H:%M:%S %Z") if step.started_at else "now"
        return f"Waiting for approval since {since}; no worker is held."
    return ""


# --- the timeline of an execution ---


@dataclass
class Bar:
    """One attempt on the time axis, in thousandths of the axis (an SVG viewBox 1000 wide)."""

    step: Step | None
    x: int
    width: int
    wait_x: int  # from its creation (queued, or waiting for its retry time) to its start
    wait_width: int
    colour: str
    running: bool
    label: str


@dataclass
class Lane:
    node_id: str
    node_type: str
    bars: list[Bar]
    note: str = ""  # "not run yet", "skipped"…


def _at(moment, start, span: float) -> int:
    return max(0, min(1000, round(1000 * (moment - start).total_seconds() / span)))


def timeline(execution, steps: list[Step], now) -> tuple[list[Lane], str]:
    """A lane per node of the execution's version, in the definition's order, with a bar per
    attempt from its start to its end (to now while it runs) and its wait before; nodes with
    no attempt say so. Also the axis' length, humanised."""
    from apps.executions.choices import STATUS_COLOURS

    start = execution.created_at
    end = execution.finished_at or now
    for step in steps:
        for moment in (step.finished_at, step.started_at):
            if moment and moment > end:
                end = moment
    span = max((end - start).total_seconds(), 0.001)
    by_node: dict[str, list[Step]] = {}
    for step in steps:
        by_node.setdefault(step.node_id, []).append(step)
    definition = execution.version.definition or {}
    order = [(n.get("id"), n.get("type", "")) for n in definition.get("nodes", [])]
    known = {node_id for node_id, _ in order}
    order += [(s.node_id, s.node_type) for s in steps if s.node_id not in known]
    lanes = []
    for node_id, node_type in dict.fromkeys(order):
        attempts = by_node.get(node_id, [])
        bars = []
        for step in attempts:
            began = step.started_at
            ended = step.finished_at or (now if step.status == StepStatus.RUNNING else began)
            x = _at(began or step.created_at, start, span)
            width = max(_at(ended, start, span) - x, 2) if began else 0
            wait_from = _at(step.created_at, start, span)
            bars.append(
                Bar(
                    step=step,
                    x=x,
                    width=width,
                    wait_x=wait_from,
                    wait_width=max(x - wait_from, 0),
                    colour=STATUS_COLOURS.get(step.status, "blue"),
                    running=step.status == StepStatus.RUNNING,
                    label=f"#{step.attempt} {step.status}",
                )
            )
        note = "" if attempts else ("not run" if execution.is_terminal else "not run yet")
        if attempts and all(s.status == StepStatus.SKIPPED for s in attempts):
            note = "skipped"
        lanes.append(Lane(node_id, node_type, bars, note))
    seconds = span
    axis = (
        f"{seconds * 1000:.0f} ms"
        if seconds < 1
        else (
            f"{seconds:.1f} s"
            if seconds < 60
            else f"{int(seconds // 60)} min {int(seconds % 60)} s"
        )
    )
    return lanes, axis
