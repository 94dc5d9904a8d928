"""The ops dashboard (the admin index): its figures, scoped to the user's organizations, each
linking to the list it counts; the failure spike; the offline-queue warning; the partial that
refreshes it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.approvals.models import Approval
from apps.executions import dashboard
from apps.executions.choices import ExecutionStatus, IncompleteStatus
from apps.executions.models import Agent, Execution, IncompleteExecution
from apps.executions.services import trigger_workflow
from tests.factories import chain_definition, make_user, make_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def first(org):
    return make_workflow(org, chain_definition("first", 2))


@pytest.fixture
def second(org):
    return make_workflow(org, chain_definition("second", 2))


def runs(workflow, n: int, status: str, **fields) -> list[Execution]:
    """n executions moved straight to `status` (test data: the engine is not the subject)."""
    made = [trigger_workflow(workflow) for _ in range(n)]
    Execution.objects.filter(pk__in=[e.pk for e in made]).update(status=status, **fields)
    return made


def figure(board, label: str) -> dashboard.Figure:
    return next(f for f in board.figures if f.label == label)


def test_the_figures_count_the_users_organizations_only(first, operator, other_org):
    elsewhere = make_workflow(other_org, chain_definition("elsewhere", 1))
    runs(first, 2, ExecutionStatus.RUNNING)
    runs(first, 1, ExecutionStatus.PAUSED)
    runs(elsewhere, 3, ExecutionStatus.RUNNING)
    runs(elsewhere, 3, ExecutionStatus.PAUSED)

    board = dashboard.build(operator)

    assert figure(board, "Running").value == 2
    assert figure(board, "Paused for approval").value == 1
    assert "status__exact=running" in figure(board, "Running").url


def test_paused_says_how_many_gates_wait_on_the_user(first, operator, viewer):
    (run,) = runs(first, 1, ExecutionStatus.PAUSED)
    step = run.steps.first()
    Approval.objects.create(execution=run, step=step, node_id=step.node_id, open_to_members=True)

    assert figure(dashboard.build(operator), "Paused for approval").note == "1 waiting on you"
    # a viewer may not decide: nothing waits on them
    paused = figure(dashboard.build(viewer), "Paused for approval")
    assert paused.note == "none waiting on you" and not paused.alarm


def test_failures_across_workflows_well_above_the_average_are_a_spike(first, second, operator):
    now = timezone.now()
    recent = {"finished_at": now - timedelta(minutes=5)}
    runs(first, 3, ExecutionStatus.FAILED, error_message="first broke", **recent)
    runs(second, 2, ExecutionStatus.FAILED, error_message="second broke", **recent)
    # one failure in the 24 hours before: an average of 1/24 an hour
    earlier = now - timedelta(hours=5)
    runs(first, 1, ExecutionStatus.FAILED, finished_at=earlier, created_at=earlier)

    board = dashboard.build(operator)

    failed = figure(board, "Failed in the last hour")
    assert failed.value == 5 and failed.alarm
    assert "across 2 workflows" in board.spike and "Escalate" in board.spike
    assert board.spike_url == failed.url
    assert [r.error_message for r in board.failures][:2] == ["second broke", "second broke"]


def test_fewer_failures_than_the_minimum_are_not_a_spike_unless_the_setting_says_so(
    first, second, operator, settings
):
    recent = {"finished_at": timezone.now() - timedelta(minutes=5)}
    runs(first, 2, ExecutionStatus.FAILED, **recent)
    runs(second, 2, ExecutionStatus.FAILED, **recent)  # 4: under OPSFLOW_SPIKE_MINIMUM (5)

    assert dashboard.build(operator).spike == ""
    settings.OPSFLOW_SPIKE_MINIMUM = 4
    assert "4 in the last hour across 2 workflows" in dashboard.build(operator).spike


def test_many_failures_of_one_workflow_are_not_a_platform_spike(first, operator):
    runs(first, 5, ExecutionStatus.FAILED, finished_at=timezone.now() - timedelta(minutes=5))

    board = dashboard.build(operator)

    assert figure(board, "Failed in the last hour").value == 5
    assert board.spike == ""


def test_failures_at_the_usual_rate_are_not_a_spike(first, second, operator):
    now = timezone.now()
    for hours in range(1, 24):  # 2 an hour for a day, from both workflows
        for workflow in (first, second):
            runs(workflow, 1, ExecutionStatus.FAILED, finished_at=now - timedelta(hours=hours))
    runs(first, 2, ExecutionStatus.FAILED, finished_at=now - timedelta(minutes=1))
    runs(second, 2, ExecutionStatus.FAILED, finished_at=now - timedelta(minutes=1))

    board = dashboard.build(operator)

    assert figure(board, "Failed in the last hour").value == 4
    assert board.spike == ""


def test_overdue_now_against_fifteen_minutes_ago(first, operator, settings):
    now = timezone.now()
    grace = timedelta(seconds=settings.OPSFLOW_OVERDUE_GRACE)
    long_ago = now - timedelta(hours=1)
    # overdue then and now
    runs(first, 1, ExecutionStatus.SCHEDULED, scheduled_for=long_ago, created_at=long_ago)
    # overdue now only (due 5 minutes before the grace ran out)
    late = now - grace - timedelta(minutes=5)
    runs(first, 2, ExecutionStatus.SCHEDULED, scheduled_for=late, created_at=late)
    # overdue then, started since
    runs(
        first,
        1,
        ExecutionStatus.RUNNING,
        scheduled_for=long_ago,
        created_at=long_ago,
        started_at=now - timedelta(minutes=2),
    )

    overdue = figure(dashboard.build(operator), "Overdue")

    assert overdue.value == 3
    assert overdue.note == "2 fifteen minutes ago ↑" and overdue.alarm


def test_a_queue_with_waiting_steps_and_no_live_agent_is_flagged(first, operator, settings):
    trigger_workflow(first)  # its first step waits in queue "default"

    assert dashboard.build(operator).offline_queues == [("default", 1)]

    Agent.register("w1", ["default"], "host", 1)
    assert dashboard.build(operator).offline_queues == []

    Agent.objects.update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=settings.OPSFLOW_AGENT_TIMEOUT + 5)
    )
    board = dashboard.build(operator)
    assert board.offline_queues == [("default", 1)]
    assert figure(board, "Agents running").note == "1 lost"


def test_storage_per_organization_against_the_limit(first, operator, settings):
    settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES = 1000
    (run,) = runs(first, 1, ExecutionStatus.INCOMPLETE)
    IncompleteExecution.objects.create(
        execution=run,
        workflow=first,
        organization=first.organization,
        node_id="n0",
        error_type="X",
        status=IncompleteStatus.UNRESOLVED,
        size_bytes=850,
    )

    board = dashboard.build(operator)

    assert figure(board, "Unresolved incomplete executions").value == 1
    (storage,) = board.storage
    assert (storage.used, storage.limit, storage.percent, storage.alarm) == (850, 1000, 85, True)


# --- the page ---


@pytest.fixture
def browser(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def test_the_index_is_the_dashboard_and_each_figure_opens_its_list(first, second, browser):
    runs(first, 3, ExecutionStatus.FAILED, finished_at=timezone.now(), error_message="boom")
    runs(second, 2, ExecutionStatus.FAILED, finished_at=timezone.now(), error_message="bang")

    page = browser.get("/")

    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="opsflow-dashboard"' in html and 'hx-trigger="every 15s"' in html
    assert "Failure spike" in html and "boom" in html
    for card in page.context["dashboard"].figures:
        listed = browser.get(card.url)
        assert listed.status_code == 200, card.url
        assert "?e=1" not in listed.get("Location", ""), card.url
    failed = figure(page.context["dashboard"], "Failed in the last hour")
    listed = browser.get(failed.url)
    assert listed.context["cl"].result_count == 5


def test_the_htmx_refresh_gets_the_board_alone(first, browser):
    runs(first, 1, ExecutionStatus.RUNNING)

    partial = browser.get("/", headers={"HX-Request": "true"})

    html = partial.content.decode()
    assert partial.status_code == 200
    assert html.lstrip().startswith('<div id="opsflow-dashboard"')
    assert "<html" not in html and "Running" in html


def test_an_empty_dashboard_says_what_will_show(browser):
    html = browser.get("/").content.decode()

    assert "No failed executions." in html


def test_the_dashboard_asks_the_same_queries_however_many_runs(first, browser):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert browser.get("/").status_code == 200
        return len(captured)

    runs(first, 1, ExecutionStatus.FAILED, finished_at=timezone.now())
    Agent.register("w1", ["default"], "host", 1)
    few = queries()
    runs(first, 30, ExecutionStatus.FAILED, finished_at=timezone.now())
    runs(first, 10, ExecutionStatus.PAUSED)
    Agent.register("w2", ["shell"], "host", 2)

    assert queries() == few


def test_a_user_with_no_organization_sees_zeros(first, db):
    runs(first, 2, ExecutionStatus.RUNNING)
    nobody = make_user("nobody")

    board = dashboard.build(nobody)

    assert all(f.value == 0 for f in board.figures if f.label != "Agents running")
    assert board.failures == [] and board.storage == []


def test_a_viewer_sees_the_same_figures(first, viewer):
    runs(first, 2, ExecutionStatus.RUNNING)
    assert figure(dashboard.build(viewer), "Running").value == 2
