"""The admin in a real browser (Debian's Chromium through Playwright): log in, run the demo, read its steps."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections

from apps.accounts.choices import Role
from apps.accounts.models import Membership, Organization
from apps.executions.choices import EXECUTION_TERMINAL, ExecutionStatus
from apps.executions.models import Execution
from apps.workflows.definition import parse_document
from apps.workflows.services import import_workflow
from tests.e2e.conftest import refused

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture
def page(live_server):
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = (
        "true"  # Playwright's sync API runs an event loop here
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        violations: list[str] = []  # the Content-Security-Policy must never have to refuse
        page.on(
            "console",
            lambda m: violations.append(m.text) if refused(m.text) else None,
        )
        page.on("pageerror", lambda error: violations.append(f"page error: {error}"))
        yield page
        browser.close()
        connections.close_all()  # those of Playwright's context (see test_portal_browser.py)
        assert violations == []


def open_step_panels(page) -> None:
    """Open each step's input and output in place on the execution page."""
    for summary in page.locator("#execution-detail table.opsflow-steps details > summary").all():
        summary.click()


@pytest.mark.django_db(transaction=True)
def test_an_operator_runs_the_demo_from_the_admin_and_reads_its_steps(live_server, page, workers):
    org = Organization.objects.create(slug="demo", name="Demo")
    user = get_user_model().objects.create_user("ops", password="ops-password", is_staff=True)
    Membership.objects.create(organization=org, user=user, role=Role.OPERATOR)
    demo = parse_document(
        (Path(settings.BASE_DIR) / "apps/workflows/demo/portal-health.yaml").read_text()
    )
    demo["variables"]["base_url"]["default"] = live_server.url
    workflow, _ = import_workflow(org, demo, publish=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-password")
    page.click("#login-form button[type=submit]")
    page.goto(f"{live_server.url}/workflows/workflow/{workflow.pk}/change/")
    page.screenshot(path=str(SCREENSHOTS / "workflow.png"), full_page=True)
    page.click("text=Run now")
    page.click("input[value='Run now']")
    page.wait_for_url("**/executions/execution/*/change/")

    execution = Execution.objects.get(workflow=workflow)
    workers.drain(until=lambda: Execution.objects.get(pk=execution.pk).status in EXECUTION_TERMINAL)
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED

    page.reload()
    page.wait_for_selector(".opsflow-completed")
    page.screenshot(path=str(SCREENSHOTS / "execution.png"), full_page=True)
    assert "COMPLETED" in page.inner_text("#execution-detail .opsflow-summary").upper()
    text = page.inner_text("#execution-detail table.opsflow-steps")
    assert f"{live_server.url}/healthz" not in text  # the step panels start closed
    open_step_panels(page)
    text = page.inner_text("#execution-detail table.opsflow-steps")
    assert f"{live_server.url}/healthz" in text  # the rendered input of the http.request step
    assert '"status_code": 200' in text
    assert "Portal answered 200 in" in text  # the shell step's stdout, via a template reference
    page.goto(f"{live_server.url}/executions/execution/")
    page.screenshot(path=str(SCREENSHOTS / "executions.png"), full_page=True)
    assert page.locator(".opsflow-completed").count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_operator_resolves_an_incomplete_execution_with_an_edited_input(
    live_server, page, workers
):
    import json

    from apps.executions.models import IncompleteExecution
    from apps.executions.services import trigger_workflow
    from tests.factories import make_workflow

    org = Organization.objects.create(slug="ops", name="Ops")
    user = get_user_model().objects.create_user("op", password="op-password", is_staff=True)
    Membership.objects.create(organization=org, user=user, role=Role.OPERATOR)
    workflow = make_workflow(
        org,
        {
            "slug": "deploy",
            "name": "Deploy",
            "settings": {"store_incomplete_executions": True},
            "nodes": [
                {"id": "prepare", "type": "noop", "config": {"output": {"version": "1.2.3"}}},
                {
                    "id": "push",
                    "type": "shell.command",
                    "queue": "shell",
                    "config": {
                        "command": ["sh", "-c", 'echo pushing "$VERSION"; exit 1'],
                        "env": {"VERSION": "{{ nodes.prepare.output.version }}"},
                    },
                },
                {
                    "id": "announce",
                    "type": "noop",
                    "config": {"output": {"said": "{{ nodes.push.output.stdout | trim }}"}},
                },
            ],
            "edges": [{"from": "prepare", "to": "push"}, {"from": "push", "to": "announce"}],
        },
    )
    execution = trigger_workflow(workflow)
    workers.drain(
        until=lambda: Execution.objects.get(pk=execution.pk).status == ExecutionStatus.INCOMPLETE
    )
    record = IncompleteExecution.objects.get(execution=execution)

    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "op")
    page.fill("#id_password", "op-password")
    page.click("#login-form button[type=submit]")
    page.goto(f"{live_server.url}/executions/incompleteexecution/")
    assert "UnexpectedError" in page.inner_text("#result_list")
    page.click(f"text=#{record.pk}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "incomplete.png"), full_page=True)
    assert "pushing 1.2.3" not in page.inner_text(
        "textarea[name=input]"
    )  # the input, not the output
    assert '"version": "1.2.3"' in page.input_value("textarea[name=bundles]")
    page.fill("textarea[name=input]", json.dumps({"command": ["echo", "pushed by hand"]}))
    page.click("button[value=retry]")
    page.wait_for_url(f"**/executions/execution/{execution.pk}/change/")

    workers.drain(until=lambda: Execution.objects.get(pk=execution.pk).status in EXECUTION_TERMINAL)
    page.reload()
    page.wait_for_selector("#execution-detail .opsflow-summary .opsflow-completed")
    open_step_panels(page)
    page.screenshot(path=str(SCREENSHOTS / "resolved.png"), full_page=True)
    assert "pushed by hand" in page.inner_text("#execution-detail")
    record.refresh_from_db()
    assert record.status == "resolved"
    assert list(execution.steps.filter(node_id="prepare").values_list("attempt", flat=True)) == [1]


@pytest.mark.django_db(transaction=True)
def test_an_approver_decides_from_the_inbox_and_the_run_goes_on(live_server, page, workers):
    from apps.approvals.models import Approval
    from apps.executions.services import trigger_workflow
    from tests.factories import make_workflow

    org = Organization.objects.create(slug="ops", name="Ops")
    user = get_user_model().objects.create_user("carol", password="carol-password", is_staff=True)
    Membership.objects.create(organization=org, user=user, role=Role.OPERATOR)
    workflow = make_workflow(
        org,
        {
            "slug": "gated",
            "name": "Gated",
            "nodes": [
                {
                    "id": "gate",
                    "type": "approval",
                    "config": {"message": "Ship release 42?", "approvers": ["carol"]},
                },
                {
                    "id": "ship",
                    "type": "noop",
                    "config": {
                        "output": {
                            "by": "{{ nodes.gate.output.respondedBy }}",
                            "via": "{{ nodes.gate.output.respondedVia }}",
                        }
                    },
                },
            ],
            "edges": [{"from": "gate", "to": "ship", "on": "approved"}],
        },
    )
    execution = trigger_workflow(workflow)
    workers.drain(until=lambda: Approval.objects.filter(execution=execution).exists())

    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "carol")
    page.fill("#id_password", "carol-password")
    page.click("#login-form button[type=submit]")
    assert page.inner_text("#opsflow-inbox").upper() == "APPROVALS (1)"
    page.click("#opsflow-inbox")
    assert "Ship release 42?" in page.inner_text("#inbox")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "inbox.png"), full_page=True)
    page.fill("#inbox textarea[name=note]", "looks good")
    page.click("#inbox button[value=approve]")
    page.wait_for_selector(".messagelist")
    assert "approved" in page.inner_text(".messagelist")

    workers.drain(until=lambda: Execution.objects.get(pk=execution.pk).status in EXECUTION_TERMINAL)
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get(node_id="ship").output == {"by": "carol", "via": "web"}
    assert Approval.objects.get(execution=execution).responses.get().note == "looks good"


@pytest.mark.django_db(transaction=True)
def test_the_portal_runs_under_its_content_security_policy(live_server, page, workers):
    """Every page an editor opens, the live execution page and the API docs included, with no
    CSP violation (the fixture fails on any); confirmations still ask, from opsflow.js."""
    admin = get_user_model().objects.create_superuser("root", password="pw-root")
    org = Organization.objects.create(slug="acme", name="Acme")
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    demo = Path(settings.BASE_DIR) / "apps" / "workflows" / "demo"
    workflow, _ = import_workflow(
        org, parse_document((demo / "fan-out-join.yaml").read_text()), publish=True
    )
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "pw-root")
    page.click("#login-form button[type=submit]")

    change = f"{live_server.url}/workflows/workflow/{workflow.pk}/change/"
    page.goto(change)
    key = workflow.webhook_key
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("input[value='Rotate webhook key']")
    workflow.refresh_from_db()
    assert workflow.webhook_key == key  # dismissed: nothing was sent
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("input[value='Rotate webhook key']")
    page.wait_for_load_state()
    workflow.refresh_from_db()
    assert workflow.webhook_key != key

    page.goto(f"{live_server.url}/workflows/workflow/{workflow.pk}/run/")
    page.click("input[value='Run now']")
    page.wait_for_url("**/executions/execution/*/change/")
    workers.drain()
    page.wait_for_selector("text=completed", timeout=15000)
    for path in (
        "/",
        "/workflows/workflow/",
        "/workflows/workflow/add/",
        "/executions/execution/",
        "/executions/incompleteexecution/",
        "/approvals/approval/inbox/",
        "/credentials/credential/add/",
        "/executions/agent/",
        "/api/v1/docs/",
    ):
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")
    page.wait_for_selector(".swagger-ui .info", timeout=15000)  # the docs rendered
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "csp-api-docs.png"))


@pytest.mark.django_db(transaction=True)
def test_the_portal_shell_works_under_the_csp_dark_mode_sidebar_and_filters(live_server, page):
    """django-unfold's behaviour runs on Alpine's CSP build: the theme switch, the sidebar
    toggle (both remembered across pages), the filter sheet. The fixture fails on any refusal
    or expression error."""
    org = Organization.objects.create(slug="demo", name="Demo")
    user = get_user_model().objects.create_user("ops", password="ops-password", is_staff=True)
    Membership.objects.create(organization=org, user=user, role=Role.OPERATOR)
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    assert page.is_visible("#nav-sidebar >> text=Executions")

    page.click("#nav-sidebar-inner >> text=unfold_more")  # the user menu
    page.click("#nav-sidebar-inner a:has(span:text-is('Dark'))")
    page.wait_for_function("document.documentElement.classList.contains('dark')")
    page.goto(f"{live_server.url}/executions/execution/")
    assert "dark" in page.evaluate("document.documentElement.className")  # remembered

    page.click("button[title='Toggle navigation'] >> visible=true")
    page.wait_for_selector("#nav-sidebar", state="hidden")
    page.reload()
    assert not page.is_visible("#nav-sidebar")  # remembered too
    page.click("button[title='Toggle navigation'] >> visible=true")
    page.wait_for_selector("#nav-sidebar", state="visible")

    filters = page.get_by_role("button", name="Filters")
    assert filters.get_attribute("tabindex") == "0"  # reachable from the keyboard (opsflow.js)
    filters.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("text=By status", state="visible")
    page.click("text=Failed")
    page.wait_for_url("**status__exact=failed**")
    page.click("#nav-sidebar-inner >> text=unfold_more")
    page.click("#nav-sidebar-inner a:has(span:text-is('Light'))")
    page.wait_for_function("!document.documentElement.classList.contains('dark')")


@pytest.mark.django_db(transaction=True)
def test_the_live_executions_list_keeps_its_row_selection_working_after_a_refresh(
    live_server, page
):
    """The list swaps its rows in place while a run is going: afterwards a row still selects
    (unfold's actions.js bound to the new rows) and nothing is refused (htmx settles no style
    attribute under the CSP; the fixture fails on any refusal)."""
    from apps.executions.services import trigger_workflow
    from tests.factories import chain_definition, make_workflow

    org = Organization.objects.create(slug="demo", name="Demo")
    user = get_user_model().objects.create_user("ops", password="ops-password", is_staff=True)
    Membership.objects.create(organization=org, user=user, role=Role.OPERATOR)
    trigger_workflow(make_workflow(org, chain_definition("waiting", 2)))  # pending: no worker
    page.goto(f"{live_server.url}/login/?next=/executions/execution/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#opsflow-results[data-live]")
    page.locator("#result_list input.action-select").first.check()
    page.wait_for_selector("#changelist-actions", state="visible")  # sized by Alpine, then
    page.locator("#result_list input.action-select").first.uncheck()

    # The refresh its hx-trigger makes every 15 s, made now.
    page.evaluate(
        """() => new Promise(done => {
            document.addEventListener("htmx:afterSettle", () => setTimeout(done, 50), {once: true});
            htmx.ajax("GET", location.href,
                      {target: "#opsflow-results", select: "#opsflow-results", swap: "outerHTML"});
        })"""
    )
    page.locator("#result_list input.action-select").first.check()

    assert page.inner_text(".action-counter").startswith("1 of 1 selected")


@pytest.mark.django_db(transaction=True)
def test_the_analytics_page_draws_its_chart_and_downloads_both_exports(live_server, page):
    """Issue 13: the page's chart is drawn under the CSP (the fixture fails on a refusal), and
    each export button downloads a file that opens: the CSV's rows, the XLSX's two sheets."""
    import csv
    import io

    import openpyxl

    from apps.executions.services import trigger_workflow
    from tests.factories import chain_definition, make_workflow

    org = Organization.objects.create(slug="demo", name="Demo")
    user = get_user_model().objects.create_user("ops", password="ops-password", is_staff=True)
    Membership.objects.create(organization=org, user=user, role=Role.VIEWER)
    workflow = make_workflow(org, chain_definition("nightly", 1))
    made = [trigger_workflow(workflow) for _ in range(3)]
    Execution.objects.filter(pk=made[0].pk).update(status=ExecutionStatus.FAILED)
    page.goto(f"{live_server.url}/login/?next=/analytics/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("canvas.chart")
    page.wait_for_function("window.Chart && Chart.getChart(document.querySelector('canvas.chart'))")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "analytics.png"), full_page=True)

    with page.expect_download() as csv_download:
        page.click("text=Export CSV")
    rows = list(csv.reader(io.StringIO(Path(csv_download.value.path()).read_text())))
    assert rows[0][:2] == ["id", "workflow"] and len(rows) == 4
    with page.expect_download() as xlsx_download:
        page.click("text=Export XLSX")
    book = openpyxl.load_workbook(io.BytesIO(Path(xlsx_download.value.path()).read_bytes()))
    assert xlsx_download.value.suggested_filename.endswith(".xlsx")
    assert book.sheetnames == ["Executions", "Summary"]
    assert book["Executions"].max_row == 4
