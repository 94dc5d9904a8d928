"""Cron that says what it does (issue 10 item 9): a schedule firing more often than
OPSFLOW_CRON_MIN_INTERVAL is refused with the message, and the next five fires are shown in the
admin and returned by the API."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.test import Client

from apps.workflows.models import Workflow
from tests.factories import make_workflow


def cron(schedule: str, slug: str = "tick") -> dict:
    return {
        "slug": slug,
        "name": slug,
        "trigger": {"type": "cron", "schedule": schedule, "timezone": "Europe/Paris"},
        "nodes": [{"id": "a", "type": "noop"}],
    }


@pytest.mark.django_db
@pytest.mark.parametrize(("schedule", "gap"), [("*/10 * * * * *", 1), ("* * * * * 0,5", 5)])
def test_a_schedule_faster_than_the_minimum_is_refused(org, editor, api_for, schedule, gap):
    answer = api_for(editor).post("/api/v1/workflows/", cron(schedule), format="json")

    assert answer.status_code == 400
    (problem,) = answer.json()["error"]["details"]
    assert problem["path"] == "trigger.schedule"
    assert problem["message"].startswith(
        f"{schedule!r} fires {gap} s apart at times; the minimum is OPSFLOW_CRON_MIN_INTERVAL (10 s)"
    )
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_every_ten_seconds_written_right_is_accepted_and_previewed(org, viewer, api_for):
    workflow = make_workflow(org, cron("* * * * * */10"))

    fires = api_for(viewer).get(f"/api/v1/workflows/{workflow.slug}/").json()["next_fires"]

    assert len(fires) == 5
    times = [datetime.fromisoformat(f) for f in fires]
    assert [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)] == [10.0] * 4
    assert all(t.utcoffset() is not None and t.second % 10 == 0 for t in times)


@pytest.mark.django_db
def test_the_admin_page_shows_the_next_five_fires(org, viewer):
    workflow = make_workflow(org, cron("0 3 * * *"))
    client = Client()
    client.force_login(viewer)

    page = client.get(f"/workflows/workflow/{workflow.pk}/change/").content.decode()

    assert "Next fires" in page
    assert page.count("T03:00:00+0") == 5  # 03:00 Paris time, five days


@pytest.mark.django_db
def test_other_triggers_have_no_fires(org, viewer, api_for):
    workflow = make_workflow(
        org, {"slug": "m", "name": "m", "nodes": [{"id": "a", "type": "noop"}]}
    )

    assert api_for(viewer).get(f"/api/v1/workflows/{workflow.slug}/").json()["next_fires"] is None
