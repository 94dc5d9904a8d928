"""Untrusted input never becomes shell code, and the shell sees nothing of the worker (issue 9,
findings 1 and 2; build items 1 and 2).

A webhook value reaches a `shell.command` only through `env`, as "$NAME"; a template inside
`script` is refused when the definition is saved. The child gets a minimal environment, a fresh
working directory that is removed afterwards, and runs only on the shell queues.
"""

from __future__ import annotations

import os
import pwd

import pytest
from django.test import Client

from apps.executions import errors
from apps.executions.choices import ExecutionStatus
from apps.executions.models import Execution
from apps.workflows.models import Workflow
from tests.api_errors import error_of
from tests.executions.test_nodes import run_node
from tests.factories import make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = "a; touch {marker}; $(id) `id` \n echo injected"


def shell_workflow(slug: str, config: dict, **node) -> dict:
    return {
        "slug": slug,
        "name": slug,
        "variables": {"x": {"type": "string", "required": True}},
        "nodes": [{"id": "run", "type": "shell.command", "config": config, **node}],
        "edges": [],
    }


def refusal(client, definition: dict) -> dict:
    """The one problem a 400 answer to creating `definition` lists; nothing is stored."""
    response = client.post("/api/v1/workflows/", definition, format="json")
    assert response.status_code == 400, response.content
    (detail,) = error_of(response)["details"]
    assert not Workflow.objects.filter(slug=definition["slug"]).exists()
    return detail


# --- no templates inside script -------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    ["echo got: {{ vars.x }}", "{% if vars.x %}rm -rf /{% endif %}", "echo {{vars.x}}"],
)
def test_a_template_inside_script_is_refused_with_the_path_and_how_to_pass_values(
    editor, api_for, script
):
    detail = refusal(api_for(editor), shell_workflow("inject", {"script": script}))

    assert detail["path"] == "nodes[0].config.script"
    assert "env" in detail["message"] and '"$NAME"' in detail["message"]


def test_a_webhook_value_passed_through_env_is_printed_literally_never_run(org, workers, tmp_path):
    """The finding: `echo got: {{ vars.x }}` with x = "a; touch /tmp/pwned; $(id)" ran touch
    and id on the worker. Through env the same value is only ever data."""
    marker = tmp_path / "pwned"
    workflow = make_workflow(
        org,
        shell_workflow(
            "literal", {"script": 'echo "got: $X"', "env": {"X": "{{ vars.x }}"}}, queue="shell"
        ),
    )
    value = HOSTILE.format(marker=marker)

    response = Client().post(
        f"/hooks/{workflow.webhook_key}/",
        {"variables": {"x": value}},
        content_type="application/json",
    )

    assert response.status_code == 202, response.content
    execution = workers.run_to_end(Execution.objects.get(pk=response.json()["execution"]))
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get().output["stdout"] == f"got: {value}\n"
    assert not marker.exists()


def test_a_templated_script_of_a_version_saved_before_the_rule_is_refused_when_it_runs(
    org, workers, tmp_path
):
    from apps.executions.services import trigger_workflow
    from apps.workflows.models import WorkflowVersion

    marker = tmp_path / "pwned"
    workflow = make_workflow(org, shell_workflow("old", {"script": "true"}))
    version = workflow.current_version
    version.definition["nodes"][0]["config"]["script"] = "echo {{ vars.x }}"
    WorkflowVersion.objects.filter(pk=version.pk).update(definition=version.definition)

    execution = trigger_workflow(workflow, variables={"x": f"a; touch {marker}"})
    workers.run_to_end(execution)

    step = execution.steps.get()
    assert step.error_type == "InvalidConfigurationError"
    assert "templates are not allowed in script" in step.error_message
    assert not marker.exists()


def test_argv_items_still_take_templates_because_no_shell_parses_them(org, workers, tmp_path):
    marker = tmp_path / "pwned"
    workflow = make_workflow(
        org, shell_workflow("argv", {"command": ["echo", "got: {{ vars.x }}"]}, queue="shell")
    )
    from apps.executions.services import trigger_workflow

    value = HOSTILE.format(marker=marker)
    execution = workers.run_to_end(trigger_workflow(workflow, variables={"x": value}))

    assert execution.steps.get().output["stdout"] == f"got: {value}\n"
    assert not marker.exists()


# --- what the child sees ----------------------------------------------------------------------


def test_the_child_sees_a_minimal_environment_never_the_workers_secrets(monkeypatch, settings):
    monkeypatch.setenv("DATABASE_URL", "postgres://user:hunter2@db/opsflow")
    monkeypatch.setenv("SECRET_KEY", "worker-secret-key")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    settings.OPSFLOW_SHELL_ENV_PASSTHROUGH = ["HTTPS_PROXY"]

    output = run_node("shell.command", {"command": ["env"], "env": {"MINE": "1"}}, timeout=5)

    names = {line.split("=", 1)[0] for line in output["stdout"].splitlines()}
    assert names - {"PWD", "SHLVL", "_"} == {"PATH", "HOME", "LANG", "HTTPS_PROXY", "MINE"}
    assert "hunter2" not in output["stdout"] and "worker-secret-key" not in output["stdout"]


def test_the_child_runs_in_a_fresh_directory_that_is_removed_afterwards():
    output = run_node(
        "shell.command", {"script": 'pwd -P; echo "$HOME"; touch left-behind'}, timeout=5
    )

    workdir, home = output["stdout"].splitlines()
    assert os.path.basename(workdir).startswith("opsflow-step-")
    assert os.path.realpath(home) == workdir
    assert not os.path.exists(workdir)
    assert os.path.realpath(os.getcwd()) != workdir


def test_a_value_over_the_os_limit_is_a_clear_data_error_not_argument_list_too_long():
    with pytest.raises(errors.DataError, match=r"env\.BIG is \d+ bytes; the OS takes at most"):
        run_node(
            "shell.command", {"script": 'echo "$BIG"', "env": {"BIG": "x" * 200_000}}, timeout=5
        )
    with pytest.raises(errors.DataError, match=r"command\[1\] is \d+ bytes"):
        run_node("shell.command", {"command": ["echo", "x" * 200_000]}, timeout=5)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may run commands as another user")
def test_opsflow_shell_user_runs_the_command_as_that_user(settings):
    nobody = pwd.getpwnam("nobody")
    settings.OPSFLOW_SHELL_USER = "nobody"

    output = run_node("shell.command", {"script": "id -u; touch here && echo wrote"}, timeout=5)

    assert output["stdout"] == f"{nobody.pw_uid}\nwrote\n"


# --- shell nodes only on the shell queues ----------------------------------------------------


def test_a_shell_node_on_another_queue_is_refused_with_the_reason(editor, api_for):
    detail = refusal(
        api_for(editor), shell_workflow("elsewhere", {"command": ["true"]}, queue="default")
    )

    assert detail["path"] == "nodes[0].queue"
    assert "OPSFLOW_SHELL_QUEUES" in detail["message"] and "'default'" in detail["message"]


def test_a_shell_node_without_a_queue_goes_to_the_first_shell_queue(org):
    workflow = make_workflow(org, shell_workflow("unpinned", {"command": ["true"]}))

    assert workflow.current_version.definition["nodes"][0]["queue"] == "shell"


@pytest.mark.parametrize(
    "command",
    [
        ["bash", "-c", "echo {{ vars.x }}"],
        ["/bin/sh", "-ec", "echo {{ vars.x }}"],
        ["sh", "-x", "-c", "{{ vars.x }}"],
    ],
)
def test_a_template_in_the_code_of_a_shell_minus_c_is_refused_like_a_script(
    editor, api_for, command
):
    detail = refusal(api_for(editor), shell_workflow("dash-c", {"command": command}))

    assert detail["path"] == f"nodes[0].config.command[{len(command) - 1}]"
    assert "env" in detail["message"]


def test_a_shell_minus_c_with_its_values_in_env_is_fine(org, workers, tmp_path):
    from apps.executions.services import trigger_workflow

    marker = tmp_path / "pwned"
    workflow = make_workflow(
        org,
        shell_workflow(
            "dash-c-env", {"command": ["sh", "-c", 'echo "$X"'], "env": {"X": "{{ vars.x }}"}}
        ),
    )
    value = HOSTILE.format(marker=marker)
    execution = workers.run_to_end(trigger_workflow(workflow, variables={"x": value}))

    assert execution.steps.get().output["stdout"] == f"{value}\n"
    assert not marker.exists()
