"""The graph engine: which nodes run next, joins and skips, completion (DESIGN §3, §6, §8).

Everything here runs under the execution's row lock, held by the caller (services).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.db import DatabaseError, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from apps.executions.choices import (
    STEP_FAILED,
    STEP_FINISHED,
    STEP_OPEN,
    EventKind,
    IncompleteStatus,
    StepHandling,
    StepStatus,
)
from apps.executions.dispatch import ENQUEUE_FAILURES, enqueue_step
from apps.executions.models import Execution, Step
from apps.executions.nodes.base import REGISTRY
from apps.workflows.definition import Graph
from apps.workflows.models import WorkflowVersion

logger = logging.getLogger(__name__)

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


def fired_outcomes(
    status: str, node_type: str, handling: str, output: Callable[[], Any]
) -> set[str]:
    """The edge `on` values a finished step fires. `output` is only called when the type needs it."""
    if status == StepStatus.COMPLETED:
        kind = REGISTRY.get(node_type)
        extra = kind.fired(output() or {}) if kind and kind.fired_uses_output else set()
        return {"success", "always", *extra}
    if status in STEP_FAILED:
        if handling == StepHandling.CONTINUE:
            return {"success", "always"}  # on_error: continue treats the node as completed
        return {"error", "always"}
    return set()


@dataclass
class NodeState:
    """The latest attempt of one node, as light as `advance` needs it."""

    step_id: int | None
    status: str
    node_type: str
    attempt: int = 1
    handling: str = ""


def node_states(execution: Execution) -> dict[str, NodeState]:
    states: dict[str, NodeState] = {}
    rows = execution.steps.order_by("attempt", "id").values_list(
        "id", "node_id", "status", "node_type", "attempt", "handling"
    )
    for step_id, node_id, status, node_type, attempt, handling in rows:
        states[node_id] = NodeState(step_id, status, node_type, attempt, handling)
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
        output = step.output if step.output is not None else {}
        if step.handling == StepHandling.CONTINUE:
            output = {}  # on_error: continue — completed with empty output
        nodes[node_id] = {"output": output, "status": step.status, "error": error}
    return nodes


def template_vars(variables: dict[str, Any], latest: dict[str, Step]) -> dict[str, Any]:
    """`vars`: the trigger's variables, updated by completed `set` nodes in the order they finished."""
    merged = dict(variables)
    done = [s for s in latest.values() if s.node_type == "set" and s.status == StepStatus.COMPLETED]
    for step in sorted(done, key=lambda s: (s.finished_at, s.pk)):
        merged.update(step.output or {})
    return merged


def new_step(execution: Execution, graph: Graph, node_id: str, **fields: Any) -> Step:
    """An unsaved `dispatched` step for a node; a delay node waits from this very instant."""
    node = graph.nodes[node_id]
    now = timezone.now()
    if node["type"] == "delay" and "not_before" not in fields:
        fields["not_before"] = now + timedelta(seconds=float(node["config"].get("seconds", 0)))
    step = Step.new_dispatched(execution, node, **fields)
    step.created_at = now
    return step


def dispatch(
    execution: Execution,
    graph: Graph,
    steps: list[Step],
    local_queues: frozenset[str] = frozenset(),
) -> Step | None:
    """Insert `dispatched` step rows and enqueue them after commit.

    One step on a queue this worker serves may be returned instead of enqueued, for local
    continuation: the caller runs it after the commit, so the row is durable first.
    """
    if not steps:
        return None
    Step.objects.bulk_create(steps)
    for s in steps:
        wait = f", not before {s.next_attempt_at:%H:%M:%S}" if s.next_attempt_at else ""
        attempt = f" (attempt {s.attempt})" if s.attempt > 1 else ""
        execution.log(
            EventKind.NODE_DISPATCHED,
            f"{s.node_id} dispatched to queue {s.queue}{attempt}{wait}",
            node_id=s.node_id,
            step=s,
            at=s.created_at,
        )
    local = None
    for step in steps:
        if local is None and step.queue in local_queues and step.next_attempt_at is None:
            local = step
            continue
        transaction.on_commit(partial(enqueue, step, graph))
    return local


def enqueue(step: Step, graph: Graph) -> bool:
    """Send a dispatched step through RQ, with its backstop timeout and its not-before time.

    The step row is already committed, so a Redis that does not answer fails nothing: the
    step is marked unsent and the reconciler sends it as soon as Redis answers. False then.
    """
    node = graph.nodes[step.node_id]
    try:
        enqueue_step(step.pk, step.queue, step.rq_job_id, job_timeout(node), step.next_attempt_at)
    except RedisError as exc:
        ENQUEUE_FAILURES.add()
        logger.warning(
            "could not enqueue step %s (%s of execution %s): %s; the reconciler sends it "
            "when Redis answers",
            step.pk,
            step.node_id,
            step.execution_id,
            exc,
        )
        try:
            step.mark_unsent()
        except DatabaseError:  # both stores down: the lost-dispatch check finds it later
            logger.warning("could not mark step %s unsent", step.pk, exc_info=True)
        return False
    return True


def dispatch_nodes(
    execution: Execution,
    graph: Graph,
    node_ids: list[str],
    local_queues: frozenset[str] = frozenset(),
) -> Step | None:
    return dispatch(
        execution, graph, [new_step(execution, graph, n) for n in node_ids], local_queues
    )


def advance(
    execution: Execution,
    graph: Graph,
    from_nodes: list[str],
    local_queues: frozenset[str] = frozenset(),
    finished: Step | None = None,
    extra: list[Step] | None = None,
) -> Step | None:
    """Dispatch or skip the undecided successors of `from_nodes`, then maybe complete the run.

    `finished` is the step just recorded (its output is in memory); `extra` are steps to
    dispatch in the same batch (a resume's new attempts).
    """
    states = node_states(execution)
    extra = extra or []
    for step in extra:
        states[step.node_id] = NodeState(None, StepStatus.DISPATCHED, step.node_type, step.attempt)

    def fired(node_id: str) -> set[str]:
        state = states[node_id]
        if finished is not None and state.step_id == finished.pk:
            return fired_outcomes(
                state.status, state.node_type, state.handling, lambda: finished.output
            )
        return fired_outcomes(
            state.status,
            state.node_type,
            state.handling,
            lambda: Step.objects.values_list("output", flat=True).get(pk=state.step_id),
        )

    to_check = [e["to"] for node_id in from_nodes for e in graph.outgoing[node_id]]
    ready: list[Step] = []
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
            ready.append(new_step(execution, graph, target))
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
    local = dispatch(execution, graph, extra + ready, local_queues)
    if not extra and not ready and not any(state.status in STEP_OPEN for state in states.values()):
        execution.complete()
        from apps.executions.services import release_held_on_commit

        release_held_on_commit(execution.workflow_id, graph.settings)
        for record in execution.incomplete_records.open():
            record.close(IncompleteStatus.RESOLVED)
            execution.freed_incomplete_space = True  # the caller reactivates/releases after commit
    return local


def resume(
    execution: Execution, graph: Graph, overrides: dict[str, dict[str, Any]] | None = None
) -> None:
    """Go on after a stop: new attempts for the nodes that failed unhandled, were cancelled or
    were interrupted,
    then decide whatever finished meanwhile. Completed steps are kept and not re-run."""
    overrides = overrides or {}
    states = node_states(execution)
    again = [
        new_step(
            execution, graph, node_id, attempt=state.attempt + 1, overrides=overrides.get(node_id)
        )
        for node_id, state in states.items()
        if node_id in graph.nodes
        and (
            state.status in (StepStatus.CANCELLED, StepStatus.INTERRUPTED)
            or (state.status in STEP_FAILED and not state.handling)
        )
    ]
    finished = [n for n, st in states.items() if n in graph.nodes and st.status in STEP_FINISHED]
    advance(execution, graph, finished, extra=again)
