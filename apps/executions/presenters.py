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
