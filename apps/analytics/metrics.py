"""Prometheus metrics at `GET /metrics` (issue 13 item 5; every series is listed in the README's
*Metrics (Prometheus)* section and in docs/metrics.md).

Nothing here is a process-local counter: the web tier is several processes and the agents are
others, so a scrape of one process would see a fraction. Two sources, both read at scrape time
into a registry made for the request (never prometheus_client's global one):

- **Counters** (executions and steps that ended, step durations, webhook requests) are Redis
  hashes that every process increments; see `metrics_counters`.
- **Gauges** (queue depth and age, agents, overdue runs, incomplete executions, pending
  approvals) are counted from the database, each by one query that an index bounds (the open
  steps' partial index, the status indexes), so a scrape costs milliseconds at a million
  executions (docs/metrics.md has the plans).

Labels are bounded sets: organization and workflow slugs, statuses, node types, queues, outcomes,
agent states. No execution, step or agent id is ever a label.

Access: `Authorization: Bearer <OPSFLOW_METRICS_TOKEN>`. Without the variable the page is open
only while DEBUG is on; otherwise it answers 401 and says to set it.
"""

from __future__ import annotations

import hmac
import logging
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Min, Q, Sum
from django.db.models.functions import Coalesce
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.registry import Collector

from apps.analytics import metrics_counters as counters

logger = logging.getLogger(__name__)

REALM = 'Bearer realm="opsflow-metrics"'
DELETED = "(deleted)"  # the workflow label of counts whose workflow no longer exists


# --- access ------------------------------------------------------------------------------------


def _refusal(request) -> HttpResponse | None:
    """None when the request may read the metrics, else the 401 to send."""
    token = getattr(settings, "OPSFLOW_METRICS_TOKEN", "") or ""
    if not token:
        if settings.DEBUG:
            return None  # development: open
        return _unauthorized(
            "Metrics are closed: set OPSFLOW_METRICS_TOKEN on the server, and send it as "
            "'Authorization: Bearer <token>'.\n"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _unauthorized("Send the metrics token as 'Authorization: Bearer <token>'.\n")
    expected = token.encode("utf-8", "replace")
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected):
        return _unauthorized("The metrics token is not right.\n", error="invalid_token")
    return None


def _unauthorized(message: str, error: str = "") -> HttpResponse:
    response = HttpResponse(message, status=401, content_type="text/plain; charset=utf-8")
    response["WWW-Authenticate"] = REALM + (f', error="{error}"' if error else "")
    return response


@never_cache
def metrics_view(request):
    """The metrics in Prometheus's text format (OpenMetrics when the scraper asks for it)."""
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse("Use GET.\n", status=405, content_type="text/plain; charset=utf-8")
        response["Allow"] = "GET, HEAD"
        return response
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OpsflowCollector())
    try:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    except Exception:  # an Accept header prometheus_client cannot parse: the classic format
        encode, content_type = generate_latest, CONTENT_TYPE_PLAIN_0_0_4
    return HttpResponse(encode(registry), content_type=content_type)


# --- the series ----------------------------------------------------------------------------------


class OpsflowCollector(Collector):
    """Every opsflow_* series, read from Redis and the database when the registry collects.

    A store that does not answer leaves its series out, and `opsflow_metrics_source_up` says
    which: the scrape still succeeds, so the alert is "the source is down", not "no data"."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or timezone.now()
        self._org_slugs: dict[int, str] | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "opsflow_metrics_source_up",
            "Whether /metrics could read the source this scrape (1) or not (0): redis holds "
            "the counters, database the gauges.",
            labels=["source"],
        )
        for source, read in (("redis", self._counters), ("database", self._gauges)):
            try:
                families = list(read())
            except Exception:
                logger.warning("metrics: could not read the %s", source, exc_info=True)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    # --- Redis: what every process counted ---

    def _counters(self) -> Iterator[Metric]:
        from apps.executions.dispatch import get_connection

        pipe = get_connection().pipeline(transaction=False)
        for key in counters.KEYS:
            pipe.hgetall(key)
        executions, steps, durations, webhooks = (_decoded(h) for h in pipe.execute())
        try:
            workflows = self._workflow_labels(
                {field.split("|", 1)[0] for field in (*executions, *steps)}
            )
        except DatabaseError:  # the database source says it is down; these need its slugs
            logger.warning("metrics: no workflow labels without the database", exc_info=True)
        else:
            yield _by_workflow(
                "opsflow_executions_finished",
                "Executions that ended, by organization, workflow and status (completed, "
                "failed, incomplete, cancelled; skipped runs count as cancelled). A run stored "
                "as incomplete and later resumed counts again when it ends again.",
                executions,
                workflows,
                sorted(counters.EXECUTION_ENDED),
            )
            yield _by_workflow(
                "opsflow_steps_finished",
                "Step attempts that ran and ended, by organization, workflow and status "
                "(completed, failed, timeout, cancelled, interrupted). A retried node counts "
                "once per attempt.",
                steps,
                workflows,
                sorted(counters.STEP_ENDED),
            )
        yield _durations(durations)
        outcomes = CounterMetricFamily(
            "opsflow_webhook_requests",
            "Requests to POST /hooks/<key>/, by outcome: accepted (202), duplicate (202 for an "
            "Idempotency-Key already seen), invalid (400), unauthorized (401: signature missing "
            "or wrong), not_found (404: no such key), method_not_allowed (405), conflict (409: "
            "inactive or unpublished workflow), too_large (413), error (anything else).",
            labels=["outcome"],
        )
        known = [*dict.fromkeys(counters.WEBHOOK_OUTCOMES.values())]
        known += [counters.WEBHOOK_DUPLICATE, counters.WEBHOOK_ERROR]
        for outcome in sorted({*known, *webhooks}):
            outcomes.add_metric([outcome], webhooks.get(outcome, 0))
        yield outcomes

    def _workflow_labels(self, ids: set[str]) -> dict[str, tuple[str, str]]:
        """workflow id (as counted) → (organization slug, workflow slug)."""
        from apps.workflows.models import Workflow

        numbers = [int(i) for i in ids if i.isdigit()]
        rows = Workflow.objects.filter(pk__in=numbers).values_list(
            "pk", "organization__slug", "slug"
        )
        return {str(pk): (org, slug) for pk, org, slug in rows}

    # --- the database: what is true now ---

    def _gauges(self) -> Iterator[Metric]:
        yield from self._queues()
        yield self._agents()
        yield self._overdue()
        yield from self._incomplete()
        yield self._approvals()

    def _organizations(self) -> dict[int, str]:
        if self._org_slugs is None:
            from apps.accounts.models import Organization

            self._org_slugs = dict(Organization.objects.values_list("pk", "slug"))
        return self._org_slugs

    def _queues(self) -> Iterator[Metric]:
        """Steps waiting for an agent, per queue: one pass over the open steps' partial index
        (`step_open`), however many finished steps the table holds."""
        from apps.executions.choices import STEP_RUNNABLE, AgentState
        from apps.executions.models import Agent, Step

        now = self.now
        due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
        rows = (
            Step.objects.filter(status__in=STEP_RUNNABLE)
            .order_by()
            .values_list("queue")
            .annotate(
                ready=Count("id", filter=due),
                delayed=Count("id", filter=Q(next_attempt_at__gt=now)),
                since=Min(Coalesce("next_attempt_at", "created_at"), filter=due),
            )
        )
        waiting = {queue: (ready, delayed, since) for queue, ready, delayed, since in rows}
        serving: dict[str, int] = defaultdict(int)
        live = Agent.objects.in_state(AgentState.RUNNING, now).order_by()
        for names in live.values_list("queues", flat=True):
            for name in names or []:
                serving[str(name)] += 1
        queues = sorted({*settings.OPSFLOW_QUEUES, *waiting, *serving})
        depth = GaugeMetricFamily(
            "opsflow_queue_waiting_steps",
            "Steps dispatched to the queue that are due and not yet started by an agent.",
            labels=["queue"],
        )
        delayed = GaugeMetricFamily(
            "opsflow_queue_delayed_steps",
            "Steps dispatched to the queue that wait for their time (delay nodes, retries "
            "with a backoff).",
            labels=["queue"],
        )
        oldest = GaugeMetricFamily(
            "opsflow_queue_oldest_waiting_seconds",
            "How long the queue's oldest waiting step has been due (0 when none waits).",
            labels=["queue"],
        )
        agents = GaugeMetricFamily(
            "opsflow_queue_agents",
            "Running agents (live heartbeat) that serve the queue.",
            labels=["queue"],
        )
        for queue in queues:
            ready, late, since = waiting.get(queue, (0, 0, None))
            depth.add_metric([queue], ready)
            delayed.add_metric([queue], late)
            age = (now - since).total_seconds() if since and ready else 0.0
            oldest.add_metric([queue], max(age, 0.0))
            agents.add_metric([queue], serving.get(queue, 0))
        yield from (depth, delayed, oldest, agents)

    def _agents(self) -> Metric:
        from apps.executions.choices import AgentState
        from apps.executions.models import Agent

        family = GaugeMetricFamily(
            "opsflow_agents",
            "Agents (worker processes and embedded worker threads) by state: running, stopping "
            "(draining), stopped, lost (no heartbeat for OPSFLOW_AGENT_TIMEOUT).",
            labels=["state"],
        )
        for state in AgentState:
            family.add_metric([state.value], Agent.objects.in_state(state, self.now).count())
        return family

    def _overdue(self) -> Metric:
        from apps.executions.cron import overdue

        return GaugeMetricFamily(
            "opsflow_executions_overdue",
            "Scheduled runs whose time passed more than OPSFLOW_OVERDUE_GRACE ago and that have "
            "not started (as the dashboard and ?overdue=true count them).",
            value=overdue(now=self.now).count(),
        )

    def _incomplete(self) -> Iterator[Metric]:
        from apps.executions.choices import INCOMPLETE_OPEN
        from apps.executions.models import IncompleteExecution

        rows = (
            IncompleteExecution.objects.open()
            .order_by()
            .values_list("organization_id", "status")
            .annotate(n=Count("*"), size=Sum("size_bytes"))
        )
        counted: dict[str, dict[str, int]] = defaultdict(dict)
        stored: dict[str, int] = defaultdict(int)
        orgs = self._organizations()
        for org_id, status, n, size in rows:
            slug = orgs.get(org_id, str(org_id))
            counted[slug][status] = n
            stored[slug] += size or 0
        records = GaugeMetricFamily(
            "opsflow_incomplete_executions",
            "Incomplete executions not resolved yet, by organization and status (unresolved, "
            "scheduled: an auto-retry is planned, retrying).",
            labels=["organization", "status"],
        )
        size = GaugeMetricFamily(
            "opsflow_incomplete_stored_bytes",
            "Bytes the organization's unresolved incomplete executions hold, against "
            "opsflow_incomplete_storage_limit_bytes.",
            labels=["organization"],
        )
        for slug in sorted({*orgs.values(), *counted}):
            for status in sorted(INCOMPLETE_OPEN):
                records.add_metric([slug, status], counted[slug].get(status, 0))
            size.add_metric([slug], stored.get(slug, 0))
        yield records
        yield size
        yield GaugeMetricFamily(
            "opsflow_incomplete_storage_limit_bytes",
            "OPSFLOW_IE_STORAGE_LIMIT_BYTES: what each organization's unresolved incomplete "
            "executions may hold before new ones are refused.",
            value=settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES,
        )

    def _approvals(self) -> Metric:
        from apps.approvals.models import Approval

        rows = (
            Approval.objects.pending()
            .order_by()
            .values_list("execution__organization_id")
            .annotate(n=Count("id"))
        )
        pending = dict(rows)
        orgs = self._organizations()
        family = GaugeMetricFamily(
            "opsflow_approvals_pending",
            "Approval gates waiting for a decision, by organization.",
            labels=["organization"],
        )
        slugs: dict[str, int] = {slug: 0 for slug in orgs.values()}
        for org_id, n in pending.items():
            slug = orgs.get(org_id, str(org_id))
            slugs[slug] = slugs.get(slug, 0) + n
        for slug in sorted(slugs):
            family.add_metric([slug], slugs[slug])
        return family


# --- shaping the Redis hashes --------------------------------------------------------------------


def _decoded(raw: dict) -> dict[str, int]:
    """A hash as read from Redis: field → integer (a field that is not one is skipped)."""
    values = {}
    for field, value in raw.items():
        try:
            values[field.decode() if isinstance(field, bytes) else field] = int(value)
        except (TypeError, ValueError, UnicodeDecodeError):
            continue
    return values


def _by_workflow(
    name: str,
    documentation: str,
    counts: dict[str, int],
    workflows: dict[str, tuple[str, str]],
    statuses: list[str],
) -> Metric:
    """Fields "<workflow id>|<status>" as a counter labelled by organization, workflow and
    status: every status of every workflow that has a count, zeros included."""
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for field, n in counts.items():
        workflow_id, _, status = field.partition("|")
        labels = workflows.get(workflow_id, ("", DELETED))
        totals[labels][status] = totals[labels].get(status, 0) + n
    family = CounterMetricFamily(name, documentation, labels=["organization", "workflow", "status"])
    for (org, slug), by_status in sorted(totals.items()):
        for status in sorted({*statuses, *by_status}):
            family.add_metric([org, slug, status], by_status.get(status, 0))
    return family


def _durations(fields: dict[str, int]) -> Metric:
    """Fields "<node type>|<bucket index>", "|count" and "|sum_us" as a histogram by node
    type (the buckets are stored one by one and added up here)."""
    per_type: dict[str, dict[str, int]] = defaultdict(dict)
    for field, n in fields.items():
        node_type, _, part = field.rpartition("|")
        per_type[node_type][part] = n
    family = HistogramMetricFamily(
        "opsflow_step_duration_seconds",
        "How long step attempts ran (start to end), by node type. An approval gate's step "
        "runs until its decision.",
        labels=["node_type"],
    )
    bounds = [*(_bound(b) for b in counters.DURATION_BUCKETS), "+Inf"]
    for node_type, parts in sorted(per_type.items()):
        running, buckets = 0, []
        for index, bound in enumerate(bounds):
            running += parts.get(str(index), 0)
            buckets.append((bound, running))
        buckets[-1] = ("+Inf", max(running, parts.get("count", 0)))
        family.add_metric([node_type], buckets, parts.get("sum_us", 0) / 1_000_000)
    return family


def _bound(seconds: float) -> str:
    return repr(float(seconds))
