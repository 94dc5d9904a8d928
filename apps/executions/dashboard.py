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
from datetime import datetime
from urllib.parse import urlencode

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from apps.accounts.permissions import organization_ids_for
from apps.analytics import escalation
from apps.executions.choices import INCOMPLETE_OPEN, AgentState, ExecutionStatus
from apps.executions.models import Agent, Execution, IncompleteExecution

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
    trend = escalation.overdue_trend(runs, now)
    arrow = "" if trend.now == trend.before else (" ↑" if trend.flagged else " ↓")
    return Figure(
        "Overdue",
        trend.now,
        _changelist("executions_execution", overdue="true"),
        note=f"{trend.before} fifteen minutes ago{arrow}",
        alarm=trend.flagged,
    )


def _failed_figure(runs, now: datetime) -> Figure:
    spike = escalation.failure_spike(runs, now)
    note = f"hourly average before: {spike.hourly_average:.1f}" + (
        " · a spike" if spike.flagged else ""
    )
    url = _changelist(
        "executions_execution",
        status__exact="failed",
        created_at__gte=spike.created_after.isoformat(timespec="seconds"),
        finished_at__gte=spike.since.isoformat(timespec="seconds"),
    )
    return Figure(
        "Failed in the last hour",
        spike.last_hour,
        url,
        note=note,
        alarm=spike.flagged,
        spread=spike.workflows,
        average=spike.hourly_average,
    )


def _storage(org_ids: list[int]) -> list[Storage]:
    from apps.accounts.models import Organization

    limit = settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES
    used = IncompleteExecution.objects.stored_bytes_by_organization(org_ids)
    names = dict(Organization.objects.filter(pk__in=org_ids).values_list("pk", "name"))
    return [Storage(names[pk], used.get(pk) or 0, limit) for pk in sorted(names, key=names.get)]


def _offline_queues(org_ids: list[int], now: datetime) -> list[tuple[str, int]]:
    """Queues with steps waiting (dispatched, not yet taken) and no live agent listening."""
    return [(q.name, q.waiting) for q in escalation.offline_queues(org_ids, now)]
