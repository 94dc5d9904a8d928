"""The graph engine: which nodes run next, joins and skips, completion (DESIGN §3, §6, §8).

Everything here runs under the execution's row lock, held by the caller (services).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.executions.choices import STEP_FAILED, STEP_FINISHED, STEP_OPEN, EventKind, StepStatus
from apps.executions.dispatch import enqueue_step
from apps.executions.models import Execution, Step
from apps.executions.nodes.base import REGISTRY
from apps.workflows.definition import Graph
from apps.workflows.models import WorkflowVersion

JOB_TIMEOUT_MARGIN = 60
DEFAULT_NODE_TIMEOUT = 60.0

_graphs: dict[tuple[int, object], Graph] = {}
_graphs_lock = threading.Lock()


def graph_for(version: WorkflowVersion) -> Graph:
    """Versions are immutable, so their parsed graph is cached per process.

    The key includes the creation time: a primary key alone can be reused after a rollback or
    a database reset, and a stale graph must never run.
    """
    key = (version.pk, version.created_at)
    graph = _graphs.get(key)
    if graph is None:
        graph = Graph(version.definition)
        with _graphs_lock:
            _graphs[key] = graph
    return graph


def node_timeout(node: dict[str, Any]) -> float:
    if node.get("timeout"):
        return float(node["timeout"])
    node_type = REGISTRY.get(node["type"])
    return float(
        node_type.default_timeout
        if node_type and node_type.default_timeout
        else DEFAULT_NODE_TIMEOUT
    )


def job_timeout(node: dict[str, Any]) -> int:
    """RQ's job timeout is only a backstop above the node's own timeout."""
    return int(node_timeout(node)) + JOB_TIMEOUT_MARGIN


def fired_outcomes(status: str, node_type: str, output: Callable[[], Any]) -> set[str]:
    """The edge `on` values a finished step fires. `output` is only called when the type needs it."""
    if status == StepStatus.COMPLETED:
        kind = REGISTRY.get(node_type)
        extra = kind.fired(output() or {}) if kind and kind.fired_uses_output else set()
        return {"success", "always", *extra}
    if status in STEP_FAILED:
        return {"error", "always"}
    return set()


@dataclass
class NodeState:
    """The latest attempt of one node, as light as `advance` needs it."""

    step_id: int | None
    status: str
    node_type: str


def node_states(execution: Execution) -> dict[str, NodeState]:
    states: dict[str, NodeState] = {}
    rows = execution.steps.order_by("attempt", "id").values_list(
        "id", "node_id", "status", "node_type"
    )
    for step_id, node_id, status, node_type in rows:
        states[node_id] = NodeState(step_id, status, node_type)
    return states


def latest_steps(execution: Execution) -> dict[str, Step]:
    latest: dict[str, Step] = {}
    for step in execution.steps.order_by("attempt", "id"):
        latest[step.node_id] = step
    return latest


def template_nodes(latest: dict[str, Step]) -> dict[str, dict[str, Any]]:
    """`nodes.<id>` in templates: output, status and error of each node's latest attempt."""
    nodes = {}
    for node_id, step in latest.items():
        error = (
            {"type": step.error_type, "message": step.error_message} if step.error_type else None
        )
        nodes[node_id] = {
            "output": step.output if step.output is not None else {},
            "status": step.status,
            "error": error,
        }
    return nodes


def dispatch(
    execution: Execution,
    graph: Graph,
    node_ids: list[str],
    local_queues: frozenset[str] = frozenset(),
) -> Step | None:
    """Create `dispatched` step rows and enqueue them after commit.

    One step on a queue this worker serves may be returned instead of enqueued, for local
    continuation: the caller runs it after the commit, so the row is durable first.
    """
    steps = []
    now = timezone.now()
    for node_id in node_ids:
        node = graph.nodes[node_id]
        not_before = None
        if node["type"] == "delay":
            not_before = now + timedelta(seconds=float(node["config"].get("seconds", 0)))
        steps.append(Step.new_dispatched(execution, node, not_before=not_before))
    Step.objects.bulk_create(steps)
    for s in steps:
        wait = f", not before {s.next_attempt_at:%H:%M:%S}" if s.next_attempt_at else ""
        execution.log(
            EventKind.NODE_DISPATCHED,
            f"{s.node_id} dispatched to queue {s.queue}{wait}",
            node_id=s.node_id,
            step=s,
            at=now,
        )
    local = None
    for step in steps:
        if local is None and step.queue in local_queues and step.next_attempt_at is None:
            local = step
            continue
        transaction.on_commit(partial(enqueue, step, graph))
    return local


def enqueue(step: Step, graph: Graph) -> None:
    """Send a dispatched step through RQ, with its backstop timeout and its not-before time."""
    node = graph.nodes[step.node_id]
    enqueue_step(step.pk, step.queue, step.rq_job_id, job_timeout(node), step.next_attempt_at)


def advance(
    execution: Execution, graph: Graph, finished: Step, local_queues: frozenset[str]
) -> Step | None:
    """After `finished` ended: dispatch or skip its node's successors, then maybe complete the run."""
    states = node_states(execution)

    def fired(node_id: str) -> set[str]:
        state = states[node_id]
        if state.step_id == finished.pk:
            return fired_outcomes(state.status, state.node_type, lambda: finished.output)
        return fired_outcomes(
            state.status,
            state.node_type,
            lambda: Step.objects.values_list("output", flat=True).get(pk=state.step_id),
        )

    to_check = [e["to"] for e in graph.outgoing[finished.node_id]]
    ready: list[str] = []
    skipped: list[Step] = []
    while to_check:
        target = to_check.pop(0)
        if target in states:
            continue  # already decided: a join dispatches once
        incoming = graph.incoming[target]
        if any(
            e["from"] not in states or states[e["from"]].status not in STEP_FINISHED
            for e in incoming
        ):
            continue  # wait for every predecessor
        if any(e["on"] in fired(e["from"]) for e in incoming):
            ready.append(target)
            states[target] = NodeState(None, StepStatus.DISPATCHED, graph.nodes[target]["type"])
        else:
            step = Step.new_skipped(execution, graph.nodes[target])
            skipped.append(step)
            states[target] = NodeState(None, StepStatus.SKIPPED, step.node_type)
            to_check.extend(e["to"] for e in graph.outgoing[target])
    if skipped:
        Step.objects.bulk_create(skipped)
        for s in skipped:
            execution.log(
                EventKind.NODE_SKIPPED,
                f"{s.node_id} skipped: none of its incoming edges fired",
                node_id=s.node_id,
                step=s,
            )
    local = dispatch(execution, graph, ready, local_queues) if ready else None
    if not ready and not any(state.status in STEP_OPEN for state in states.values()):
        execution.complete()
    return local


def handle_failure(execution: Execution, graph: Graph, step: Step) -> bool:
    """Route a failed attempt. Returns True when the run goes on, False when the execution failed.

    This is the walking-skeleton subset of DESIGN §6: an `error` edge handles the failure; a
    non-critical node's failure is tolerated; anything else fails the execution at once.
    """
    node = graph.nodes[step.node_id]
    if graph.has_error_route(step.node_id):
        execution.log(
            EventKind.ERROR_ROUTED,
            f"{step.node_id} failed; following its error route",
            node_id=step.node_id,
            step=step,
        )
        return True
    if not node.get("critical", True):
        execution.log(
            EventKind.ERROR_ROUTED,
            f"{step.node_id} failed; not critical, the run goes on",
            node_id=step.node_id,
            step=step,
        )
        return True
    cancelled = Step.cancel_open(execution)
    for node_id in cancelled:
        execution.log(
            EventKind.NODE_CANCELLED, f"{node_id} cancelled: the run failed", node_id=node_id
        )
    execution.fail(f"{step.node_id} failed with {step.error_type}: {step.error_message}")
    return False
