"""Exports in the background (issue 13 item 3): POST answers 202 with an id, a real RQ worker
writes the file and saves its progress, GET follows it, the file downloads once done and
expires after OPSFLOW_EXPORT_TTL_HOURS; each user sees only their own."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import openpyxl
import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.choices import Role
from apps.analytics import exports
from apps.analytics.models import Export
from apps.executions.choices import ExecutionStatus as S
from apps.executions.dispatch import get_queue
from tests.analytics.test_summary import run
from tests.factories import chain_definition, make_org, make_user, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

EXPORTS = "/api/v1/analytics/exports/"


@pytest.fixture
def seven(org, redis_conn, settings, tmp_path):
    """Seven runs of the last days, and nothing else queued (their steps are not the subject)."""
    settings.OPSFLOW_EXPORT_DIR = tmp_path / "exports"
    settings.OPSFLOW_EXPORT_PROGRESS_ROWS = 2
    workflow = make_workflow(org, chain_definition("nightly", 1))
    made = [run(workflow, S.COMPLETED, timezone.now() - timedelta(hours=h), 3) for h in range(7)]
    for queue in settings.OPSFLOW_QUEUES:
        get_queue(queue).empty()
    return made


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_a_background_export_reports_progress_and_downloads_when_done(
    seven, operator, api_for, workers, monkeypatch
):
    seen: list[int] = []
    original = Export.progress
    monkeypatch.setattr(Export, "progress", lambda self, n: (seen.append(n), original(self, n)))
    api = api_for(operator)

    queued = api.post(EXPORTS, {"format": "csv"}, format="json")

    assert queued.status_code == 202, queued.content
    export = queued.json()
    assert (export["status"], export["rows_total"], export["download_url"]) == ("queued", 7, None)
    assert api.get(f"{EXPORTS}{export['id']}/download/").status_code == 409  # not ready
    workers.drain()
    done = api.get(f"{EXPORTS}{export['id']}/").json()
    assert (done["status"], done["rows_done"], done["percent"]) == ("done", 7, 100)
    assert seen == [2, 4, 6]  # saved as it went, every OPSFLOW_EXPORT_PROGRESS_ROWS rows
    file = api.get(done["download_url"])
    assert file.status_code == 200 and file["Content-Type"] == "text/csv"
    header, *rows = list(csv.reader(io.StringIO(body(file).decode())))
    assert header[0] == "id" and sorted(int(r[0]) for r in rows) == sorted(e.pk for e in seven)


def test_an_xlsx_export_in_the_background_opens_with_its_summary(seven, operator, api_for, workers):
    api = api_for(operator)
    export = api.post(EXPORTS, {"format": "xlsx"}, format="json").json()

    workers.drain()

    book = openpyxl.load_workbook(io.BytesIO(body(api.get(f"{EXPORTS}{export['id']}/download/"))))
    assert book.sheetnames == ["Executions", "Summary"]
    assert len(list(book["Executions"].iter_rows())) == 1 + 7


def test_a_users_exports_are_their_own(seven, operator, api_for, workers, org):
    export = api_for(operator).post(EXPORTS, {"format": "csv"}, format="json").json()
    workers.drain()
    colleague = make_user("colleague", org, Role.ADMIN)

    assert api_for(colleague).get(f"{EXPORTS}{export['id']}/").status_code == 404
    assert api_for(colleague).get(f"{EXPORTS}{export['id']}/download/").status_code == 404
    assert api_for(colleague).get(EXPORTS).json()["count"] == 0
    assert api_for(operator).get(EXPORTS).json()["count"] == 1


def test_an_export_expires_and_its_file_goes(seven, operator, api_for, workers, settings):
    api = api_for(operator)
    export = api.post(EXPORTS, {"format": "csv"}, format="json").json()
    workers.drain()
    path = Export.objects.get(pk=export["id"]).path()
    assert path.exists()

    later = timezone.now() + timedelta(hours=settings.OPSFLOW_EXPORT_TTL_HOURS, minutes=1)
    assert exports.expire_exports(later) == 1

    assert not path.exists()
    gone = api.get(f"{EXPORTS}{export['id']}/download/")
    assert gone.status_code == 410 and "expired" in gone.json()["error"]["message"]


@pytest.mark.parametrize(
    "asked, path",
    [({"format": "pdf"}, "format"), ({"format": "csv", "from": "later"}, "from"), ({}, "format")],
)
def test_a_bad_request_changes_nothing(seven, operator, api_for, asked, path):
    response = api_for(operator).post(EXPORTS, asked, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["path"] == path
    assert not Export.objects.exists()


def test_the_portal_starts_one_and_its_page_follows_it(seven, operator, workers, settings):
    client = Client()
    client.force_login(operator)
    settings.OPSFLOW_EXPORT_SYNC_MAX_ROWS = 5  # the page offers the background for 7 rows

    page = client.get("/analytics/").content.decode()
    assert "exported in the background" in page
    started = client.post("/analytics/exports/", {"format": "csv"})
    assert started.status_code == 302
    follow = started["Location"]
    assert "rows written" in client.get(follow).content.decode()
    assert client.get(follow, headers={"HX-Request": "true"}).status_code == 200  # polls on

    workers.drain()

    partial = client.get(follow, headers={"HX-Request": "true"})
    assert partial.status_code == 286  # done: htmx stops polling
    assert "Download export-" in partial.content.decode()
    assert make_org("elsewhere") and Client().get(follow).status_code == 302  # login first
