"""A background export on real processes (issue 13): uvicorn and a real `rqworker` on
PostgreSQL and Redis; the export's progress is seen moving through the API while the worker
writes it, and the finished file downloads and opens."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import httpx
import openpyxl
import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.accounts.choices import Role
from apps.executions.choices import ExecutionStatus, Trigger
from apps.executions.models import Execution
from tests.e2e.conftest import needs_services
from tests.factories import chain_definition, make_org, make_user, make_workflow

pytestmark = [needs_services, pytest.mark.multiprocess]

ROWS = 20_000


def test_a_background_export_reports_progress_and_finishes_with_a_file(processes, tmp_path):
    org = make_org("acme")
    make_user("analyst", org, Role.VIEWER)
    call_command("drf_create_token", "analyst", verbosity=0)
    from rest_framework.authtoken.models import Token

    token = Token.objects.get(user__username="analyst").key
    workflow = make_workflow(org, chain_definition("nightly", 1))
    now = timezone.now()
    Execution.objects.bulk_create(
        [
            Execution(
                workflow=workflow,
                organization=org,
                version=workflow.current_version,
                status=ExecutionStatus.COMPLETED,
                trigger=Trigger.CRON,
                created_at=now - timedelta(seconds=i),
                started_at=now - timedelta(seconds=i),
                finished_at=now - timedelta(seconds=i) + timedelta(milliseconds=250),
            )
            for i in range(ROWS)
        ],
        batch_size=5000,
    )
    env = {"OPSFLOW_EXPORT_DIR": str(tmp_path / "exports"), "OPSFLOW_EXPORT_PROGRESS_ROWS": "1000"}
    _web, base = processes.serve(**env)
    processes.worker(**env)

    with httpx.Client(
        base_url=f"{base}/api/v1", headers={"Authorization": f"Token {token}"}, timeout=30
    ) as api:
        queued = api.post("/analytics/exports/", json={"format": "xlsx"})
        assert queued.status_code == 202, queued.text
        export = queued.json()
        assert export["rows_total"] == ROWS
        seen = []
        deadline = time.monotonic() + 120
        while export["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"the export is still {export}"
            time.sleep(0.05)
            export = api.get(f"/analytics/exports/{export['id']}/").json()
            seen.append(export["rows_done"])

        assert export["status"] == "done", export
        assert any(0 < n < ROWS for n in seen), seen  # progress seen while it was written
        assert seen == sorted(seen)
        file = api.get(export["download_url"].removeprefix("/api/v1"))
        assert file.status_code == 200

    book = openpyxl.load_workbook(io.BytesIO(file.content), read_only=True)
    assert sum(1 for _ in book["Executions"].iter_rows()) == 1 + ROWS
