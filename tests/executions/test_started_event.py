"""Issue 12: a node's `started` event is in the log while the node runs (the live log, the SSE
stream, reads what is committed), and each attempt has exactly one, dated when it started:
through retries, interruptions, approval gates that wait, and duplicate deliveries."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.approvals.models import Approval
from apps.approvals.services import decide
from apps.executions import errors, stream
from apps.executions.choices import EventKind, ExecutionStatus, StepStatus
from apps.executions.models import Agent, Execution, Step
from apps.executions.nodes.builtin import NoopNode
from apps.executions.services import reconcile_lost_agents, run_step_once, trigger_workflow
from tests.executions.test_cancel_now import work_in_background
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)  # the worker runs on its own thread


def started_events(step: Step) -> list[tuple[str, object]]:
    return list(
        step.events.filter(kind=EventKind.NODE_STARTED).values_list("message", "created_at")
    )


def assert_one_started_event_per_attempt(execution: Execution) -> None:
    for step in execution.steps.exclude(started_at=None):
        assert started_events(step) == [
            (f"{step.node_id} started on {step.worker} (attempt {step.attempt})", step.started_at)
        ], step


@pytest.fixture
def held_noop(monkeypatch):
    """The noop node `hold` waits in its run until the test releases it."""
    entered, release = threading.Event(), threading.Event()
    run = NoopNode.run

    def held_run(self, ctx):
        if ctx.node["id"] == "hold":
            entered.set()
            assert release.wait(timeout=30), "the test never released the node"
        return run(self, ctx)

    monkeypatch.setattr(NoopNode, "run", held_run)
    yield entered, release
    release.set()  # a failing test must not leave the worker thread waiting


def test_a_running_node_s_started_event_is_committed_before_its_work_begins(
    org, redis_conn, held_noop
):
    entered, release = held_noop
    definition = chain_definition("held", 2)
    definition["nodes"][0]["id"] = "hold"
    definition["edges"][0]["from"] = "hold"
    execution = trigger_workflow(make_workflow(org, definition))
    thread = work_in_background(redis_conn, "default")
    try:
        assert entered.wait(timeout=15), "the node never started"
        # This thread's connection is not the worker's: what it reads is committed.
        step = execution.steps.get(node_id="hold")
        assert step.status == StepStatus.RUNNING
        assert started_events(step) == [
            (f"hold started on {step.worker} (attempt 1)", step.started_at)
        ]
        live = stream.read(execution.pk, 0, frozenset())  # what the SSE stream's next poll sends
        assert [e["kind"] for e in live.events if e["node_id"] == "hold"] == [
            EventKind.NODE_DISPATCHED,
            EventKind.NODE_STARTED,
        ]
    finally:
        release.set()
        thread.join(timeout=15)

    assert not thread.is_alive()
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED
    assert_one_started_event_per_attempt(execution)
    hold = execution.steps.get(node_id="hold")
    assert list(hold.events.order_by("created_at", "id").values_list("kind", flat=True)) == [
        EventKind.NODE_DISPATCHED,
        EventKind.NODE_STARTED,
        EventKind.NODE_COMPLETED,
    ]


def test_each_retry_attempt_logs_started_once(org, workers, monkeypatch):
    failures = iter([errors.ConnectionError("refused"), errors.ConnectionError("refused")])
    run = NoopNode.run

    def flaky_run(self, ctx):
        if ctx.node["id"] == "n0":
            failure = next(failures, None)
            if failure is not None:
                raise failure
        return run(self, ctx)

    monkeypatch.setattr(NoopNode, "run", flaky_run)
    definition = chain_definition("flaky", 2)
    definition["nodes"][0]["retry"] = {"max_retries": 2, "delay": 0}

    execution = workers.run_to_end(trigger_workflow(make_workflow(org, definition)))

    assert execution.status == ExecutionStatus.COMPLETED
    assert list(execution.steps.values_list("node_id", "attempt", "status")) == [
        ("n0", 1, StepStatus.FAILED),
        ("n0", 2, StepStatus.FAILED),
        ("n0", 3, StepStatus.COMPLETED),
        ("n1", 1, StepStatus.COMPLETED),
    ]
    assert_one_started_event_per_attempt(execution)


def test_an_approval_gate_logs_started_once_when_it_starts_and_not_again_when_decided(
    org, operator, workers
):
    definition = {
        "slug": "gated",
        "name": "Gated",
        "nodes": [
            {"id": "start", "type": "noop"},
            {"id": "gate", "type": "approval", "config": {"message": "Go?"}},
            {"id": "after", "type": "noop"},
        ],
        "edges": [
            {"from": "start", "to": "gate"},
            {"from": "gate", "to": "after", "on": "approved"},
        ],
    }
    execution = trigger_workflow(make_workflow(org, definition))
    workers.drain()
    gate = execution.steps.get(node_id="gate")
    assert gate.status == StepStatus.RUNNING  # waits for a person
    assert_one_started_event_per_attempt(execution)

    decide(Approval.objects.get(execution=execution), operator, "approve", via="api")
    workers.run_to_end(execution)

    assert execution.status == ExecutionStatus.COMPLETED
    assert_one_started_event_per_attempt(execution)


def test_an_interrupted_attempt_and_the_next_one_each_log_started_once(org, workers):
    execution = trigger_workflow(make_workflow(org, chain_definition("lost", 2)))
    dead = Agent.register("host/dead", ["default"], "host", 4242)
    Agent.objects.filter(pk=dead.pk).update(last_heartbeat_at=timezone.now() - timedelta(hours=1))
    assert execution.steps.get(node_id="n0").start(dead.name)  # and then its agent died

    assert reconcile_lost_agents() == 1
    workers.run_to_end(execution)

    assert execution.status == ExecutionStatus.COMPLETED
    assert list(execution.steps.values_list("node_id", "attempt", "status")) == [
        ("n0", 1, StepStatus.INTERRUPTED),
        ("n0", 2, StepStatus.COMPLETED),
        ("n1", 1, StepStatus.COMPLETED),
    ]
    assert_one_started_event_per_attempt(execution)


def test_a_duplicate_delivery_logs_no_second_started_event(org):
    execution = trigger_workflow(make_workflow(org, chain_definition("twice", 1)))
    delivered = Step.objects.filter(execution=execution).select_related(
        "execution__version", "execution__workflow"
    )
    first, second = delivered.get(node_id="n0"), delivered.get(node_id="n0")

    assert first.start("host/a")
    # The second delivery still holds the row as dispatched: its compare-and-swap fails.
    assert run_step_once(second, None) is None

    first.refresh_from_db()
    assert first.status == StepStatus.RUNNING and first.worker == "host/a"
    assert started_events(first) == [("n0 started on host/a (attempt 1)", first.started_at)]
