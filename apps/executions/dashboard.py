"""The ops dashboard (the admin index): what needs a person now, for the user's organizations.

Every figure is one bounded query that an index serves (checked at a million executions by
`bench/portal_scale.py`), and each links to the list it counts. Nothing here changes state.

- running, paused (and how many of the waiting gates this user may decide), overdue (and how
  many were overdue 15 minutes ago: a growing count means the scheduler or the agents are
  stuck);
- failed in the last hour against the hourly average of the 24 hours before, flagged as a
  spike when it is both well above that average and spread over several workflows (one
  workflow failing is that workflow's problem; several at once is the platform's);
- unresolved incomplete executions, and each organization's stored bytes against the limit;
- agents running and lost, and the queues that have steps waiting and no live agent;
- the last failures with their error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone

from apps.accounts.permissions import organization_ids_for
from apps.executions.choices import INCOMPLETE_OPEN, AgentState, ExecutionStatus, StepStatus
from apps.executions.cron import overdue, overdue_grace
from apps.executions.models import Agent, Execution, IncompleteExecution, Step
from apps.executions.nodes.base import waiting_types

SPIKE_FACTOR = 3.0  # failures in the last hour against the hourly average before
SPIKE_MINIMUM = 3  # fewer failures than this in an hour are never a spike
SPIKE_WORKFLOWS = 2  # … and they must come from at least this many workflows
OVERDUE_LOOKBACK = timedelta(minutes=15)
LAST_FAILURES = 5


@dataclass
class Figure:
    label: str
    value: int
    url: str
    note: str = ""
    alarm: bool = False  # shown as needing attention
    spread: int = 0  # (failures: how many workflows they came from)
    average: float = 0.0  # (failures: the hourly average of the 24 hours before)


@dataclass
class Storage:
    organization: str
    used: int
    limit: int

    @property
    def percent(self) -> int:
        return round(100 * self.used / self.limit) if self.limit else 0

    @property
    def alarm(self) -> bool:
        return self.percent >= 80


@dataclass
class Dashboard:
    figures: list[Figure] = field(default_factory=list)
    spike: str = ""  # why the failures look like a spike, or ""
    spike_url: str = ""
    storage: list[Storage] = field(default_factory=list)
    offline_queues: list[tuple[str, int]] = field(default_factory=list)  # (queue, waiting)
    failures: list[Execution] = field(default_factory=list)
    generated_at: datetime | None = None


def _changelist(name: str, **params) -> str:
    url = reverse(f"admin:{name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def build(user, now: datetime | None = None) -> Dashboard:
    now = now or timezone.now()
    org_ids = organization_ids_for(user)
    runs = Execution.objects.filter(organization_id__in=org_ids)
    board = Dashboard(generated_at=now)
    executions = "executions_execution"

    running = runs.filter(status=ExecutionStatus.RUNNING).count()
    board.figures.append(
        Figure("Running", running, _changelist(executions, status__exact="running"))
    )

    from apps.approvals.services import waiting_on

    paused = runs.filter(status=ExecutionStatus.PAUSED).count()
    mine = waiting_on(user).count()
    board.figures.append(
        Figure(
            "Paused for approval",
            paused,
            _changelist(executions, status__exact="paused"),
            note=f"{mine} waiting on you" if mine else "none waiting on you",
            alarm=bool(mine),
        )
    )
    board.figures.append(_overdue_figure(runs, now))
    failed = _failed_figure(runs, now)
    board.figures.append(failed)
    if failed.alarm:
        board.spike = (
            f"Failure spike: {failed.value} in the last hour across {failed.spread} workflows, "
            f"against {failed.average:.1f} an hour before. Escalate."
        )
        board.spike_url = failed.url

    records = IncompleteExecution.objects.filter(organization_id__in=org_ids)
    unresolved = records.open().count()
    board.figures.append(
        Figure(
            "Unresolved incomplete executions",
            unresolved,
            _changelist(
                "executions_incompleteexecution",
                status__in=",".join(sorted(INCOMPLETE_OPEN)),
            ),
            alarm=bool(unresolved),
        )
    )
    board.storage = _storage(org_ids)

    agents = Agent.objects.all()
    running_agents = agents.in_state(AgentState.RUNNING, now).count()
    lost = agents.in_state(AgentState.LOST, now).count()
    board.figures.append(
        Figure(
            "Agents running",
            running_agents,
            _changelist("executions_agent"),
            note=f"{lost} lost" if lost else "none lost",
            alarm=bool(lost),
        )
    )
    board.offline_queues = _offline_queues(org_ids, now)
    board.failures = list(
        runs.filter(status=ExecutionStatus.FAILED)
        .select_related("workflow")
        .only("id", "created_at", "finished_at", "error_message", "workflow__name")
        .order_by("-created_at", "-id")[:LAST_FAILURES]
    )
    return board


def _overdue_figure(runs, now: datetime) -> Figure:
    """Overdue now, and how many were overdue 15 minutes ago: those scheduled before that
    moment's cutoff that were still waiting then (still scheduled, or started or ended
    since)."""
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
    trend = "" if count == before else (" ↑" if count > before else " ↓")
    return Figure(
        "Overdue",
        count,
        _changelist("executions_execution", overdue="true"),
        note=f"{before} fifteen minutes ago{trend}",
        alarm=count > before,
    )


def _failed_figure(runs, now: datetime) -> Figure:
    """Failures in the last hour against the hourly average of the 24 before. Runs that
    failed in the last 25 hours are read through (status, created_at): a run created more
    than two days before its failure is left out of the comparison."""
    hour = now - timedelta(hours=1)
    window = now - timedelta(hours=25)
    failed = runs.filter(
        status=ExecutionStatus.FAILED,
        created_at__gte=now - timedelta(hours=49),
        finished_at__gte=window,
    )
    last_hour = failed.filter(finished_at__gte=hour)
    count = last_hour.count()
    before = failed.filter(finished_at__lt=hour).count()
    average = before / 24
    workflows = last_hour.values("workflow_id").distinct().count() if count else 0
    spike = (
        count >= SPIKE_MINIMUM and count >= SPIKE_FACTOR * average and workflows >= SPIKE_WORKFLOWS
    )
    note = f"hourly average before: {average:.1f}" + (" · a spike" if spike else "")
    url = _changelist(
        "executions_execution",
        status__exact="failed",
        created_at__gte=(now - timedelta(hours=49)).isoformat(timespec="seconds"),
        finished_at__gte=hour.isoformat(timespec="seconds"),
    )
    return Figure(
        "Failed in the last hour",
        count,
        url,
        note=note,
        alarm=spike,
        spread=workflows,
        average=average,
    )


def _storage(org_ids: list[int]) -> list[Storage]:
    from apps.accounts.models import Organization

    limit = settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES
    used = IncompleteExecution.objects.stored_bytes_by_organization(org_ids)
    names = dict(Organization.objects.filter(pk__in=org_ids).values_list("pk", "name"))
    return [Storage(names[pk], used.get(pk) or 0, limit) for pk in sorted(names, key=names.get)]


@dataclass
class Queue:
    name: str
    waiting: int  # steps dispatched to it and not taken yet (the user's organizations)
    agents: int  # live agents listening to it

    @property
    def offline(self) -> bool:
        return self.waiting > 0 and self.agents == 0


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


def _offline_queues(org_ids: list[int], now: datetime) -> list[tuple[str, int]]:
    """Queues with steps waiting (dispatched, not yet taken) and no live agent listening."""
    return [(q.name, q.waiting) for q in queues(org_ids, now) if q.offline]
