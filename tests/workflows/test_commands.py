"""Management commands: import, export, seed the demo, trigger a run, and standalone's admin user."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.accounts.models import Organization
from apps.executions.choices import ExecutionStatus
from apps.executions.management.commands.standalone import Command as StandaloneCommand
from apps.executions.models import Execution
from apps.workflows.definition import load_yaml, normalize
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import update_draft
from tests.factories import chain_definition, make_workflow

DEPLOY = {
    "slug": "deploy",
    "name": "Deploy web",
    "variables": {"host": {"type": "string", "default": "web-1"}},
    "nodes": [
        {"id": "check", "type": "noop", "config": {"output": {"host": "{{ vars.host }}"}}},
        {"id": "restart", "type": "noop"},
    ],
    "edges": [{"from": "check", "to": "restart"}],
}


def run(*args: str, **options: Any) -> str:
    """Run a management command and return what it printed."""
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def write_definition(directory: Path, document: dict[str, Any] | str, name="deploy.yaml") -> Path:
    path = directory / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


# --- import_workflow ---


def test_import_creates_the_workflow_in_the_only_organization(org, tmp_path):
    output = run("import_workflow", str(write_definition(tmp_path, DEPLOY)))

    assert "Created deploy in acme." in output
    workflow = Workflow.objects.get()
    assert (workflow.organization, workflow.slug, workflow.name) == (org, "deploy", "Deploy web")
    assert workflow.draft["nodes"][0]["config"] == DEPLOY["nodes"][0]["config"]
    assert workflow.current_version is None


def test_a_second_import_updates_the_workflow_with_the_same_slug(org, tmp_path):
    run("import_workflow", str(write_definition(tmp_path, DEPLOY)))
    renamed = {**DEPLOY, "name": "Deploy web servers"}

    output = run("import_workflow", str(write_definition(tmp_path, renamed)))

    assert "Updated deploy in acme." in output
    workflow = Workflow.objects.get()
    assert workflow.name == "Deploy web servers"
    assert workflow.draft["name"] == "Deploy web servers"


def test_import_with_publish_publishes_the_draft(org, tmp_path):
    output = run("import_workflow", str(write_definition(tmp_path, DEPLOY)), "--publish")

    assert "Created deploy in acme, published version 1." in output
    workflow = Workflow.objects.get()
    assert workflow.current_version.number == 1
    assert workflow.current_version.definition == normalize(workflow.draft)
    assert workflow.current_version.definition["edges"][0]["on"] == "success"  # defaults filled in


def test_import_uses_the_organization_named_in_the_document(org, other_org, tmp_path):
    path = write_definition(tmp_path, {**DEPLOY, "organization": "globex"})

    output = run("import_workflow", str(path))

    assert "Created deploy in globex." in output
    workflow = Workflow.objects.get()
    assert workflow.organization == other_org
    assert "organization" not in workflow.draft


def test_importing_an_invalid_file_lists_the_problem_paths_and_stores_nothing(org, tmp_path):
    broken = {
        **DEPLOY,
        "slug": "Deploy Web",
        "edges": [{"from": "check", "to": "ghost"}],
    }

    with pytest.raises(CommandError) as raised:
        run("import_workflow", str(write_definition(tmp_path, broken)), "--publish")

    message = str(raised.value)
    assert message.startswith("Invalid definition:")
    assert "  slug: must be lowercase letters" in message
    assert "  edges[0].to: no node with id 'ghost'" in message
    assert not Workflow.objects.exists()


def test_importing_a_file_that_is_not_yaml_is_a_command_error(org, tmp_path):
    with pytest.raises(CommandError, match="not valid YAML or JSON"):
        run("import_workflow", str(write_definition(tmp_path, "slug: [deploy\n")))

    assert not Workflow.objects.exists()


def test_importing_a_missing_file_is_a_command_error(org, tmp_path):
    missing = tmp_path / "nowhere.yaml"

    with pytest.raises(CommandError, match=f"No such file: {missing}"):
        run("import_workflow", str(missing))

    assert not Workflow.objects.exists()


# --- export_workflow ---


def test_export_prints_yaml_that_parses_back_to_the_definition(org):
    workflow = make_workflow(org, DEPLOY)

    output = run("export_workflow", "deploy")

    assert load_yaml(output) == workflow.draft


def test_export_as_json_prints_the_definition(org):
    workflow = make_workflow(org, DEPLOY)

    output = run("export_workflow", "deploy", "--format", "json")

    assert json.loads(output) == workflow.draft


def test_export_of_a_version_prints_that_version_not_the_draft(org):
    workflow = make_workflow(org, DEPLOY)
    update_draft(workflow, {**DEPLOY, "name": "Deploy web servers"})
    version_one = workflow.versions.get(number=1).definition

    output = run("export_workflow", "deploy", "--version", "1")

    assert load_yaml(output) == version_one
    assert load_yaml(output)["name"] == "Deploy web"


def test_export_of_an_unknown_slug_is_a_command_error(org):
    with pytest.raises(CommandError, match="No workflow 'nope' in acme."):
        run("export_workflow", "nope")


def test_export_of_an_unknown_version_is_a_command_error(org):
    make_workflow(org, DEPLOY)

    with pytest.raises(CommandError, match="deploy has no version 7."):
        run("export_workflow", "deploy", "--version", "7")


def test_export_needs_the_organization_when_there_are_several(org, other_org):
    make_workflow(other_org, DEPLOY)

    with pytest.raises(CommandError, match="--organization"):
        run("export_workflow", "deploy")
    assert load_yaml(run("export_workflow", "deploy", "--organization", "globex"))["slug"] == (
        "deploy"
    )


# --- seed_demo ---

DEMO_SLUGS = ["alert-restart", "fan-out-join", "gated-restart", "portal-health"]


@pytest.mark.django_db
def test_seed_demo_creates_the_demo_organization_and_publishes_the_demo_workflows():
    output = run("seed_demo", "--base-url", "http://portal.test:9000/")

    demo = Organization.objects.get(slug="demo")
    workflows = Workflow.objects.filter(organization=demo).order_by("slug")
    assert [w.slug for w in workflows] == DEMO_SLUGS
    for workflow in workflows:
        assert workflow.current_version.number == 1
        assert not workflow.has_unpublished_changes
        assert f"Demo workflow {workflow.slug} created (version 1)." in output
    health = workflows.get(slug="portal-health").current_version.definition
    assert health["variables"]["base_url"]["default"] == "http://portal.test:9000"


@pytest.mark.django_db
def test_seeding_the_demo_twice_creates_no_duplicates():
    run("seed_demo")

    output = run("seed_demo")

    assert Organization.objects.filter(slug="demo").count() == 1
    assert Workflow.objects.count() == len(DEMO_SLUGS)
    assert WorkflowVersion.objects.count() == len(DEMO_SLUGS)
    assert output.count("updated (version 1)") == len(DEMO_SLUGS)


# --- trigger_workflow on the embedded path ---

COUNT = {
    "slug": "count",
    "name": "Count",
    "variables": {"n": {"type": "integer", "required": True}},
    "nodes": [
        {"id": "start", "type": "noop", "config": {"output": {"n": "{{ vars.n }}"}}},
        {"id": "done", "type": "noop"},
    ],
    "edges": [{"from": "start", "to": "done"}],
}

FAILING = {
    "slug": "failing",
    "name": "Failing",
    "nodes": [{"id": "boom", "type": "shell.command", "config": {"script": "exit 1"}}],
    "edges": [],
}


@pytest.fixture
def embedded(settings, request):
    """No REDIS_URL: the command works the run in-process, on a fresh fakeredis."""
    settings.REDIS_URL = None
    return request.getfixturevalue("redis_conn")


@pytest.mark.django_db(transaction=True)
def test_trigger_works_the_run_in_process_and_prints_completed(org, embedded):
    make_workflow(org, COUNT)

    output = run("trigger_workflow", "count", "--var", "n=3")

    execution = Execution.objects.get()
    assert execution.status == ExecutionStatus.COMPLETED
    assert f"Execution #{execution.pk} created." in output
    assert f"Execution #{execution.pk} completed in " in output
    assert list(execution.steps.values_list("node_id", flat=True).order_by("id")) == [
        "start",
        "done",
    ]


@pytest.mark.django_db(transaction=True)
def test_trigger_reads_a_var_as_yaml_so_a_number_is_an_integer(org, embedded):
    make_workflow(org, COUNT)

    run("trigger_workflow", "count", "--var", "n=3")

    execution = Execution.objects.get()
    assert execution.variables == {"n": 3}
    assert execution.steps.get(node_id="start").output == {"n": 3}


@pytest.mark.django_db(transaction=True)
def test_trigger_of_a_run_that_fails_is_a_command_error_naming_failed(org, embedded):
    make_workflow(org, FAILING)

    with pytest.raises(CommandError) as raised:
        run("trigger_workflow", "failing")

    execution = Execution.objects.get()
    assert execution.status == ExecutionStatus.FAILED
    assert f"Execution #{execution.pk} failed in " in str(raised.value)
    assert execution.error_message in str(raised.value)


@pytest.mark.django_db(transaction=True)
def test_trigger_without_a_required_variable_is_a_command_error(org, embedded):
    make_workflow(org, COUNT)

    with pytest.raises(CommandError, match="variables.n: required"):
        run("trigger_workflow", "count")

    assert not Execution.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_trigger_of_a_workflow_never_published_is_a_command_error(org, embedded):
    make_workflow(org, chain_definition("draft-only", 2), publish=False)

    with pytest.raises(CommandError, match="no published version"):
        run("trigger_workflow", "draft-only")

    assert not Execution.objects.exists()


def test_trigger_rejects_a_var_without_an_equals_sign(org, redis_conn):
    make_workflow(org, COUNT)

    with pytest.raises(CommandError, match="--var takes name=value"):
        run("trigger_workflow", "count", "--var", "n")

    assert not Execution.objects.exists()


# --- standalone: the first admin user ---


@pytest.mark.django_db
def test_ensure_admin_creates_a_superuser_with_a_generated_password_kept_in_var(settings, tmp_path):
    settings.VAR_DIR = tmp_path

    username, password = StandaloneCommand()._ensure_admin()

    admin = get_user_model().objects.get(username="admin")
    assert username == "admin"
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password(password)
    password_file = tmp_path / "admin-password.txt"
    assert password_file.read_text() == password + "\n"
    assert password_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.django_db
def test_ensure_admin_twice_returns_the_same_password_without_a_second_user(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first = StandaloneCommand()._ensure_admin()

    second = StandaloneCommand()._ensure_admin()

    assert second == first
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


@pytest.mark.django_db
def test_ensure_admin_keeps_an_existing_superuser_and_does_not_invent_a_password(
    settings, tmp_path
):
    settings.VAR_DIR = tmp_path
    get_user_model().objects.create_superuser("root", "root@example.com", "s3cret-pass")

    username, password = StandaloneCommand()._ensure_admin()

    assert username == "root"
    assert "changepassword" in password
    assert not get_user_model().objects.filter(username="admin").exists()
    assert not (tmp_path / "admin-password.txt").exists()
