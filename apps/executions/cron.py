"""Cron triggers (DESIGN §6 "Overdue"): the scheduler keeps each cron workflow's next fire as a
`scheduled` execution, starts it when due, and after an outage works the backlog by the trigger's
`catchup` and `max_lateness`, recording a reason for every fire it skips. Nothing is lost silently.
"""

from __future__ import annotations

import logging
import zoneinfo
from datetime import datetime, timedelta

from croniter import croniter
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.executions.choices import ExecutionStatus, Trigger
from apps.executions.models import Execution
from apps.executions.services import (
    WorkflowNotRunnable,
    skip_scheduled,
    start_scheduled,
    trigger_workflow,
)
from apps.workflows.definition import DefinitionError
from apps.workflows.models import Workflow

logger = logging.getLogger(__name__)
MAX_FIRES_PER_TICK = 1000


def fires_after(trigger: dict, after: datetime):
    """Fire times strictly after `after`, in UTC, for the trigger's schedule and time zone."""
    zone = zoneinfo.ZoneInfo(trigger.get("timezone") or "UTC")
    iterator = croniter(trigger["schedule"], after.astimezone(zone))
    while True:
        yield iterator.get_next(datetime).astimezone(zoneinfo.ZoneInfo("UTC"))


def cron_workflows():
    workflows = Workflow.objects.filter(
        is_active=True, current_version__isnull=False
    ).select_related("current_version")
    return [
        w
        for w in workflows
        if w.current_version.definition.get("trigger", {}).get("type") == "cron"
    ]


def overdue_grace() -> timedelta:
    return timedelta(seconds=settings.OPSFLOW_OVERDUE_GRACE)


def materialize(workflow: Workflow, now: datetime) -> int:
    """Create the `scheduled` executions for every fire up to the next future one."""
    trigger = workflow.current_version.definition["trigger"]
    nxt = workflow.next_fire_at or next(fires_after(trigger, now))
    created = 0
    fires = fires_after(trigger, nxt - timedelta(seconds=1))
    while created < MAX_FIRES_PER_TICK:
        when = next(fires)
        if _create(workflow, when):
            created += 1
        if when > now:
            break
    workflow.next_fire_at = when
    workflow.save(update_fields=["next_fire_at"])
    return created


def _create(workflow: Workflow, when: datetime) -> bool:
    try:
        with transaction.atomic():
            trigger_workflow(
                workflow,
                trigger=Trigger.CRON,
                trigger_data={"scheduled_for": when.isoformat()},
                scheduled_for=when,
            )
        return True
    except IntegrityError:
        return False  # another scheduler created this fire already
    except (WorkflowNotRunnable, DefinitionError) as exc:
        logger.error("cron fire %s of %s not created: %s", when, workflow.slug, exc)
        return False


def work_due(workflow: Workflow, now: datetime) -> tuple[int, int]:
    """Start or skip the scheduled cron runs that are due, by the trigger's policy."""
    trigger = workflow.current_version.definition["trigger"]
    policy = trigger.get("catchup", "latest")
    max_lateness = timedelta(seconds=int(trigger.get("max_lateness", 3600)))
    due = list(
        workflow.executions.filter(
            status=ExecutionStatus.SCHEDULED, trigger=Trigger.CRON, scheduled_for__lte=now
        )
        .order_by("scheduled_for")
        .values_list("id", "scheduled_for")
    )
    started = skipped = 0
    for index, (execution_id, when) in enumerate(due):
        late = now - when
        newest = index == len(due) - 1
        if policy == "latest" and not newest:
            reason = f"catchup latest: a newer fire ({due[-1][1]:%Y-%m-%d %H:%M:%S}) replaces it"
        elif policy == "none" and late > overdue_grace():
            reason = f"catchup none: missed by {int(late.total_seconds())}s"
        elif late > max_lateness:
            reason = f"max_lateness: {int(late.total_seconds())}s late (limit {int(max_lateness.total_seconds())}s)"
        else:
            reason = ""
        if reason:
            skipped += skip_scheduled(execution_id, reason)
            continue
        outcome = start_scheduled(execution_id, f"cron fire of {when:%Y-%m-%d %H:%M:%S %Z} is due")
        started += outcome == "started"
        skipped += outcome == "skipped"
    return started, skipped


def tick(now: datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    counts = {"created": 0, "started": 0, "skipped": 0}
    for workflow in cron_workflows():
        counts["created"] += materialize(workflow, now)
        started, skipped = work_due(workflow, now)
        counts["started"] += started
        counts["skipped"] += skipped
    return counts


def overdue(queryset=None, now: datetime | None = None):
    """Derived, not a status: scheduled runs whose time passed more than the grace period ago."""
    now = now or timezone.now()
    queryset = Execution.objects.all() if queryset is None else queryset
    return queryset.filter(
        status=ExecutionStatus.SCHEDULED, scheduled_for__lt=now - overdue_grace()
    )
