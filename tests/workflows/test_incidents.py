"""The incident trigger `POST /hooks/<key>/incident/` (issue 14 item 1): Alertmanager,
PagerDuty and generic payloads normalized to `incident`, one run per alert and status, repeats
within the dedupe window answered with the earlier run (also under 20 concurrent deliveries),
`match` filters with the skipped alerts recorded, `{{ incident.* }}` in templates, and the
executions list filtered by incident id."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from apps.accounts.choices import Role
from apps.executions.choices import ExecutionStatus, Trigger
from apps.executions.models import Execution
from apps.workflows.definition import DefinitionError, normalize
from apps.workflows.models import IncidentDelivery
from tests.api_errors import error_of
from tests.factories import make_user, make_workflow

ON_POSTGRESQL = django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql")

# Alertmanager's webhook body (version 4): a group of two alerts, one firing, one resolved.
ALERTMANAGER = {
    "version": "4",
    "groupKey": '{}:{alertname="HighCPU"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "opsflow",
    "groupLabels": {"alertname": "HighCPU"},
    "commonLabels": {"alertname": "HighCPU", "job": "node"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager.example:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "HighCPU",
                "instance": "web-1:9100",
                "job": "node",
                "severity": "critical",
            },
            "annotations": {
                "summary": "CPU above 95% on web-1",
                "description": "5m load average 14.2",
            },
            "startsAt": "2026-12-08T09:12:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=cpu",
            "fingerprint": "5f1c0c4a8e6f7b21",
        },
        {
            "status": "resolved",
            "labels": {
                "alertname": "HighCPU",
                "instance": "web-2:9100",
                "job": "node",
                "severity": "warning",
            },
            "annotations": {"summary": "CPU above 95% on web-2"},
            "startsAt": "2026-12-08T08:40:00.000Z",
            "endsAt": "2026-12-08T09:05:00.000Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=cpu",
            "fingerprint": "9a03d7e1b2c4f588",
        },
    ],
}

# PagerDuty's v3 webhook body for a triggered incident.
PAGERDUTY = {
    "event": {
        "id": "01DEN7RVYL1Z0ZXSIL9CDTRQZH",
        "event_type": "incident.triggered",
        "resource_type": "incident",
        "occurred_at": "2026-12-08T09:15:02.531Z",
        "agent": {"id": "PLH1HKV", "type": "user_reference"},
        "client": None,
        "data": {
            "id": "PGR0VU2",
            "type": "incident",
            "self": "https://api.pagerduty.com/incidents/PGR0VU2",
            "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2",
            "number": 2,
            "status": "triggered",
            "incident_key": "d3640fbd41094207a1c11e58e46b1662",
            "created_at": "2026-12-08T09:15:00Z",
            "title": "Checkout latency above 2 s",
            "service": {
                "html_url": "https://acme.pagerduty.com/services/PF9KMXH",
                "id": "PF9KMXH",
                "self": "https://api.pagerduty.com/services/PF9KMXH",
                "summary": "Checkout API",
                "type": "service_reference",
            },
            "assignees": [],
            "escalation_policy": {"id": "PDBK4XH", "summary": "On-call"},
            "teams": [],
            "priority": {"id": "PSO75BM", "summary": "P1", "type": "priority_reference"},
            "urgency": "high",
            "conference_bridge": None,
            "resolve_reason": None,
        },
    }
}

GENERIC = {
    "id": "disk-full-db-1",
    "title": "Disk 97% full on db-1",
    "severity": "critical",
    "status": "firing",
    "service": "postgres",
    "labels": {"host": "db-1", "team": "data"},
    "url": "https://monitor.example/alerts/disk-full-db-1",
}


def definition(source: str, match=None, **trigger) -> dict:
    return {
        "slug": f"on-{source}",
        "name": f"On {source}",
        "trigger": {"type": "incident", "source": source, "match": match or {}, **trigger},
        "nodes": [
            {
                "id": "note",
                "type": "noop",
                "config": {
                    "output": {
                        "title": "{{ incident.title }}",
                        "status": "{{ incident.status }}",
                        "host": "{{ incident.labels.instance | default('') }}",
                    }
                },
            }
        ],
        "edges": [],
    }


@pytest.fixture
def hooks() -> Client:
    return Client(raise_request_exception=False)


def url_for(workflow) -> str:
    return reverse("incident-webhook", args=[workflow.webhook_key])


def deliver(client, workflow, document, **headers):
    return client.post(
        url_for(workflow), json.dumps(document), content_type="application/json", headers=headers
    )


@pytest.mark.django_db(transaction=True)
def test_an_alertmanager_group_starts_one_run_per_alert_with_the_incident_rendered(
    hooks, org, workers
):
    workflow = make_workflow(org, definition("alertmanager"))

    response = deliver(hooks, workflow, ALERTMANAGER)

    assert response.status_code == 202
    results = response.json()["incidents"]
    assert [(r["id"], r["status"], r["outcome"]) for r in results] == [
        ("5f1c0c4a8e6f7b21", "firing", "started"),
        ("9a03d7e1b2c4f588", "resolved", "started"),
    ]
    firing = Execution.objects.get(pk=results[0]["execution"])
    assert firing.trigger == Trigger.INCIDENT
    assert firing.trigger_data["incident"] == {
        "id": "5f1c0c4a8e6f7b21",
        "title": "CPU above 95% on web-1",
        "severity": "critical",
        "status": "firing",
        "source": "alertmanager",
        "service": "node",
        "labels": ALERTMANAGER["alerts"][0]["labels"],
        "annotations": ALERTMANAGER["alerts"][0]["annotations"],
        "url": "http://prometheus.example:9090/graph?g0.expr=cpu",
        "started_at": "2026-12-08T09:12:00.000Z",
    }
    workers.run_to_end(firing)
    assert firing.status == ExecutionStatus.COMPLETED
    assert firing.steps.get(node_id="note").output == {
        "title": "CPU above 95% on web-1",
        "status": "firing",
        "host": "web-1:9100",
    }


@pytest.mark.django_db
def test_a_pagerduty_event_is_normalized_and_signed_with_pagerdutys_header(hooks, org):
    workflow = make_workflow(org, definition("pagerduty"))
    workflow.webhook_secret = "pd-secret"
    workflow.save()
    body = json.dumps(PAGERDUTY).encode()
    signature = hmac.new(b"pd-secret", body, hashlib.sha256).hexdigest()

    unsigned = hooks.post(url_for(workflow), body, content_type="application/json")
    wrong = hooks.post(
        url_for(workflow),
        body,
        content_type="application/json",
        headers={"X-PagerDuty-Signature": "v1=" + "0" * 64},
    )
    signed = hooks.post(
        url_for(workflow),
        body,
        content_type="application/json",
        # PagerDuty sends several while a secret rotates
        headers={"X-PagerDuty-Signature": f"v1={'1' * 64},v1={signature}"},
    )

    assert unsigned.status_code == 401 and wrong.status_code == 401
    assert signed.status_code == 202, signed.content
    incident = Execution.objects.get().trigger_data["incident"]
    assert incident == {
        "id": "PGR0VU2",
        "title": "Checkout latency above 2 s",
        "severity": "p1",
        "status": "firing",
        "source": "pagerduty",
        "service": "Checkout API",
        "labels": {
            "urgency": "high",
            "priority": "P1",
            "service_id": "PF9KMXH",
            "incident_number": "2",
        },
        "annotations": {},
        "url": "https://acme.pagerduty.com/incidents/PGR0VU2",
        "started_at": "2026-12-08T09:15:00Z",
    }


@pytest.mark.django_db
def test_pagerduty_events_that_change_no_alert_start_nothing_and_resolved_ones_do(hooks, org):
    workflow = make_workflow(org, definition("pagerduty"))
    acknowledged = json.loads(json.dumps(PAGERDUTY))
    acknowledged["event"]["event_type"] = "incident.acknowledged"
    resolved = json.loads(json.dumps(PAGERDUTY))
    resolved["event"]["event_type"] = "incident.resolved"

    assert deliver(hooks, workflow, acknowledged).json() == {"incidents": []}
    answer = deliver(hooks, workflow, resolved).json()["incidents"]

    assert [(r["status"], r["outcome"]) for r in answer] == [("resolved", "started")]
    assert Execution.objects.count() == 1


@pytest.mark.django_db
def test_a_generic_incident_and_a_bearer_token_for_senders_that_cannot_sign(hooks, org):
    workflow = make_workflow(org, definition("generic"))
    workflow.webhook_secret = "token-for-alertmanager"
    workflow.save()

    refused = deliver(hooks, workflow, GENERIC, Authorization="Bearer not-it")
    accepted = deliver(hooks, workflow, GENERIC, Authorization="Bearer token-for-alertmanager")

    assert refused.status_code == 401
    assert accepted.status_code == 202
    incident = Execution.objects.get().trigger_data["incident"]
    assert (incident["id"], incident["severity"], incident["service"]) == (
        "disk-full-db-1",
        "critical",
        "postgres",
    )
    assert incident["labels"] == {"host": "db-1", "team": "data"}


@pytest.mark.django_db
def test_a_repeat_within_the_window_answers_the_earlier_run_and_after_it_starts_another(hooks, org):
    workflow = make_workflow(org, definition("generic", dedupe_window=600))

    first = deliver(hooks, workflow, GENERIC).json()["incidents"][0]
    again = deliver(hooks, workflow, GENERIC).json()["incidents"][0]
    resolved = deliver(hooks, workflow, {**GENERIC, "status": "resolved"}).json()["incidents"][0]

    assert first["outcome"] == "started"
    assert again == {**first, "outcome": "duplicate"}
    assert resolved["outcome"] == "started"  # another status of the same alert
    assert Execution.objects.count() == 2
    row = IncidentDelivery.objects.get(incident_id="disk-full-db-1", status="firing")
    assert row.repeats == 1

    IncidentDelivery.objects.filter(pk=row.pk).update(
        created_at=row.created_at - timedelta(hours=1)
    )
    later = deliver(hooks, workflow, GENERIC).json()["incidents"][0]

    assert later["outcome"] == "started" and later["execution"] != first["execution"]
    assert Execution.objects.count() == 3
    # both runs of the alert stay found by its id
    runs = Execution.objects.filter(incident_deliveries__incident_id="disk-full-db-1")
    assert set(runs.values_list("pk", flat=True)) == {
        first["execution"],
        later["execution"],
        resolved["execution"],
    }


@pytest.mark.django_db
def test_match_filters_and_the_skipped_alerts_are_recorded_with_the_reason(hooks, org):
    match = {"status": "firing", "severity": ["critical"], "labels": {"job": "node"}}
    workflow = make_workflow(org, definition("alertmanager", match=match))
    warning = json.loads(json.dumps(ALERTMANAGER))
    warning["alerts"][0]["labels"]["severity"] = "warning"

    answer = deliver(hooks, workflow, ALERTMANAGER).json()["incidents"]
    again = deliver(hooks, workflow, ALERTMANAGER).json()["incidents"]

    assert [(r["outcome"], r["reason"]) for r in answer] == [
        ("started", ""),
        ("skipped", "status 'resolved' is not in match.status"),
    ]
    assert [r["outcome"] for r in again] == ["duplicate", "skipped"]
    skipped = IncidentDelivery.objects.get(outcome="skipped")
    assert (skipped.incident_id, skipped.repeats, skipped.execution) == (
        "9a03d7e1b2c4f588",
        1,
        None,
    )
    assert Execution.objects.count() == 1

    other = make_workflow(org, {**definition("alertmanager", match=match), "slug": "other"})
    reasons = [r["reason"] for r in deliver(hooks, other, warning).json()["incidents"]]
    assert reasons == [
        "severity 'warning' is not in match.severity",
        "status 'resolved' is not in match.status",
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "document, path, message",
    [
        ({"alerts": "nope"}, "alerts", "required: a list of alerts"),
        (
            {"alerts": [{"status": "pending", "labels": {}}]},
            "alerts[0].status",
            "firing or resolved",
        ),
        ({"alerts": [{"status": "firing", "labels": []}]}, "alerts[0].labels", "must be an object"),
        ({"alerts": [{"status": "firing"}] * 101}, "alerts", "at most 100"),
    ],
)
def test_a_payload_not_of_the_sources_shape_is_a_400_that_says_where(
    hooks, org, document, path, message
):
    workflow = make_workflow(org, definition("alertmanager"))

    response = deliver(hooks, workflow, document)

    assert response.status_code == 400
    body = error_of(response)
    assert body["details"][0]["path"] == path and message in body["message"]
    assert not Execution.objects.exists() and not IncidentDelivery.objects.exists()


@pytest.mark.django_db
def test_a_workflow_without_an_incident_trigger_is_a_409_and_a_bad_trigger_is_refused(hooks, org):
    plain = make_workflow(
        org, {"slug": "plain", "name": "Plain", "nodes": [{"id": "a", "type": "noop"}]}
    )

    assert deliver(hooks, plain, GENERIC).status_code == 409
    bad = definition("nagios", match={"status": ["open"], "colour": "red"}, dedupe_window=-1)
    with pytest.raises(DefinitionError) as caught:
        normalize(bad)
    paths = {p.path for p in caught.value.problems}
    assert {
        "trigger.source",
        "trigger.dedupe_window",
        "trigger.match.colour",
        "trigger.match.status",
    } <= paths


@pytest.mark.django_db
def test_the_executions_list_filters_by_incident_id_and_the_run_page_names_it(hooks, org, client):
    workflow = make_workflow(org, definition("generic"))
    run = deliver(hooks, workflow, GENERIC).json()["incidents"][0]["execution"]
    deliver(hooks, workflow, {**GENERIC, "id": "another"})
    viewer = make_user("oncall", org, Role.VIEWER)
    client.force_login(viewer)
    api = Client()
    api.force_login(viewer)

    listed = api.get("/api/v1/executions/", {"incident": "disk-full-db-1"}).json()
    page = client.get(
        reverse("admin:executions_execution_changelist"), {"incident": "disk-full-db-1"}
    )
    detail = client.get(reverse("admin:executions_execution_change", args=[run])).content.decode()

    assert [e["id"] for e in listed["results"]] == [run]
    assert page.status_code == 200 and list(page.context["cl"].result_list) == [
        Execution.objects.get(pk=run)
    ]
    assert "disk-full-db-1" in detail and "Disk 97% full on db-1" in detail
    assert 'href="https://monitor.example/alerts/disk-full-db-1"' in detail
    deliveries = client.get(reverse("admin:workflows_incidentdelivery_changelist"))
    assert deliveries.status_code == 200 and "another" in deliveries.content.decode()


@pytest.mark.skipif(not ON_POSTGRESQL, reason="concurrent writers: PostgreSQL's row locks")
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_deliveries_of_one_alert_make_exactly_one_run(org, live_server):
    workflow = make_workflow(org, definition("generic"))
    url = live_server.url + url_for(workflow)
    start = threading.Barrier(20)

    def post(_):
        start.wait()
        return httpx.post(url, json=GENERIC, timeout=30)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))

    assert {a.status_code for a in answers} == {202}
    outcomes = sorted(a.json()["incidents"][0]["outcome"] for a in answers)
    assert outcomes == ["duplicate"] * 19 + ["started"]
    assert len({a.json()["incidents"][0]["execution"] for a in answers}) == 1
    assert Execution.objects.count() == 1
    assert IncidentDelivery.objects.get().repeats == 19


@pytest.mark.django_db
def test_skipped_alerts_are_pruned_after_30_days_and_runs_keep_theirs(hooks, org):
    from django.utils import timezone

    from apps.workflows.incidents import prune_skipped

    workflow = make_workflow(org, definition("alertmanager", match={"status": "firing"}))
    deliver(hooks, workflow, ALERTMANAGER)  # one run, one skipped
    IncidentDelivery.objects.update(created_at=timezone.now() - timedelta(days=31))

    assert prune_skipped() == 1
    assert list(IncidentDelivery.objects.values_list("outcome", flat=True)) == ["started"]


@pytest.mark.django_db
def test_the_workflow_names_its_incident_url(org):
    workflow = make_workflow(org, definition("generic"))
    operator = make_user("responder", org, Role.OPERATOR)
    api = Client()
    api.force_login(operator)

    shown = api.get(f"/api/v1/workflows/{workflow.slug}/").json()["webhook_url"]

    assert shown == f"http://testserver/hooks/{workflow.webhook_key}/incident/"
    page = api.get(reverse("admin:workflows_workflow_change", args=[workflow.pk])).content
    assert f"/hooks/{workflow.webhook_key}/incident/".encode() in page
