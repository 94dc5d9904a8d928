"""The admin: add and edit workflows as YAML, publish, run now, scoping, and execution pages."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from django.contrib.messages import get_messages
from django.utils.html import escape

from apps.executions.choices import ExecutionStatus
from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from apps.workflows.models import Workflow, WorkflowVersion
from tests.factories import make_workflow

WORKFLOWS = "/workflows/workflow/"
EXECUTIONS = "/executions/execution/"

VALID_YAML = """\
slug: deploy
name: Deploy web
variables:
  host: {type: string, required: true}
  retries: {type: integer, default: 2}
nodes:
  - id: check
    type: noop
    config: {output: {host: "{{ vars.host }}"}}
  - id: restart
    type: noop
edges:
  - {from: check, to: restart}
"""

# Two mistakes: a slug with a space and capitals, and a node type that does not exist.
TWO_MISTAKES_YAML = """\
slug: Deploy Web
name: Deploy web
nodes:
  - id: check
    type: no.such.type
edges: []
"""


def deploy_definition(**overrides: Any) -> dict[str, Any]:
    definition: dict[str, Any] = yaml.safe_load(VALID_YAML)
    definition.update(overrides)
    return definition


def change_url(workflow: Workflow) -> str:
    return f"{WORKFLOWS}{workflow.pk}/change/"


def publish_url(workflow: Workflow) -> str:
    return f"{WORKFLOWS}{workflow.pk}/publish/"


def run_url(workflow: Workflow) -> str:
    return f"{WORKFLOWS}{workflow.pk}/run/"


def execution_url(execution: Execution) -> str:
    return f"{EXECUTIONS}{execution.pk}/change/"


def form_errors(response) -> list[str]:
    """Every error of the admin form, as plain strings."""
    form = response.context["adminform"].form
    return [str(message) for messages in form.errors.values() for message in messages]


def resubmitted(response, **changes: Any) -> dict[str, Any]:
    """What the browser posts back from a rendered admin change form, with `changes` applied."""
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.forms]
    data = {}
    for form in forms:
        for bound in form:
            value = bound.value()
            if value is not None and value is not False:
                data[bound.html_name] = value
    return {**data, **changes}


@pytest.fixture
def deploy(org) -> Workflow:
    return make_workflow(org, deploy_definition())


# --- adding and editing as YAML ---


def test_adding_a_workflow_with_two_mistakes_shows_both_problems_with_their_paths(
    client, org, editor
):
    client.force_login(editor)

    response = client.post(
        f"{WORKFLOWS}add/", {"organization": org.pk, "definition": TWO_MISTAKES_YAML}
    )

    assert response.status_code == 200
    errors = form_errors(response)
    assert any(error.startswith("slug: ") for error in errors), errors
    assert any(error.startswith("nodes[0].type: unknown node type") for error in errors), errors
    page = response.content.decode()
    assert "slug: must be lowercase letters" in page
    assert escape("nodes[0].type: unknown node type 'no.such.type'") in page
    assert not Workflow.objects.exists()


def test_adding_a_workflow_with_valid_yaml_stores_it_with_the_draft(client, org, editor):
    client.force_login(editor)

    response = client.post(f"{WORKFLOWS}add/", {"organization": org.pk, "definition": VALID_YAML})

    assert response.status_code == 302
    workflow = Workflow.objects.get()
    assert (workflow.organization, workflow.slug, workflow.name) == (org, "deploy", "Deploy web")
    assert workflow.created_by == editor
    assert [node["id"] for node in workflow.draft["nodes"]] == ["check", "restart"]
    assert workflow.draft["variables"]["retries"]["default"] == 2
    assert workflow.current_version is None


def test_editing_a_workflow_with_an_error_shows_it_inline_and_leaves_the_draft_unchanged(
    client, editor, deploy
):
    client.force_login(editor)
    draft_before = deploy.draft
    broken = VALID_YAML.replace("to: restart", "to: ghost")

    page = client.get(change_url(deploy))

    response = client.post(change_url(deploy), resubmitted(page, definition=broken))

    assert response.status_code == 200
    assert escape("edges[0].to: no node with id 'ghost'") in response.content.decode()
    deploy.refresh_from_db()
    assert deploy.draft == draft_before


def test_editing_a_workflow_with_valid_yaml_replaces_the_draft(client, editor, deploy):
    client.force_login(editor)
    renamed = VALID_YAML.replace("name: Deploy web", "name: Deploy web servers")

    page = client.get(change_url(deploy))

    response = client.post(change_url(deploy), resubmitted(page, definition=renamed))

    assert response.status_code == 302
    deploy.refresh_from_db()
    assert deploy.name == "Deploy web servers"
    assert deploy.draft["name"] == "Deploy web servers"
    assert deploy.has_unpublished_changes


def test_an_editor_sees_the_published_versions_on_the_change_page(client, editor, deploy):
    client.force_login(editor)

    response = client.get(change_url(deploy))

    assert response.status_code == 200
    [versions] = response.context["inline_admin_formsets"]
    assert versions.opts.model is WorkflowVersion
    assert [form.original.number for form in versions] == [1]


# --- publish ---


def test_publishing_creates_version_one_and_an_unchanged_draft_creates_no_new_version(
    client, org, editor
):
    workflow = make_workflow(org, deploy_definition(), publish=False)
    client.force_login(editor)

    first = client.post(publish_url(workflow))

    assert first.status_code == 302
    assert first.url == change_url(workflow)
    assert [str(m) for m in get_messages(first.wsgi_request)] == [
        "Version 1 of Deploy web is live."
    ]
    workflow.refresh_from_db()
    assert workflow.current_version.number == 1
    assert workflow.current_version.created_by == editor

    second = client.post(publish_url(workflow))

    assert second.status_code == 302
    assert list(workflow.versions.values_list("number", flat=True)) == [1]


def test_publishing_by_get_is_not_allowed(client, org, editor):
    workflow = make_workflow(org, deploy_definition(), publish=False)
    client.force_login(editor)

    response = client.get(publish_url(workflow))

    assert response.status_code == 405
    assert not WorkflowVersion.objects.exists()


def test_a_viewer_cannot_publish(client, org, viewer):
    workflow = make_workflow(org, deploy_definition(), publish=False)
    client.force_login(viewer)

    response = client.post(publish_url(workflow))

    assert response.status_code == 403
    assert not WorkflowVersion.objects.exists()


# --- run now ---


def test_an_operator_sees_the_run_now_page_with_the_variables(client, operator, deploy):
    client.force_login(operator)

    response = client.get(run_url(deploy))

    assert response.status_code == 200
    page = response.content.decode()
    assert "<code>host</code>" in page
    assert "<code>retries</code>" in page
    # The form starts from the defaults.
    assert yaml.safe_load(response.context["form"]["variables"].value()) == {
        "host": None,
        "retries": 2,
    }


def test_the_run_form_has_a_typed_field_per_variable(client, operator, deploy):
    client.force_login(operator)

    page = client.get(run_url(deploy)).content.decode()

    assert 'name="var_host"' in page and 'class="required"><code>host</code>' in page
    assert 'type="number" name="var_retries" value="2"' in page
    assert "integer, default 2" in page and "string, required" in page
    assert "Advanced: the variables as YAML" in page


def test_running_from_the_typed_fields_sends_typed_values(client, operator, deploy):
    client.force_login(operator)

    response = client.post(
        run_url(deploy), {"mode": "form", "var_host": "web-1", "var_retries": "5"}
    )

    execution = Execution.objects.get()
    assert response.status_code == 302
    assert execution.variables == {"host": "web-1", "retries": 5}


def test_the_typed_form_says_what_is_wrong_next_to_the_field(client, operator, deploy):
    client.force_login(operator)

    missing = client.post(run_url(deploy), {"mode": "form", "var_host": "", "var_retries": ""})
    wrong = client.post(run_url(deploy), {"mode": "form", "var_host": "a", "var_retries": "x"})

    assert missing.status_code == 200 and wrong.status_code == 200
    assert missing.context["form"].errors["var_host"] == ["This field is required."]
    assert "Enter a whole number." in wrong.context["form"].errors["var_retries"]
    assert not Execution.objects.exists()


def test_boolean_and_object_variables_arrive_typed(client, org, operator):
    workflow = make_workflow(
        org,
        {
            "slug": "typed",
            "name": "Typed",
            "variables": {
                "dry_run": {"type": "boolean", "default": True},
                "targets": {"type": "array"},
                "ratio": {"type": "number"},
            },
            "nodes": [{"id": "a", "type": "noop"}],
            "edges": [],
        },
    )
    client.force_login(operator)

    client.post(
        run_url(workflow),
        {
            "mode": "form",
            "var_dry_run": "false",
            "var_targets": '["web-1", "web-2"]',
            "var_ratio": "0.5",
        },
    )

    assert Execution.objects.get().variables == {
        "dry_run": False,
        "targets": ["web-1", "web-2"],
        "ratio": 0.5,
    }


@pytest.mark.parametrize("text", ["[" * 100_000, "{not json", '{"a": ' * 70 + "1" + "}" * 70])
def test_a_hostile_json_variable_is_a_form_error_not_a_500(client, org, operator, text):
    workflow = make_workflow(
        org,
        {
            "slug": "json-var",
            "name": "JSON var",
            "variables": {"payload": {"type": "object"}},
            "nodes": [{"id": "a", "type": "noop"}],
            "edges": [],
        },
    )
    client.force_login(operator)

    response = client.post(run_url(workflow), {"mode": "form", "var_payload": text})

    assert response.status_code == 200
    assert response.context["form"].errors["var_payload"]
    assert not Execution.objects.exists()


def test_running_with_variables_redirects_to_the_new_execution(client, operator, deploy):
    client.force_login(operator)

    response = client.post(run_url(deploy), {"variables": "host: web-1\nretries: 5\n"})

    execution = Execution.objects.get()
    assert response.status_code == 302
    assert response.url == execution_url(execution)
    assert execution.workflow == deploy
    assert execution.version == deploy.current_version
    assert execution.variables == {"host": "web-1", "retries": 5}
    assert execution.triggered_by == operator


def test_running_without_a_required_variable_shows_the_error_and_creates_nothing(
    client, operator, deploy
):
    client.force_login(operator)

    response = client.post(run_url(deploy), {"variables": "retries: 5\n"})

    assert response.status_code == 200
    assert response.context["form"].errors["variables"] == ["variables.host: required"]
    assert "variables.host: required" in response.content.decode()
    assert not Execution.objects.exists()


def test_running_with_variables_that_are_not_yaml_shows_an_error(client, operator, deploy):
    client.force_login(operator)

    response = client.post(run_url(deploy), {"variables": "host: [web-1\n"})

    assert response.status_code == 200
    [error] = response.context["form"].errors["variables"]
    assert error.startswith("not valid YAML or JSON")
    assert "not valid YAML or JSON" in response.content.decode()
    assert not Execution.objects.exists()


def test_running_a_workflow_never_published_shows_why_and_creates_nothing(client, org, operator):
    workflow = make_workflow(org, deploy_definition(), publish=False)
    client.force_login(operator)

    response = client.post(run_url(workflow), {"variables": "host: web-1"})

    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        "Workflow 'deploy' has no published version; publish it first."
    ]
    assert not Execution.objects.exists()


def test_a_viewer_cannot_open_or_post_the_run_now_page(client, viewer, deploy):
    client.force_login(viewer)

    assert client.get(run_url(deploy)).status_code == 403
    assert client.post(run_url(deploy), {"variables": "host: web-1"}).status_code == 403
    assert not Execution.objects.exists()


# --- organization scoping ---


def test_the_changelist_of_an_outsider_does_not_list_the_organizations_workflow(
    client, outsider, deploy
):
    client.force_login(outsider)

    response = client.get(WORKFLOWS)

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []
    assert "Deploy web" not in response.content.decode()


def test_the_change_page_of_another_organizations_workflow_is_404_without_revealing_it(
    client, outsider, deploy
):
    client.force_login(outsider)

    response = client.get(change_url(deploy))

    # A missing (here: out of scope) row is 404, as in the API (issue 10 item 2).
    assert response.status_code == 404
    page = response.content.decode()
    assert "Deploy web" not in page
    assert "deploy" not in page.lower()


def test_the_changelist_filters_of_an_outsider_do_not_name_other_organizations(
    client, outsider, deploy
):
    client.force_login(outsider)

    response = client.get(WORKFLOWS)

    assert response.status_code == 200
    assert deploy.organization.name not in response.content.decode()


def test_an_outsider_cannot_publish_or_run_another_organizations_workflow(client, outsider, deploy):
    client.force_login(outsider)

    assert client.post(publish_url(deploy)).status_code == 404
    assert client.get(run_url(deploy)).status_code == 404
    assert client.post(run_url(deploy), {"variables": "host: web-1"}).status_code == 404
    assert not Execution.objects.exists()


# --- execution pages ---


GREETING = {
    "slug": "greet",
    "name": "Greet",
    "variables": {"who": {"type": "string", "default": "ops"}},
    "nodes": [
        {"id": "hello", "type": "noop", "config": {"output": {"greeting": "hello {{ vars.who }}"}}},
        {"id": "done", "type": "noop"},
    ],
    "edges": [{"from": "hello", "to": "done"}],
}


@pytest.fixture
def finished_execution(org, workers) -> Execution:
    workflow = make_workflow(org, GREETING)
    execution = workers.run_to_end(trigger_workflow(workflow, variables={"who": "team"}))
    assert execution.status == ExecutionStatus.COMPLETED
    return execution


@pytest.mark.django_db(transaction=True)
def test_the_execution_changelist_shows_the_status_badge_and_jobs(
    client, viewer, finished_execution
):
    client.force_login(viewer)

    response = client.get(EXECUTIONS)

    assert response.status_code == 200
    page = response.content.decode()
    assert 'class="opsflow-badge opsflow-completed opsflow-bg-green"' in page  # green: completed
    assert re.search(r'<td class="field-jobs\b[^>]*>2 ✓ / 2</td>', page)
    assert f'href="{execution_url(finished_execution)}"' in page
    # a finished list does not refresh itself
    assert "opsflow-results" in page and 'hx-trigger="every 15s"' not in page


def test_a_list_with_a_run_still_going_refreshes_itself(client, org, viewer, redis_conn):
    trigger_workflow(make_workflow(org, GREETING))
    client.force_login(viewer)

    page = client.get(EXECUTIONS).content.decode()

    assert 'hx-trigger="every 15s"' in page and 'hx-select="#opsflow-results"' in page


@pytest.mark.django_db(transaction=True)
def test_the_execution_page_shows_steps_with_rendered_input_and_output_and_the_log(
    client, viewer, finished_execution
):
    client.force_login(viewer)

    response = client.get(execution_url(finished_execution))

    assert response.status_code == 200
    page = response.content.decode()
    assert "<html" in page
    hello = finished_execution.steps.get(node_id="hello")
    assert hello.output == {"greeting": "hello team"}
    assert escape(json.dumps(hello.output, indent=2)) in page
    assert escape(json.dumps(hello.input, indent=2)) in page
    assert "hello team" in page and "vars.who" not in page
    assert "<strong>done</strong>" in page
    for message in finished_execution.events.values_list("message", flat=True):
        assert escape(message) in page
    assert "Execution completed" in page
    assert "hx-trigger" not in page


@pytest.mark.django_db(transaction=True)
def test_refreshing_a_finished_execution_gets_only_the_partial_with_nothing_live(
    client, viewer, finished_execution
):
    client.force_login(viewer)

    response = client.get(execution_url(finished_execution), headers={"HX-Request": "true"})

    assert response.status_code == 200
    page = response.content.decode()
    assert "<html" not in page
    assert page.lstrip().startswith('<div id="execution-detail"')
    assert "hx-trigger" not in page
    assert "hello team" in page


def test_an_unfinished_execution_follows_its_event_stream(client, org, viewer, redis_conn):
    execution = trigger_workflow(make_workflow(org, GREETING))
    client.force_login(viewer)

    page = client.get(execution_url(execution)).content.decode()
    assert f'sse-connect="/api/v1/executions/{execution.pk}/stream/"' in page
    assert 'sse-close="end"' in page

    response = client.get(execution_url(execution), headers={"HX-Request": "true"})

    assert response.status_code == 200
    partial = response.content.decode()
    assert "<html" not in partial and "sse-connect" not in partial
    assert 'hx-trigger="sse:status delay:150ms, sse:step delay:150ms' in partial
    assert f'hx-get="{execution_url(execution)}"' in partial


def test_a_paused_execution_is_live_too(client, org, viewer, redis_conn):
    execution = trigger_workflow(make_workflow(org, GREETING))
    Execution.objects.filter(pk=execution.pk).update(status="paused")
    client.force_login(viewer)

    page = client.get(execution_url(execution)).content.decode()

    assert "sse-connect" in page


def test_an_outsider_cannot_open_another_organizations_execution(client, org, outsider, redis_conn):
    execution = trigger_workflow(make_workflow(org, GREETING))
    client.force_login(outsider)

    assert client.get(execution_url(execution)).status_code == 404
    listing = client.get(EXECUTIONS)
    assert list(listing.context["cl"].result_list) == []


def test_the_execution_changelist_filters_of_an_outsider_do_not_name_other_workflows(
    client, org, outsider, redis_conn
):
    trigger_workflow(make_workflow(org, GREETING))
    make_workflow(org, deploy_definition())
    client.force_login(outsider)

    response = client.get(EXECUTIONS)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Greet" not in page
    assert "Deploy web" not in page


# --- version diff ---


def diff_url(workflow: Workflow, query: str = "") -> str:
    return f"{WORKFLOWS}{workflow.pk}/diff/{query}"


def test_the_diff_shows_what_changed_between_two_versions(client, org, viewer):
    from apps.workflows.services import publish_workflow, update_draft

    workflow = make_workflow(org, deploy_definition())
    update_draft(workflow, deploy_definition(name="Deploy the web tier"))
    publish_workflow(workflow)
    client.force_login(viewer)

    response = client.get(diff_url(workflow))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'class="diff"' in page
    assert "version 1" in page and "version 2" in page
    table = page[page.index('class="diff"') :]
    assert "tier</span>" in table and 'class="diff_add"' in table  # the words added, marked
    assert "name:&nbsp;Deploy&nbsp;web</td>" in table  # the old name, in the left column


def test_the_diff_against_the_draft_and_of_equal_documents(client, org, viewer):
    workflow = make_workflow(org, deploy_definition())
    client.force_login(viewer)

    same = client.get(diff_url(workflow, "?a=1&b=draft")).content.decode()

    assert "No differences" in same


@pytest.mark.parametrize("query", ["?a=9", "?b=x", "?a=%00", "?a=1.5"])
def test_a_version_that_does_not_exist_is_a_clear_400(client, org, viewer, query):
    workflow = make_workflow(org, deploy_definition())
    client.force_login(viewer)

    response = client.get(diff_url(workflow, query))

    assert response.status_code == 400
    assert "no version" in response.content.decode()


def test_the_diff_never_shows_a_secret_typed_into_a_config(client, org, viewer):
    from apps.workflows.services import publish_workflow, update_draft

    secret = {
        "slug": "deploy",
        "name": "Deploy web",
        "nodes": [
            {
                "id": "call",
                "type": "http.request",
                "config": {
                    "url": "https://x.example/",
                    "headers": {"Authorization": "Bearer s3cr3t"},
                },
            }
        ],
        "edges": [],
    }
    workflow = make_workflow(org, secret)
    secret["name"] = "Deploy web 2"
    secret["nodes"][0]["config"]["headers"]["Authorization"] = "Bearer n3w-s3cr3t"
    update_draft(workflow, secret)
    publish_workflow(workflow)
    client.force_login(viewer)

    page = client.get(diff_url(workflow)).content.decode()

    assert "s3cr3t" not in page and "n3w" not in page
    assert "Deploy&nbsp;web" in page
