"""The analytics API (issue 13 items 1, 3 and 6): the summary, the CSV and XLSX exports and the
escalation signals, scoped to the caller's organizations, with clear errors for bad ranges."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import openpyxl
import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from apps.accounts.choices import Role
from apps.executions.choices import ExecutionStatus as S
from apps.executions.models import Execution
from tests.analytics.test_summary import run
from tests.factories import chain_definition, make_org, make_user, make_workflow

pytestmark = pytest.mark.django_db

SUMMARY = "/api/v1/analytics/summary/"
EXPORT = "/api/v1/analytics/export/"
HEALTH = "/api/v1/analytics/health/"
RANGE = {"from": "2026-01-10", "to": "2026-01-11"}
IN_RANGE = ["first", "second", "failed", "incomplete", "cancelled", "running", "late", "scheduled"]


def test_the_summary_answers_the_documented_shape(history, analyst, api_for):  # noqa: F811
    body = api_for(analyst).get(SUMMARY, RANGE).json()

    assert body["from"] == "2026-01-09T23:00:00Z" and body["to"] == "2026-01-11T23:00:00Z"
    assert body["time_zone"] == "Europe/Paris"
    assert body["total"] == 8 and body["success_rate"] == 60.0
    assert body["p95_duration_ms"] == 88_000
    assert body["daily"][0] == {
        "date": "2026-01-10",
        "completed": 2,
        "failed": 1,
        "incomplete": 0,
        "cancelled": 0,
    }
    assert set(body["agent_utilization"]) == {"agents", "queues"}


def test_the_summary_needs_a_login(client):
    assert client.get(SUMMARY).status_code in (401, 403)


@pytest.mark.parametrize(
    "params, path",
    [
        ({"from": "soon"}, "from"),
        ({"from": "2026-01-12", "to": "2026-01-10"}, "from"),
        ({"workflow": "missing"}, "workflow"),
        ({"organization": "elsewhere"}, "organization"),  # exists, but not the caller's
    ],
)
def test_a_bad_range_is_a_400_naming_the_parameter(
    history,  # noqa: F811
    analyst,  # noqa: F811
    api_for,
    params,
    path,
):
    response = api_for(analyst).get(SUMMARY, {**RANGE, **params})

    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["path"] == path


def content(response) -> bytes:
    """A streamed body, read as the ASGI server would (the exports stream asynchronously)."""

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)() if response.is_async else response.content


def read_csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content(response).decode())))


def test_the_csv_export_has_the_header_and_one_row_per_execution(
    history,  # noqa: F811
    analyst,  # noqa: F811
    api_for,
):
    response = api_for(analyst).get(EXPORT, {"format": "csv", **RANGE})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    header, *rows = read_csv(response)
    assert header == [
        "id",
        "workflow",
        "version",
        "status",
        "trigger",
        "triggered_by",
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "steps_total",
        "steps_completed",
        "error_type",
        "error_message",
    ]
    assert sorted(int(r[0]) for r in rows) == sorted(history[k].pk for k in IN_RANGE)
    late = next(r for r in rows if int(r[0]) == history["late"].pk)
    assert late[1:4] == ["beta", "1", "completed"] and late[9] == "100000"
    cancelled = next(r for r in rows if int(r[0]) == history["cancelled"].pk)
    assert cancelled[7] == "" and cancelled[9] == ""  # never started: no start, no duration


def test_the_xlsx_export_has_the_same_rows_and_a_summary_sheet(
    history,  # noqa: F811
    analyst,  # noqa: F811
    api_for,
):
    response = api_for(analyst).get(EXPORT, {"format": "xlsx", **RANGE})

    assert response.status_code == 200
    book = openpyxl.load_workbook(io.BytesIO(content(response)))
    assert book.sheetnames == ["Executions", "Summary"]
    rows = list(book["Executions"].iter_rows(values_only=True))
    assert rows[0][0] == "id" and len(rows) == 1 + len(IN_RANGE)
    assert sorted(r[0] for r in rows[1:]) == sorted(history[k].pk for k in IN_RANGE)
    summary = {r[0]: r[1] for r in book["Summary"].iter_rows(values_only=True) if r and r[0]}
    assert summary["Executions"] == 8 and summary["Success rate (%)"] == 60.0
    assert summary["2026-01-10"] == 2  # the daily table: completed on the 10th


def test_another_organizations_rows_never_appear(history, api_for):  # noqa: F811
    outsider = make_user("outsider", make_org("far"), Role.ADMIN)
    mine = make_workflow(outsider.memberships.get().organization, chain_definition("mine", 1))
    run(mine, S.COMPLETED, history["second"].created_at, 1)

    header, *rows = read_csv(api_for(outsider).get(EXPORT, {"format": "csv", **RANGE}))

    assert [r[1] for r in rows] == ["mine"]


def test_cells_a_spreadsheet_would_run_as_formulas_are_escaped(
    history,  # noqa: F811
    analyst,  # noqa: F811
    api_for,
):
    Execution.objects.filter(pk=history["failed"].pk).update(
        error_message='=HYPERLINK("http://evil.example","click")'
    )
    Execution.objects.filter(pk=history["incomplete"].pk).update(error_message="+1-2")

    header, *rows = read_csv(api_for(analyst).get(EXPORT, {"format": "csv", **RANGE}))
    messages = {int(r[0]): r[13] for r in rows}
    xlsx = content(api_for(analyst).get(EXPORT, {"format": "xlsx", **RANGE}))
    book = openpyxl.load_workbook(io.BytesIO(xlsx))
    cells = {r[0]: r[13] for r in book["Executions"].iter_rows(min_row=2, values_only=True)}

    for got in (messages, cells):
        assert got[history["failed"].pk] == '\'=HYPERLINK("http://evil.example","click")'
        assert got[history["incomplete"].pk] == "'+1-2"


def test_an_export_names_the_error_type_of_the_failed_attempt(
    history,  # noqa: F811
    analyst,  # noqa: F811
    api_for,
):
    failed = history["failed"]
    failed.steps.update(status="failed", error_type="ConnectionError")

    header, *rows = read_csv(api_for(analyst).get(EXPORT, {"format": "csv", **RANGE}))

    assert {int(r[0]): r[12] for r in rows}[failed.pk] == "ConnectionError"


@pytest.mark.parametrize("fmt", ["pdf", ""])
def test_an_unknown_format_is_a_400(history, analyst, api_for, fmt):  # noqa: F811
    response = api_for(analyst).get(EXPORT, {"format": fmt, **RANGE})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "format: must be csv or xlsx."


def test_more_rows_than_the_direct_limit_are_refused_with_the_reason(
    history,  # noqa: F811
    analyst,  # noqa: F811
    api_for,
    settings,
):
    settings.OPSFLOW_EXPORT_SYNC_MAX_ROWS = 7  # the range holds 8

    response = api_for(analyst).get(EXPORT, {"format": "csv", **RANGE})

    assert response.status_code == 400
    assert "more than 7 executions in the range" in response.json()["error"]["message"]


def test_health_flags_a_failure_spike_across_workflows(org, operator, api_for):
    now = timezone.now()
    for slug, n in (("one", 3), ("two", 2)):
        workflow = make_workflow(org, chain_definition(slug, 1))
        for _ in range(n):
            run(workflow, S.FAILED, now - timedelta(minutes=20), 1)

    body = api_for(operator).get(HEALTH).json()

    assert body["failure_spike"] == {
        "last_hour": 5,
        "hourly_average": 0.0,
        "workflows": 2,
        "flagged": True,
    }
    assert body["overdue"] == {"now": 0, "fifteen_minutes_ago": 0, "flagged": False}
    # their first steps wait on `default`, which no agent serves here
    assert body["agents"] == {
        "offline_queues": [{"queue": "default", "waiting": 5}],
        "flagged": True,
    }
