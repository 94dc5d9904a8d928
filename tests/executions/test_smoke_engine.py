import pytest

from apps.executions.choices import ExecutionStatus, StepStatus
from apps.executions.services import trigger_workflow
from tests.factories import chain_definition, make_workflow


@pytest.mark.django_db(transaction=True)
def test_it_runs_a_chain_to_completion_on_real_rq_workers(org, workers):
    workflow = make_workflow(org, chain_definition("chain", 5))
    execution = workers.run_to_end(trigger_workflow(workflow))
    assert execution.status == ExecutionStatus.COMPLETED
    assert list(execution.steps.values_list("node_id", "status")) == [
        (f"n{i}", StepStatus.COMPLETED) for i in range(5)
    ]
