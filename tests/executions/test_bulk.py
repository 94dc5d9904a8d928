"""Bulk cancel and re-trigger of executions: the API's bulk-cancel/ and bulk-retrigger/ (ids or
everything matching the filters) and the admin's actions with their confirm page."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client

from apps.executions import services
from apps.executions.choices import ExecutionStatus
from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def deploy(org):
    return make_workflow(org, chain_definition("deploy", 2))


@pytest.fixture
def backup(org):
    return make_workflow(org, chain_definition("backup", 2))


def statuses(runs) -> list[str]:
    return [Execution.objects.get(pk=r.pk).status for r in runs]


def test_bulk_cancel_by_ids_cancels_those_and_skips_finished_ones_with_why(
    deploy, operator, api_for
):
    running = [trigger_workflow(deploy) for _ in range(2)]
    finished = trigger_workflow(deploy)
    services.cancel_execution(finished)

    answer = api_for(operator).post(
        "/api/v1/executions/bulk-cancel/",
        {"ids": [r.pk for r in running] + [finished.pk]},
        format="json",
    )

    assert answer.status_code == 200
    body = answer.json()
    assert sorted(body["done"]) == sorted(r.pk for r in running)
    assert body["skipped"] == [
        {"id": finished.pk, "reason": f"Execution #{finished.pk} is already cancelled."}
    ]
    assert statuses(running) == ["cancelled", "cancelled"]


def test_bulk_cancel_of_everything_matching_the_filter_leaves_the_rest(
    deploy, backup, operator, api_for
):
    deploys = [trigger_workflow(deploy) for _ in range(3)]
    backups = [trigger_workflow(backup) for _ in range(2)]

    answer = api_for(operator).post(
        "/api/v1/executions/bulk-cancel/?workflow=deploy", {"all_matching": True}, format="json"
    )

    assert answer.status_code == 200
    assert sorted(answer.json()["done"]) == sorted(r.pk for r in deploys)
    assert set(statuses(deploys)) == {"cancelled"}
    assert ExecutionStatus.CANCELLED not in statuses(backups)


def test_bulk_retrigger_starts_a_new_execution_for_each(deploy, operator, api_for):
    old = [trigger_workflow(deploy, variables={}) for _ in range(2)]
    for run in old:
        services.cancel_execution(run)

    answer = api_for(operator).post(
        "/api/v1/executions/bulk-retrigger/", {"ids": [r.pk for r in old]}, format="json"
    )

    assert answer.status_code == 200
    assert sorted(answer.json()["done"]) == sorted(r.pk for r in old)
    for run in old:
        assert Execution.objects.filter(retriggered_from=run).count() == 1


def test_more_matching_than_the_limit_is_refused_before_anything_is_done(
    deploy, operator, api_for, monkeypatch
):
    monkeypatch.setattr(services, "BULK_LIMIT", 2)
    runs = [trigger_workflow(deploy) for _ in range(3)]

    answer = api_for(operator).post(
        "/api/v1/executions/bulk-cancel/", {"all_matching": True}, format="json"
    )

    assert answer.status_code == 400
    assert "More than 2 executions match: narrow the filter" in str(answer.json())
    assert ExecutionStatus.CANCELLED not in statuses(runs)


def test_a_bulk_call_with_neither_ids_nor_all_matching_is_a_400(operator, api_for):
    answer = api_for(operator).post("/api/v1/executions/bulk-cancel/", {}, format="json")

    assert answer.status_code == 400
    assert "give ids, or all_matching" in str(answer.json())


def test_a_viewer_may_call_it_but_every_row_is_skipped(deploy, viewer, api_for):
    run = trigger_workflow(deploy)

    answer = api_for(viewer).post(
        "/api/v1/executions/bulk-cancel/", {"ids": [run.pk]}, format="json"
    )

    assert answer.json()["done"] == []
    assert "operator needed" in answer.json()["skipped"][0]["reason"]
    assert statuses([run]) != ["cancelled"]


# --- the admin's actions ---


@pytest.fixture
def browser(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def test_the_admin_action_asks_first_with_the_count_then_cancels(deploy, browser):
    runs = [trigger_workflow(deploy) for _ in range(3)]
    ids = [r.pk for r in runs[:2]]
    form = {"action": "cancel_selected", admin.helpers.ACTION_CHECKBOX_NAME: ids}

    asked = browser.post("/executions/execution/", form)

    assert asked.status_code == 200
    page = asked.content.decode()
    assert "Cancel 2 executions?" in page and "Yes, cancel 2" in page
    assert ExecutionStatus.CANCELLED not in statuses(runs)

    done = browser.post("/executions/execution/", {**form, "confirmed": "yes"}, follow=True)

    assert statuses(runs) == ["cancelled", "cancelled", runs[2].status]
    assert "Cancelled 2 executions." in done.content.decode()


def test_select_all_matching_the_filter_says_so_and_acts_on_the_filter(deploy, backup, browser):
    deploys = [trigger_workflow(deploy) for _ in range(2)]
    other = trigger_workflow(backup)
    form = {
        "action": "retrigger_selected",
        "select_across": "1",
        admin.helpers.ACTION_CHECKBOX_NAME: [deploys[0].pk],
    }
    url = f"/executions/execution/?workflow__id__exact={deploy.pk}"

    asked = browser.post(url, form).content.decode()

    assert "Re-trigger 2 executions, everything the filters match?" in asked
    browser.post(url, {**form, "confirmed": "yes"})
    for run in deploys:
        assert Execution.objects.filter(retriggered_from=run).exists()
    assert not Execution.objects.filter(retriggered_from=other).exists()


def test_the_admin_action_refuses_more_than_the_limit(deploy, browser, monkeypatch):
    monkeypatch.setattr(services, "BULK_LIMIT", 2)
    runs = [trigger_workflow(deploy) for _ in range(3)]
    form = {
        "action": "cancel_selected",
        "select_across": "1",
        admin.helpers.ACTION_CHECKBOX_NAME: [runs[0].pk],
    }

    asked = browser.post("/executions/execution/", form).content.decode()
    assert "More than 2 executions match" in asked
    browser.post("/executions/execution/", {**form, "confirmed": "yes"})
    assert ExecutionStatus.CANCELLED not in statuses(runs)


# --- the list's columns and filters ---


def test_jobs_say_what_the_nodes_came_to():
    from apps.executions.admin import jobs_summary

    run = Execution(steps_completed=4, steps_failed=0, steps_skipped=1, steps_total=5)
    assert jobs_summary(run) == "4 ✓ · 1 skipped / 5"
    run.steps_failed = 2
    assert jobs_summary(run) == "4 ✓ · 2 ✗ · 1 skipped / 5"


def test_the_variables_filter_matches_a_value_in_the_api_and_the_admin(
    deploy, operator, api_for, browser
):
    web1 = trigger_workflow(deploy, variables={})
    Execution.objects.filter(pk=web1.pk).update(variables={"host": "web-1", "retries": 3})
    web2 = trigger_workflow(deploy, variables={})
    Execution.objects.filter(pk=web2.pk).update(variables={"host": "web-2"})
    api = api_for(operator)

    def ids(query: str) -> list[int]:
        answer = api.get(f"/api/v1/executions/?{query}")
        assert answer.status_code == 200, answer.content
        return [row["id"] for row in answer.json()["results"]]

    assert ids("variables=host=web-1") == [web1.pk]
    assert ids("variables=retries=3") == [web1.pk]  # a number matches as a number
    assert ids("variables=host=web-1&variables=retries=4") == []  # every condition holds
    assert ids("variables=host=nowhere") == []
    bad = api.get("/api/v1/executions/?variables=no-equals-sign")
    assert bad.status_code == 400 and "is not name=value" in str(bad.json())
    assert api.get("/api/v1/executions/?variables=a__b=1").status_code == 400

    listed = browser.get("/executions/execution/?variables=host%3Dweb-2")
    assert [e.pk for e in listed.context["cl"].result_list] == [web2.pk]
    refused = browser.get("/executions/execution/?variables=%3D%3D", follow=True)
    assert "Variables filter:" in refused.content.decode()


def test_the_triggered_by_filter(deploy, operator, owner, api_for, browser):
    mine = trigger_workflow(deploy, user=operator)
    trigger_workflow(deploy, user=owner)

    answer = api_for(operator).get("/api/v1/executions/?triggered_by=operator")
    assert [row["id"] for row in answer.json()["results"]] == [mine.pk]

    listed = browser.get(f"/executions/execution/?triggered_by__id__exact={operator.pk}")
    assert [e.pk for e in listed.context["cl"].result_list] == [mine.pk]
