"""The executions REST API (DESIGN §9): trigger, read a run and its log, filters, roles, tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.executions.choices import EventKind, ExecutionStatus, StepStatus, Trigger
from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from apps.workflows.models import Workflow, WorkflowVersion
from tests.api_errors import detail_paths, error_of
from tests.factories import chain_definition, make_workflow

EXECUTIONS = "/api/v1/executions/"


def trigger_url(slug: str) -> str:
    return f"/api/v1/workflows/{slug}/trigger/"


def execution_url(execution_id: int, action: str = "") -> str:
    return f"{EXECUTIONS}{execution_id}/" + (f"{action}/" if action else "")


def greet_definition(greeting: str = "hello") -> dict[str, Any]:
    """Two nodes; the second one's config refers to the first one's output."""
    return {
        "slug": "greet",
        "name": "Greet",
        "variables": {
            "host": {"type": "string", "required": True},
            "port": {"type": "integer", "default": 8080},
        },
        "nodes": [
            {
                "id": "hello",
                "type": "noop",
                "config": {
                    "output": {"greeting": greeting + " {{ vars.host }}", "port": "{{ vars.port }}"}
                },
            },
            {
                "id": "echo",
                "type": "noop",
                "config": {
                    "output": {
                        "heard": "{{ nodes.hello.output.greeting }}",
                        "port": "{{ nodes.hello.output.port }}",
                    }
                },
            },
        ],
        "edges": [{"from": "hello", "to": "echo"}],
    }


def ids_of(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {item["id"] for item in response.json()["results"]}


@pytest.fixture
def greet(org):
    """`greet`, published as version 1."""
    return make_workflow(org, greet_definition())


# --- trigger, run, read ---


@pytest.mark.django_db(transaction=True)
def test_a_triggered_run_completes_and_its_detail_shows_steps_with_resolved_references(
    operator, greet, api_for, workers
):
    client = api_for(operator)

    response = client.post(trigger_url("greet"), {"variables": {"host": "web1"}}, format="json")

    assert response.status_code == 201, response.content
    created = response.json()
    assert created["workflow"] == "greet"
    assert created["version"] == 1
    assert created["status"] == ExecutionStatus.PENDING
    assert created["trigger"] == Trigger.MANUAL
    assert created["variables"] == {"host": "web1", "port": 8080}
    assert created["triggered_by"] == "operator"
    assert created["jobs_total"] == 2
    assert created["retriggered_from"] is None

    workers.run_to_end(Execution.objects.get(pk=created["id"]))
    detail = client.get(execution_url(created["id"]))

    assert detail.status_code == 200, detail.content
    body = detail.json()
    assert body["status"] == ExecutionStatus.COMPLETED
    assert body["jobs_completed"] == 2
    assert body["started_at"] and body["finished_at"]
    assert isinstance(body["duration_ms"], int) and body["duration_ms"] >= 0
    assert body["approvals"] == []
    assert body["incomplete_execution"] is None
    steps = {step["node_id"]: step for step in body["steps"]}
    assert set(steps) == {"hello", "echo"}
    assert all(step["status"] == StepStatus.COMPLETED for step in steps.values())
    assert all(step["attempt"] == 1 and step["node_type"] == "noop" for step in steps.values())
    assert steps["hello"]["input"] == {"output": {"greeting": "hello web1", "port": 8080}}
    assert steps["hello"]["output"] == {"greeting": "hello web1", "port": 8080}
    assert steps["echo"]["input"] == {"output": {"heard": "hello web1", "port": 8080}}
    assert steps["echo"]["output"] == {"heard": "hello web1", "port": 8080}


@pytest.mark.django_db(transaction=True)
def test_the_events_endpoint_lists_the_execution_log_oldest_first(
    operator, greet, api_for, workers
):
    client = api_for(operator)
    created = client.post(
        trigger_url("greet"), {"variables": {"host": "web1"}}, format="json"
    ).json()
    workers.run_to_end(Execution.objects.get(pk=created["id"]))

    response = client.get(execution_url(created["id"], "events"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"count", "count_exact", "next", "previous", "results"}
    assert body["count_exact"] is True
    events = body["results"]
    assert body["count"] == len(events)
    kinds = [event["kind"] for event in events]
    assert kinds[0] == EventKind.CREATED
    assert kinds[-1] == EventKind.EXECUTION_COMPLETED
    assert EventKind.EXECUTION_STARTED in kinds
    completed = [event["node_id"] for event in events if event["kind"] == EventKind.NODE_COMPLETED]
    assert completed == ["hello", "echo"]
    assert all(event["message"] for event in events)
    times = [event["created_at"] for event in events]
    assert times == sorted(times)


@pytest.mark.django_db(transaction=True)
def test_a_run_keeps_the_version_it_was_created_with_after_a_new_publish(
    editor, greet, api_for, workers
):
    client = api_for(editor)
    created = client.post(
        trigger_url("greet"), {"variables": {"host": "web1"}}, format="json"
    ).json()
    draft = client.put("/api/v1/workflows/greet/draft/", greet_definition("goodbye"), format="json")
    assert draft.status_code == 200, draft.content
    publish = client.post("/api/v1/workflows/greet/publish/")
    assert publish.json()["version"] == 2

    workers.run_to_end(Execution.objects.get(pk=created["id"]))
    body = client.get(execution_url(created["id"])).json()

    assert body["status"] == ExecutionStatus.COMPLETED
    assert body["version"] == 1
    hello = next(step for step in body["steps"] if step["node_id"] == "hello")
    assert hello["output"]["greeting"] == "hello web1"
    later = client.post(trigger_url("greet"), {"variables": {"host": "web1"}}, format="json")
    assert later.json()["version"] == 2


def test_a_run_follows_its_own_versions_definition_even_when_a_version_id_is_reused(
    org, operator, api_for
):
    old = make_workflow(org, chain_definition("old", 1))
    reused_pk = old.current_version_id
    trigger_workflow(old)  # the engine parses and caches the graph of version `reused_pk`
    Execution.objects.filter(workflow=old).delete()
    old.delete()
    greet = make_workflow(org, greet_definition(), publish=False)
    version = WorkflowVersion.objects.create(
        pk=reused_pk, workflow=greet, number=1, definition=greet.draft
    )
    Workflow.objects.filter(pk=greet.pk).update(current_version=version)

    response = api_for(operator).post(
        trigger_url("greet"), {"variables": {"host": "web1"}}, format="json"
    )

    assert response.status_code == 201, response.content
    steps = Execution.objects.get(pk=response.json()["id"]).steps
    assert list(steps.values_list("node_id", flat=True)) == ["hello"]


def test_trigger_with_a_missing_required_variable_answers_400_and_creates_nothing(
    operator, greet, api_for
):
    response = api_for(operator).post(trigger_url("greet"), {"variables": {}}, format="json")

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"variables.host"}
    assert Execution.objects.count() == 0


def test_trigger_with_a_variable_of_the_wrong_type_answers_400_and_creates_nothing(
    operator, greet, api_for
):
    response = api_for(operator).post(
        trigger_url("greet"), {"variables": {"host": "web1", "port": "eighty"}}, format="json"
    )

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"variables.port"}
    assert Execution.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [{"variables": "host=web1"}, {"variables": [1, 2]}, [], "variables"],
    ids=["string-variables", "list-variables", "list-body", "string-body"],
)
def test_trigger_with_a_malformed_body_answers_400_and_creates_nothing(
    operator, greet, api_for, body
):
    response = api_for(operator).post(trigger_url("greet"), body, format="json")

    assert response.status_code == 400, response.content
    error_of(response)
    assert Execution.objects.count() == 0


def test_trigger_with_a_body_that_is_not_json_answers_400(operator, greet, api_for):
    response = api_for(operator).post(
        trigger_url("greet"), '{"variables": {', content_type="application/json"
    )

    assert response.status_code == 400, response.content
    error_of(response)
    assert Execution.objects.count() == 0


def test_trigger_of_a_never_published_workflow_answers_409(operator, org, api_for):
    make_workflow(org, greet_definition(), publish=False)

    response = api_for(operator).post(
        trigger_url("greet"), {"variables": {"host": "web1"}}, format="json"
    )

    assert response.status_code == 409, response.content
    assert error_of(response)["code"] == "conflict"
    assert Execution.objects.count() == 0


def test_trigger_of_an_inactive_workflow_answers_409(operator, greet, api_for):
    greet.is_active = False
    greet.save(update_fields=["is_active"])

    response = api_for(operator).post(
        trigger_url("greet"), {"variables": {"host": "web1"}}, format="json"
    )

    assert response.status_code == 409, response.content
    error_of(response)
    assert Execution.objects.count() == 0


# --- list and filters ---


@pytest.fixture
def three_runs(org, greet):
    """greet/manual/running (started 1 Jan), greet/webhook/completed (started 2 Jan), backup/manual/pending."""
    backup = make_workflow(org, chain_definition("backup", 1))
    running = trigger_workflow(greet, variables={"host": "a"})
    completed = trigger_workflow(
        greet, variables={"host": "b"}, trigger=Trigger.WEBHOOK, trigger_data={"ip": "10.0.0.1"}
    )
    pending = trigger_workflow(backup)
    running.mark_running()
    completed.mark_running()
    completed.complete()
    Execution.objects.filter(pk=running.pk).update(started_at=datetime(2025, 1, 1, 10, tzinfo=UTC))
    Execution.objects.filter(pk=completed.pk).update(
        started_at=datetime(2025, 1, 2, 10, tzinfo=UTC)
    )
    return running, completed, pending


def test_the_list_is_paginated_and_shows_the_execution_fields(viewer, three_runs, api_for):
    response = api_for(viewer).get(EXECUTIONS)

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"count", "count_exact", "next", "previous", "results"}
    assert body["count_exact"] is True
    assert body["count"] == 3
    first = body["results"][0]
    for field in (
        "id", "workflow", "version", "status", "trigger", "variables", "trigger_data", "triggered_by",
        "scheduled_for", "started_at", "finished_at", "duration_ms", "jobs_completed", "jobs_total",
        "retriggered_from",
    ):  # fmt: skip
        assert field in first, field


def test_the_list_shows_the_newest_executions_first(viewer, greet, api_for):
    created = [trigger_workflow(greet, variables={"host": f"web{i}"}).pk for i in range(4)]

    response = api_for(viewer).get(EXECUTIONS)

    assert [item["id"] for item in response.json()["results"]] == created[::-1]


def test_the_list_filters_by_workflow(viewer, three_runs, api_for):
    running, completed, pending = three_runs
    client = api_for(viewer)

    assert ids_of(client.get(EXECUTIONS, {"workflow": "greet"})) == {running.pk, completed.pk}
    assert ids_of(client.get(EXECUTIONS, {"workflow": "backup"})) == {pending.pk}
    assert ids_of(client.get(EXECUTIONS, {"workflow": "nothing-here"})) == set()


def test_the_list_filters_by_one_or_several_statuses(viewer, three_runs, api_for):
    running, completed, pending = three_runs
    client = api_for(viewer)

    assert ids_of(client.get(EXECUTIONS, {"status": "running"})) == {running.pk}
    assert ids_of(client.get(EXECUTIONS, {"status": "pending"})) == {pending.pk}
    assert ids_of(client.get(f"{EXECUTIONS}?status=running&status=completed")) == {
        running.pk,
        completed.pk,
    }


def test_the_list_filters_by_trigger(viewer, three_runs, api_for):
    running, completed, pending = three_runs
    client = api_for(viewer)

    assert ids_of(client.get(EXECUTIONS, {"trigger": "webhook"})) == {completed.pk}
    assert ids_of(client.get(EXECUTIONS, {"trigger": "manual"})) == {running.pk, pending.pk}
    assert ids_of(client.get(EXECUTIONS, {"trigger": "cron"})) == set()


def test_the_list_filters_by_start_time(viewer, three_runs, api_for):
    running, completed, _pending = three_runs
    client = api_for(viewer)
    noon = "2025-01-01T12:00:00Z"

    assert ids_of(client.get(EXECUTIONS, {"started_after": noon})) == {completed.pk}
    assert ids_of(client.get(EXECUTIONS, {"started_before": noon})) == {running.pk}
    assert ids_of(
        client.get(
            EXECUTIONS,
            {"started_after": "2025-01-01T00:00:00Z", "started_before": "2025-01-03T00:00:00Z"},
        )
    ) == {running.pk, completed.pk}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("status", "bogus"),
        ("trigger", "carrier-pigeon"),
        ("started_after", "not-a-date"),
        ("started_before", "2025-13-45T99:00:00Z"),
    ],
)
def test_a_bad_filter_value_answers_400_in_the_error_shape(
    viewer, three_runs, api_for, name, value
):
    response = api_for(viewer).get(EXECUTIONS, {name: value})

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {name}


# --- roles and organizations ---


def test_a_viewer_can_read_executions_but_not_trigger(viewer, greet, api_for):
    execution = trigger_workflow(greet, variables={"host": "web1"})
    client = api_for(viewer)

    assert client.get(execution_url(execution.pk)).status_code == 200
    assert client.get(execution_url(execution.pk, "events")).status_code == 200
    assert ids_of(client.get(EXECUTIONS)) == {execution.pk}

    response = client.post(trigger_url("greet"), {"variables": {"host": "web1"}}, format="json")

    assert response.status_code == 403, response.content
    error_of(response)
    assert Execution.objects.count() == 1


@pytest.mark.parametrize("role_user", ["operator", "editor", "owner"])
def test_an_operator_or_higher_can_trigger(request, greet, api_for, role_user):
    user = request.getfixturevalue(role_user)

    response = api_for(user).post(
        trigger_url("greet"), {"variables": {"host": "web1"}}, format="json"
    )

    assert response.status_code == 201, response.content
    assert Execution.objects.get().triggered_by == user


def test_a_member_of_another_organization_gets_404_for_the_workflow_its_runs_and_trigger(
    outsider, greet, api_for
):
    execution = trigger_workflow(greet, variables={"host": "web1"})
    client = api_for(outsider)

    for response in (
        client.get("/api/v1/workflows/greet/"),
        client.get(execution_url(execution.pk)),
        client.get(execution_url(execution.pk, "events")),
        client.post(trigger_url("greet"), {"variables": {"host": "web1"}}, format="json"),
    ):
        assert response.status_code == 404, (response.request["PATH_INFO"], response.content)
        error_of(response)
    assert ids_of(client.get(EXECUTIONS)) == set()
    assert ids_of(client.get(EXECUTIONS, {"workflow": "greet"})) == set()
    assert Execution.objects.count() == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/workflows/"),
        ("get", EXECUTIONS),
        ("post", "/api/v1/workflows/"),
        ("post", trigger_url("greet")),
        ("get", "/api/v1/workflows/greet/"),
    ],
)
def test_an_anonymous_client_is_refused(greet, method, path):
    response = getattr(APIClient(), method)(path, {"variables": {"host": "web1"}}, format="json")

    assert response.status_code in (401, 403), response.content
    error_of(response)
    assert Execution.objects.count() == 0


def test_an_anonymous_client_cannot_read_an_execution(greet):
    execution = trigger_workflow(greet, variables={"host": "web1"})

    response = APIClient().get(execution_url(execution.pk))

    assert response.status_code in (401, 403), response.content
    error_of(response)


def test_a_missing_execution_answers_404_with_a_not_found_code_and_a_message(viewer, api_for):
    response = api_for(viewer).get(execution_url(987654))

    assert response.status_code == 404, response.content
    assert error_of(response)["code"] == "not_found"


# --- token authentication ---


def test_a_token_made_by_drf_create_token_authenticates_the_api(operator, greet):
    call_command("drf_create_token", "operator")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=operator).key}")

    listed = client.get("/api/v1/workflows/")
    triggered = client.post(trigger_url("greet"), {"variables": {"host": "web1"}}, format="json")

    assert listed.status_code == 200, listed.content
    assert [item["slug"] for item in listed.json()["results"]] == ["greet"]
    assert triggered.status_code == 201, triggered.content
    assert triggered.json()["triggered_by"] == "operator"


def test_a_wrong_token_is_refused(operator, greet):
    call_command("drf_create_token", "operator")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-the-right-key")

    response = client.post(trigger_url("greet"), {"variables": {"host": "web1"}}, format="json")

    assert response.status_code in (401, 403), response.content
    error_of(response)
    assert Execution.objects.count() == 0
