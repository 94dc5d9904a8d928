"""The failure-handling API (DESIGN §6, §9): incomplete executions (list, read, retry, discard,
bulk actions), cancel, re-trigger and mark-succeeded, with their roles and organization scoping.

Incomplete executions are made for real: `check` is a shell command that fails until its flag
file (a path under tmp_path, given as a variable) exists, in a workflow that stores incomplete
executions. Real RQ workers run in-process (see `workers` in conftest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from apps.executions.choices import (
    ExecutionStatus,
    IncompleteStatus,
    StepHandling,
    StepStatus,
)
from apps.executions.models import Execution, IncompleteExecution, Step
from apps.executions.services import discard_incomplete, trigger_workflow
from apps.workflows.models import Workflow
from apps.workflows.services import publish_workflow, update_draft
from tests.api_errors import detail_paths, error_of
from tests.factories import make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

EXECUTIONS = "/api/v1/executions/"
INCOMPLETE = "/api/v1/incomplete-executions/"
RECORD_FIELDS = {
    "id", "execution", "workflow", "node_id", "error_type", "error_message", "status",
    "auto_retry", "attempts", "next_retry_at", "size_bytes", "created_at",
}  # fmt: skip


# --- helpers ---


def record_url(record_id: int, action: str = "") -> str:
    return f"{INCOMPLETE}{record_id}/" + (f"{action}/" if action else "")


def execution_url(execution_id: int, action: str = "") -> str:
    return f"{EXECUTIONS}{execution_id}/" + (f"{action}/" if action else "")


def mark_succeeded_url(execution_id: int, step_id: int) -> str:
    return f"{EXECUTIONS}{execution_id}/steps/{step_id}/mark-succeeded/"


def check_definition(slug: str, check: dict[str, Any] | None = None) -> dict[str, Any]:
    """prepare → check → report. By default `check` fails (UnexpectedError) until the flag exists."""
    check = check or {"config": {"command": ["test", "-f", "{{ vars.flag }}"]}}
    return {
        "slug": slug,
        "name": slug.replace("-", " ").title(),
        "settings": {"store_incomplete_executions": True},
        "variables": {"flag": {"type": "string", "required": True}},
        "nodes": [
            {"id": "prepare", "type": "noop", "config": {"output": {"host": "web1"}}},
            {"id": "check", "type": "shell.command", **check},
            {
                "id": "report",
                "type": "noop",
                "config": {"output": {"checked": "{{ nodes.prepare.output.host }}"}},
            },
        ],
        "edges": [{"from": "prepare", "to": "check"}, {"from": "check", "to": "report"}],
    }


# `check` times out (ModuleTimeoutError): stored with auto-retry, so the record is `scheduled`.
SLOW_CHECK = {"timeout": 0.2, "config": {"command": ["sleep", "5"]}}


@dataclass
class Stuck:
    """An execution stored as incomplete at `check`, its record, and the flag that unblocks it."""

    execution: Execution
    record: IncompleteExecution
    flag: Path

    def unblock(self) -> None:
        self.flag.touch()

    def failed_step(self) -> Step:
        return self.execution.steps.get(node_id="check", attempt=1)


@pytest.fixture
def deploy(org) -> Workflow:
    return make_workflow(org, check_definition("deploy"))


@pytest.fixture
def backup(org) -> Workflow:
    return make_workflow(org, check_definition("backup"))


@pytest.fixture
def stuck(workers, tmp_path):
    """stuck(workflow) → a run of it, worked until it is stored as incomplete."""
    names = iter(range(1, 1000))

    def run(workflow: Workflow) -> Stuck:
        flag = tmp_path / f"{workflow.slug}-{next(names)}.flag"
        execution = trigger_workflow(workflow, variables={"flag": str(flag)})
        workers.drain()
        execution.refresh_from_db()
        assert execution.status == ExecutionStatus.INCOMPLETE, execution.error_message
        return Stuck(execution, execution.incomplete_records.get(), flag)

    return run


def ids_of(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {item["id"] for item in response.json()["results"]}


def record_status(record: IncompleteExecution) -> str:
    record.refresh_from_db()
    return record.status


def execution_status(execution: Execution) -> str:
    execution.refresh_from_db()
    return execution.status


def steps_of(execution: Execution) -> list[tuple[str, int, str]]:
    return list(execution.steps.order_by("id").values_list("node_id", "attempt", "status"))


# --- list and read ---


def test_the_list_shows_each_incomplete_execution_with_the_contract_fields(
    viewer, deploy, stuck, api_for
):
    run = stuck(deploy)

    response = api_for(viewer).get(INCOMPLETE)

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"count", "count_exact", "next", "previous", "results"}
    assert body["count_exact"] is True
    assert body["count"] == 1
    item = body["results"][0]
    assert not RECORD_FIELDS - set(item), RECORD_FIELDS - set(item)
    assert item["id"] == run.record.pk
    assert item["execution"] == run.execution.pk
    assert item["workflow"] == "deploy"
    assert item["node_id"] == "check"
    assert item["error_type"] == "UnexpectedError"
    assert item["error_message"] == "Command exited with status 1"
    assert item["status"] == IncompleteStatus.UNRESOLVED
    assert item["auto_retry"] is False
    assert item["attempts"] == 0
    assert item["next_retry_at"] is None
    assert isinstance(item["size_bytes"], int) and item["size_bytes"] > 0
    assert datetime.fromisoformat(item["created_at"]).tzinfo is not None


def test_the_detail_includes_the_bundles_and_the_blueprint(viewer, deploy, stuck, api_for):
    run = stuck(deploy)

    response = api_for(viewer).get(record_url(run.record.pk))

    assert response.status_code == 200, response.content
    body = response.json()
    assert not RECORD_FIELDS - set(body), RECORD_FIELDS - set(body)
    bundles = body["bundles"]
    assert bundles["variables"] == {"flag": str(run.flag)}
    assert set(bundles["nodes"]) == {"prepare"}  # only what `check` could map: its upstream
    assert bundles["nodes"]["prepare"]["output"] == {"host": "web1"}
    assert bundles["input"] == {"command": ["test", "-f", str(run.flag)]}
    assert body["blueprint"] == run.execution.version.definition
    assert [node["id"] for node in body["blueprint"]["nodes"]] == ["prepare", "check", "report"]
    kept = len(json.dumps(body["bundles"]).encode()) + len(json.dumps(body["blueprint"]).encode())
    assert body["size_bytes"] >= kept


def test_the_execution_detail_shows_it_is_incomplete_and_links_the_record(
    viewer, deploy, stuck, api_for
):
    run = stuck(deploy)

    response = api_for(viewer).get(execution_url(run.execution.pk))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == ExecutionStatus.INCOMPLETE
    assert body["incomplete_execution"] == run.record.pk
    steps = {step["node_id"]: step for step in body["steps"]}
    assert set(steps) == {"prepare", "check"}  # `report` never started
    assert steps["check"]["status"] == StepStatus.FAILED
    assert steps["check"]["error_type"] == "UnexpectedError"


def test_the_list_filters_by_workflow_status_and_error_type(
    viewer, org, deploy, backup, stuck, api_for
):
    slow = make_workflow(org, check_definition("slow", SLOW_CHECK))
    unresolved = stuck(deploy)
    scheduled = stuck(slow)
    discarded = stuck(backup)
    discard_incomplete(discarded.record)
    client = api_for(viewer)

    assert ids_of(client.get(INCOMPLETE)) == {
        unresolved.record.pk,
        scheduled.record.pk,
        discarded.record.pk,
    }
    assert ids_of(client.get(INCOMPLETE, {"workflow": "deploy"})) == {unresolved.record.pk}
    assert ids_of(client.get(INCOMPLETE, {"workflow": "slow"})) == {scheduled.record.pk}
    assert ids_of(client.get(INCOMPLETE, {"workflow": "nothing-here"})) == set()
    assert ids_of(client.get(INCOMPLETE, {"status": "unresolved"})) == {unresolved.record.pk}
    assert ids_of(client.get(INCOMPLETE, {"status": "scheduled"})) == {scheduled.record.pk}
    assert ids_of(client.get(INCOMPLETE, {"status": "discarded"})) == {discarded.record.pk}
    assert ids_of(client.get(f"{INCOMPLETE}?status=unresolved&status=scheduled")) == {
        unresolved.record.pk,
        scheduled.record.pk,
    }
    assert ids_of(client.get(INCOMPLETE, {"error_type": "ModuleTimeoutError"})) == {
        scheduled.record.pk
    }
    assert ids_of(client.get(INCOMPLETE, {"error_type": "UnexpectedError"})) == {
        unresolved.record.pk,
        discarded.record.pk,
    }
    assert ids_of(client.get(INCOMPLETE, {"workflow": "backup", "status": "unresolved"})) == set()
    timed_out = client.get(record_url(scheduled.record.pk)).json()
    assert timed_out["auto_retry"] is True
    assert timed_out["next_retry_at"] is not None


@pytest.mark.parametrize("query", ["status=bogus", "status=unresolved&status=nope"])
def test_a_bad_filter_value_answers_400_in_the_error_shape(viewer, deploy, stuck, api_for, query):
    stuck(deploy)

    response = api_for(viewer).get(f"{INCOMPLETE}?{query}")

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"status"}


def test_a_missing_record_answers_404_in_the_error_shape(viewer, api_for):
    response = api_for(viewer).get(record_url(987654))

    assert response.status_code == 404, response.content
    assert error_of(response)["code"] == "not_found"


# --- retry ---


def test_a_retry_after_the_cause_is_fixed_resumes_the_same_execution_to_completed(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)
    run.unblock()
    client = api_for(operator)

    response = client.post(record_url(run.record.pk, "retry"), {}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == run.record.pk
    assert body["status"] == IncompleteStatus.RETRYING
    assert body["attempts"] == 1
    workers.run_to_end(run.execution)
    assert run.execution.status == ExecutionStatus.COMPLETED
    assert Execution.objects.count() == 1
    assert steps_of(run.execution) == [
        ("prepare", 1, StepStatus.COMPLETED),  # kept, not re-run
        ("check", 1, StepStatus.FAILED),
        ("check", 2, StepStatus.COMPLETED),
        ("report", 1, StepStatus.COMPLETED),
    ]
    record = client.get(record_url(run.record.pk)).json()
    assert record["status"] == IncompleteStatus.RESOLVED
    assert client.get(execution_url(run.execution.pk)).json()["incomplete_execution"] == (
        run.record.pk
    )


def test_a_retry_with_an_edited_input_runs_the_failed_node_with_that_input(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)  # the flag never exists: only the edited input can succeed

    response = api_for(operator).post(
        record_url(run.record.pk, "retry"), {"input": {"command": ["true"]}}, format="json"
    )

    assert response.status_code == 200, response.content
    workers.run_to_end(run.execution)
    assert run.execution.status == ExecutionStatus.COMPLETED
    again = run.execution.steps.get(node_id="check", attempt=2)
    assert again.status == StepStatus.COMPLETED
    assert again.input == {"command": ["true"]}
    assert record_status(run.record) == IncompleteStatus.RESOLVED


def test_a_retry_with_edited_bundles_renders_the_failed_node_from_them(
    operator, deploy, stuck, workers, api_for, tmp_path
):
    run = stuck(deploy)
    other_flag = tmp_path / "other.flag"
    other_flag.touch()

    response = api_for(operator).post(
        record_url(run.record.pk, "retry"),
        {"bundles": {"variables": {"flag": str(other_flag)}}},
        format="json",
    )

    assert response.status_code == 200, response.content
    workers.run_to_end(run.execution)
    assert run.execution.status == ExecutionStatus.COMPLETED
    again = run.execution.steps.get(node_id="check", attempt=2)
    assert again.input == {"command": ["test", "-f", str(other_flag)]}


def test_a_retry_that_fails_again_keeps_the_same_record_unresolved(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)
    client = api_for(operator)

    response = client.post(record_url(run.record.pk, "retry"), {}, format="json")

    assert response.status_code == 200, response.content
    workers.drain()
    assert execution_status(run.execution) == ExecutionStatus.INCOMPLETE
    listed = client.get(INCOMPLETE).json()
    assert [item["id"] for item in listed["results"]] == [run.record.pk]
    assert listed["results"][0]["status"] == IncompleteStatus.UNRESOLVED
    assert listed["results"][0]["attempts"] == 1


def test_a_retry_on_the_current_version_resumes_with_its_definition(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)
    update_draft(
        deploy, check_definition("deploy", {"config": {"command": ["echo", "fixed in v2"]}})
    )
    publish_workflow(deploy)

    response = api_for(operator).post(
        record_url(run.record.pk, "retry"), {"use_current_version": True}, format="json"
    )

    assert response.status_code == 200, response.content
    workers.run_to_end(run.execution)
    assert run.execution.status == ExecutionStatus.COMPLETED
    assert run.execution.version.number == 2
    assert run.execution.steps.get(node_id="check", attempt=2).output["stdout"] == "fixed in v2\n"


def test_a_retry_on_a_current_version_without_the_failed_node_answers_409(
    operator, deploy, stuck, api_for
):
    run = stuck(deploy)
    definition = check_definition("deploy")
    definition["nodes"] = [node for node in definition["nodes"] if node["id"] != "check"]
    definition["edges"] = [{"from": "prepare", "to": "report"}]
    update_draft(deploy, definition)
    publish_workflow(deploy)

    response = api_for(operator).post(
        record_url(run.record.pk, "retry"), {"use_current_version": True}, format="json"
    )

    assert response.status_code == 409, response.content
    assert "check" in error_of(response)["message"]
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED
    assert run.execution.steps.count() == 2
    run.execution.refresh_from_db()
    assert run.execution.version.number == 1


def test_retrying_a_resolved_record_answers_409_saying_why(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)
    run.unblock()
    client = api_for(operator)
    assert client.post(record_url(run.record.pk, "retry"), {}, format="json").status_code == 200
    workers.run_to_end(run.execution)

    response = client.post(record_url(run.record.pk, "retry"), {}, format="json")

    assert response.status_code == 409, response.content
    error = error_of(response)
    assert error["code"] == "conflict"
    assert "resolved" in error["message"]
    assert run.execution.steps.count() == 4


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"input": [1]}, "input"),
        ({"input": "true"}, "input"),
        ({"use_current_version": "maybe"}, "use_current_version"),
        ({"bundles": [1]}, "bundles"),
        ({"bundles": {"variables": "flag"}}, "bundles.variables"),
    ],
    ids=["list-input", "string-input", "not-a-boolean", "list-bundles", "string-variables"],
)
def test_a_retry_with_a_bad_body_answers_400_naming_the_field_and_changes_nothing(
    operator, deploy, stuck, api_for, body, path
):
    run = stuck(deploy)

    response = api_for(operator).post(record_url(run.record.pk, "retry"), body, format="json")

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {path}
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED
    assert run.record.attempts == 0
    assert execution_status(run.execution) == ExecutionStatus.INCOMPLETE
    assert run.execution.steps.count() == 2


def test_a_retry_with_a_body_that_is_not_json_answers_400(operator, deploy, stuck, api_for):
    run = stuck(deploy)

    response = api_for(operator).post(
        record_url(run.record.pk, "retry"), '{"input": {', content_type="application/json"
    )

    assert response.status_code == 400, response.content
    error_of(response)
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED


def test_a_retry_with_bundles_whose_node_entry_is_not_an_object_answers_400(
    operator, deploy, stuck, api_for
):
    run = stuck(deploy)

    response = api_for(operator).post(
        record_url(run.record.pk, "retry"),
        {"bundles": {"nodes": {"prepare": "not an object"}}},
        format="json",
    )

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"bundles.nodes.prepare"}
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED


# --- discard ---


def test_delete_discards_the_record_and_fails_the_execution(operator, deploy, stuck, api_for):
    run = stuck(deploy)
    client = api_for(operator)

    response = client.delete(record_url(run.record.pk))

    assert response.status_code == 204, response.content
    record = client.get(record_url(run.record.pk)).json()
    assert record["status"] == IncompleteStatus.DISCARDED
    assert record["closed_at"] is not None
    assert client.get(execution_url(run.execution.pk)).json()["status"] == ExecutionStatus.FAILED


def test_deleting_a_discarded_record_again_answers_409_saying_why(operator, deploy, stuck, api_for):
    run = stuck(deploy)
    client = api_for(operator)
    assert client.delete(record_url(run.record.pk)).status_code == 204

    response = client.delete(record_url(run.record.pk))

    assert response.status_code == 409, response.content
    error = error_of(response)
    assert error["code"] == "conflict"
    assert "discarded" in error["message"]
    assert record_status(run.record) == IncompleteStatus.DISCARDED


def test_a_discarded_record_cannot_be_retried(operator, deploy, stuck, api_for):
    run = stuck(deploy)
    client = api_for(operator)
    assert client.delete(record_url(run.record.pk)).status_code == 204

    response = client.post(record_url(run.record.pk, "retry"), {}, format="json")

    assert response.status_code == 409, response.content
    assert "discarded" in error_of(response)["message"]
    assert execution_status(run.execution) == ExecutionStatus.FAILED


def test_deleting_a_record_while_it_is_being_retried_never_leaves_the_run_going_on(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)
    run.unblock()
    client = api_for(operator)
    assert client.post(record_url(run.record.pk, "retry"), {}, format="json").status_code == 200

    response = client.delete(record_url(run.record.pk))

    assert response.status_code in (204, 409), response.content
    workers.drain()
    record = client.get(record_url(run.record.pk)).json()
    execution = client.get(execution_url(run.execution.pk)).json()
    if response.status_code == 204:  # discarded: the run is given up, as DELETE promises
        assert record["status"] == IncompleteStatus.DISCARDED
        assert execution["status"] == ExecutionStatus.FAILED
    else:  # refused: the retry goes on and resolves the record
        assert "retrying" in error_of(response)["message"]
        assert record["status"] == IncompleteStatus.RESOLVED
        assert execution["status"] == ExecutionStatus.COMPLETED


# --- bulk retry and discard ---


def test_bulk_retry_retries_the_given_ids_and_skips_the_others_with_a_reason(
    operator, deploy, stuck, workers, api_for
):
    first, second, gone = stuck(deploy), stuck(deploy), stuck(deploy)
    first.unblock()
    second.unblock()
    discard_incomplete(gone.record)

    response = api_for(operator).post(
        f"{INCOMPLETE}bulk-retry/",
        {"ids": [first.record.pk, second.record.pk, gone.record.pk]},
        format="json",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"done", "skipped"}
    assert sorted(body["done"]) == sorted([first.record.pk, second.record.pk])
    assert [item["id"] for item in body["skipped"]] == [gone.record.pk]
    assert "discarded" in body["skipped"][0]["reason"]
    workers.drain()
    for run in (first, second):
        assert execution_status(run.execution) == ExecutionStatus.COMPLETED
        assert record_status(run.record) == IncompleteStatus.RESOLVED
    assert execution_status(gone.execution) == ExecutionStatus.FAILED


def test_bulk_retry_of_all_matching_acts_only_on_the_filtered_workflow(
    operator, deploy, backup, stuck, api_for
):
    on_deploy, on_backup = stuck(deploy), stuck(backup)

    response = api_for(operator).post(
        f"{INCOMPLETE}bulk-retry/?workflow=backup", {"all_matching": True}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json() == {"done": [on_backup.record.pk], "skipped": []}
    assert record_status(on_backup.record) == IncompleteStatus.RETRYING
    assert record_status(on_deploy.record) == IncompleteStatus.UNRESOLVED
    assert on_deploy.record.attempts == 0


def test_bulk_discard_discards_the_given_ids_and_skips_the_others_with_a_reason(
    operator, deploy, stuck, api_for
):
    kept, gone = stuck(deploy), stuck(deploy)
    discard_incomplete(gone.record)

    response = api_for(operator).post(
        f"{INCOMPLETE}bulk-discard/", {"ids": [kept.record.pk, gone.record.pk]}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["done"] == [kept.record.pk]
    assert [item["id"] for item in body["skipped"]] == [gone.record.pk]
    assert "discarded" in body["skipped"][0]["reason"]
    assert record_status(kept.record) == IncompleteStatus.DISCARDED
    assert execution_status(kept.execution) == ExecutionStatus.FAILED


def test_bulk_discard_of_all_matching_acts_only_on_the_filtered_workflow(
    operator, deploy, backup, stuck, api_for
):
    on_deploy, on_backup = stuck(deploy), stuck(backup)

    response = api_for(operator).post(
        f"{INCOMPLETE}bulk-discard/?workflow=deploy", {"all_matching": True}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json() == {"done": [on_deploy.record.pk], "skipped": []}
    assert record_status(on_deploy.record) == IncompleteStatus.DISCARDED
    assert record_status(on_backup.record) == IncompleteStatus.UNRESOLVED
    assert execution_status(on_backup.execution) == ExecutionStatus.INCOMPLETE


@pytest.mark.parametrize("action", ["bulk-retry", "bulk-discard"])
@pytest.mark.parametrize(
    "body",
    [{}, {"ids": []}, {"all_matching": False}, {"ids": ["one"]}, {"ids": 7}, []],
    ids=["empty", "no-ids", "not-all", "string-id", "ids-not-a-list", "list-body"],
)
def test_a_bulk_action_with_nothing_to_act_on_answers_400_and_changes_nothing(
    operator, deploy, stuck, api_for, action, body
):
    run = stuck(deploy)

    response = api_for(operator).post(f"{INCOMPLETE}{action}/", body, format="json")

    assert response.status_code == 400, response.content
    error_of(response)
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED
    assert run.record.attempts == 0


@pytest.mark.parametrize("action", ["bulk-retry", "bulk-discard"])
def test_a_bulk_action_with_an_id_too_large_for_the_database_answers_400(
    operator, deploy, stuck, api_for, action
):
    run = stuck(deploy)

    response = api_for(operator).post(
        f"{INCOMPLETE}{action}/", {"ids": [run.record.pk, 2**63]}, format="json"
    )

    assert response.status_code == 400, response.content
    assert all(path.startswith("ids") for path in detail_paths(response))
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED


def test_a_bulk_action_with_a_bad_filter_answers_400(operator, deploy, stuck, api_for):
    run = stuck(deploy)

    response = api_for(operator).post(
        f"{INCOMPLETE}bulk-discard/?status=bogus", {"all_matching": True}, format="json"
    )

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"status"}
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED


# --- cancel and re-trigger ---


PAUSE = {
    "slug": "pause",
    "name": "Pause",
    "nodes": [
        {"id": "start", "type": "noop"},
        {"id": "wait", "type": "delay", "config": {"seconds": 30}},
        {"id": "after", "type": "noop"},
    ],
    "edges": [{"from": "start", "to": "wait"}, {"from": "wait", "to": "after"}],
}


def test_cancel_of_a_run_waiting_on_a_delay_cancels_it_and_its_waiting_step(
    operator, org, workers, api_for
):
    execution = trigger_workflow(make_workflow(org, PAUSE))
    workers.drain(until=lambda: execution.steps.filter(node_id="wait").exists())
    client = api_for(operator)

    response = client.post(execution_url(execution.pk, "cancel"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == ExecutionStatus.CANCELLED
    assert body["finished_at"] is not None
    assert {step["node_id"]: step["status"] for step in body["steps"]} == {
        "start": StepStatus.COMPLETED,
        "wait": StepStatus.CANCELLED,
    }
    assert execution_status(execution) == ExecutionStatus.CANCELLED


def test_cancelling_a_cancelled_run_again_answers_409_saying_why(operator, org, workers, api_for):
    execution = trigger_workflow(make_workflow(org, PAUSE))
    workers.drain(until=lambda: execution.steps.filter(node_id="wait").exists())
    client = api_for(operator)
    assert client.post(execution_url(execution.pk, "cancel")).status_code == 200

    response = client.post(execution_url(execution.pk, "cancel"))

    assert response.status_code == 409, response.content
    error = error_of(response)
    assert error["code"] == "conflict"
    assert "cancelled" in error["message"]


def test_cancel_of_an_incomplete_run_discards_its_record(operator, deploy, stuck, api_for):
    run = stuck(deploy)
    client = api_for(operator)

    response = client.post(execution_url(run.execution.pk, "cancel"))

    assert response.status_code == 200, response.content
    assert response.json()["status"] == ExecutionStatus.CANCELLED
    assert record_status(run.record) == IncompleteStatus.DISCARDED
    retry = client.post(record_url(run.record.pk, "retry"), {}, format="json")
    assert retry.status_code == 409, retry.content


def test_cancel_of_a_completed_run_answers_409(operator, deploy, stuck, workers, api_for):
    run = stuck(deploy)
    run.unblock()
    client = api_for(operator)
    assert client.post(record_url(run.record.pk, "retry"), {}, format="json").status_code == 200
    workers.run_to_end(run.execution)

    response = client.post(execution_url(run.execution.pk, "cancel"))

    assert response.status_code == 409, response.content
    assert "completed" in error_of(response)["message"]
    assert execution_status(run.execution) == ExecutionStatus.COMPLETED


def test_retrigger_creates_a_new_linked_execution_with_the_same_variables(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)
    client = api_for(operator)

    response = client.post(execution_url(run.execution.pk, "retrigger"))

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"] != run.execution.pk
    assert body["retriggered_from"] == run.execution.pk
    assert body["variables"] == run.execution.variables == {"flag": str(run.flag)}
    assert body["workflow"] == "deploy"
    assert body["triggered_by"] == "operator"
    assert body["incomplete_execution"] is None
    run.unblock()
    new = workers.run_to_end(Execution.objects.get(pk=body["id"]))
    assert new.status == ExecutionStatus.COMPLETED
    assert [node for node, _attempt, _status in steps_of(new)] == ["prepare", "check", "report"]
    assert execution_status(run.execution) == ExecutionStatus.INCOMPLETE  # the old run is left
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED


# --- mark succeeded ---


def test_mark_succeeded_records_the_failed_step_as_completed_and_the_run_goes_on(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)
    failed = run.failed_step()
    client = api_for(operator)

    response = client.post(
        mark_succeeded_url(run.execution.pk, failed.pk), {"output": {"ok": True}}, format="json"
    )

    assert response.status_code == 201, response.content
    step = response.json()
    assert step["id"] != failed.pk
    assert step["node_id"] == "check"
    assert step["attempt"] == 2
    assert step["status"] == StepStatus.COMPLETED
    assert step["handling"] == StepHandling.MANUAL
    assert step["output"] == {"ok": True}
    workers.run_to_end(run.execution)
    assert run.execution.status == ExecutionStatus.COMPLETED
    assert steps_of(run.execution) == [
        ("prepare", 1, StepStatus.COMPLETED),
        ("check", 1, StepStatus.FAILED),
        ("check", 2, StepStatus.COMPLETED),
        ("report", 1, StepStatus.COMPLETED),
    ]
    assert record_status(run.record) == IncompleteStatus.RESOLVED


def test_mark_succeeded_on_a_completed_execution_answers_409(
    operator, deploy, stuck, workers, api_for
):
    run = stuck(deploy)
    failed = run.failed_step()
    client = api_for(operator)
    url = mark_succeeded_url(run.execution.pk, failed.pk)
    assert client.post(url, {"output": {"ok": True}}, format="json").status_code == 201
    workers.run_to_end(run.execution)

    response = client.post(url, {"output": {"ok": True}}, format="json")

    assert response.status_code == 409, response.content
    assert error_of(response)["code"] == "conflict"
    assert run.execution.steps.count() == 4


def test_mark_succeeded_of_a_step_that_did_not_fail_answers_409(operator, deploy, stuck, api_for):
    run = stuck(deploy)
    prepare = run.execution.steps.get(node_id="prepare")

    response = api_for(operator).post(
        mark_succeeded_url(run.execution.pk, prepare.pk), {"output": {"ok": True}}, format="json"
    )

    assert response.status_code == 409, response.content
    assert "prepare" in error_of(response)["message"]
    assert execution_status(run.execution) == ExecutionStatus.INCOMPLETE


def test_mark_succeeded_with_a_step_of_another_execution_answers_404(
    operator, deploy, stuck, api_for
):
    mine, other = stuck(deploy), stuck(deploy)
    client = api_for(operator)

    for step_id in (other.failed_step().pk, 987654):
        response = client.post(
            mark_succeeded_url(mine.execution.pk, step_id), {"output": {"ok": True}}, format="json"
        )
        assert response.status_code == 404, response.content
        assert error_of(response)["code"] == "not_found"
    assert execution_status(other.execution) == ExecutionStatus.INCOMPLETE
    assert other.execution.steps.count() == 2


@pytest.mark.parametrize(
    "body",
    [{"output": "x"}, {"output": [1]}, {"output": None}, {}],
    ids=["string", "list", "null", "missing"],
)
def test_mark_succeeded_with_an_output_that_is_not_an_object_answers_400(
    operator, deploy, stuck, api_for, body
):
    run = stuck(deploy)

    response = api_for(operator).post(
        mark_succeeded_url(run.execution.pk, run.failed_step().pk), body, format="json"
    )

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"output"}
    assert run.execution.steps.count() == 2
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED


# --- roles and organizations ---


def test_a_viewer_can_read_but_not_retry_discard_cancel_retrigger_or_mark_succeeded(
    viewer, deploy, stuck, api_for
):
    run = stuck(deploy)
    run.unblock()
    client = api_for(viewer)

    for url in (INCOMPLETE, record_url(run.record.pk), execution_url(run.execution.pk)):
        assert client.get(url).status_code == 200, url
    for response in (
        client.post(record_url(run.record.pk, "retry"), {}, format="json"),
        client.delete(record_url(run.record.pk)),
        client.post(execution_url(run.execution.pk, "cancel")),
        client.post(execution_url(run.execution.pk, "retrigger")),
        client.post(
            mark_succeeded_url(run.execution.pk, run.failed_step().pk),
            {"output": {"ok": True}},
            format="json",
        ),
    ):
        assert response.status_code == 403, (response.request["PATH_INFO"], response.content)
        error_of(response)
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED
    assert run.record.attempts == 0
    assert execution_status(run.execution) == ExecutionStatus.INCOMPLETE
    assert Execution.objects.count() == 1
    assert run.execution.steps.count() == 2


def test_a_viewer_bulk_retry_skips_every_record_because_of_the_role(viewer, deploy, stuck, api_for):
    run = stuck(deploy)

    response = api_for(viewer).post(
        f"{INCOMPLETE}bulk-retry/", {"ids": [run.record.pk]}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["done"] == []
    assert [item["id"] for item in body["skipped"]] == [run.record.pk]
    assert "role" in body["skipped"][0]["reason"]
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED


def test_a_member_of_another_organization_gets_404_for_the_record_its_actions_and_the_run(
    outsider, deploy, stuck, api_for
):
    run = stuck(deploy)
    run.unblock()
    client = api_for(outsider)

    for response in (
        client.get(record_url(run.record.pk)),
        client.post(record_url(run.record.pk, "retry"), {}, format="json"),
        client.delete(record_url(run.record.pk)),
        client.get(execution_url(run.execution.pk)),
        client.post(execution_url(run.execution.pk, "cancel")),
        client.post(execution_url(run.execution.pk, "retrigger")),
        client.post(
            mark_succeeded_url(run.execution.pk, run.failed_step().pk),
            {"output": {"ok": True}},
            format="json",
        ),
    ):
        assert response.status_code == 404, (response.request["PATH_INFO"], response.content)
        error_of(response)
    assert ids_of(client.get(INCOMPLETE)) == set()
    assert ids_of(client.get(INCOMPLETE, {"workflow": "deploy"})) == set()
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED
    assert execution_status(run.execution) == ExecutionStatus.INCOMPLETE
    assert Execution.objects.count() == 1


@pytest.mark.parametrize("action", ["bulk-retry", "bulk-discard"])
def test_a_bulk_action_by_a_member_of_another_organization_acts_on_nothing(
    outsider, deploy, stuck, api_for, action
):
    run = stuck(deploy)
    client = api_for(outsider)

    by_id = client.post(f"{INCOMPLETE}{action}/", {"ids": [run.record.pk]}, format="json")
    by_filter = client.post(
        f"{INCOMPLETE}{action}/?workflow=deploy", {"all_matching": True}, format="json"
    )

    for response in (by_id, by_filter):
        assert response.status_code == 200, response.content
        assert response.json() == {"done": [], "skipped": []}
    assert record_status(run.record) == IncompleteStatus.UNRESOLVED
    assert run.record.attempts == 0
    assert execution_status(run.execution) == ExecutionStatus.INCOMPLETE


# --- schema ---


def test_the_schema_lists_the_failure_handling_paths(viewer, api_for):
    response = api_for(viewer).get("/api/v1/schema/", {"format": "json"})

    assert response.status_code == 200, response.content
    paths = response.json()["paths"]
    expected = {
        "/api/v1/incomplete-executions/": {"get"},
        "/api/v1/incomplete-executions/{id}/": {"get", "delete"},
        "/api/v1/incomplete-executions/{id}/retry/": {"post"},
        "/api/v1/incomplete-executions/bulk-retry/": {"post"},
        "/api/v1/incomplete-executions/bulk-discard/": {"post"},
        "/api/v1/executions/{id}/cancel/": {"post"},
        "/api/v1/executions/{id}/retrigger/": {"post"},
        "/api/v1/executions/{id}/steps/{step_id}/mark-succeeded/": {"post"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    filters = {p["name"] for p in paths["/api/v1/incomplete-executions/"]["get"]["parameters"]}
    assert {"workflow", "status", "error_type"} <= filters
