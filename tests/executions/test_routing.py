"""Routing through the graph (DESIGN §3, §4, §6): conditions, joins, skips, error edges,
template resolution, delays, version pinning, idempotent delivery and the event log.

Every test runs real RQ workers in-process (see `workers` in conftest).
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from rq.registry import ScheduledJobRegistry

from apps.executions import jobs
from apps.executions.choices import EventKind, ExecutionStatus, StepStatus
from apps.executions.dispatch import get_queue
from apps.executions.models import Execution, ExecutionEvent, Step
from apps.executions.services import run_step_once, trigger_workflow
from apps.workflows.models import Workflow
from apps.workflows.services import publish_workflow, update_draft
from tests.factories import make_workflow

pytestmark = pytest.mark.django_db(transaction=True)


# --- helpers ---


def definition(
    slug: str, nodes: list[dict[str, Any]], edges: list[tuple], **extra
) -> dict[str, Any]:
    """A definition document; edges are (from, to) or (from, to, on)."""
    return {
        "slug": slug,
        "name": slug.replace("-", " ").title(),
        "nodes": nodes,
        "edges": [
            {"from": e[0], "to": e[1], "on": e[2] if len(e) > 2 else "success"} for e in edges
        ],
        **extra,
    }


def noop(node_id: str, output: dict[str, Any] | None = None, **extra) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "type": "noop", **extra}
    if output is not None:
        node["config"] = {"output": output}
    return node


def shell(node_id: str, script: str, **extra) -> dict[str, Any]:
    return {"id": node_id, "type": "shell.command", "config": {"script": script}, **extra}


def steps_by_node(execution: Execution) -> dict[str, Step]:
    """Each node's step; fails if any node has more than one step row."""
    steps = list(execution.steps.all())
    by_node = {s.node_id: s for s in steps}
    assert len(by_node) == len(steps), f"a node has several step rows: {[s.node_id for s in steps]}"
    return by_node


def statuses(execution: Execution) -> dict[str, str]:
    return {node_id: step.status for node_id, step in steps_by_node(execution).items()}


def events(execution: Execution, kind: str, node_id: str | None = None) -> list[ExecutionEvent]:
    qs = execution.events.filter(kind=kind)
    if node_id is not None:
        qs = qs.filter(node_id=node_id)
    return list(qs)


def step_of(execution: Execution, node_id: str) -> Step:
    return execution.steps.get(node_id=node_id)


def queued_jobs() -> int:
    return sum(get_queue(name).count for name in settings.OPSFLOW_QUEUES)


CONDITION = definition(
    "route-on-condition",
    nodes=[
        {"id": "check", "type": "condition", "config": {"expression": "vars.go"}},
        noop("yes"),
        noop("yes_after"),
        noop("no"),
    ],
    edges=[("check", "yes", "true"), ("yes", "yes_after"), ("check", "no", "false")],
    variables={"go": {"type": "boolean", "required": True}},
)


# --- condition routing ---


def test_a_true_condition_runs_the_true_edge_and_skips_the_false_branch(org, workers):
    workflow = make_workflow(org, CONDITION)

    execution = workers.run_to_end(trigger_workflow(workflow, variables={"go": True}))

    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution) == {
        "check": StepStatus.COMPLETED,
        "yes": StepStatus.COMPLETED,
        "yes_after": StepStatus.COMPLETED,
        "no": StepStatus.SKIPPED,
    }
    assert step_of(execution, "check").output == {"result": True}


def test_a_false_condition_runs_the_false_edge_and_skips_the_true_branch_with_its_descendants(
    org, workers
):
    workflow = make_workflow(org, CONDITION)

    execution = workers.run_to_end(trigger_workflow(workflow, variables={"go": False}))

    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution) == {
        "check": StepStatus.COMPLETED,
        "yes": StepStatus.SKIPPED,
        "yes_after": StepStatus.SKIPPED,
        "no": StepStatus.COMPLETED,
    }
    assert step_of(execution, "check").output == {"result": False}


def test_the_condition_result_skips_and_completion_are_all_in_the_event_log(org, workers):
    workflow = make_workflow(org, CONDITION)

    execution = workers.run_to_end(trigger_workflow(workflow, variables={"go": False}))

    [condition] = events(execution, EventKind.CONDITION, "check")
    assert condition.data == {"result": False}
    assert condition.message == "check: condition is false"
    assert condition.step_id == step_of(execution, "check").pk
    skipped = {e.node_id: e.step_id for e in events(execution, EventKind.NODE_SKIPPED)}
    assert skipped == {
        "yes": step_of(execution, "yes").pk,
        "yes_after": step_of(execution, "yes_after").pk,
    }
    completed = [e.node_id for e in events(execution, EventKind.NODE_COMPLETED)]
    assert completed == ["check", "no"]
    dispatched = sorted(e.node_id for e in events(execution, EventKind.NODE_DISPATCHED))
    assert dispatched == ["check", "no"]
    assert len(events(execution, EventKind.EXECUTION_COMPLETED)) == 1
    assert execution.events.last().kind == EventKind.EXECUTION_COMPLETED


# --- joins and skips ---


DIAMOND = definition(
    "diamond",
    nodes=[noop("a"), noop("b"), noop("c"), noop("d")],
    edges=[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
)


def test_a_diamond_runs_the_join_exactly_once_after_both_branches(org, workers):
    workflow = make_workflow(org, DIAMOND)

    execution = workers.run_to_end(trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.filter(node_id="d").count() == 1
    steps = steps_by_node(execution)
    assert {s.status for s in steps.values()} == {StepStatus.COMPLETED}
    last_branch_finished = max(steps["b"].finished_at, steps["c"].finished_at)
    assert steps["d"].created_at >= last_branch_finished  # dispatched only once both finished
    assert steps["d"].started_at >= last_branch_finished
    assert len(events(execution, EventKind.NODE_DISPATCHED, "d")) == 1


def test_a_node_none_of_whose_incoming_edges_fired_is_skipped_with_its_descendants(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "skip-descendants",
            nodes=[noop("a"), noop("on_fail"), noop("after_fail"), noop("deep"), noop("ok")],
            edges=[
                ("a", "on_fail", "error"),
                ("on_fail", "after_fail"),
                ("after_fail", "deep", "always"),
                ("a", "ok"),
            ],
        ),
    )

    execution = workers.run_to_end(trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution) == {
        "a": StepStatus.COMPLETED,
        "on_fail": StepStatus.SKIPPED,
        "after_fail": StepStatus.SKIPPED,
        "deep": StepStatus.SKIPPED,
        "ok": StepStatus.COMPLETED,
    }
    assert sorted(e.node_id for e in events(execution, EventKind.NODE_SKIPPED)) == [
        "after_fail",
        "deep",
        "on_fail",
    ]
    assert not events(execution, EventKind.NODE_STARTED, "on_fail")


def test_a_join_runs_when_one_incoming_edge_fired_and_the_other_came_from_a_skipped_node(
    org, workers
):
    workflow = make_workflow(
        org,
        definition(
            "join-after-skip",
            nodes=[noop("a"), noop("on_fail"), noop("ok"), noop("join")],
            edges=[("a", "on_fail", "error"), ("a", "ok"), ("on_fail", "join"), ("ok", "join")],
        ),
    )

    execution = workers.run_to_end(trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution) == {
        "a": StepStatus.COMPLETED,
        "on_fail": StepStatus.SKIPPED,
        "ok": StepStatus.COMPLETED,
        "join": StepStatus.COMPLETED,
    }


# --- failures ---


def test_an_error_edge_handles_a_failure_and_the_run_completes(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "error-edge",
            nodes=[noop("start"), shell("boom", "exit 3"), noop("recover"), noop("next")],
            edges=[("start", "boom"), ("boom", "recover", "error"), ("boom", "next")],
        ),
    )

    execution = workers.run_to_end(trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution) == {
        "start": StepStatus.COMPLETED,
        "boom": StepStatus.FAILED,
        "recover": StepStatus.COMPLETED,
        "next": StepStatus.SKIPPED,
    }
    boom = step_of(execution, "boom")
    assert boom.error_type == "UnexpectedError"
    assert boom.error_message == "Command exited with status 3"
    assert boom.output["exit_code"] == 3
    assert len(events(execution, EventKind.ERROR_ROUTED, "boom")) == 1
    [failed] = events(execution, EventKind.NODE_FAILED, "boom")
    assert failed.data["error_type"] == "UnexpectedError"


def test_an_unhandled_failure_on_a_critical_node_fails_the_run_and_starts_no_new_step(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "unhandled",
            nodes=[
                noop("start"),
                shell("boom", "exit 1"),
                noop("after_boom"),
                noop("sibling"),
                noop("after_sibling"),
            ],
            edges=[
                ("start", "boom"),
                ("boom", "after_boom"),
                ("start", "sibling"),
                ("sibling", "after_sibling"),
            ],
        ),
    )
    execution = trigger_workflow(workflow)
    # Drive the order: start, then boom while sibling is still dispatched.
    run_step_once(step_of(execution, "start").pk, None)
    assert step_of(execution, "sibling").status == StepStatus.DISPATCHED
    run_step_once(step_of(execution, "boom").pk, None)
    workers.drain()  # deliver the queued jobs (start, boom, sibling): none may start anything

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert (
        execution.error_message == "boom failed with UnexpectedError: Command exited with status 1"
    )
    assert statuses(execution) == {
        "start": StepStatus.COMPLETED,
        "boom": StepStatus.FAILED,
        "sibling": StepStatus.CANCELLED,
    }
    assert step_of(execution, "sibling").started_at is None
    assert [e.node_id for e in events(execution, EventKind.NODE_CANCELLED)] == ["sibling"]
    assert len(events(execution, EventKind.EXECUTION_FAILED)) == 1
    assert queued_jobs() == 0


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("{{ nodes.first.output.nope }}", "nodes.first.output.nope"),
        ("value is {{ nodes.first.output.nope }}!", "nodes.first.output.nope"),
        ("{{ vars.missing }}", "vars.missing"),
        ("{{ nodes.ghost.output }}", "nodes.ghost"),
    ],
)
def test_a_missing_template_variable_fails_the_step_with_a_data_error(org, workers, template, path):
    workflow = make_workflow(
        org,
        definition(
            "missing-var",
            nodes=[noop("first", {"present": 1}), noop("use", {"value": template}), noop("after")],
            edges=[("first", "use"), ("use", "after")],
        ),
    )

    execution = workers.run_to_end(trigger_workflow(workflow))

    use = step_of(execution, "use")
    assert use.status == StepStatus.FAILED
    assert use.error_type == "DataError"
    assert use.error_message == f"Missing variable: {path}"
    assert execution.status == ExecutionStatus.FAILED
    assert not execution.steps.filter(node_id="after").exists()


# --- templates and variables ---


def test_the_rendered_input_is_stored_on_the_step_with_upstream_outputs_resolved(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "rendered-input",
            nodes=[
                noop("first", {"greeting": "hello", "count": 2, "hosts": ["x", "y"]}),
                {
                    "id": "say",
                    "type": "shell.command",
                    "config": {
                        "command": ["echo", "{{ nodes.first.output.greeting }}"],
                        "env": {"COUNT": "n={{ nodes.first.output.count }}"},
                    },
                },
                noop(
                    "typed",
                    {
                        "count": "{{ nodes.first.output.count }}",
                        "hosts": "{{ nodes.first.output.hosts }}",
                        "said": "{{ nodes.say.output.stdout | trim }}",
                    },
                ),
            ],
            edges=[("first", "say"), ("say", "typed")],
        ),
    )

    execution = workers.run_to_end(trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    say = step_of(execution, "say")
    assert say.input == {"command": ["echo", "hello"], "env": {"COUNT": "n=2"}}
    assert say.output["stdout"] == "hello\n"
    typed = step_of(execution, "typed")
    assert typed.input == {"output": {"count": 2, "hosts": ["x", "y"], "said": "hello"}}
    assert typed.output == {"count": 2, "hosts": ["x", "y"], "said": "hello"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ vars.path }}", "/srv/app"),
        ("cd {{ vars.path }}", "cd /srv/app"),
        ("{{ nodes.first.output.items }}", ["x", "y"]),
        ("{{ nodes.first.output.values }}", 3),
    ],
    ids=["vars.path", "vars.path-in-text", "output.items", "output.values"],
)
def test_a_key_named_like_a_dict_attribute_resolves_to_its_value(org, workers, template, expected):
    workflow = make_workflow(
        org,
        definition(
            "dict-attribute-keys",
            variables={"path": {"type": "string", "default": "/srv/app"}},
            nodes=[
                noop("first", {"items": ["x", "y"], "values": 3}),
                noop("use", {"got": template}),
            ],
            edges=[("first", "use")],
        ),
    )
    execution = trigger_workflow(workflow)

    workers.drain()

    use = step_of(execution, "use")
    assert use.status == StepStatus.COMPLETED
    assert use.output == {"got": expected}


def test_a_template_that_renders_a_value_json_cannot_store_fails_the_step(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "unstorable-value",
            nodes=[noop("first"), noop("use", {"numbers": "{{ range(3) }}"})],
            edges=[("first", "use")],
        ),
    )
    execution = trigger_workflow(workflow)

    workers.drain()

    use = step_of(execution, "use")
    assert use.status == StepStatus.FAILED
    assert use.error_type == "DataError"
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED


def test_a_set_nodes_values_are_visible_downstream_as_vars(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "set-vars",
            variables={"host": {"type": "string", "default": "web"}},
            nodes=[
                {
                    "id": "compute",
                    "type": "set",
                    "config": {"values": {"target": "{{ vars.host }}-blue", "port": 8080}},
                },
                noop(
                    "use",
                    {"url": "http://{{ vars.target }}:{{ vars.port }}/", "host": "{{ vars.host }}"},
                ),
            ],
            edges=[("compute", "use")],
        ),
    )

    execution = workers.run_to_end(trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    assert step_of(execution, "compute").output == {"target": "web-blue", "port": 8080}
    assert step_of(execution, "use").output == {"url": "http://web-blue:8080/", "host": "web"}
    # the stored variables stay as triggered (a re-trigger reuses them); `set` values live in `vars`
    assert execution.variables == {"host": "web"}


# --- delays ---


DELAYED = definition(
    "delayed",
    nodes=[
        noop("before"),
        {"id": "wait", "type": "delay", "config": {"seconds": 1}},
        noop("after"),
    ],
    edges=[("before", "wait"), ("wait", "after")],
)


def test_a_delay_node_does_not_hold_the_worker_while_it_waits(org, workers):
    delayed = make_workflow(org, DELAYED)
    quick = make_workflow(org, definition("quick", nodes=[noop("only")], edges=[]))

    execution = trigger_workflow(delayed)
    workers.worker().work(burst=True, with_scheduler=True)  # returns: nothing holds it

    wait = step_of(execution, "wait")
    assert wait.status == StepStatus.DISPATCHED
    assert wait.started_at is None
    assert wait.next_attempt_at > timezone.now()
    [dispatched] = events(execution, EventKind.NODE_DISPATCHED, "wait")
    assert wait.next_attempt_at == dispatched.created_at + timedelta(seconds=1)
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.RUNNING

    other = workers.run_to_end(trigger_workflow(quick))  # the same worker serves others meanwhile
    assert other.status == ExecutionStatus.COMPLETED

    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution) == {
        "before": StepStatus.COMPLETED,
        "wait": StepStatus.COMPLETED,
        "after": StepStatus.COMPLETED,
    }


def test_a_one_second_delay_holds_the_next_node_back_for_a_full_second(org, workers):
    workflow = make_workflow(org, DELAYED)
    execution = trigger_workflow(workflow)
    workers.worker().work(burst=True, with_scheduler=True)
    wait = step_of(execution, "wait")

    jobs.run_step(wait.pk)  # an early delivery (RQ's whole-second schedule, a re-enqueue)
    wait.refresh_from_db()
    assert wait.status == StepStatus.DISPATCHED, "the delay step ran before its time"

    workers.run_to_end(execution)
    wait.refresh_from_db()
    after = step_of(execution, "after")
    assert execution.status == ExecutionStatus.COMPLETED
    assert wait.started_at >= wait.next_attempt_at
    [dispatched] = events(execution, EventKind.NODE_DISPATCHED, "wait")
    assert after.started_at - dispatched.created_at >= timedelta(seconds=1)


def test_a_delayed_step_is_scheduled_in_rq_no_earlier_than_its_not_before_time(org, workers):
    workflow = make_workflow(org, DELAYED)
    execution = trigger_workflow(workflow)
    workers.worker().work(burst=True, with_scheduler=True)

    wait = step_of(execution, "wait")
    registry = ScheduledJobRegistry(wait.queue, connection=workers.connection)
    score = workers.connection.zscore(registry.key, wait.rq_job_id)
    assert score is not None, "the delay step is not in RQ's schedule"
    assert score >= wait.next_attempt_at.timestamp()


# --- versions and delivery ---


def test_an_execution_keeps_running_the_version_current_at_trigger_time(org, workers):
    v1 = definition(
        "pinned",
        nodes=[
            noop("first", {"version": 1}),
            noop("second_v1", {"seen": "{{ nodes.first.output.version }}"}),
        ],
        edges=[("first", "second_v1")],
    )
    workflow = make_workflow(org, v1)
    execution = trigger_workflow(workflow)

    v2 = copy.deepcopy(v1)
    v2["nodes"] = [noop("first", {"version": 2}), noop("second_v2")]
    v2["edges"] = [{"from": "first", "to": "second_v2"}]
    update_draft(workflow, v2)
    publish_workflow(workflow)
    assert Workflow.objects.get(pk=workflow.pk).current_version.number == 2

    workers.run_to_end(execution)

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.version.number == 1
    assert statuses(execution) == {"first": StepStatus.COMPLETED, "second_v1": StepStatus.COMPLETED}
    assert step_of(execution, "first").output == {"version": 1}
    assert step_of(execution, "second_v1").output == {"seen": 1}
    later = workers.run_to_end(trigger_workflow(Workflow.objects.get(pk=workflow.pk)))
    assert later.version.number == 2
    assert statuses(later) == {"first": StepStatus.COMPLETED, "second_v2": StepStatus.COMPLETED}


def test_a_duplicate_delivery_of_run_step_for_a_finished_step_does_nothing(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "duplicates",
            nodes=[noop("a", {"n": 1}), shell("b", "echo hi"), noop("c"), noop("d")],
            edges=[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
        ),
    )
    execution = workers.run_to_end(trigger_workflow(workflow))
    assert execution.status == ExecutionStatus.COMPLETED

    def snapshot():
        execution.refresh_from_db()
        return (
            execution.status,
            execution.finished_at,
            list(
                execution.steps.order_by("id").values_list(
                    "id",
                    "node_id",
                    "attempt",
                    "status",
                    "worker",
                    "started_at",
                    "finished_at",
                    "output",
                )
            ),
            execution.events.count(),
        )

    before = snapshot()
    for step_id in execution.steps.values_list("id", flat=True):
        jobs.run_step(step_id)

    assert snapshot() == before
    assert queued_jobs() == 0
