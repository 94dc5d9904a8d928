"""Execution orchestration: trigger a workflow, run one step attempt, record its outcome.

Admin actions, API views, management commands and the job wrapper all call these.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from apps.accounts import audit
from apps.credentials.runtime import Secrets
from apps.executions import engine, errors, stopping
from apps.executions.choices import (
    EXECUTION_ADVANCING,
    EXECUTION_LIVE,
    EXECUTION_TERMINAL,
    INCOMPLETE_RETRYABLE,
    STEP_FAILED,
    AgentState,
    EventKind,
    ExecutionStatus,
    IncompleteStatus,
    StepHandling,
    StepStatus,
    Trigger,
)
from apps.executions.masking import mask_values, restore_masked
from apps.executions.models import Agent, Execution, IncompleteExecution, Step
from apps.executions.nodes import NodeContext, get_node_type
from apps.executions.nodes.base import REGISTRY, WAIT, waiting_types
from apps.executions.templating import bounded, build_context, render_value
from apps.executions.worker import AgentContext, current_agent
from apps.workflows.definition import masked_definition, resolve_variables
from apps.workflows.models import Workflow, WorkflowVersion

logger = logging.getLogger(__name__)

MAX_LOCAL_STEPS_PER_JOB = 200


class WorkflowNotRunnable(Exception):
    """The workflow cannot start a run now (inactive, never published)."""


class WrongState(Exception):
    """The object is not in a state that allows this action; the message says why (HTTP 409)."""


IEQ_FULL = (
    "There is NOT ENOUGH SPACE to add a bundle to the IEQ. "
    "The reason is: Too many incomplete executions."
)


def trigger_workflow(
    workflow: Workflow,
    *,
    variables: Any = None,
    trigger: str = Trigger.MANUAL,
    trigger_data: dict[str, Any] | None = None,
    user=None,
    version: WorkflowVersion | None = None,
    retriggered_from: Execution | None = None,
    scheduled_for=None,
) -> Execution:
    """Create an execution of the current published version and dispatch its entry nodes.

    Raises WorkflowNotRunnable, or DefinitionError when the variables do not fit the definition.
    Nothing is stored in either case.
    """
    if scheduled_for is not None and trigger != Trigger.CRON:
        raise ValueError("scheduled_for is only for cron fires; the scheduler starts those alone")
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
        if version.definition.get("settings", {}).get("max_concurrent_executions"):
            # Two triggers at once must not both see a free slot: serialize on the workflow row.
            Workflow.objects.select_for_update().only("id").get(pk=workflow.pk)
        execution = Execution.objects.create(
            workflow=workflow,
            organization_id=workflow.organization_id,
            version=version,
            steps_total=len(graph.nodes),
            trigger=trigger,
            trigger_data=trigger_data or {},
            variables=values,
            triggered_by=user if user and user.is_authenticated else None,
            retriggered_from=retriggered_from,
            scheduled_for=scheduled_for,
        )
        who = f" by {user.username}" if user and user.is_authenticated else ""
        with execution.batched_log():
            execution.log(
                EventKind.CREATED, f"Created by {trigger} trigger{who} (version {version.number})"
            )
            if scheduled_for is not None:  # limits are checked when it comes due (start_scheduled)
                execution.hold(f"due at {scheduled_for:%Y-%m-%d %H:%M:%S %Z}")
            else:
                hold = _hold_reason(workflow, version, exclude=execution.pk)
                if hold == SKIP:
                    execution.skip("concurrency limit")
                elif hold:
                    execution.hold(hold)
                else:
                    engine.dispatch_nodes(execution, graph, graph.entries)
    if retriggered_from is None:  # a re-trigger is logged as such
        audit.record(
            "execution.trigger", execution, user=user, changes={"variables": [None, values]}
        )
    return execution


SKIP = "skip"


def _hold_reason(workflow: Workflow, version: WorkflowVersion, exclude: int | None = None) -> str:
    """Why a new run may not start now ("" when it may), or SKIP when it is dropped.
    `exclude` is the run being decided on: it does not count against the limit itself."""
    settings_ = version.definition.get("settings", {})
    held = workflow.executions.filter(status=ExecutionStatus.SCHEDULED, scheduled_for=None)
    if settings_.get("sequential_processing") and (
        IncompleteExecution.objects.open().filter(workflow=workflow).exists() or held.exists()
    ):
        return "the workflow has unresolved incomplete executions (sequential processing)"
    limit = settings_.get("max_concurrent_executions") or 0
    live = workflow.executions.filter(status__in=EXECUTION_LIVE).exclude(pk=exclude)
    if limit and live.count() >= limit:
        if settings_.get("concurrency_policy") == "skip":
            return SKIP
        return f"{limit} execution(s) already running (max_concurrent_executions)"
    if limit and held.exists():
        return "earlier runs wait for a free slot"
    return ""


def start_scheduled(execution_id: int, reason: str) -> str:
    """Start a scheduled run whose time has come, unless the workflow's limits hold it back.
    Returns "started", "skipped" (concurrency policy skip), "held", or "" (no longer scheduled)."""
    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update()
            .select_related("version", "workflow")
            .get(pk=execution_id)
        )
        if execution.status != ExecutionStatus.SCHEDULED:
            return ""
        hold = _hold_reason(execution.workflow, execution.version, exclude=execution.pk)
        with execution.batched_log():
            if hold == SKIP:
                execution.skip("concurrency limit")
                return "skipped"
            if hold:
                return "held"  # stays scheduled (and shows as overdue if held long)
            execution.release(reason)
            graph = engine.graph_for(execution.version)
            engine.dispatch_nodes(execution, graph, graph.entries)
    return "started"


def skip_scheduled(execution_id: int, reason: str) -> bool:
    with transaction.atomic():
        execution = Execution.objects.select_for_update().get(pk=execution_id)
        if execution.status != ExecutionStatus.SCHEDULED:
            return False
        execution.skip(reason)
    return True


def release_held_on_commit(workflow_id: int, settings_: dict[str, Any] | None = None) -> None:
    """A run ended: once that commits, a run held for its slot may start. Runs are held only
    under a concurrency limit or sequential processing: without either in the run's version,
    the scheduler's release_all_held backstop covers runs an older version held (a hot path)."""
    if settings_ is not None and not (
        settings_.get("max_concurrent_executions") or settings_.get("sequential_processing")
    ):
        return

    def release() -> None:
        if Execution.objects.filter(
            workflow_id=workflow_id, status=ExecutionStatus.SCHEDULED, scheduled_for=None
        ).exists():
            release_held(Workflow.objects.get(pk=workflow_id))

    transaction.on_commit(release)


def release_held(workflow: Workflow) -> int:
    """Start held runs in arrival order while the workflow allows it: no unresolved incomplete
    executions under sequential processing, and a free slot under max_concurrent_executions."""
    released = 0
    held = workflow.executions.filter(status=ExecutionStatus.SCHEDULED, scheduled_for=None)
    for execution_id in held.order_by("created_at", "id").values_list("id", flat=True):
        with transaction.atomic():
            execution = (
                Execution.objects.select_for_update().select_related("version").get(pk=execution_id)
            )
            if execution.status != ExecutionStatus.SCHEDULED:
                continue
            settings_ = execution.version.definition.get("settings", {})
            if (
                settings_.get("sequential_processing")
                and IncompleteExecution.objects.open().filter(workflow=workflow).exists()
            ):
                return released
            limit = settings_.get("max_concurrent_executions") or 0
            if limit and workflow.executions.filter(status__in=EXECUTION_LIVE).count() >= limit:
                return released
            with execution.batched_log():
                execution.release("the workflow may start it now")
                graph = engine.graph_for(execution.version)
                engine.dispatch_nodes(execution, graph, graph.entries)
            released += 1
    return released


# --- running one step: the job wrapper calls run_step_chain ---


@dataclass
class Attempt:
    status: str
    input: Any
    output: Any
    error_type: str = ""
    error_message: str = ""
    retry_after: float | None = None


def _agent_name(agent: AgentContext | None) -> str:
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


def _may_continue_locally(agent: AgentContext | None, step: Step, ran: int) -> bool:
    """Only while the successor's own timeout, plus half the backstop margin, still fits inside
    this RQ job's timeout: RQ's death penalty covers the whole chain run by one job."""
    if agent is None or ran >= MAX_LOCAL_STEPS_PER_JOB or agent.draining.is_set():
        return False  # a draining agent finishes its step and hands successors to the others
    node = engine.graph_for(step.execution.version).nodes[step.node_id]
    remaining = agent.job_timeout - (time.monotonic() - agent.job_started)
    return engine.node_timeout(node) + engine.JOB_TIMEOUT_MARGIN / 2 < remaining


def run_step_once(step_or_id: Step | int, agent: AgentContext | None) -> Step | None:
    """The job wrapper's body: load, check runnable, run, record. Returns a step to continue with."""
    if isinstance(step_or_id, Step):
        step = step_or_id  # created by this process in a committed transaction, with its execution
    else:
        try:
            # The draft is never needed here, and the definition only when the graph cache misses.
            step = (
                Step.objects.select_related("execution__version", "execution__workflow")
                .defer("execution__workflow__draft", "execution__version__definition")
                .get(pk=step_or_id)
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
    running = agent.running if agent else set()
    running.add(step.pk)  # before the start: the heartbeat reports it from then on
    stopped_mid_step = False
    try:
        if not step.start(_agent_name(agent)):
            return None  # someone else started it (duplicate delivery) or it was cancelled
        if execution.status != ExecutionStatus.RUNNING:
            execution.mark_running()  # pending, or back from retrying

        graph = engine.graph_for(execution.version)
        node = graph.nodes[step.node_id]
        attempt = _run_node(execution, step, node, graph)
        following = _record_when_the_database_answers(step, attempt, agent)
        if agent is not None:  # the Agents page's counts, sent with the next heartbeat
            if attempt.status == StepStatus.COMPLETED:
                agent.tally["done"] = agent.tally.get("done", 0) + 1
            elif attempt.status in STEP_FAILED:
                agent.tally["failed"] = agent.tally.get("failed", 0) + 1
        return following
    except (SystemExit, KeyboardInterrupt):
        # The worker is being stopped in the middle of the step (RQ's cold shutdown): the
        # heartbeat keeps reporting the step until the agent records that it stopped, so the
        # reconciler interrupts it as "stopped while running it", not as forgotten by a live
        # agent (a beat between here and that record would say the agent no longer runs it).
        stopped_mid_step = True
        raise
    finally:
        if not stopped_mid_step:
            running.discard(step.pk)


RECORD_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15)  # about half a minute: a database restart


def _record_when_the_database_answers(step: Step, attempt: Attempt, agent: AgentContext | None):
    """The node ran; its outcome must not be lost to a database restart. If the result cannot
    be recorded even then, the step is left running and the reconciler's orphan check (the
    agent's heartbeat no longer lists it) interrupts it and runs it again."""
    for delay in RECORD_RETRY_DELAYS:
        try:
            return record_attempt(step, attempt, agent)
        except (OperationalError, InterfaceError):
            logger.warning("recording step %s failed; retrying in %ss", step.pk, delay)
            close_old_connections()
            time.sleep(delay)
            try:
                step.refresh_from_db()
            except (OperationalError, InterfaceError):
                continue
            if step.status != StepStatus.RUNNING:
                return None  # the commit went through before the connection broke
    return record_attempt(step, attempt, agent)


def _run_node(execution: Execution, step: Step, node: dict[str, Any], graph) -> Attempt:
    """One attempt of the node; what it received and returned come back masked for storing:
    every credential value it read, and the sensitive headers of its type."""
    secrets = Secrets(execution.workflow_id)
    attempt = _attempt_of(execution, step, node, graph, secrets)
    if secrets.used:
        values = secrets.values()
        attempt.input = mask_values(attempt.input, values)
        attempt.output = mask_values(attempt.output, values)
        attempt.error_message = mask_values(attempt.error_message, values)
    node_type = REGISTRY.get(node["type"])  # None for an unknown type: nothing was run
    if node_type is not None:
        attempt.input = node_type.mask_input(attempt.input)
        attempt.output = node_type.mask_output(attempt.output)
    return attempt


def _attempt_of(
    execution: Execution, step: Step, node: dict[str, Any], graph, secrets: Secrets
) -> Attempt:
    rendered: Any = None
    try:
        node_type = get_node_type(node["type"])
        variables, nodes = execution.variables, {}
        if step.node_id in graph.templated:
            latest = engine.latest_steps(execution)
            variables, nodes = (
                engine.template_vars(variables, latest),
                engine.template_nodes(latest),
            )
        overrides = step.overrides or {}
        if "bundles" in overrides:  # an operator's edits of what the failed node maps
            bundles = overrides["bundles"]
            variables = bundles.get("variables", variables)
            for node_id, data in (bundles.get("nodes") or {}).items():
                nodes[node_id] = {**nodes.get(node_id, {}), **data}
        context = build_context(
            variables,
            {"type": execution.trigger, "data": execution.trigger_data},
            nodes,
            {
                "id": execution.pk,
                "started_at": execution.started_at.isoformat() if execution.started_at else None,
            },
            secrets,
        )
        raw_config = node.get("config") or {}

        def render() -> dict[str, Any]:
            with bounded():  # one clock for the whole config
                return {
                    k: (v if k in node_type.raw_keys else render_value(v, context))
                    for k, v in raw_config.items()
                }

        if "input" in overrides:  # an operator's edited input replaces the rendered config
            rendered = overrides["input"]
            try:
                fresh = render()  # in clear: for what the edited (masked) input still masks
            except errors.NodeError:
                fresh = None
            if fresh is not None:
                shown = node_type.mask_input(mask_values(fresh, secrets.values()))
                rendered = restore_masked(rendered, shown, fresh)
        else:
            rendered = render()
        if not _is_json(rendered):
            bad, rendered = rendered, None
            raise errors.DataError(
                f"A template produced a value that cannot be stored as JSON: {bad!r:.200}"
            )
        problems = (
            node_type.check_config(rendered)
            if isinstance(rendered, dict)
            else [("", "not an object")]
        )
        if problems:  # what the node is about to receive must still fit its type
            raise errors.InvalidConfigurationError(
                "; ".join(f"config.{key}: {msg}" if key else msg for key, msg in problems)
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
                credentials=secrets.used,
                stop_requested=lambda: stopping.requested_by(step.pk),
            )
        )
        if output is WAIT:  # waits for a human: the step stays running, no worker is held
            return Attempt(StepStatus.RUNNING, rendered, None)
        if not _is_json(output):
            raise errors.UnexpectedError(
                f"Node {node['type']} returned output that is not JSON: {output!r:.200}"
            )
        return Attempt(StepStatus.COMPLETED, rendered, output)
    except stopping.Stopped as exc:  # Cancel now
        return Attempt(StepStatus.CANCELLED, rendered, exc.output or None, "Cancelled", exc.message)
    except errors.NodeError as exc:
        status = (
            StepStatus.TIMEOUT if isinstance(exc, errors.ModuleTimeoutError) else StepStatus.FAILED
        )
        return Attempt(
            status, rendered, exc.output or None, exc.type_name, exc.message, exc.retry_after
        )
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


def record_attempt(step: Step, attempt: Attempt, agent: AgentContext | None) -> Step | None:
    """Record an attempt's outcome and move the graph on, under the execution's row lock."""
    local_queues = agent.queues if agent and settings.OPSFLOW_LOCAL_CONTINUATION else frozenset()
    version = step.execution.version  # immutable: no need to read it again under the lock
    with transaction.atomic():
        execution = Execution.objects.select_for_update().get(pk=step.execution_id)
        execution.version = version
        step.execution = execution
        with execution.batched_log():
            if attempt.status == StepStatus.RUNNING:
                _begin_wait(execution, step, attempt)
                return None
            step.finish(
                attempt.status,
                input=attempt.input,
                output=attempt.output,
                error_type=attempt.error_type,
                error_message=attempt.error_message,
            )
            _log_outcome(execution, step, attempt)
            local = _route(execution, engine.graph_for(version), step, attempt, local_queues)
    if getattr(execution, "freed_incomplete_space", False):
        _after_space_freed(execution.workflow)
    return local


def _begin_wait(execution: Execution, step: Step, attempt: Attempt) -> None:
    if execution.status not in EXECUTION_ADVANCING:  # cancelled meanwhile: nothing to wait for
        step.cancel_waiting()
        return
    step.wait(attempt.input)
    get_node_type(step.node_type).begin_wait(execution, step, attempt.input)


def _route(
    execution: Execution, graph, step: Step, attempt: Attempt, local_queues: frozenset[str]
) -> Step | None:
    if execution.status not in EXECUTION_ADVANCING:
        return None  # cancelled or stopped meanwhile: the result is recorded, nothing more starts
    if attempt.status != StepStatus.COMPLETED and not route_failure(
        execution, graph, step, attempt
    ):
        return None
    return engine.advance(execution, graph, [step.node_id], local_queues, finished=step)


def _log_outcome(execution: Execution, step: Step, attempt: Attempt) -> None:
    """The attempt's result in the log (its `started` event was written by `Step.start`)."""
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
    elif attempt.status == StepStatus.CANCELLED:
        execution.log(
            EventKind.NODE_CANCELLED,
            f"{step.node_id} stopped: {attempt.error_message}",
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


# --- failure semantics (DESIGN §6) ---


def retry_delay(retry: dict[str, Any], number: int, retry_after: float | None) -> float:
    """Seconds before retry `number` (1-based). Fixed: `delay`; exponential: delay·2^(n-1) with
    upward jitter, capped at `max_delay`. A server's Retry-After is the minimum."""
    delay = float(retry.get("delay") or 0)
    if retry.get("backoff") == "exponential":
        delay = min(
            delay * 2 ** (number - 1) * random.uniform(1.0, 1.25),
            float(retry.get("max_delay", 3600)),
        )
    return max(delay, retry_after or 0.0)


def route_failure(execution: Execution, graph, step: Step, attempt: Attempt) -> bool:
    """Apply DESIGN §6 in order. True: the graph goes on from this node; False: it stops here."""
    node = graph.nodes[step.node_id]
    retry = node.get("retry") or {}
    # 1. node retries
    if step.retry_number < int(retry.get("max_retries") or 0):
        number = step.retry_number + 1
        delay = retry_delay(retry, number, attempt.retry_after)
        again = engine.new_step(
            execution,
            graph,
            step.node_id,
            attempt=step.attempt + 1,
            retry_number=number,
            not_before=timezone.now() + timedelta(seconds=delay),
        )
        engine.dispatch(execution, graph, [again])
        execution.mark_retrying()
        execution.log(
            EventKind.RETRY_SCHEDULED,
            f"{step.node_id}: retry {number} of {retry['max_retries']} in {delay:.1f}s",
            node_id=step.node_id,
            step=step,
            data={"delay": delay, "retry": number},
        )
        return False
    # 2. an error route handles it
    if graph.has_error_route(step.node_id):
        return _handled(execution, step, StepHandling.ERROR_ROUTE, "following its error route")
    # 3. on_error
    if node.get("on_error") == "continue":
        return _handled(execution, step, StepHandling.CONTINUE, "on_error is continue")
    if node.get("on_error") == "break":
        store_incomplete(execution, graph, step, auto_retry=True)
        return False
    if not node.get("critical", True):
        return _handled(execution, step, StepHandling.NOT_CRITICAL, "it is not critical")
    # 4. the first node fails the run at once
    if step.node_id in graph.entries:
        _fail(execution, step, "it is an entry node")
        return False
    # 5. by error type, when storing is on
    policy = errors.incomplete_policy(step.error_type)
    if graph.settings.get("store_incomplete_executions") and policy is not None:
        store_incomplete(execution, graph, step, auto_retry=policy)
    else:
        _fail(execution, step, "")
    return False


def _handled(execution: Execution, step: Step, handling: str, why: str) -> bool:
    """The failure is handled: record how, log it, and let the graph go on from the node."""
    step.mark_handled(handling)
    execution.log(
        EventKind.ERROR_ROUTED, f"{step.node_id} failed; {why}", node_id=step.node_id, step=step
    )
    return True


def _cancel_waiting(execution: Execution) -> None:
    """Steps that wait for a human (approval gates) end with the run."""
    for waiting in execution.steps.filter(status=StepStatus.RUNNING, node_type__in=waiting_types()):
        waiting.execution = execution
        get_node_type(waiting.node_type).cancel_wait(execution, waiting)


def _stop_open_steps(execution: Execution) -> None:
    for node_id in Step.cancel_open(execution):
        execution.log(
            EventKind.NODE_CANCELLED, f"{node_id} not started: the run stopped", node_id=node_id
        )


def _fail(execution: Execution, step: Step, why: str) -> None:
    _stop_open_steps(execution)
    _cancel_waiting(execution)
    release_held_on_commit(execution.workflow_id, engine.graph_for(execution.version).settings)
    reason = f"{step.node_id} failed with {step.error_type}: {step.error_message}"
    execution.fail(f"{reason} ({why})" if why else reason)
    for record in execution.incomplete_records.open():
        record.close(IncompleteStatus.DISCARDED)


def _bundles(execution: Execution, graph, step: Step) -> dict[str, Any]:
    """What the failed node could map: upstream outputs, the variables, and its rendered input."""
    latest = engine.latest_steps(execution)
    upstream = graph.upstream(step.node_id)
    nodes = engine.template_nodes({n: s for n, s in latest.items() if n in upstream})
    return {
        "variables": engine.template_vars(execution.variables, latest),
        "nodes": nodes,
        "input": step.input,
    }


def store_incomplete(execution: Execution, graph, step: Step, *, auto_retry: bool) -> None:
    """Stop the run as `incomplete` with a record an operator can resolve, within the storage limit."""
    workflow = execution.workflow
    bundles = _bundles(execution, graph, step)
    blueprint = masked_definition(execution.version.definition)  # shown, never run
    size = len(json.dumps({"blueprint": blueprint, "bundles": bundles}, default=str).encode())
    record = execution.incomplete_records.open().first()  # a retried record fails again
    used = IncompleteExecution.objects.stored_bytes(workflow.organization_id)
    if record is not None:
        used -= record.size_bytes
    if used + size > settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES:
        _fail(execution, step, IEQ_FULL)
        if graph.settings.get("allow_data_loss"):
            execution.log(
                EventKind.DATA_LOSS,
                f"{IEQ_FULL} The run failed and was not kept.",
                node_id=step.node_id,
            )
        else:
            workflow.deactivate(IEQ_FULL)
        return
    if record is None:
        record = IncompleteExecution(
            execution=execution,
            workflow=workflow,
            organization_id=workflow.organization_id,
            auto_retry=auto_retry,
        )
    record.node_id, record.error_type, record.error_message = (
        step.node_id,
        step.error_type,
        step.error_message,
    )
    record.bundles, record.blueprint, record.size_bytes = bundles, blueprint, size
    record.auto_retry = auto_retry  # the latest failure's type decides (DESIGN §6 rule 5)
    record.schedule_or_park(settings.OPSFLOW_IE_RETRY_SCHEDULE)
    record.save()
    _stop_open_steps(execution)
    retry = f"; auto-retry at {record.next_retry_at:%H:%M:%S}" if record.next_retry_at else ""
    execution.mark_incomplete(
        f"{step.node_id} failed with {step.error_type}: {step.error_message}{retry}"
    )


def retry_incomplete(
    record: IncompleteExecution,
    *,
    input: dict[str, Any] | None = None,
    bundles: dict[str, Any] | None = None,
    use_current_version: bool = False,
    user=None,
    auto: bool = False,
) -> IncompleteExecution:
    """Resume the same execution from the failed node; completed steps are kept, not re-run."""
    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update()
            .select_related("workflow", "version")
            .get(pk=record.execution_id)
        )
        record.refresh_from_db()
        if record.status not in INCOMPLETE_RETRYABLE:
            raise WrongState(
                f"Incomplete execution #{record.pk} is {record.status}; it cannot be retried."
            )
        if execution.status != ExecutionStatus.INCOMPLETE:
            raise WrongState(f"Execution #{execution.pk} is {execution.status}, not incomplete.")
        if use_current_version:
            current = execution.workflow.current_version
            if current is None or record.node_id not in engine.graph_for(current).nodes:
                raise WrongState(
                    f"The current version has no node {record.node_id!r} to resume from."
                )
            execution.version = current
            execution.save(update_fields=["version"])
        if not record.begin_retry():
            raise WrongState(f"Incomplete execution #{record.pk} is already being retried.")
        overrides: dict[str, Any] = {}
        if input is not None:
            overrides["input"] = input
        if bundles is not None:
            overrides["bundles"] = bundles
        who = "auto-retry" if auto else (user.username if user else "an operator")
        with execution.batched_log():
            execution.resume(
                f"Resumed from {record.node_id} by {who} (attempt {record.attempts}"
                f"{', edited input' if input is not None else ''}"
                f"{', edited bundles' if bundles is not None else ''}"
                f"{f', version {execution.version.number}' if use_current_version else ''})",
                automatic=auto,
            )
            engine.resume(
                execution,
                engine.graph_for(execution.version),
                {record.node_id: overrides} if overrides else None,
            )
    if getattr(execution, "freed_incomplete_space", False):
        _after_space_freed(execution.workflow)
    if not auto:
        edited = sorted(k for k, v in (("input", input), ("bundles", bundles)) if v is not None)
        audit.record(
            "incomplete.retry",
            record,
            user=user,
            changes={"edited": [None, edited], "use_current_version": [None, use_current_version]},
        )
    return record


def discard_incomplete(record: IncompleteExecution, user=None) -> IncompleteExecution:
    """Give up on a stored run: the record is discarded and the execution fails."""
    with transaction.atomic():
        execution = Execution.objects.select_for_update().get(pk=record.execution_id)
        record.refresh_from_db()
        before = record.status
        if record.status == IncompleteStatus.RETRYING:  # moved under this same lock: no race
            raise WrongState(
                f"Incomplete execution #{record.pk} is retrying; cancel execution "
                f"#{execution.pk} to stop it."
            )
        if not record.close(IncompleteStatus.DISCARDED, user):
            raise WrongState(f"Incomplete execution #{record.pk} is already {record.status}.")
        if execution.status == ExecutionStatus.INCOMPLETE:
            who = user.username if user else "an operator"
            execution.fail(f"Incomplete execution discarded by {who}")
    _after_space_freed(record.workflow)
    audit.record(
        "incomplete.discard", record, user=user, changes={"status": [before, record.status]}
    )
    return record


def _after_space_freed(workflow: Workflow) -> None:
    workflow.refresh_from_db()
    if not workflow.is_active and workflow.inactive_reason == IEQ_FULL:
        used = IncompleteExecution.objects.stored_bytes(workflow.organization_id)
        if used < settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES:
            workflow.reactivate()
    release_held(workflow)


def mark_step_succeeded(step: Step, output: dict[str, Any], user) -> Step:
    """An operator records a failed step as succeeded with this output; the run goes on from it."""
    if not isinstance(output, dict):
        raise WrongState("output must be an object")
    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update()
            .select_related("version", "workflow")
            .get(pk=step.execution_id)
        )
        step.refresh_from_db()
        latest = execution.steps.filter(node_id=step.node_id).order_by("-attempt").first()
        if step.status not in STEP_FAILED or latest.pk != step.pk:
            raise WrongState(f"Step #{step.pk} is not the latest failed attempt of {step.node_id}.")
        if execution.status != ExecutionStatus.INCOMPLETE:
            raise WrongState(
                f"Execution #{execution.pk} is {execution.status}; only an incomplete execution "
                "can go on from a step marked succeeded."
            )
        step.execution = execution
        with execution.batched_log():
            done = Step.manual_success(step, output, user.username)
            execution.log(
                EventKind.MANUAL_SUCCESS,
                f"{step.node_id} marked succeeded by {user.username}",
                node_id=step.node_id,
                step=done,
                data={"output": output},
            )
            for record in execution.incomplete_records.open():
                record.close(IncompleteStatus.RESOLVED, user)
            execution.resume(
                f"Resumed after {step.node_id} was marked succeeded by {user.username}"
            )
            engine.resume(execution, engine.graph_for(execution.version))
    _after_space_freed(execution.workflow)
    audit.record(
        "step.mark_succeeded",
        done,
        user=user,
        changes={"status": [step.status, done.status], "output": [None, output]},
    )
    return done


def cancel_execution(execution: Execution, user=None, now: bool = False) -> Execution:
    """Steps not started are cancelled; so is the run. Running steps finish and are recorded,
    or with `now` are stopped (apps.executions.stopping) and recorded cancelled."""
    who = user.username if user else "an operator"
    with transaction.atomic():
        locked = Execution.objects.select_for_update().get(pk=execution.pk)
        if locked.status in EXECUTION_TERMINAL:
            raise WrongState(f"Execution #{locked.pk} is already {locked.status}.")
        with locked.batched_log():
            _cancel_waiting(locked)
            for node_id in Step.cancel_open(locked):
                locked.log(EventKind.NODE_CANCELLED, f"{node_id} cancelled", node_id=node_id)
            running = list(
                locked.steps.filter(status=StepStatus.RUNNING)
                .exclude(node_type__in=waiting_types())
                .values_list("pk", "node_id")
            )
            if now and running:
                names = ", ".join(node_id for _, node_id in running)
                locked.log(EventKind.NODE_CANCELLED, f"Cancel now by {who}: stopping {names}")
            locked.cancel(who + (" (now)" if now else ""))
        if now:
            transaction.on_commit(lambda: stopping.request([pk for pk, _ in running], who))
        for record in locked.incomplete_records.open():
            record.close(IncompleteStatus.DISCARDED, user)
    _after_space_freed(locked.workflow)
    audit.record(
        "execution.cancel",
        locked,
        user=user,
        changes={"status": [execution.status, locked.status], "now": [None, now]},
    )
    return locked


def retrigger_execution(execution: Execution, user=None) -> Execution:
    """A new execution from the start, with the same variables, linked to the old one."""
    new = trigger_workflow(
        execution.workflow,
        variables=execution.variables,
        trigger=execution.trigger,
        trigger_data=execution.trigger_data,
        user=user,
        retriggered_from=execution,
    )
    who = f" by {user.username}" if user and user.is_authenticated else ""
    execution.log(EventKind.RETRIGGERED, f"Re-triggered{who} as execution #{new.pk}")
    audit.record(
        "execution.retrigger", execution, user=user, changes={"retriggered_as": [None, new.pk]}
    )
    return new


# --- acting on many at once (the admin's actions over a selection or a filter, and the API's
# bulk endpoints) ---

BULK_LIMIT = 1000


class TooMany(Exception):
    """More rows match than one bulk action takes: nothing was done."""


@dataclass
class BulkResult:
    done: list[int]
    skipped: list[tuple[int, str]]  # (id, why)


def act_on_each(rows, user, act, what: str) -> BulkResult:
    """`act(row)` for each row of the queryset (executions or incomplete-execution records)
    whose organization the user may execute in; each in its own transaction, as `act` makes
    it. A row `act` refuses (already finished, workflow not runnable) is skipped with why.
    More than BULK_LIMIT rows: TooMany, before anything is done."""
    from apps.accounts.choices import CAN_EXECUTE
    from apps.accounts.permissions import has_role
    from apps.workflows.definition import DefinitionError

    chosen = list(rows.select_related("organization")[: BULK_LIMIT + 1])
    if len(chosen) > BULK_LIMIT:
        raise TooMany(
            f"More than {BULK_LIMIT:,} {what} match: narrow the filter (one action takes at "
            f"most {BULK_LIMIT:,})."
        )
    result = BulkResult([], [])
    for row in chosen:
        if not has_role(user, row.organization, CAN_EXECUTE):
            result.skipped.append((row.pk, "your role does not allow this (operator needed)"))
            continue
        try:
            act(row)
        except (WrongState, WorkflowNotRunnable) as exc:
            result.skipped.append((row.pk, str(exc)))
        except DefinitionError as exc:
            result.skipped.append((row.pk, f"the current version refuses its variables: {exc}"))
        else:
            result.done.append(row.pk)
    return result


def run_due_incomplete_retries(now=None) -> int:
    """The scheduler's auto-retry: every scheduled record whose time has come."""
    now = now or timezone.now()
    due = IncompleteExecution.objects.filter(
        status=IncompleteStatus.SCHEDULED, next_retry_at__lte=now
    )
    done = 0
    for record in due.order_by("next_retry_at")[:100]:
        try:
            retry_incomplete(record, auto=True)
            done += 1
        except WrongState:
            continue  # someone else acted on it first
    return done


def reactivate_when_space_is_free() -> int:
    """Backstop: workflows paused by a full incomplete-execution queue come back once it has room."""
    paused = Workflow.objects.filter(is_active=False, inactive_reason=IEQ_FULL)
    for workflow in paused:
        _after_space_freed(workflow)
    return len(paused)


def release_all_held() -> int:
    """Release held runs of every workflow that has some and no open incomplete execution."""
    held = Execution.objects.filter(status=ExecutionStatus.SCHEDULED, scheduled_for=None)
    workflow_ids = set(held.values_list("workflow_id", flat=True))
    return sum(release_held(w) for w in Workflow.objects.filter(pk__in=workflow_ids))


def send_unsent_steps() -> int:
    """Send the dispatched steps whose enqueue failed (Redis did not answer): every scheduler
    tick, so they go as soon as Redis answers. Returns how many were sent."""
    unsent = (
        Step.objects.filter(status=StepStatus.DISPATCHED, unsent_since__isnull=False)
        .select_related("execution__version")
        .order_by("unsent_since")[:500]
    )
    why = "it was never sent: Redis did not answer when it was dispatched"
    return sum(_send_again(step, why) for step in unsent)


def reconcile_lost_dispatches(now=None) -> int:
    """Enqueue again the dispatched steps that no RQ job will run (DESIGN §6 Durability).

    Whether a job will run is decided from where it is, not from what its hash says: a job in
    its queue's list, or parked in its scheduled or deferred registry, will run; one `started`
    by a worker that is still alive is running. Anything else has been lost: Redis lost the
    job, a worker that died (or was about to) was handed it from the list, a worker died
    between taking it and starting the step, or the job ended without running it. Those steps
    are enqueued again, under a new job id, once dispatched for OPSFLOW_LOST_DISPATCH_AFTER.
    (Steps whose enqueue failed are send_unsent_steps' work.) A duplicate delivery is harmless:
    starting a step is a compare-and-swap. Returns how many steps were enqueued.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.OPSFLOW_LOST_DISPATCH_AFTER)
    old = list(
        Step.objects.filter(
            status=StepStatus.DISPATCHED, unsent_since__isnull=True, created_at__lt=cutoff
        )
        .exclude(next_attempt_at__gt=cutoff)
        .select_related("execution__version")
        .order_by("created_at")[:500]
    )
    lost = _lost_jobs(old, now)
    if lost:
        # A worker that has just popped a job takes a few milliseconds to mark it started: in
        # that moment the job is in no list and looks lost. Look again a moment later; only a
        # job lost both times is sent again (a duplicate would still run the step once, but its
        # log would say a worker died, and RQ would record the deleted job as failed).
        time.sleep(LOST_CONFIRM_SECONDS)
        suspects = [s for s in old if s.pk in lost]
        still = set(
            Step.objects.filter(
                pk__in=[s.pk for s in suspects], status=StepStatus.DISPATCHED
            ).values_list("pk", flat=True)
        )
        again = _lost_jobs([s for s in suspects if s.pk in still], now)
        lost = {pk: why for pk, why in lost.items() if pk in again}
    return sum(_send_again(step, lost[step.pk]) for step in old if step.pk in lost)


LOST_CONFIRM_SECONDS = 0.2


def _lost_jobs(steps: list[Step], now) -> dict[int, str]:
    """step id → why its RQ job will not run, for the steps whose job will not."""
    from rq.job import JobStatus

    from apps.executions.dispatch import ENDED, locate_jobs, rq_worker_hosts

    places = locate_jobs({s.rq_job_id: s.queue for s in steps if s.rq_job_id})
    started = {
        p.worker_name for p in places.values() if p.status == JobStatus.STARTED and p.worker_name
    }
    live = _live_rq_workers(rq_worker_hosts(started), now)
    lost = {}
    for step in steps:
        place = places.get(step.rq_job_id)
        if place is None or not place.exists:
            lost[step.pk] = "its RQ job is gone (Redis lost it, or it was never sent)"
        elif place.status in ENDED:
            lost[step.pk] = f"its RQ job is {place.status} and never ran it"
        elif place.listed or place.parked:
            continue  # a worker will pop it, or RQ's scheduler will queue it
        elif place.status == JobStatus.STARTED:
            if place.worker_name in live:
                continue  # running now: the step starts in a moment
            lost[step.pk] = (
                f"its RQ job was started by worker {place.worker_name or '?'}, which is gone"
            )
        elif place.taken:
            lost[step.pk] = (
                f"its RQ job is {place.status or 'queued'} but a worker took it from the queue "
                "and never started it (the worker died)"
            )
        else:
            lost[step.pk] = (
                f"its RQ job is {place.status or 'queued'} but in no queue or registry (a worker "
                "that died was handed it)"
            )
    return lost


def _live_rq_workers(hosts: dict[str, str], now) -> set[str]:
    """RQ workers (by name) that are alive: an agent by its heartbeat in the database; a
    worker that is no agent (a burst worker) while RQ still lists it."""
    names = {f"{host}/{worker}": worker for worker, host in hosts.items()}
    agents = {a.name: a for a in Agent.objects.filter(name__in=names)}
    return {
        worker
        for name, worker in names.items()
        if name not in agents
        or agents[name].display_state(now) in (AgentState.RUNNING, AgentState.STOPPING)
    }


def _send_again(step: Step, why: str) -> bool:
    """A lost step goes through RQ again, under a new job id, and the log says why."""
    from apps.executions.dispatch import discard_job

    old_job = step.rq_job_id
    if not step.new_rq_job():
        return False  # it started or was cancelled meanwhile
    try:
        if old_job:
            discard_job(old_job, step.queue)
    except RedisError:
        step.mark_unsent()  # Redis went away again: sent as soon as it answers
        return False
    if not engine.enqueue(step, engine.graph_for(step.execution.version)):
        return False  # Redis is down again: still unsent, tried next tick
    step.execution.log(
        EventKind.NODE_DISPATCHED,
        f"{step.node_id} re-enqueued: {why}",
        node_id=step.node_id,
        step=step,
    )
    return True


MAX_INTERRUPTIONS = 3


def reconcile_lost_agents(now=None) -> int:
    """Running steps whose agent died (stopped, or no heartbeat for OPSFLOW_AGENT_TIMEOUT) become
    `interrupted` and get a new attempt. Steps that wait for a person hold no agent: not checked.
    Steps whose worker never registered as an agent are not checked either (see README)."""
    now = now or timezone.now()
    running = Step.objects.filter(status=StepStatus.RUNNING).exclude(node_type__in=waiting_types())
    rows = list(running.values_list("id", "worker", "started_at")[:500])  # the rest next tick
    if not rows:
        return 0
    agents = {a.name: a for a in Agent.objects.filter(name__in={w for _, w, _ in rows})}
    count = 0
    for step_id, worker, started_at in rows:
        agent = agents.get(worker)
        if agent is None:
            continue
        if agent.display_state(now) in (AgentState.STOPPED, AgentState.LOST):
            count += interrupt_step(step_id, agent, lost=True)
        elif (
            started_at
            and started_at < agent.last_heartbeat_at - ORPHAN_MARGIN
            and step_id not in agent.running_step_ids
        ):
            count += interrupt_step(step_id, agent, lost=False)  # alive, but not running it
    return count


ORPHAN_MARGIN = timedelta(seconds=1)


def interrupt_step(step_id: int, agent: Agent, *, lost: bool) -> bool:
    """One step of a lost agent: interrupted, then a new attempt, or after MAX_INTERRUPTIONS a
    WorkerLostError failure routed like any other (DESIGN §6). Interruptions use no retries."""
    execution_id = Step.objects.values_list("execution_id", flat=True).get(pk=step_id)
    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update()
            .select_related("version", "workflow")
            .get(pk=execution_id)
        )
        step = Step.objects.get(pk=step_id)
        if step.status != StepStatus.RUNNING or step.worker != agent.name:
            return False  # it finished meanwhile
        step.execution = execution
        graph = engine.graph_for(execution.version)
        if not lost:
            why = f"its agent {agent.name} is alive but no longer runs it (its result was lost)"
        elif agent.state == AgentState.STOPPED:
            why = f"its agent {agent.name} stopped while running it"
        else:
            why = (
                f"its agent {agent.name} sent no heartbeat since "
                f"{agent.last_heartbeat_at:%H:%M:%S} UTC"
            )
        earlier = execution.steps.filter(
            node_id=step.node_id, status=StepStatus.INTERRUPTED
        ).count()
        with execution.batched_log():
            if earlier + 1 >= MAX_INTERRUPTIONS:
                message = (
                    f"Worker lost: {step.node_id} was interrupted {earlier + 1} times because "
                    f"{why}; it is not run again automatically"
                )
                step.finish(StepStatus.FAILED, error_type="WorkerLostError", error_message=message)
                attempt = Attempt(StepStatus.FAILED, None, None, "WorkerLostError", message)
                _log_outcome(execution, step, attempt)
                _route(execution, graph, step, attempt, frozenset())
                return True
            step.interrupt(f"Worker lost: {why}")
            execution.log(
                EventKind.NODE_INTERRUPTED,
                f"{step.node_id} interrupted: {why} (interruption {earlier + 1} of "
                f"{MAX_INTERRUPTIONS}: the last fails the node)",
                node_id=step.node_id,
                step=step,
                data={"agent": agent.name, "interruptions": earlier + 1},
            )
            if execution.status not in EXECUTION_ADVANCING:
                return True  # stopped or cancelled: a resume re-runs it, nothing starts now
            execution.mark_interrupted()
            again = engine.new_step(
                execution,
                graph,
                step.node_id,
                attempt=step.attempt + 1,
                retry_number=step.retry_number,
                overrides=step.overrides,
            )
            engine.dispatch(execution, graph, [again])
    if getattr(execution, "freed_incomplete_space", False):
        _after_space_freed(execution.workflow)
    return True
