"""The workflows REST API (DESIGN §9): create, draft, publish, versions, patch, delete."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from apps.accounts.choices import Role
from apps.accounts.models import Membership
from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from apps.workflows.models import Workflow, WorkflowVersion
from tests.api_errors import detail_paths, error_of
from tests.factories import chain_definition, make_user, make_workflow

WORKFLOWS = "/api/v1/workflows/"


def workflow_url(slug: str, action: str = "") -> str:
    return f"{WORKFLOWS}{slug}/" + (f"{action}/" if action else "")


def deploy_definition(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "slug": "deploy",
        "name": "Deploy web",
        "trigger": {"type": "manual"},
        "settings": {"max_concurrent_executions": 2},
        "variables": {"host": {"type": "string", "required": True}},
        "nodes": [
            {"id": "check", "type": "noop", "config": {"output": {"host": "{{ vars.host }}"}}},
            {"id": "restart", "type": "noop"},
        ],
        "edges": [{"from": "check", "to": "restart"}],
    }
    document.update(overrides)
    return document


@pytest.fixture
def deploy(org):
    """A published workflow of `org` (version 1)."""
    return make_workflow(org, deploy_definition())


# --- create ---


def test_it_creates_a_workflow_from_a_json_definition(editor, org, api_for):
    response = api_for(editor).post(WORKFLOWS, deploy_definition(), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    workflow = Workflow.objects.get(organization=org, slug="deploy")
    assert body["slug"] == "deploy"
    assert body["name"] == "Deploy web"
    assert body["is_active"] is True
    assert body["published_version"] is None
    assert body["trigger"] == {"type": "manual"}
    assert body["settings"] == {
        "store_incomplete_executions": False,
        "sequential_processing": False,
        "allow_data_loss": False,
        "max_concurrent_executions": 2,
        "concurrency_policy": "queue",
        "retention_days": None,
    }
    assert body["webhook_url"] == f"http://testserver/hooks/{workflow.webhook_key}/"
    assert [node["id"] for node in body["definition"]["nodes"]] == ["check", "restart"]
    # the definition is the document as written (no defaults added); versions hold the normalized form
    assert body["definition"]["edges"] == [{"from": "check", "to": "restart"}]
    assert "retry" not in body["definition"]["nodes"][0]
    assert body["definition"]["variables"]["host"]["required"] is True
    assert workflow.draft == body["definition"]
    assert workflow.current_version is None


def test_it_lists_every_problem_of_a_bad_definition_with_its_path_and_stores_nothing(
    editor, api_for
):
    document = deploy_definition(
        trigger={"type": "cron", "schedule": "every tuesday"},
        nodes=[{"id": "check", "type": "noop"}, {"id": "restart", "type": "teleport"}],
        edges=[{"from": "check", "to": "nowhere"}],
    )

    response = api_for(editor).post(WORKFLOWS, document, format="json")

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"trigger.schedule", "nodes[1].type", "edges[0].to"}
    assert all(detail["message"] for detail in error_of(response)["details"])
    assert Workflow.objects.count() == 0


def test_it_refuses_a_slug_that_already_exists_in_the_organization(editor, deploy, api_for):
    response = api_for(editor).post(WORKFLOWS, deploy_definition(name="Another"), format="json")

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"slug"}
    assert Workflow.objects.count() == 1
    assert Workflow.objects.get().name == "Deploy web"


def test_it_allows_the_same_slug_in_another_organization(outsider, other_org, deploy, api_for):
    response = api_for(outsider).post(WORKFLOWS, deploy_definition(), format="json")

    assert response.status_code == 201, response.content
    assert Workflow.objects.filter(slug="deploy").count() == 2
    assert Workflow.objects.filter(organization=other_org, slug="deploy").exists()


def test_a_member_of_several_organizations_must_name_the_organization(org, other_org, api_for):
    user = make_user("multi", org, Role.EDITOR)
    Membership.objects.create(organization=other_org, user=user, role=Role.EDITOR)
    client = api_for(user)

    refused = client.post(WORKFLOWS, deploy_definition(), format="json")

    assert refused.status_code == 400, refused.content
    assert detail_paths(refused) == {"organization"}
    assert Workflow.objects.count() == 0

    accepted = client.post(WORKFLOWS, deploy_definition(organization="globex"), format="json")

    assert accepted.status_code == 201, accepted.content
    assert accepted.json()["organization"] == "globex"
    assert Workflow.objects.get().organization == other_org


def test_a_viewer_cannot_create_a_workflow(viewer, api_for):
    response = api_for(viewer).post(WORKFLOWS, deploy_definition(), format="json")

    assert response.status_code == 403, response.content
    error_of(response)
    assert Workflow.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    ["{not json", '{"slug": "deploy",', "\x00\x01binary"],
    ids=["broken-json", "truncated-json", "binary"],
)
def test_it_answers_400_in_the_error_shape_to_a_body_that_is_not_json(editor, api_for, body):
    response = api_for(editor).post(WORKFLOWS, body, content_type="application/json")

    assert response.status_code == 400, response.content
    error_of(response)
    assert Workflow.objects.count() == 0


@pytest.mark.parametrize(
    "body", [[], "a string", 42, None], ids=["list", "string", "number", "null"]
)
def test_it_answers_400_to_a_json_body_that_is_not_an_object(editor, api_for, body):
    response = api_for(editor).post(WORKFLOWS, json.dumps(body), content_type="application/json")

    assert response.status_code == 400, response.content
    error_of(response)
    assert Workflow.objects.count() == 0


def test_it_answers_415_to_a_body_that_is_not_sent_as_json(editor, api_for):
    response = api_for(editor).post(WORKFLOWS, "slug: deploy", content_type="text/plain")

    assert response.status_code == 415, response.content
    error_of(response)
    assert Workflow.objects.count() == 0


@pytest.mark.parametrize(
    ("mistake", "path"),
    [
        pytest.param(
            {"nodes": [{"id": "check", "type": ["noop"]}]}, "nodes[0].type", id="node-type-list"
        ),
        pytest.param(
            {
                "nodes": [
                    {"id": {"name": "check"}, "type": "noop"},
                    {"id": "restart", "type": "noop"},
                ]
            },
            "nodes[0].id",
            id="node-id-object",
        ),
        pytest.param(
            {"edges": [{"from": ["check"], "to": "restart"}]}, "edges[0].from", id="edge-from-list"
        ),
        pytest.param(
            {"edges": [{"from": "check", "to": {"id": "restart"}}]},
            "edges[0].to",
            id="edge-to-object",
        ),
    ],
)
def test_a_list_or_object_where_a_name_belongs_is_a_400_not_a_500(editor, api_for, mistake, path):
    client = api_for(editor)
    client.raise_request_exception = False

    response = client.post(WORKFLOWS, deploy_definition(**mistake), format="json")

    assert response.status_code == 400, response.content
    assert path in detail_paths(response)
    assert Workflow.objects.count() == 0


# --- read ---


def test_it_lists_only_the_workflows_of_the_users_organizations(viewer, deploy, other_org, api_for):
    make_workflow(other_org, chain_definition("foreign", 1))

    response = api_for(viewer).get(WORKFLOWS)

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"count", "count_exact", "next", "previous", "results"}
    assert body["count_exact"] is True
    assert body["count"] == 1
    assert [item["slug"] for item in body["results"]] == ["deploy"]
    assert body["results"][0]["published_version"] == 1


def test_a_viewer_can_read_a_workflow(viewer, deploy, api_for):
    response = api_for(viewer).get(workflow_url("deploy"))

    assert response.status_code == 200, response.content
    assert response.json()["slug"] == "deploy"
    assert response.json()["published_version"] == 1


# --- draft ---


def test_putting_a_valid_draft_replaces_it_without_publishing(editor, deploy, api_for):
    changed = deploy_definition(name="Deploy web tier")
    changed["nodes"][1]["config"] = {"output": {"done": True}}

    response = api_for(editor).put(workflow_url("deploy", "draft"), changed, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["name"] == "Deploy web tier"
    assert body["definition"]["nodes"][1]["config"] == {"output": {"done": True}}
    assert body["published_version"] == 1
    deploy.refresh_from_db()
    assert deploy.draft["nodes"][1]["config"] == {"output": {"done": True}}
    assert deploy.current_version.definition["nodes"][1]["config"] == {}


def test_putting_an_invalid_draft_lists_its_problems_and_keeps_the_old_draft(
    editor, deploy, api_for
):
    before = copy.deepcopy(deploy.draft)
    broken = deploy_definition(
        nodes=[{"id": "check", "type": "noop"}, {"id": "check", "type": "noop"}],
        edges=[{"from": "check", "to": "check"}],
    )

    response = api_for(editor).put(workflow_url("deploy", "draft"), broken, format="json")

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"nodes[1].id", "edges[0]"}
    deploy.refresh_from_db()
    assert deploy.draft == before


def test_a_draft_cannot_change_the_workflows_slug(editor, deploy, api_for):
    response = api_for(editor).put(
        workflow_url("deploy", "draft"), deploy_definition(slug="renamed"), format="json"
    )

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"slug"}
    assert Workflow.objects.get().slug == "deploy"


def test_a_viewer_cannot_put_a_draft(viewer, deploy, api_for):
    before = copy.deepcopy(deploy.draft)

    response = api_for(viewer).put(
        workflow_url("deploy", "draft"), deploy_definition(name="Hijacked"), format="json"
    )

    assert response.status_code == 403, response.content
    deploy.refresh_from_db()
    assert deploy.draft == before


# --- publish and versions ---


def test_publishing_numbers_versions_one_then_two_after_a_draft_change(editor, org, api_for):
    client = api_for(editor)
    assert client.post(WORKFLOWS, deploy_definition(), format="json").status_code == 201

    first = client.post(workflow_url("deploy", "publish"))

    assert first.status_code == 201, first.content
    assert first.json()["version"] == 1
    assert client.get(workflow_url("deploy")).json()["published_version"] == 1

    changed = deploy_definition(name="Deploy web v2")
    assert client.put(workflow_url("deploy", "draft"), changed, format="json").status_code == 200
    second = client.post(workflow_url("deploy", "publish"))

    assert second.status_code == 201, second.content
    assert second.json()["version"] == 2
    assert second.json()["definition"]["name"] == "Deploy web v2"
    assert client.get(workflow_url("deploy")).json()["published_version"] == 2
    assert list(WorkflowVersion.objects.order_by("number").values_list("number", flat=True)) == [
        1,
        2,
    ]


def test_publishing_an_unchanged_draft_makes_no_new_version(editor, deploy, api_for):
    response = api_for(editor).post(workflow_url("deploy", "publish"))

    assert response.json()["version"] == 1
    assert WorkflowVersion.objects.count() == 1


def test_an_operator_cannot_publish(operator, deploy, api_for):
    response = api_for(operator).post(workflow_url("deploy", "publish"))

    assert response.status_code == 403, response.content
    error_of(response)


def test_versions_are_listed_newest_first_in_the_paginated_form(editor, deploy, api_for):
    client = api_for(editor)
    client.put(workflow_url("deploy", "draft"), deploy_definition(name="Second"), format="json")
    client.post(workflow_url("deploy", "publish"))

    response = client.get(workflow_url("deploy", "versions"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"count", "count_exact", "next", "previous", "results"}
    assert body["count_exact"] is True
    assert body["count"] == 2
    assert body["next"] is None and body["previous"] is None
    assert [v["version"] for v in body["results"]] == [2, 1]
    assert [v["is_current"] for v in body["results"]] == [True, False]
    assert body["results"][0]["created_by"] == "editor"
    assert body["results"][1]["definition"]["name"] == "Deploy web"


# --- patch ---


def test_patching_name_and_is_active_changes_them(editor, deploy, api_for):
    response = api_for(editor).patch(
        workflow_url("deploy"), {"name": "Renamed", "is_active": False}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Renamed"
    assert response.json()["is_active"] is False
    deploy.refresh_from_db()
    assert (deploy.name, deploy.is_active) == ("Renamed", False)


@pytest.mark.parametrize("field", ["slug", "definition", "webhook_url", "colour"])
def test_patching_a_field_that_cannot_change_answers_400_and_changes_nothing(
    editor, deploy, api_for, field
):
    response = api_for(editor).patch(
        workflow_url("deploy"), {"name": "Renamed", field: "x"}, format="json"
    )

    assert response.status_code == 400, response.content
    assert field in detail_paths(response)
    deploy.refresh_from_db()
    assert (deploy.slug, deploy.name) == ("deploy", "Deploy web")


def test_patching_only_an_unknown_field_answers_400(editor, deploy, api_for):
    response = api_for(editor).patch(workflow_url("deploy"), {"owner": "mallory"}, format="json")

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"owner"}


def test_patching_with_a_value_of_the_wrong_type_answers_400(editor, deploy, api_for):
    response = api_for(editor).patch(
        workflow_url("deploy"), {"is_active": "perhaps"}, format="json"
    )

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"is_active"}
    deploy.refresh_from_db()
    assert deploy.is_active is True


def test_an_operator_cannot_patch_a_workflow(operator, deploy, api_for):
    response = api_for(operator).patch(workflow_url("deploy"), {"name": "Renamed"}, format="json")

    assert response.status_code == 403, response.content
    deploy.refresh_from_db()
    assert deploy.name == "Deploy web"


# --- delete ---


def test_an_editor_can_delete_a_workflow(editor, deploy, api_for):
    response = api_for(editor).delete(workflow_url("deploy"))

    assert response.status_code == 204, response.content
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("role_user", ["viewer", "operator"])
def test_a_role_below_editor_cannot_delete_a_workflow(request, deploy, api_for, role_user):
    user = request.getfixturevalue(role_user)

    response = api_for(user).delete(workflow_url("deploy"))

    assert response.status_code == 403, response.content
    error_of(response)
    assert Workflow.objects.filter(pk=deploy.pk).exists()


def test_deleting_a_workflow_that_has_executions_answers_409_and_keeps_it(editor, deploy, api_for):
    execution = trigger_workflow(deploy, variables={"host": "web1"})

    response = api_for(editor).delete(workflow_url("deploy"))

    assert response.status_code == 409, response.content
    assert error_of(response)["code"] == "conflict"
    assert Workflow.objects.filter(pk=deploy.pk).exists()
    assert Execution.objects.filter(pk=execution.pk).exists()


# --- other organizations ---


@pytest.mark.parametrize(
    ("method", "action", "body"),
    [
        ("get", "", None),
        ("patch", "", {"name": "Stolen"}),
        ("delete", "", None),
        ("put", "draft", deploy_definition(name="Stolen")),
        ("post", "publish", None),
        ("get", "versions", None),
    ],
)
def test_a_member_of_another_organization_gets_404_and_changes_nothing(
    outsider, deploy, api_for, method, action, body
):
    draft_before = copy.deepcopy(deploy.draft)

    response = getattr(api_for(outsider), method)(
        workflow_url("deploy", action), body, format="json"
    )

    assert response.status_code == 404, response.content
    error_of(response)
    deploy.refresh_from_db()
    assert (deploy.name, deploy.draft) == ("Deploy web", draft_before)
    assert WorkflowVersion.objects.filter(workflow=deploy).count() == 1
