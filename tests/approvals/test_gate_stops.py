"""A gate pending when the run stops for another reason."""

import pytest

from apps.accounts.choices import Role
from apps.approvals import services as approvals
from apps.approvals.choices import ApprovalStatus
from apps.approvals.models import Approval
from apps.executions.choices import ExecutionStatus, StepStatus
from apps.executions.services import trigger_workflow
from tests.factories import make_user, make_workflow


def parallel(store: bool) -> dict:
    """`start` fans out to a gate and to `boom`, a critical node that fails."""
    return {
        "slug": "parallel-gate",
        "name": "Parallel gate",
        "settings": {"store_incomplete_executions": store},
        "nodes": [
            {"id": "start", "type": "noop"},
            {"id": "gate", "type": "approval", "config": {"message": "Go?"}},
            {"id": "after_gate", "type": "noop"},
            {"id": "boom", "type": "shell.command", "config": {"command": ["false"]}},
        ],
        "edges": [
            {"from": "start", "to": "gate"},
            {"from": "gate", "to": "after_gate", "on": "approved"},
            {"from": "start", "to": "boom"},
        ],
    }


@pytest.mark.django_db(transaction=True)
def test_a_failed_run_cancels_its_pending_gate(org, workers):
    operator = make_user("op", org, Role.OPERATOR)
    execution = workers.run_to_end(trigger_workflow(make_workflow(org, parallel(store=False))))

    assert execution.status == ExecutionStatus.FAILED
    gate = Approval.objects.get(execution=execution)
    assert (gate.status, gate.reason) == (ApprovalStatus.CANCELLED, "cancelled")
    assert execution.steps.get(node_id="gate").status == StepStatus.CANCELLED
    with pytest.raises(approvals.AlreadyDecided):
        approvals.decide(gate, operator, "approve")
    assert not execution.steps.filter(node_id="after_gate").exists()


@pytest.mark.django_db(transaction=True)
def test_a_decision_while_the_run_is_incomplete_waits_for_the_resume(org, workers):
    operator = make_user("op", org, Role.OPERATOR)
    execution = trigger_workflow(make_workflow(org, parallel(store=True)))
    workers.drain(
        until=lambda: (
            execution.__class__.objects.get(pk=execution.pk).status == ExecutionStatus.INCOMPLETE
        )
    )
    gate = Approval.objects.get(execution=execution)
    assert gate.status == ApprovalStatus.PENDING  # an incomplete run keeps its gate

    approvals.decide(gate, operator, "approve")
    workers.drain()
    execution.refresh_from_db()
    assert (
        execution.status == ExecutionStatus.INCOMPLETE
    )  # nothing moves until the operator resumes
    assert not execution.steps.filter(node_id="after_gate").exists()
