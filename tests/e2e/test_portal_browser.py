"""The operator portal in a real browser (Debian's Chromium through Playwright) against the
Procfile's processes: uvicorn serving the ASGI app (the live pages need its event stream), a
real `rqworker`, PostgreSQL and Redis. Screenshots go to var/screenshots/."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from django.utils import timezone

from apps.accounts.choices import Role
from apps.executions.choices import ExecutionStatus
from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from tests.e2e.conftest import needs_services, refused
from tests.factories import make_org, make_user, make_workflow

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"

pytestmark = [
    needs_services,
    pytest.mark.browser,
    pytest.mark.multiprocess,
    pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (apt-get install chromium)"),
]


class Portal:
    def __init__(self, base: str, org):
        self.base, self.org = base, org


@pytest.fixture
def portal(processes, transactional_db):
    org = make_org("acme")
    make_user("olga", org, Role.OPERATOR)
    make_user("carol", org, Role.OPERATOR)
    # (the test settings: their password hasher is the one the users were made with)
    _, base = processes.serve(
        OPSFLOW_SSE_POLL_MS="100", DJANGO_SETTINGS_MODULE="config.settings.test"
    )
    processes.worker()
    return Portal(base, org)


@pytest.fixture
def chromium():
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs a loop here
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright's loop runs the test in a context of its own, where Django keeps other
        # connections than the test's: one an earlier browser test left there would be stale
        # (dead, if PostgreSQL restarted since, as the chaos tests do).
        connections.close_all()
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
        )
        violations: list[str] = []

        def open_page(portal: Portal, username: str):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on(
                "console",
                lambda m: violations.append(m.text) if refused(m.text) else None,
            )
            page.on("pageerror", lambda error: violations.append(f"page error: {error}"))
            page.goto(f"{portal.base}/login/")
            page.fill("#id_username", username)
            page.fill("#id_password", f"pw-{username}")
            page.click("#login-form button[type=submit]")
            page.wait_for_url(f"{portal.base}/")
            return page

        yield open_page
        browser.close()
        connections.close_all()
        assert violations == []


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def wait_status(execution_id: int, statuses: set[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while Execution.objects.get(pk=execution_id).status not in statuses:
        assert time.monotonic() < deadline, f"execution {execution_id} never reached {statuses}"
        time.sleep(0.1)


SHELL_CHAIN = {
    "slug": "release",
    "name": "Release",
    "nodes": [
        {"id": "build", "type": "shell.command", "queue": "shell",
         "config": {"command": ["sh", "-c", "sleep 1; echo one; echo two"]}},
        {"id": "announce", "type": "noop"},
    ],
    "edges": [{"from": "build", "to": "announce"}],
}  # fmt: skip


def test_the_execution_page_follows_a_run_to_completed_and_the_step_page_shows_stdout(
    portal, chromium
):
    workflow = make_workflow(portal.org, SHELL_CHAIN)
    page = chromium(portal, "olga")
    run = trigger_workflow(workflow)

    page.goto(f"{portal.base}/executions/execution/{run.pk}/change/")
    page.evaluate("window.opsflowNoReload = true")
    page.wait_for_selector("#execution-detail .opsflow-summary .opsflow-completed", timeout=30000)

    assert page.evaluate("window.opsflowNoReload") is True  # updated in place, never reloaded
    assert page.locator("svg.opsflow-lane rect.opsflow-fill-green").count() >= 2
    assert "Cancel" not in page.inner_text(".opsflow-actions")  # the finished run's actions
    shot(page, "execution")

    page.click("#execution-detail table.opsflow-steps a:has-text('build')")
    page.wait_for_selector("pre.opsflow-output")
    assert "one\ntwo\n" in page.inner_text("pre.opsflow-output")
    shot(page, "step")


GATED = {
    "slug": "gated",
    "name": "Gated restart",
    "nodes": [
        {"id": "gate", "type": "approval", "config": {"message": "Restart web-1?"}},
        {"id": "restart", "type": "noop"},
    ],
    "edges": [{"from": "gate", "to": "restart", "on": "approved"}],
}


def test_a_gate_approved_in_another_browser_shows_on_the_first_without_reload(portal, chromium):
    run = trigger_workflow(make_workflow(portal.org, GATED))
    wait_status(run.pk, {ExecutionStatus.PAUSED})
    watcher = chromium(portal, "olga")
    watcher.goto(f"{portal.base}/executions/execution/{run.pk}/change/")
    watcher.wait_for_selector("#execution-detail .opsflow-paused")
    watcher.evaluate("window.opsflowNoReload = true")

    approver = chromium(portal, "carol")
    approver.goto(f"{portal.base}/approvals/approval/inbox/")
    shot(approver, "inbox")
    approver.click("#inbox button[value=approve]")
    approver.wait_for_selector(".messagelist")

    watcher.wait_for_selector(
        "#execution-detail .opsflow-summary .opsflow-completed", timeout=30000
    )
    assert watcher.evaluate("window.opsflowNoReload") is True


def parked(org, slug: str):
    """A workflow whose one node waits on a queue no agent serves: its runs stay put."""
    return make_workflow(
        org,
        {
            "slug": slug,
            "name": slug.title(),
            "nodes": [{"id": "a", "type": "noop", "queue": "nowhere"}],
            "edges": [],
        },
    )


def test_the_dashboard_shows_a_failure_spike_and_opens_the_failures(portal, chromium):
    now = timezone.now()
    for slug in ("deploy", "backup"):
        workflow = parked(portal.org, slug)
        runs = [trigger_workflow(workflow) for _ in range(3)]
        Execution.objects.filter(pk__in=[r.pk for r in runs]).update(
            status=ExecutionStatus.FAILED,
            finished_at=now - timedelta(minutes=3),
            error_message=f"{slug}: connection refused",
        )
    page = chromium(portal, "olga")

    alert = page.inner_text(".opsflow-alert")
    assert "Failure spike: 6 in the last hour across 2 workflows" in alert
    assert "backup: connection refused" in page.inner_text(".opsflow-dashboard-module")
    shot(page, "dashboard")

    page.click(".opsflow-alert >> text=See the failures")
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() == 6


def test_bulk_cancel_of_everything_matching_a_filter(portal, chromium):
    stuck, other = parked(portal.org, "stuck"), parked(portal.org, "other")
    runs = [trigger_workflow(stuck) for _ in range(55)]  # more than a page (50)
    spared = trigger_workflow(other)
    page = chromium(portal, "olga")

    page.goto(f"{portal.base}/executions/execution/?workflow__id__exact={stuck.pk}")
    page.check("#action-toggle")
    page.click("div.actions span.question a")  # "Select all 55 executions"
    page.select_option("select[name=action]", "cancel_selected")
    page.click("button[name=index]")
    page.wait_for_selector("text=Cancel 55 executions, everything the filters match?")
    shot(page, "bulk-cancel")
    page.click("input[type=submit][value='Yes, cancel 55']")
    page.wait_for_selector(".messagelist")

    assert "Cancelled 55 executions." in page.inner_text(".messagelist")
    statuses = set(
        Execution.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)
    )
    assert statuses == {ExecutionStatus.CANCELLED}
    assert Execution.objects.get(pk=spared.pk).status != ExecutionStatus.CANCELLED
