"""Execution orchestration: trigger a workflow, run one step attempt, record its outcome.

Admin actions, API views, management commands and the job wrapper all call these.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.executions import engine, errors
from apps.executions.choices import (
    EXECUTION_ADVANCING,
    EventKind,
    ExecutionStatus,
    StepStatus,
    Trigger,
)
from apps.executions.models import Execution, Step
from apps.executions.nodes import NodeContext, get_node_type
from apps.executions.templating import build_context, render_value
from apps.executions.worker import Agent, current_agent
from apps.workflows.definition import resolve_variables
from apps.workflows.models import Workflow, WorkflowVersion

logger = logging.getLogger(__name__)

MAX_LOCAL_STEPS_PER_JOB = 200


class WorkflowNotRunnable(Exception):
    """The workflow cannot start a run now (inactive, never published)."""


def trigger_workflow(
    workflow: Workflow,
    *,
    variables: Any = None,
    trigger: str = Trigger.MANUAL,
    trigger_data: dict[str, Any] | None = None,
    user=None,
    version: WorkflowVersion | None = None,
    retriggered_from: Execution | None = None,
) -> Execution:
    """Create an execution of the current published version and dispatch its entry nodes.

    Raises WorkflowNotRunnable, or DefinitionError when the variables do not fit the definition.
    Nothing is stored in either case.
    """
    version = version or workflow.current_version
    if version is None:
        raise WorkflowNotRunnable(
            f"Workflow {workflow.slug!r} has no published version; publish it first."
        )
    if not workflow.is_active:
        reason = f": {workflow.inactive_reason}" if workflow.inactive_reason else ""
        raise WorkflowNotRunnable(f"Workflow {workflow.slug!r} is inactive{reason}.")
    values = resolve_variables(version.definition, variables)
    graph = engine.graph_for(version)
    with transaction.atomic():
        execution = Execution.objects.create(
            workflow=workflow,
            version=version,
            trigger=trigger,
            trigger_data=trigger_data or {},
            variables=values,
            triggered_by=user if user and user.is_authenticated else None,
            retriggered_from=retriggered_from,
        )
        who = f" by {user.username}" if user and user.is_authenticated else ""
        with execution.batched_log():
            execution.log(
                EventKind.CREATED, f"Created by {trigger} trigger{who} (version {version.number})"
            )
            engine.dispatch(execution, graph, graph.entries)
    return execution


# --- running one step: the job wrapper calls run_step_chain ---


@dataclass
class Attempt:
    status: str
    input: Any
    output: Any
    error_type: str = ""
    error_message: str = ""


def _agent_name(agent: Agent | None) -> str:
    return agent.name if agent else f"{socket.gethostname()}/pid-{os.getpid()}"


def run_step_chain(step_id: int) -> None:
    """Run a step and, with local continuation, the successors this agent may run itself."""
    agent = current_agent.get()
    step: Step | int | None = step_id
    ran = 0
    while step is not None:
        step = run_step_once(step, agent)
        ran += 1
        if step is not None and not _may_continue_locally(agent, step, ran):
            engine.enqueue(step, engine.graph_for(step.execution.version))
            step = None


def _may_continue_locally(agent: Agent | None, step: Step, ran: int) -> bool:
    """Only while the successor's own timeout, plus half the backstop margin, still fits inside
    this RQ job's timeout: RQ's death penalty covers the whole chain run by one job."""
    if agent is None or ran >= MAX_LOCAL_STEPS_PER_JOB:
        return False
    node = engine.graph_for(step.execution.version).nodes[step.node_id]
    remaining = agent.job_timeout - (time.monotonic() - agent.job_started)
    return engine.node_timeout(node) + engine.JOB_TIMEOUT_MARGIN / 2 < remaining


def run_step_once(step_or_id: Step | int, agent: Agent | None) -> Step | None:
    """The job wrapper's body: load, check runnable, run, record. Returns a step to continue with."""
    if isinstance(step_or_id, Step):
        step = step_or_id  # created by this process in a committed transaction, with its execution
    else:
        try:
            step = Step.objects.select_related("execution__version", "execution__workflow").get(
                pk=step_or_id
            )
        except Step.DoesNotExist:
            logger.warning("run_step(%s): no such step; ignoring", step_or_id)
            return None
    execution = step.execution
    if step.status not in (StepStatus.PENDING, StepStatus.DISPATCHED):
        return None  # duplicate delivery, or cancelled before it ran: do nothing
    if step.next_attempt_at and step.next_attempt_at > timezone.now():
        engine.enqueue(step, engine.graph_for(execution.version))  # arrived early: park it again
        return None
    if execution.status not in EXECUTION_ADVANCING:
        return None
    if not step.start(_agent_name(agent)):
        return None  # someone else started it (duplicate delivery) or it was cancelled
    if execution.status == ExecutionStatus.PENDING:
        execution.mark_running()

    graph = engine.graph_for(execution.version)
    node = graph.nodes[step.node_id]
    attempt = _run_node(execution, step, node, graph)
    return record_attempt(step, attempt, agent)


def _run_node(execution: Execution, step: Step, node: dict[str, Any], graph) -> Attempt:
    rendered: Any = None
    try:
        node_type = get_node_type(node["type"])
        nodes = (
            engine.template_nodes(engine.latest_steps(execution))
            if step.node_id in graph.templated
            else {}
        )
        context = build_context(
            execution.variables,
            {"type": execution.trigger, "data": execution.trigger_data},
            nodes,
            {
                "id": execution.pk,
                "started_at": execution.started_at.isoformat() if execution.started_at else None,
            },
        )
        raw_config = node.get("config") or {}
        rendered = {
            k: (v if k in node_type.raw_keys else render_value(v, context))
            for k, v in raw_config.items()
        }
        if not _is_json(rendered):
            bad, rendered = rendered, None
            raise errors.DataError(
                f"A template produced a value that cannot be stored as JSON: {bad!r:.200}"
            )
        output = node_type.run(
            NodeContext(
                config=rendered,
                raw_config=raw_config,
                node=node,
                template_context=context,
                timeout=engine.node_timeout(node),
                execution_id=execution.pk,
                step_id=step.pk,
            )
        )
        if not _is_json(output):
            raise errors.UnexpectedError(
                f"Node {node['type']} returned output that is not JSON: {output!r:.200}"
            )
        return Attempt(StepStatus.COMPLETED, rendered, output)
    except errors.NodeError as exc:
        status = (
            StepStatus.TIMEOUT if isinstance(exc, errors.ModuleTimeoutError) else StepStatus.FAILED
        )
        return Attempt(status, rendered, exc.output or None, exc.type_name, exc.message)
    except Exception as exc:  # a bug in a node: recorded as UnexpectedError, never lost
        logger.exception("node %s of execution %s raised", node.get("id"), execution.pk)
        return Attempt(
            StepStatus.FAILED, rendered, None, "UnexpectedError", f"{type(exc).__name__}: {exc}"
        )


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def record_attempt(step: Step, attempt: Attempt, agent: Agent | None) -> Step | None:
    """Record an attempt's outcome and move the graph on, under the execution's row lock."""
    local_queues = agent.queues if agent and settings.OPSFLOW_LOCAL_CONTINUATION else frozenset()
    version = step.execution.version  # immutable: no need to read it again under the lock
    with transaction.atomic():
        execution = Execution.objects.select_for_update().get(pk=step.execution_id)
        execution.version = version
        step.execution = execution
        with execution.batched_log():
            step.finish(
                attempt.status,
                input=attempt.input,
                output=attempt.output,
                error_type=attempt.error_type,
                error_message=attempt.error_message,
            )
            _log_attempt(execution, step, attempt)
            return _route(execution, engine.graph_for(version), step, attempt, local_queues)


def _route(
    execution: Execution, graph, step: Step, attempt: Attempt, local_queues: frozenset[str]
) -> Step | None:
    if execution.status not in EXECUTION_ADVANCING:
        return None  # cancelled or failed meanwhile: the result is recorded, nothing more starts
    if attempt.status == StepStatus.COMPLETED:
        if step.node_type == "set":
            execution.variables = {**execution.variables, **(attempt.output or {})}
            execution.save(update_fields=["variables"])
    elif not engine.handle_failure(execution, graph, step):
        return None
    return engine.advance(execution, graph, step, local_queues)


def _log_attempt(execution: Execution, step: Step, attempt: Attempt) -> None:
    execution.log(
        EventKind.NODE_STARTED,
        f"{step.node_id} started on {step.worker} (attempt {step.attempt})",
        node_id=step.node_id,
        step=step,
        at=step.started_at,
    )
    if attempt.status == StepStatus.COMPLETED:
        if step.node_type == "condition":
            result = (attempt.output or {}).get("result")
            execution.log(
                EventKind.CONDITION,
                f"{step.node_id}: condition is {str(bool(result)).lower()}",
                node_id=step.node_id,
                step=step,
                data={"result": result},
            )
        execution.log(
            EventKind.NODE_COMPLETED,
            f"{step.node_id} completed in {step.duration_ms} ms",
            node_id=step.node_id,
            step=step,
        )
    else:
        execution.log(
            EventKind.NODE_FAILED,
            f"{step.node_id} failed: {attempt.error_type}: {attempt.error_message}",
            node_id=step.node_id,
            step=step,
            data={"error_type": attempt.error_type, "status": attempt.status},
        )
