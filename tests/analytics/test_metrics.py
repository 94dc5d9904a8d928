"""Prometheus metrics at /metrics (issue 13 item 5).

The counters are Redis hashes that every process adds to (apps/analytics/metrics_counters.py),
the gauges are counted from the database at scrape time (apps/analytics/metrics.py). The work
they count is real: runs on real RQ workers in-process (`workers` in conftest), a webhook
through the view, an approval gate that pauses its run. Nothing sleeps: the heartbeat's send is
driven by calling it.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.analytics import metrics_counters
from apps.executions import dispatch
from apps.executions.choices import (
    AgentState,
    ExecutionStatus,
    IncompleteStatus,
    Trigger,
)
from apps.executions.models import Agent, Execution, IncompleteExecution, Step
from apps.executions.services import cancel_execution, run_step_chain, trigger_workflow
from apps.executions.worker import HEARTBEAT, AgentContext, current_agent
from tests.factories import chain_definition, make_org, make_workflow

TOKEN = "scrape-token-0123456789"

# Every series the README documents, by family name (a counter's samples add `_total`).
DOCUMENTED = {
    "opsflow_executions_finished": "counter",
    "opsflow_steps_finished": "counter",
    "opsflow_step_duration_seconds": "histogram",
    "opsflow_webhook_requests": "counter",
    "opsflow_queue_waiting_steps": "gauge",
    "opsflow_queue_delayed_steps": "gauge",
    "opsflow_queue_oldest_waiting_seconds": "gauge",
    "opsflow_queue_agents": "gauge",
    "opsflow_agents": "gauge",
    "opsflow_executions_overdue": "gauge",
    "opsflow_incomplete_executions": "gauge",
    "opsflow_incomplete_stored_bytes": "gauge",
    "opsflow_incomplete_storage_limit_bytes": "gauge",
    "opsflow_approvals_pending": "gauge",
    "opsflow_metrics_source_up": "gauge",
}
LABELS = {"organization", "workflow", "status", "node_type", "queue", "outcome", "state", "source"}


@pytest.fixture
def metrics_token(settings):
    settings.OPSFLOW_METRICS_TOKEN = TOKEN
    settings.DEBUG = False
    return TOKEN


@pytest.fixture(autouse=True)
def no_pending_counts():
    """Counts another test left in this process's memory are not this test's."""
    metrics_counters.PENDING.take()
    yield
    metrics_counters.PENDING.take()


@pytest.fixture
def web() -> Client:
    """Django's test client, answering a crash as the 500 a scraper would see."""
    return Client(raise_request_exception=False)


class Scrape:
    """One parsed answer of /metrics: families by name."""

    def __init__(self, text: str):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` (a family's sample name, e.g. `x_total`, `x_bucket`) whose
        labels include `labels`; 0 when the series is absent."""
        found = [
            s.value
            for family in self.families.values()
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
        return found[0] if found else 0.0

    def samples(self):
        for family in self.families.values():
            yield from family.samples


def scrape(web: Client) -> Scrape:
    response = web.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return Scrape(response.content.decode())


# --- access ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_refuses_a_scrape_without_the_token(web, metrics_token):
    response = web.get("/metrics")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "opsflow_" not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    [
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Token {TOKEN}",
        f"Basic {TOKEN}",
        "Bearer",
        "Bearer ",
        TOKEN,
        "Bearer tökén-\u2603",
    ],
)
def test_it_refuses_a_wrong_token_or_scheme_with_401_never_500(web, metrics_token, header):
    response = web.get("/metrics", HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "opsflow_" not in response.content.decode()


@pytest.mark.django_db
def test_without_a_token_set_it_is_closed_and_says_which_variable_opens_it(web, settings):
    settings.OPSFLOW_METRICS_TOKEN = ""
    settings.DEBUG = False

    for header in ({}, {"HTTP_AUTHORIZATION": "Bearer "}, {"HTTP_AUTHORIZATION": "Bearer x"}):
        response = web.get("/metrics", **header)
        assert response.status_code == 401
        assert "OPSFLOW_METRICS_TOKEN" in response.content.decode()


@pytest.mark.django_db
def test_without_a_token_set_it_is_open_while_debug_is_on(web, settings):
    settings.OPSFLOW_METRICS_TOKEN = ""
    settings.DEBUG = True

    response = web.get("/metrics")

    assert response.status_code == 200
    assert "opsflow_agents" in Scrape(response.content.decode()).families


@pytest.mark.django_db
def test_debug_does_not_open_it_once_a_token_is_set(web, settings):
    settings.OPSFLOW_METRICS_TOKEN = TOKEN
    settings.DEBUG = True

    assert web.get("/metrics").status_code == 401
    assert web.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@pytest.mark.django_db
def test_it_answers_only_get_and_head(web, metrics_token):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}

    assert web.head("/metrics", **auth).status_code == 200
    response = web.post("/metrics", **auth)
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.django_db
def test_it_speaks_openmetrics_to_a_scraper_that_asks_and_survives_odd_accept_headers(
    web, metrics_token
):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    response = web.get(
        "/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0", **auth
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().endswith("# EOF\n")

    for accept in ("text/plain; version=garbage", "application/openmetrics-text; version=x.y", ";"):
        assert web.get("/metrics", HTTP_ACCEPT=accept, **auth).status_code == 200


# --- the series ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_documented_series_is_exposed_with_help_text_before_any_work(
    web, metrics_token, redis_conn
):
    result = scrape(web)

    for name, kind in DOCUMENTED.items():
        family = result.families.get(name)
        assert family is not None, f"{name} is missing"
        assert family.type == kind, name
        assert len(family.documentation) > 20, name
    assert set(result.families) == set(DOCUMENTED)  # nothing undocumented either
    assert result.value("opsflow_metrics_source_up", source="redis") == 1
    assert result.value("opsflow_metrics_source_up", source="database") == 1
    assert result.value("opsflow_webhook_requests_total", outcome="accepted") == 0


def test_the_readme_documents_exactly_the_series_exposed():
    readme = (Path(django_settings.BASE_DIR) / "README.md").read_text()
    section = readme.split("## Metrics (Prometheus)", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(opsflow_[a-z_]+)` \| (counter|gauge|histogram) \|", section, re.M)
    documented = {name.removesuffix("_total"): kind for name, kind in rows}

    assert documented == DOCUMENTED


def gated(slug: str, approver: str) -> dict[str, Any]:
    return {
        "slug": slug,
        "name": "Gated",
        "nodes": [
            {"id": "check", "type": "noop"},
            {
                "id": "gate",
                "type": "approval",
                "config": {"message": "Go?", "approvers": [approver]},
            },
        ],
        "edges": [{"from": "check", "to": "gate"}],
    }


def failing(slug: str, *, first: bool, store: bool = False) -> dict[str, Any]:
    """A shell command that exits 1, as the entry node (the run fails) or after a noop (with
    storing on, the run is stored as incomplete)."""
    boom = {"id": "boom", "type": "shell.command", "config": {"script": "exit 1"}}
    nodes = [boom] if first else [{"id": "start", "type": "noop"}, boom]
    return {
        "slug": slug,
        "name": slug.title(),
        "settings": {"store_incomplete_executions": store},
        "nodes": nodes,
        "edges": [] if first else [{"from": "start", "to": "boom"}],
    }


def stranded(slug: str) -> dict[str, Any]:
    """One node on a queue that no agent serves: its step waits."""
    return {
        "slug": slug,
        "name": "Stranded",
        "nodes": [{"id": "only", "type": "noop", "queue": "nobody"}],
        "edges": [],
    }


def agent_row(name: str, state: str, silent_for: float = 0) -> Agent:
    row = Agent.register(name, ["default", "shell"], "host", 4242)
    Agent.objects.filter(pk=row.pk).update(
        state=state, last_heartbeat_at=timezone.now() - timedelta(seconds=silent_for)
    )
    return row


@pytest.mark.django_db(transaction=True)
def test_the_series_count_real_work_on_real_workers(web, metrics_token, workers, owner, org):
    other = make_org("globex")
    ok = make_workflow(org, chain_definition("ok-chain", 2))
    broken = make_workflow(org, failing("breaks", first=True))
    stored = make_workflow(org, failing("stored", first=False, store=True))
    gate = make_workflow(org, gated("gated", owner.username))
    stuck = make_workflow(other, stranded("stranded"))

    completed = trigger_workflow(ok)
    failed = trigger_workflow(broken)
    incomplete = trigger_workflow(stored)
    paused = trigger_workflow(gate)
    waiting = trigger_workflow(stuck)
    cancelled = trigger_workflow(stuck)
    hook = web.post(
        reverse("webhook", args=[ok.webhook_key]), b"{}", content_type="application/json"
    )
    assert hook.status_code == 202
    refused = web.post("/hooks/no-such-key/", b"{}", content_type="application/json")
    assert refused.status_code == 404
    bad = web.post(reverse("webhook", args=[ok.webhook_key]), b"{", content_type="application/json")
    assert bad.status_code == 400
    late = trigger_workflow(
        ok, trigger=Trigger.CRON, scheduled_for=timezone.now() - timedelta(minutes=10)
    )

    workers.drain()
    cancel_execution(cancelled, user=owner)

    status = dict(Execution.objects.values_list("pk", "status"))
    assert status[completed.pk] == ExecutionStatus.COMPLETED
    assert status[hook.json()["execution"]] == ExecutionStatus.COMPLETED
    assert status[failed.pk] == ExecutionStatus.FAILED
    assert status[incomplete.pk] == ExecutionStatus.INCOMPLETE
    assert status[paused.pk] == ExecutionStatus.PAUSED
    assert status[waiting.pk] == ExecutionStatus.PENDING
    assert status[cancelled.pk] == ExecutionStatus.CANCELLED
    assert status[late.pk] == ExecutionStatus.SCHEDULED
    # the stranded step has waited two minutes (its row says when it was dispatched)
    Step.objects.filter(execution=waiting).update(created_at=timezone.now() - timedelta(minutes=2))
    agent_row("host/alive", AgentState.RUNNING)
    agent_row("host/draining", AgentState.STOPPING)
    agent_row("host/gone", AgentState.STOPPED)
    agent_row("host/silent", AgentState.RUNNING, silent_for=3600)
    record = IncompleteExecution.objects.get(execution=incomplete)
    assert record.status == IncompleteStatus.UNRESOLVED

    result = scrape(web)

    def finished(workflow: str, status: str, org_slug: str = "acme") -> float:
        labels = {"organization": org_slug, "workflow": workflow, "status": status}
        return result.value("opsflow_executions_finished_total", **labels)

    assert finished("ok-chain", "completed") == 2  # the manual run and the webhook's
    assert finished("breaks", "failed") == 1
    assert finished("stored", "incomplete") == 1
    assert finished("stranded", "cancelled", "globex") == 1
    assert finished("gated", "completed") == 0  # paused: not ended
    assert (
        sum(s.value for s in result.samples() if s.name.startswith("opsflow_executions_fin")) == 5
    )

    def steps(workflow: str, status: str, org_slug: str = "acme") -> float:
        labels = {"organization": org_slug, "workflow": workflow, "status": status}
        return result.value("opsflow_steps_finished_total", **labels)

    assert steps("ok-chain", "completed") == 4
    assert steps("breaks", "failed") == 1
    assert steps("stored", "completed") == 1
    assert steps("stored", "failed") == 1
    assert steps("gated", "completed") == 1  # the gate itself still runs (waits)
    assert steps("stranded", "cancelled", "globex") == 0  # cancelled before it started
    # ... and every step row that ended after running is counted once
    ran = Step.objects.filter(started_at__isnull=False, finished_at__isnull=False)
    total = sum(s.value for s in result.samples() if s.name == "opsflow_steps_finished_total")
    assert total == ran.count() == 8

    noop = {"node_type": "noop"}
    assert result.value("opsflow_step_duration_seconds_count", **noop) == 6
    assert result.value("opsflow_step_duration_seconds_bucket", le="+Inf", **noop) == 6
    assert result.value("opsflow_step_duration_seconds_count", node_type="shell.command") == 2
    assert 0 < result.value("opsflow_step_duration_seconds_sum", node_type="shell.command") < 60
    buckets = [
        s
        for s in result.samples()
        if s.name == "opsflow_step_duration_seconds_bucket" and s.labels["node_type"] == "noop"
    ]
    counts = [s.value for s in sorted(buckets, key=lambda s: float(s.labels["le"]))]
    assert counts == sorted(counts) and len(counts) == len(metrics_counters.DURATION_BUCKETS) + 1
    expected = sum(
        (s.finished_at - s.started_at).total_seconds() for s in ran.filter(node_type="noop")
    )
    assert result.value("opsflow_step_duration_seconds_sum", **noop) == pytest.approx(
        expected, abs=1e-5
    )

    assert result.value("opsflow_webhook_requests_total", outcome="accepted") == 1
    assert result.value("opsflow_webhook_requests_total", outcome="not_found") == 1
    assert result.value("opsflow_webhook_requests_total", outcome="invalid") == 1
    assert result.value("opsflow_webhook_requests_total", outcome="unauthorized") == 0

    assert result.value("opsflow_queue_waiting_steps", queue="nobody") == 1
    assert result.value("opsflow_queue_waiting_steps", queue="default") == 0
    assert 119 < result.value("opsflow_queue_oldest_waiting_seconds", queue="nobody") < 300
    assert result.value("opsflow_queue_oldest_waiting_seconds", queue="default") == 0
    assert result.value("opsflow_queue_agents", queue="default") == 1  # the live running one
    assert result.value("opsflow_queue_agents", queue="nobody") == 0
    assert result.value("opsflow_agents", state="running") == 1
    assert result.value("opsflow_agents", state="stopping") == 1
    assert result.value("opsflow_agents", state="stopped") == 1
    assert result.value("opsflow_agents", state="lost") == 1

    assert result.value("opsflow_executions_overdue") == 1
    unresolved = {"organization": "acme", "status": "unresolved"}
    assert result.value("opsflow_incomplete_executions", **unresolved) == 1
    assert (
        result.value("opsflow_incomplete_executions", organization="globex", status="unresolved")
        == 0
    )
    assert result.value("opsflow_incomplete_stored_bytes", organization="acme") == record.size_bytes
    assert result.value("opsflow_incomplete_stored_bytes", organization="globex") == 0
    assert result.value("opsflow_approvals_pending", organization="acme") == 1
    assert result.value("opsflow_approvals_pending", organization="globex") == 0

    # bounded labels: names from a fixed set, and no value is a row id
    ids = {str(pk) for pk in Execution.objects.values_list("pk", flat=True)}
    ids |= {str(pk) for pk in Step.objects.values_list("pk", flat=True)}
    for sample in result.samples():
        assert set(sample.labels) <= LABELS | {"le"}, sample
        for name, value in sample.labels.items():
            assert name == "le" or not value.isdigit(), sample
            assert value not in ids or name == "le", sample


@pytest.mark.django_db(transaction=True)
def test_a_worker_s_counts_wait_in_memory_until_its_heartbeat_sends_them(
    web, metrics_token, redis_conn, org
):
    """Inside an agent the step path sends nothing to Redis; the heartbeat sends it all in one
    pipeline (driven here by calling it, as its thread does every OPSFLOW_HEARTBEAT_SECONDS)."""
    workflow = make_workflow(org, chain_definition("beats", 3))
    execution = trigger_workflow(workflow)
    first = execution.steps.get()
    agent = AgentContext("host/agent-1", frozenset({"default"}), time.monotonic(), 180.0)
    token = current_agent.set(agent)
    try:
        run_step_chain(first.pk)  # the worker's job: the chain, by local continuation
    finally:
        current_agent.reset(token)
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED

    labels = {"organization": "acme", "workflow": "beats"}
    before = scrape(web)
    assert before.value("opsflow_executions_finished_total", status="completed", **labels) == 0
    assert before.value("opsflow_steps_finished_total", status="completed", **labels) == 0
    assert len(metrics_counters.PENDING) > 0
    assert not any(redis_conn.exists(key) for key in metrics_counters.KEYS)

    HEARTBEAT.beat()

    after = scrape(web)
    assert after.value("opsflow_executions_finished_total", status="completed", **labels) == 1
    assert after.value("opsflow_steps_finished_total", status="completed", **labels) == 3
    assert after.value("opsflow_step_duration_seconds_count", node_type="noop") == 3
    assert len(metrics_counters.PENDING) == 0

    HEARTBEAT.beat()  # nothing new: nothing counted twice
    assert scrape(web).value("opsflow_steps_finished_total", status="completed", **labels) == 3


@pytest.mark.django_db(transaction=True)
def test_counts_outlive_a_redis_outage_until_the_next_send(web, metrics_token, redis_conn, org):
    workflow = make_workflow(org, chain_definition("outage", 1))
    down = redis.Redis(host="127.0.0.2", port=1, socket_connect_timeout=0.5)

    metrics_counters.PENDING.add(
        metrics_counters.step_counts(workflow.pk, "completed", "noop", 0.2)
    )
    with pytest.raises(redis.RedisError):
        metrics_counters.flush(down)
    assert len(metrics_counters.PENDING) == 4  # kept: the step, its bucket, count and sum

    metrics_counters.flush()
    result = scrape(web)
    labels = {"organization": "acme", "workflow": "outage", "status": "completed"}
    assert result.value("opsflow_steps_finished_total", **labels) == 1
    assert result.value("opsflow_step_duration_seconds_bucket", node_type="noop", le="0.25") == 1
    assert result.value("opsflow_step_duration_seconds_bucket", node_type="noop", le="0.1") == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broken", ["step_counts", "PENDING.add"])
def test_a_count_that_fails_never_fails_the_run_it_counts(org, workers, monkeypatch, broken):
    def fail(*args, **kwargs):
        raise RuntimeError("the counting broke")

    if broken == "step_counts":  # inside the transition's save
        monkeypatch.setattr(metrics_counters, "step_counts", fail)
    else:  # after its commit
        monkeypatch.setattr(metrics_counters.PENDING, "add", fail)
    workflow = make_workflow(org, chain_definition("sturdy", 3))

    execution = workers.run_to_end(trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.filter(status="completed").count() == 3


@pytest.mark.django_db
def test_with_redis_down_the_gauges_still_answer_and_say_which_source_failed(
    web, metrics_token, monkeypatch
):
    down = redis.Redis(host="127.0.0.2", port=1, socket_connect_timeout=0.5)
    monkeypatch.setattr(dispatch, "get_connection", lambda: down)

    result = scrape(web)

    assert result.value("opsflow_metrics_source_up", source="redis") == 0
    assert result.value("opsflow_metrics_source_up", source="database") == 1
    assert "opsflow_agents" in result.families
    assert "opsflow_executions_finished" not in result.families


@pytest.mark.django_db
def test_a_deleted_workflow_s_counts_stay_under_a_label_of_their_own(
    web, metrics_token, redis_conn
):
    redis_conn.hincrby(metrics_counters.EXECUTIONS, "999999|completed", 3)
    redis_conn.hincrby(metrics_counters.EXECUTIONS, "not-a-number|failed", 1)
    redis_conn.hset(metrics_counters.WEBHOOKS, "accepted", "garbage")

    result = scrape(web)

    deleted = {"organization": "", "workflow": "(deleted)"}
    assert result.value("opsflow_executions_finished_total", status="completed", **deleted) == 3
    assert result.value("opsflow_executions_finished_total", status="failed", **deleted) == 1
    assert result.value("opsflow_webhook_requests_total", outcome="accepted") == 0


@pytest.mark.django_db(transaction=True)
def test_webhook_outcomes_are_counted_for_refusals_too(web, metrics_token, redis_conn, org):
    workflow = make_workflow(
        org,
        {"slug": "signed", "name": "Signed", "nodes": [{"id": "a", "type": "noop"}], "edges": []},
    )
    workflow.webhook_secret = "s3cret"
    workflow.save(update_fields=["webhook_secret"])
    url = reverse("webhook", args=[workflow.webhook_key])

    assert web.post(url, b"{}", content_type="application/json").status_code == 401
    assert web.get(url).status_code == 405
    big = json.dumps({"variables": {"x": "y" * 2_000_000}}).encode()
    assert web.post(url, big, content_type="application/json").status_code == 413

    result = scrape(web)
    assert result.value("opsflow_webhook_requests_total", outcome="unauthorized") == 1
    assert result.value("opsflow_webhook_requests_total", outcome="method_not_allowed") == 1
    assert result.value("opsflow_webhook_requests_total", outcome="too_large") == 1
    assert result.value("opsflow_webhook_requests_total", outcome="accepted") == 0
