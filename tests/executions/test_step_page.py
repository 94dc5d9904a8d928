"""The step page: stdout with its line breaks, an HTTP exchange as request and response, the
attempts with their errors, downloads of whole fields, and what a waiting gate holds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.executions.choices import StepStatus
from apps.executions.models import Step
from apps.executions.services import trigger_workflow
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(org):
    return trigger_workflow(make_workflow(org, chain_definition("steps", 1)))


@pytest.fixture
def browser(viewer) -> Client:
    client = Client()
    client.force_login(viewer)
    return client


def url(step: Step, suffix: str = "") -> str:
    return f"/executions/execution/{step.execution_id}/steps/{step.pk}/{suffix}"


def as_step(run, **fields) -> Step:
    """The run's first step made into the given attempt (test data, as the engine stores it)."""
    step = run.steps.get()
    Step.objects.filter(pk=step.pk).update(**fields)
    step.refresh_from_db()
    return step


def test_a_shell_step_shows_stdout_with_its_line_breaks_and_the_exit_code(run, browser):
    step = as_step(
        run,
        node_type="shell.command",
        status=StepStatus.COMPLETED,
        input={"command": ["sh", "-c", "echo one; echo two"]},
        output={"stdout": "one\ntwo\n", "stderr": "warning: <careful>\n", "exit_code": 0},
        started_at=timezone.now() - timedelta(seconds=2),
        finished_at=timezone.now(),
    )

    page = browser.get(url(step)).content.decode()

    assert '<pre id="block-2" class="opsflow-output" tabindex="0">one\ntwo\n</pre>' in page
    assert "warning: &lt;careful&gt;" in page  # escaped, never markup
    assert '<th>Exit code</th><td class="opsflow-mono">0</td>' in page
    assert "sh -c echo one; echo two" in page
    assert 'data-copy="block-2"' in page

    download = browser.get(url(step, "download/stdout/"))
    assert download.status_code == 200
    assert download["Content-Type"].startswith("text/plain")
    assert "attachment" in download["Content-Disposition"]
    assert download.content == b"one\ntwo\n"


def test_an_http_step_shows_the_request_and_the_response_body_pretty(run, browser):
    step = as_step(
        run,
        node_type="http.request",
        status=StepStatus.FAILED,
        input={
            "url": "https://api.example.com/deploy",
            "method": "post",
            "headers": {"Authorization": "***"},
            "json": {"ref": "main"},
        },
        output={
            "status_code": 503,
            "headers": {"content-type": "application/json"},
            "body": '{"error":"busy"}',
            "json": {"error": "busy"},
            "elapsed_ms": 41,
        },
        error_type="UnexpectedError",
        error_message="HTTP 503",
    )

    page = browser.get(url(step)).content.decode()

    assert '<th>Method</th><td class="opsflow-mono">POST</td>' in page
    assert "https://api.example.com/deploy" in page
    assert '<th>Header Authorization</th><td class="opsflow-mono">***</td>' in page
    assert '<th>Status</th><td class="opsflow-mono">503</td>' in page
    assert "{\n  &quot;error&quot;: &quot;busy&quot;\n}" in page
    assert "<strong>UnexpectedError</strong>: HTTP 503" in page
    assert browser.get(url(step, "download/body/")).content == b'{\n  "error": "busy"\n}'


def test_the_attempts_are_listed_with_their_errors_and_the_next_try(run, browser):
    first = as_step(
        run,
        status=StepStatus.FAILED,
        error_type="ConnectionError",
        error_message="refused",
    )
    due = timezone.now() + timedelta(minutes=5)
    second = Step.objects.create(
        execution=run,
        node_id=first.node_id,
        node_type=first.node_type,
        attempt=2,
        retry_number=1,
        status=StepStatus.DISPATCHED,
        next_attempt_at=due,
    )

    page = browser.get(url(first)).content.decode()

    assert "ConnectionError: refused" in page
    assert f'href="{url(second)}"' in page
    assert due.strftime("%H:%M:%S") in page


def test_a_waiting_gate_says_it_holds_no_worker(run, browser):
    step = as_step(run, node_type="approval", status=StepStatus.RUNNING, started_at=timezone.now())

    page = browser.get(url(step)).content.decode()

    assert "Waiting for approval since" in page and "no worker is held" in page


def test_a_field_the_step_does_not_have_is_a_404(run, browser):
    step = run.steps.get()

    assert browser.get(url(step, "download/stdout/")).status_code == 404
    assert browser.get(url(step, "download/passwords/")).status_code == 404
    assert browser.get(f"/executions/execution/{run.pk}/steps/999999/").status_code == 404


def test_another_organizations_step_is_a_404(run, outsider):
    client = Client()
    client.force_login(outsider)

    assert client.get(url(run.steps.get())).status_code == 404


# --- the timeline ---


def test_the_timeline_has_a_lane_per_node_and_a_bar_per_attempt(org, browser):
    from apps.executions.presenters import timeline

    run = trigger_workflow(make_workflow(org, chain_definition("lanes", 3)))
    start = run.created_at
    first = run.steps.get()
    Step.objects.filter(pk=first.pk).update(
        status=StepStatus.FAILED,
        started_at=start + timedelta(seconds=1),
        finished_at=start + timedelta(seconds=3),
    )
    retry = Step.objects.create(
        execution=run,
        node_id="n0",
        node_type="noop",
        attempt=2,
        status=StepStatus.RUNNING,
        created_at=start + timedelta(seconds=3),
        started_at=start + timedelta(seconds=5),
    )
    steps = list(run.steps.order_by("created_at", "id"))

    lanes, axis = timeline(run, steps, now=start + timedelta(seconds=10))

    assert [lane.node_id for lane in lanes] == ["n0", "n1", "n2"]
    failed, running = lanes[0].bars
    assert (failed.x, failed.width, failed.colour) == (100, 200, "red")
    assert (running.wait_x, running.wait_width) == (300, 200)  # waited for its retry time
    assert (running.x, running.width, running.running) == (500, 500, True)  # to now
    assert [lane.note for lane in lanes[1:]] == ["not run yet", "not run yet"]
    assert axis == "10.0 s"

    page = browser.get(f"/executions/execution/{run.pk}/change/").content.decode()
    assert f'href="/executions/execution/{run.pk}/steps/{retry.pk}/"' in page
    assert 'class="opsflow-fill-red"' in page and "opsflow-running" in page
