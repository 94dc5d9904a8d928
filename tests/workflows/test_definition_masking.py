"""A sensitive header typed into a definition (issue 9 finding 4, the blueprint part): those who
may not edit the workflow read its definition, its versions and incomplete-execution blueprints
with the value masked; editors, who change it, read it as written."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.accounts.choices import Role
from apps.executions.masking import MASK
from apps.executions.models import IncompleteExecution
from apps.executions.services import trigger_workflow
from tests.factories import make_user, make_workflow

LITERAL = "Bearer typed-in-literal-7731"


def definition(slug: str = "typed") -> dict:
    return {
        "slug": slug,
        "name": slug,
        "settings": {"store_incomplete_executions": True},
        "nodes": [
            {"id": "start", "type": "noop"},
            {
                "id": "call",
                "type": "http.request",
                # Nothing listens on port 9 of 127.0.0.1: the call fails and is stored.
                "config": {"url": "http://127.0.0.1:9/", "headers": {"Authorization": LITERAL}},
            },
        ],
        "edges": [{"from": "start", "to": "call"}],
    }


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_those_who_may_not_edit_read_the_definition_masked(org, role, api_for):
    workflow = make_workflow(org, definition())
    user = make_user("reader", org, role)
    client = api_for(user)

    detail = client.get(f"/api/v1/workflows/{workflow.slug}/").json()
    versions = client.get(f"/api/v1/workflows/{workflow.slug}/versions/").json()["results"]
    browser = Client()
    browser.force_login(user)
    page = browser.get(f"/workflows/workflow/{workflow.pk}/change/").content.decode()

    assert detail["definition"]["nodes"][1]["config"]["headers"]["Authorization"] == MASK
    assert versions[0]["definition"]["nodes"][1]["config"]["headers"]["Authorization"] == MASK
    assert "typed-in-literal" not in page
    assert "Authorization: &#x27;***&#x27;" in page  # the YAML, readable, not "None"


@pytest.mark.django_db
def test_editors_read_the_definition_as_written(org, editor, api_for):
    workflow = make_workflow(org, definition())

    detail = api_for(editor).get(f"/api/v1/workflows/{workflow.slug}/").json()

    assert detail["definition"]["nodes"][1]["config"]["headers"]["Authorization"] == LITERAL


@pytest.mark.django_db(transaction=True)
def test_the_incomplete_execution_blueprint_is_masked(org, viewer, workers, api_for):
    trigger_workflow(make_workflow(org, definition()))
    workers.drain()
    record = IncompleteExecution.objects.get()

    shown = api_for(viewer).get(f"/api/v1/incomplete-executions/{record.pk}/").content.decode()

    assert "typed-in-literal" not in shown
    assert record.blueprint["nodes"][1]["config"]["headers"]["Authorization"] == MASK
