"""Two workers finishing parallel branches at the same moment dispatch the join once
(DESIGN §6 Durability, §10 invariant 2).

The branches b and c run for real in two threads, each with its own database connection, and
are released together by a barrier. Both are shell commands that sleep the same time, and a
second barrier in front of `record_attempt` lines the two up to the microsecond, so their
transactions (which take the execution's row lock) really collide on every race.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from apps.executions import services
from apps.executions.choices import EventKind, ExecutionStatus, StepStatus
from apps.executions.models import Execution, Step
from apps.executions.services import run_step_once, trigger_workflow
from tests.factories import make_workflow

pytestmark = pytest.mark.django_db(transaction=True)


RACES = 5
BRANCH_SECONDS = "0.1"

DIAMOND_ON_ONE_QUEUE = {
    "slug": "parallel-join",
    "name": "Parallel join",
    "nodes": [
        {"id": "a", "type": "noop"},
        {
            "id": "b",
            "type": "shell.command",
            "queue": "shell",
            "config": {"command": ["sleep", BRANCH_SECONDS]},
        },
        {
            "id": "c",
            "type": "shell.command",
            "queue": "shell",
            "config": {"command": ["sleep", BRANCH_SECONDS]},
        },
        {"id": "d", "type": "noop"},
    ],
    "edges": [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c"},
        {"from": "b", "to": "d"},
        {"from": "c", "to": "d"},
    ],
}


def run_together(step_ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run these steps at the same moment, one thread (and one DB connection) each.

    The threads start together and also enter the real `record_attempt` together.
    """
    start = threading.Barrier(len(step_ids))
    record = threading.Barrier(len(step_ids))
    record_attempt = services.record_attempt
    failures: list[BaseException] = []

    def record_aligned(*args, **kwargs):
        record.wait(timeout=10)
        return record_attempt(*args, **kwargs)

    def work(step_id: int) -> None:
        try:
            start.wait(timeout=10)
            run_step_once(step_id, None)
        except BaseException as exc:  # reported below, in the test's thread
            record.abort()  # so the other thread does not wait for this one in vain
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(step_id,)) for step_id in step_ids]
    with monkeypatch.context() as patch:
        patch.setattr(services, "record_attempt", record_aligned)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a branch thread did not finish"
    assert not failures, f"a branch raised: {failures!r}"


def race_the_branches(execution: Execution, monkeypatch: pytest.MonkeyPatch) -> None:
    run_step_once(execution.steps.get(node_id="a").pk, None)
    branches = {s.node_id: s.pk for s in execution.steps.filter(node_id__in=["b", "c"])}
    assert set(branches) == {"b", "c"}
    run_together([branches["b"], branches["c"]], monkeypatch)


def test_parallel_branches_finishing_together_on_two_workers_dispatch_the_join_once(
    org, workers, monkeypatch
):
    workflow = make_workflow(org, DIAMOND_ON_ONE_QUEUE)

    for _ in range(RACES):
        execution = trigger_workflow(workflow)
        race_the_branches(execution, monkeypatch)

        b = execution.steps.get(node_id="b")
        c = execution.steps.get(node_id="c")
        assert b.status == c.status == StepStatus.COMPLETED
        assert b.worker and c.worker
        assert b.started_at < c.finished_at and c.started_at < b.finished_at, (
            "the branches did not overlap"
        )
        assert execution.steps.filter(node_id="d").count() == 1
        assert execution.events.filter(kind=EventKind.NODE_DISPATCHED, node_id="d").count() == 1

        workers.run_to_end(execution)

        assert execution.status == ExecutionStatus.COMPLETED
        d = Step.objects.get(execution=execution, node_id="d")
        assert d.status == StepStatus.COMPLETED
        assert d.created_at >= max(b.finished_at, c.finished_at)
        assert execution.finished_at >= d.finished_at
        assert execution.steps.count() == 4
        assert execution.events.filter(kind=EventKind.EXECUTION_COMPLETED).count() == 1
