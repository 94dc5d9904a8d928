"""Times in the user's time zone (the browser's, through the opsflow_tz cookie), and the 404 page."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import Client

from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db


def test_pages_render_times_in_the_zone_the_browser_names(org, viewer):
    run = trigger_workflow(make_workflow(org, chain_definition("tz", 1)))
    Execution.objects.filter(pk=run.pk).update(created_at=datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    client = Client()
    client.force_login(viewer)
    url = f"/executions/execution/{run.pk}/change/"

    assert "2026-07-01 12:00:00 UTC" in client.get(url).content.decode()
    client.cookies["opsflow_tz"] = "Europe/Paris"
    assert "2026-07-01 14:00:00 CEST" in client.get(url).content.decode()
    client.cookies["opsflow_tz"] = "Mars/Olympus_Mons"  # not a zone: UTC
    assert "2026-07-01 12:00:00 UTC" in client.get(url).content.decode()


def test_a_missing_page_is_the_portal_s_404(viewer, settings):
    settings.DEBUG = False
    client = Client()
    client.force_login(viewer)

    response = client.get("/executions/execution/999999/steps/1/")

    assert response.status_code == 404
    page = response.content.decode()
    assert "Nothing here" in page and 'href="/api/v1/docs/"' in page
