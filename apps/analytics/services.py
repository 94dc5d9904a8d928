"""Analytics over executions (issue 13): the summary behind the analytics page and
`GET /api/v1/analytics/summary/`, and the rows the exports write.

Definitions (the README's "Analytics" section says the same):
- an execution counts in a range by `created_at` (`from` inclusive, `to` exclusive);
- ended = completed, failed, incomplete, cancelled;
- success rate = completed ÷ (completed + failed + incomplete), in percent with one decimal;
  cancelled runs count in the total, not in the rate; null when nothing is rated;
- duration = finished_at − started_at of ended runs that started: average, p50, p95 (linear
  interpolation between the two nearest ranks, PostgreSQL's percentile_cont), exact up to
  rollup.EXACT_PERCENTILES_MAX timed runs in the range and within 1% beyond (log buckets);
- active workflows = those with is_active and a published version, now;
- days are bucketed in the organization's time zone (`Organization.time_zone`); across several
  organizations of different zones, in UTC.
"""

from __future__ import annotations

import math
import zoneinfo
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import connection
from django.db.models import Aggregate, F, FloatField, Func, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from apps.accounts.models import Organization
from apps.accounts.permissions import organization_ids_for
from apps.accounts.timezones import zone_or_utc
from apps.analytics import rollup
from apps.analytics.rollup import ENDED
from apps.executions.choices import ExecutionStatus
from apps.executions.models import Execution
from apps.workflows.models import Workflow

RATED = (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.INCOMPLETE)
DEFAULT_DAYS = 7
PRESETS = {"24h": 0, "7d": 7, "30d": 30, "90d": 90}  # range=…: 0 is the last 24 hours
TOP_WORKFLOWS = 10
UTC = zoneinfo.ZoneInfo("UTC")


class BadRange(ValueError):
    """A range or filter the user asked for that cannot be served: which parameter, and why."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param, self.message = param, message


@dataclass(frozen=True)
class Scope:
    """What a summary or an export covers: the runs created in [start, end) of these
    organizations (and of one workflow), with days counted in `zone`."""

    org_ids: tuple[int, ...]
    start: datetime
    end: datetime
    zone: zoneinfo.ZoneInfo
    workflow: Workflow | None = None
    organization: Organization | None = None

    def params(self) -> dict[str, str]:
        """The query parameters that name this scope again, as instants (so "the last 7 days"
        does not move): for the export links and for background exports."""
        named = {"from": self.start.isoformat(), "to": self.end.isoformat()}
        if self.workflow is not None:
            named["workflow"] = self.workflow.slug
        if self.organization is not None:
            named["organization"] = self.organization.slug
        return named

    def executions(self) -> QuerySet[Execution]:
        runs = Execution.objects.filter(
            organization_id__in=self.org_ids, created_at__gte=self.start, created_at__lt=self.end
        )
        if self.workflow is not None:
            runs = runs.filter(workflow=self.workflow)
        return runs


def scope_for(user, params) -> Scope:
    """Read `from`, `to` (or a `range` preset: 24h, 7d, 30d, 90d), `workflow` and
    `organization` from query parameters, within the user's organizations. A date is a whole
    day in the zone (`to` included); a datetime is an instant. Defaults: the last 7 days
    (today included) up to now, every organization of the user."""
    org_ids = organization_ids_for(user)
    organization = None
    org_slug = (params.get("organization") or "").strip()
    if org_slug:
        organization = Organization.objects.filter(pk__in=org_ids, slug=org_slug).first()
        if organization is None:
            raise BadRange("organization", f"no organization {org_slug!r} of yours.")
        org_ids = [organization.pk]
    zone = _zone_of(organization, org_ids)
    workflow = None
    slug = (params.get("workflow") or "").strip()
    if slug:
        matches = list(Workflow.objects.filter(organization_id__in=org_ids, slug=slug)[:2])
        if not matches:
            raise BadRange("workflow", f"no workflow {slug!r} in your organizations.")
        if len(matches) > 1:
            raise BadRange(
                "workflow",
                f"{slug!r} exists in several of your organizations; add organization=<slug>.",
            )
        workflow = matches[0]
    now = timezone.now()
    end = _instant(params.get("to"), zone, "to", end_of_day=True) or now
    start = _instant(params.get("from"), zone, "from", end_of_day=False)
    if start is None:
        preset = (params.get("range") or "").strip()
        if preset and preset not in PRESETS:
            raise BadRange("range", f"one of {', '.join(PRESETS)}.")
        days = PRESETS.get(preset, DEFAULT_DAYS)
        if days == 0:  # 24 hours back from `to`
            start = end - timedelta(hours=24)
        else:  # whole days in the zone, the last one included
            last = (end - timedelta(microseconds=1)).astimezone(zone).date()
            start = datetime.combine(last - timedelta(days=days - 1), time.min, tzinfo=zone)
    if start >= end:
        raise BadRange("from", "must be before to.")
    if end - start > timedelta(days=settings.OPSFLOW_ANALYTICS_MAX_DAYS):
        raise BadRange(
            "from",
            f"the range is longer than {settings.OPSFLOW_ANALYTICS_MAX_DAYS} days "
            "(OPSFLOW_ANALYTICS_MAX_DAYS): narrow it.",
        )
    return Scope(tuple(org_ids), start, end, zone, workflow, organization)


def _zone_of(organization: Organization | None, org_ids: list[int]) -> zoneinfo.ZoneInfo:
    if organization is not None:
        return zone_or_utc(organization.time_zone)
    names = set(Organization.objects.filter(pk__in=org_ids).values_list("time_zone", flat=True))
    return zone_or_utc(names.pop()) if len(names) == 1 else UTC


def _instant(value: str | None, zone, name: str, *, end_of_day: bool) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > 40:
        raise BadRange(name, "not a date (YYYY-MM-DD) or a date and time (ISO 8601).")
    try:
        day = parse_date(value)
        moment = None if day else parse_datetime(value)
    except ValueError:
        day = moment = None
    if day is not None:
        if end_of_day:
            day += timedelta(days=1)  # a date in `to` includes that whole day
        return datetime.combine(day, time.min, tzinfo=zone)
    if moment is None:
        raise BadRange(name, "not a date (YYYY-MM-DD) or a date and time (ISO 8601).")
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=zone)


# --- the summary ---


class _Percentiles(Aggregate):
    """PostgreSQL's percentile_cont of the median and the 95th percentile at once."""

    function = "percentile_cont"
    template = "%(function)s(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = ArrayField(FloatField())


def _seconds_taken():
    """finished_at − started_at in seconds (PostgreSQL)."""
    return Func(
        F("finished_at"),
        F("started_at"),
        template="EXTRACT(EPOCH FROM (%(expressions)s))",
        arg_joiner=" - ",
        output_field=FloatField(),
    )


def summary(scope: Scope) -> dict[str, Any]:
    """The figures of a scope: its whole past days from the rollup where rolled, the rest
    counted (apps/analytics/rollup.py)."""
    workflow_id = scope.workflow.pk if scope.workflow is not None else None
    now = timezone.now()
    split = rollup.plan(scope.org_ids, scope.start, scope.end, scope.zone)
    counted = rollup.tally(split.spans, scope.zone, workflow_id, now)
    counted.add(rollup.read(split.rolled, workflow_id))
    by_status = {status: 0 for status in ExecutionStatus.values}
    for (_, _, status), n in counted.runs.items():
        by_status[status] += n
    total = sum(by_status.values())
    rated = sum(by_status[s] for s in RATED)
    return {
        "from": scope.start,
        "to": scope.end,
        "time_zone": str(scope.zone),
        "total": total,
        "by_status": by_status,
        "success_rate": _rate(by_status[ExecutionStatus.COMPLETED], rated),
        **_durations(scope, counted),
        "active_workflows": _active_workflows(scope),
        "daily": _daily(scope, counted),
        "top_workflows": _top_workflows(counted),
        "agent_utilization": _agent_utilization(counted),
    }


def _rate(completed: int, rated: int) -> float | None:
    return round(100 * completed / rated, 1) if rated else None


def _durations(scope: Scope, counted: rollup.Tally) -> dict[str, int | None]:
    timed = sum(counted.timed.values())
    average = sum(counted.duration_us.values()) / timed / 1000 if timed else None
    if timed <= rollup.EXACT_PERCENTILES_MAX:
        p50, p95 = _exact_percentiles(scope)
    else:  # from the log-bucket histograms: within 1%
        histogram = counted.histogram()
        p50 = rollup.histogram_percentile(histogram, 0.5)
        p95 = rollup.histogram_percentile(histogram, 0.95)
    return {
        "avg_duration_ms": _ms(average),
        "p50_duration_ms": _ms(p50),
        "p95_duration_ms": _ms(p95),
    }


def _exact_percentiles(scope: Scope) -> tuple[float | None, float | None]:
    ended = (
        scope.executions()
        .filter(status__in=ENDED, started_at__isnull=False, finished_at__isnull=False)
        .order_by()
    )
    if connection.vendor == "postgresql":
        p50, p95 = ended.aggregate(p=_Percentiles(_seconds_taken()))["p"] or (None, None)
        return tuple(None if v is None else v * 1000 for v in (p50, p95))  # type: ignore[return-value]
    values = sorted(
        (f - s).total_seconds() * 1000 for s, f in ended.values_list("started_at", "finished_at")
    )
    return percentile(values, 0.5), percentile(values, 0.95)


def _ms(value: float | None) -> int | None:
    return None if value is None else int(round(value))


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Linear interpolation between the two nearest ranks (percentile_cont); None if empty."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _active_workflows(scope: Scope) -> int:
    workflows = Workflow.objects.filter(
        organization_id__in=scope.org_ids, is_active=True, current_version__isnull=False
    )
    if scope.workflow is not None:
        workflows = workflows.filter(pk=scope.workflow.pk)
    return workflows.count()


def _daily(scope: Scope, counted: rollup.Tally) -> list[dict[str, Any]]:
    counts: dict[date, Counter[str]] = defaultdict(Counter)
    for (_, day, status), n in counted.runs.items():
        if status in ENDED:
            counts[day][status] += n
    first = scope.start.astimezone(scope.zone).date()
    last = (scope.end - timedelta(microseconds=1)).astimezone(scope.zone).date()
    days = []
    day = first
    while day <= last:
        seen = counts.get(day, Counter())
        days.append({"date": day, **{status: seen[status] for status in ENDED}})
        day += timedelta(days=1)
    return days


def _top_workflows(counted: rollup.Tally) -> list[dict[str, Any]]:
    runs: Counter[int] = Counter()
    completed: Counter[int] = Counter()
    rated: Counter[int] = Counter()
    for (workflow, _, status), n in counted.runs.items():
        runs[workflow] += n
        if status == ExecutionStatus.COMPLETED:
            completed[workflow] += n
        if status in RATED:
            rated[workflow] += n
    top = sorted(runs, key=lambda pk: (-runs[pk], pk))[:TOP_WORKFLOWS]
    names = {
        pk: (slug, name)
        for pk, slug, name in Workflow.objects.filter(pk__in=top).values_list("pk", "slug", "name")
    }
    return [
        {
            "workflow_id": pk,  # (for links; the API shows the slug)
            "slug": names[pk][0],
            "name": names[pk][1],
            "executions": runs[pk],
            "success_rate": _rate(completed[pk], rated[pk]),
        }
        for pk in top
    ]


def _agent_utilization(counted: rollup.Tally) -> dict[str, list[dict[str, Any]]]:
    """Steps that ran (had a worker) in the range's executions, by agent and by queue: how
    many, their busy time (the sum of their durations; a step still running counts until now,
    or until its run ended), and their share of all of them."""

    def grouped(key: str, position: int) -> list[dict[str, Any]]:
        steps: Counter[str] = Counter()
        busy: Counter[str] = Counter()
        for triple, n in counted.steps.items():
            steps[triple[position]] += n
            busy[triple[position]] += counted.busy_us[triple]
        everything = sum(steps.values())
        return [
            {
                key: name,
                "steps": steps[name],
                "busy_ms": busy[name] // 1000,
                "share": round(100 * steps[name] / everything, 1) if everything else 0.0,
            }
            for name in sorted(steps, key=lambda name: (-steps[name], name))
        ]

    return {"agents": grouped("worker", 1), "queues": grouped("queue", 2)}
