"""The analytics page of the portal (issue 13 item 2): the figures of the range, each a link
to the executions it counts, presets, a workflow filter, the exports, and clear errors."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

PAGE = "/analytics/"
RANGE = "?from=2026-01-10&to=2026-01-11"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_page_shows_the_figures_and_each_opens_its_executions(
    history,  # noqa: F811
    analyst,  # noqa: F811
):
    client = signed_in(analyst)

    response = client.get(PAGE + RANGE)

    assert response.status_code == 200
    html = response.content.decode()
    assert "60.0 %" in html and ">8</span>" in html  # success rate, executions
    assert 'class="chart"' in html  # unfold's Chart.js bar component
    cards = re.findall(r'class="opsflow-card[^"]*" href="([^"]+)"', html)
    assert cards
    for url in cards:
        listed = client.get(unescape(url))
        assert listed.status_code == 200, url
        assert "?e=1" not in listed.get("Location", ""), url  # a lookup the admin refused
    failed = next(u for u in cards if "status__exact=failed" in u)
    assert client.get(unescape(failed)).context["cl"].result_count == 1
    everything = client.get(unescape(cards[0])).context["cl"].result_count
    assert everything == 8


def test_a_preset_and_a_workflow_narrow_the_page(history, analyst):  # noqa: F811
    html = signed_in(analyst).get(PAGE + RANGE + "&workflow=beta").content.decode()

    assert "workflow Beta" in html
    assert "format=csv" in html and "workflow=beta" in html  # the exports follow the filter
    assert signed_in(analyst).get(PAGE + "?range=90d").status_code == 200


def test_a_bad_range_says_why_with_a_400(analyst):  # noqa: F811
    response = signed_in(analyst).get(PAGE + "?from=tomorrowish")

    assert response.status_code == 400
    assert "from: not a date" in response.content.decode()


def test_the_sidebar_links_the_page(analyst):  # noqa: F811
    assert 'href="/analytics/"' in signed_in(analyst).get("/").content.decode()


def test_anonymous_visitors_are_sent_to_the_login():
    response = Client().get(PAGE)

    assert response.status_code == 302 and "/login/" in response["Location"]
