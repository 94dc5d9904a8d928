"""Escalation signals (seed 002: when to escalate), one service for the dashboard and for
`GET /api/v1/analytics/health/`:

- a failure spike: failures in the last hour against the hourly average of the 24 hours
  before, flagged when they are both well above it and spread over several workflows (one
  workflow failing is that workflow's problem; several at once is the platform's);
- overdue runs now against 15 minutes ago, flagged when the count grows (the scheduler or the
  agents are stuck);
- queues with steps waiting and no live agent listening ("agent offline").

Each is a few bounded queries that indexes serve (`bench/portal_scale.py` times the dashboard).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, QuerySet
from django.utils import timezone

from apps.executions.choices import AgentState, ExecutionStatus, StepStatus
from apps.executions.cron import overdue, overdue_grace
from apps.executions.models import Agent, Execution, Step
from apps.executions.nodes.base import waiting_types

OVERDUE_LOOKBACK = timedelta(minutes=15)


@dataclass(frozen=True)
class FailureSpike:
    last_hour: int  # runs that failed in the last hour
    hourly_average: float  # failures per hour over the 24 hours before
    workflows: int  # how many workflows the last hour's failures came from
    flagged: bool
    since: datetime  # the start of the last hour
    created_after: datetime  # runs created before this are left out (the index's bound)


@dataclass(frozen=True)
class OverdueTrend:
    now: int
    before: int  # overdue 15 minutes ago
    flagged: bool  # growing


@dataclass(frozen=True)
class Queue:
    name: str
    waiting: int  # steps dispatched to it and not taken yet (the user's organizations)
    agents: int  # live agents listening to it

    @property
    def offline(self) -> bool:
        return self.waiting > 0 and self.agents == 0


def runs_of(org_ids: list[int]) -> QuerySet[Execution]:
    return Execution.objects.filter(organization_id__in=org_ids)


def failure_spike(runs: QuerySet[Execution], now: datetime | None = None) -> FailureSpike:
    """Failures in the last hour against the hourly average of the 24 before. Runs that
    failed in the last 25 hours are read through (status, created_at): a run created more
    than two days before its failure is left out of the comparison."""
    now = now or timezone.now()
    hour = now - timedelta(hours=1)
    created_after = now - timedelta(hours=49)
    failed = runs.filter(
        status=ExecutionStatus.FAILED,
        created_at__gte=created_after,
        finished_at__gte=now - timedelta(hours=25),
    )
    last_hour = failed.filter(finished_at__gte=hour)
    count = last_hour.count()
    average = failed.filter(finished_at__lt=hour).count() / 24
    workflows = last_hour.values("workflow_id").distinct().count() if count else 0
    flagged = (
        count >= settings.OPSFLOW_SPIKE_MINIMUM
        and count >= settings.OPSFLOW_SPIKE_FACTOR * average
        and workflows >= settings.OPSFLOW_SPIKE_WORKFLOWS
    )
    return FailureSpike(count, average, workflows, flagged, hour, created_after)


def overdue_trend(runs: QuerySet[Execution], now: datetime | None = None) -> OverdueTrend:
    """Overdue now, and how many were overdue 15 minutes ago: those scheduled before that
    moment's cutoff that were still waiting then (still scheduled, or started or ended
    since)."""
    now = now or timezone.now()
    count = overdue(runs, now).count()
    then = now - OVERDUE_LOOKBACK
    late_then = runs.filter(scheduled_for__lt=then - overdue_grace(), created_at__lte=then)
    waiting = late_then.filter(status=ExecutionStatus.SCHEDULED).count()
    # (started_at is indexed; a run that never started and ended since was skipped)
    moved_on = (
        late_then.filter(started_at__gt=then).count()
        + late_then.filter(
            status__in=[ExecutionStatus.CANCELLED, ExecutionStatus.FAILED],
            started_at__isnull=True,
            finished_at__gt=then,
            created_at__gte=now - timedelta(days=2),
        ).count()
    )
    before = waiting + moved_on
    return OverdueTrend(count, before, count > before)


def queues(org_ids: list[int], now: datetime | None = None) -> list[Queue]:
    """Every queue with waiting steps or a live agent, by name."""
    now = now or timezone.now()
    waiting = dict(
        Step.objects.filter(status=StepStatus.DISPATCHED, execution__organization_id__in=org_ids)
        .exclude(node_type__in=waiting_types())
        .values_list("queue")
        .annotate(n=Count("id"))
        .values_list("queue", "n")
    )
    listening: dict[str, int] = {}
    for names in Agent.objects.in_state(AgentState.RUNNING, now).values_list("queues", flat=True):
        for name in names or []:
            listening[name] = listening.get(name, 0) + 1
    return [
        Queue(name, waiting.get(name, 0), listening.get(name, 0))
        for name in sorted(set(waiting) | set(listening))
    ]


def offline_queues(org_ids: list[int], now: datetime | None = None) -> list[Queue]:
    """Queues with steps waiting (dispatched, not yet taken) and no live agent listening."""
    return [queue for queue in queues(org_ids, now) if queue.offline]
