"""Retention: finished executions older than their workflow's retention are pruned, with their
steps, events and closed records. Unresolved incomplete executions are never pruned."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.executions.choices import EXECUTION_TERMINAL, INCOMPLETE_OPEN
from apps.executions.models import Agent, Execution
from apps.workflows.models import Workflow


def retention_days(workflow: Workflow) -> int:
    days = workflow.effective_definition.get("settings", {}).get("retention_days")
    if days is None:
        days = workflow.organization.retention_days
    return settings.OPSFLOW_RETENTION_DAYS if days is None else days


def prunable(workflow: Workflow, now: datetime):
    days = retention_days(workflow)
    if days == 0:
        return Execution.objects.none()
    return workflow.executions.filter(
        status__in=EXECUTION_TERMINAL, finished_at__lt=now - timedelta(days=days)
    ).exclude(incomplete_records__status__in=INCOMPLETE_OPEN)


def prune_executions(now: datetime | None = None, dry_run: bool = False) -> dict[str, int]:
    """Delete (or with dry_run, count) what retention allows; returns the count per workflow slug."""
    now = now or timezone.now()
    counts: dict[str, int] = {}
    for workflow in Workflow.objects.select_related("organization", "current_version"):
        ids = list(prunable(workflow, now).values_list("id", flat=True)[:50_000])
        if not ids:
            continue
        counts[f"{workflow.organization.slug}/{workflow.slug}"] = len(ids)
        if not dry_run:
            for start in range(0, len(ids), 1000):
                with transaction.atomic():
                    Execution.objects.filter(pk__in=ids[start : start + 1000]).delete()
    return counts


AGENT_HISTORY_DAYS = 7


def prune_agents(now: datetime | None = None) -> int:
    """Forget agents silent for a week: each worker start registers a new one."""
    cutoff = (now or timezone.now()) - timedelta(days=AGENT_HISTORY_DAYS)
    deleted, _ = Agent.objects.filter(last_heartbeat_at__lt=cutoff).delete()
    return deleted
