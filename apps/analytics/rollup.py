"""The daily rollup behind the analytics summary (issue 13 item 4): a summary of 90 days reads
a few thousand rollup rows instead of every execution and step of the range.

What is rolled up: the *ended* runs (completed, failed, incomplete, cancelled) of an
organization's past days, a day being midnight to midnight in the organization's time zone.
Per day, workflow and status: the runs, how many have a duration, the sum of the durations and
their histogram in log buckets; per day, workflow, agent and queue: the steps that ran and their
busy time. Runs that have not ended, today, and days not rolled yet are counted from the
executions themselves, with the same code (`tally`), so a rolled day says what a recount says.

How it stays true: database triggers on the executions table (installed after every migrate,
like the step counters) write a *mark* in the statement that makes a run ended, changes an
ended run's times or status (a resume, a cancel, a retry of an incomplete run) or deletes one
(retention). A day with a mark is counted from the executions until the next fold recounts it.
`fold` (the scheduler, every minute; `manage.py rebuild_rollup` for all of it) takes the marks,
forgets their days, and rolls every past day not rolled. An organization that changes its time
zone has its days rolled again in the new one.

Not followed: a step of an ended run that finishes after the run ended (an agent that answers
after a cancel) until its day is rolled again; its busy time counts to the run's end meanwhile.

Percentiles: exact up to EXACT_PERCENTILES_MAX timed runs in the range (sorted from the
executions); beyond, from the merged histograms, whose buckets are GAMMA apart: within 1% of
the exact value.
"""

from __future__ import annotations

import logging
import math
import zoneinfo
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.db import connection, transaction
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDate, TruncHour
from django.utils import timezone

from apps.accounts.timezones import zone_or_utc
from apps.analytics.models import AgentRollup, DailyRollup, RolledDay, RollupMark
from apps.executions import triggers
from apps.executions.choices import ExecutionStatus
from apps.executions.models import Execution, Step

logger = logging.getLogger(__name__)

ENDED = (
    ExecutionStatus.COMPLETED.value,
    ExecutionStatus.FAILED.value,
    ExecutionStatus.INCOMPLETE.value,
    ExecutionStatus.CANCELLED.value,
)
OPEN = tuple(s for s in ExecutionStatus.values if s not in ENDED)
GAMMA = 1.02  # neighbouring buckets' bounds: a bucket's middle is within 1% of its values
EXACT_PERCENTILES_MAX = 20_000
FOLD_LIMIT = 31  # days rolled by one pass of the scheduler
LOCK_KEY = 0x0F5F_1013  # PostgreSQL advisory lock: one fold at a time

EXECUTION_TABLE = "executions_execution"
MARK_TABLE = "analytics_rollupmark"
TRIGGERS = ("analytics_mark_insert", "analytics_mark_update", "analytics_mark_delete")
WATCHED = ("status", "created_at", "started_at", "finished_at", "workflow_id", "organization_id")


# --- histograms ---


def bucket(ms: float) -> int:
    """0 for under a millisecond; else k, for GAMMA^(k-2) < ms <= GAMMA^(k-1)."""
    if ms < 1:
        return 0
    return 1 + math.ceil(math.log(ms) / math.log(GAMMA) - 1e-9)


def middle(key: int) -> float:
    """The value a bucket stands for: within (GAMMA-1)/(GAMMA+1) of every value in it."""
    if key <= 0:
        return 0.0
    return 2 * GAMMA ** (key - 1) / (GAMMA + 1)


def histogram_percentile(histogram: Counter[int], fraction: float) -> float | None:
    """The value at rank fraction × (n − 1), interpolated between the two nearest ranks like
    percentile_cont, each rank read as its bucket's middle."""
    n = sum(histogram.values())
    if not n:
        return None
    position = fraction * (n - 1)
    low, high = math.floor(position), math.ceil(position)
    values: dict[int, float] = {}
    seen = 0
    for key in sorted(histogram):
        count = histogram[key]
        for rank in (low, high):
            if rank not in values and seen <= rank < seen + count:
                values[rank] = middle(key)
        seen += count
        if high in values:
            break
    return values[low] + (values[high] - values[low]) * (position - low)


# --- the tally: one derivation for the rollup and for the live part of a summary ---


@dataclass(frozen=True)
class Span:
    """The runs of one organization created in [start, end), of these statuses (None: all)."""

    organization_id: int
    start: datetime
    end: datetime
    statuses: tuple[str, ...] | None = None


def where(spans: Iterable[Span], workflow_id: int | None = None, prefix: str = "") -> Q:
    """The filter of the runs in `spans` (`prefix` "execution__" filters their steps)."""
    q = Q(**{f"{prefix}pk__in": []})
    for span in spans:
        part = Q(
            **{
                f"{prefix}organization_id": span.organization_id,
                f"{prefix}created_at__gte": span.start,
                f"{prefix}created_at__lt": span.end,
            }
        )
        if span.statuses is not None:
            part &= Q(**{f"{prefix}status__in": span.statuses})
        q |= part
    if workflow_id is not None:
        q &= Q(**{f"{prefix}workflow_id": workflow_id})
    return q


Key = tuple[int, date, str]  # workflow, day, status


@dataclass
class Tally:
    """Runs by workflow, day and status, their durations, and the steps by workflow, agent
    and queue; two tallies add up."""

    runs: Counter[Key] = field(default_factory=Counter)
    timed: Counter[Key] = field(default_factory=Counter)
    duration_us: Counter[Key] = field(default_factory=Counter)
    durations: dict[Key, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    steps: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    busy_us: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    merged: Counter[int] = field(default_factory=Counter)  # histograms read already merged

    def add(self, other: Tally) -> Tally:
        self.runs.update(other.runs)
        self.timed.update(other.timed)
        self.duration_us.update(other.duration_us)
        for key, histogram in other.durations.items():
            self.durations[key].update(histogram)
        self.steps.update(other.steps)
        self.busy_us.update(other.busy_us)
        self.merged.update(other.merged)
        return self

    def histogram(self) -> Counter[int]:
        merged: Counter[int] = Counter(self.merged)
        for histogram in self.durations.values():
            merged.update(histogram)
        return merged


def tally(
    spans: list[Span],
    zone: zoneinfo.ZoneInfo,
    workflow_id: int | None = None,
    now: datetime | None = None,
) -> Tally:
    """Count the runs in `spans` from the executions and steps tables, days in `zone`."""
    result = Tally()
    if not spans:
        return result
    now = now or timezone.now()
    runs = Execution.objects.filter(where(spans, workflow_id)).order_by()
    day = TruncDate("created_at", tzinfo=zone)
    for workflow, on, status, n in (
        runs.annotate(day=day).values_list("workflow_id", "day", "status").annotate(n=Count("id"))
    ):
        result.runs[(workflow, on, status)] += n
    timed = runs.filter(status__in=ENDED, started_at__isnull=False, finished_at__isnull=False)
    for workflow, on, status, started, finished in timed.annotate(day=day).values_list(
        "workflow_id", "day", "status", "started_at", "finished_at"
    ):
        key = (workflow, on, status)
        us = _us(finished - started)
        result.timed[key] += 1
        result.duration_us[key] += us
        result.durations[key][bucket(us / 1000)] += 1
    # A step still running counts until its run ended, or until now if the run goes on.
    busy = ExpressionWrapper(
        Coalesce(F("finished_at"), F("execution__finished_at"), Value(now)) - F("started_at"),
        output_field=DurationField(),
    )
    steps = (
        Step.objects.filter(where(spans, workflow_id, "execution__"), started_at__isnull=False)
        .exclude(worker="")
        .order_by()
        .values_list("execution__workflow_id", "worker", "queue")
        .annotate(n=Count("id"), busy=Sum(busy))
    )
    for workflow, worker, queue, n, taken in steps:
        result.steps[(workflow, worker, queue)] += n
        result.busy_us[(workflow, worker, queue)] += _us(taken)
    return result


def _us(taken: timedelta | None) -> int:
    """A timedelta in whole microseconds, exactly (no float on the way)."""
    if not taken:
        return 0
    return (taken.days * 86_400 + taken.seconds) * 1_000_000 + taken.microseconds


# --- reading: which days a summary takes from the rollup ---


@dataclass
class Plan:
    rolled: dict[int, list[date]]  # organization → days read from the rollup
    spans: list[Span]  # the rest, counted from the executions


def _midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone)


def plan(org_ids: Iterable[int], start: datetime, end: datetime, zone: zoneinfo.ZoneInfo) -> Plan:
    """The whole days of [start, end) in `zone` that are rolled (in that zone) and unmarked are
    read from the rollup, for their ended runs; everything else is counted."""
    from apps.accounts.models import Organization

    org_ids = list(org_ids)
    first = start.astimezone(zone).date()
    if _midnight(first, zone) < start:
        first += timedelta(days=1)
    last = end.astimezone(zone).date() - timedelta(days=1)  # the last day that ends by `end`
    same_zone = [
        pk
        for pk, name in Organization.objects.filter(pk__in=org_ids).values_list("pk", "time_zone")
        if zone_or_utc(name).key == zone.key
    ]
    rolled: dict[int, set[date]] = defaultdict(set)
    if same_zone and first <= last:
        for pk, day in RolledDay.objects.filter(
            organization_id__in=same_zone, day__gte=first, day__lte=last, time_zone=zone.key
        ).values_list("organization_id", "day"):
            rolled[pk].add(day)
        for pk, day in marked_days(same_zone, {pk: zone for pk in same_zone}):
            rolled[pk].discard(day)
    spans: list[Span] = []
    result: dict[int, list[date]] = {}
    for pk in org_ids:
        days = sorted(rolled.get(pk, ()))
        result[pk] = days
        cursor = start
        for begin, finish in _runs_of_days(days, zone):
            if cursor < begin:
                spans.append(Span(pk, cursor, begin))
            spans.append(Span(pk, begin, finish, OPEN))  # rolled: only its runs not ended
            cursor = finish
        if cursor < end:
            spans.append(Span(pk, cursor, end))
    return Plan({pk: days for pk, days in result.items() if days}, spans)


def _runs_of_days(days: list[date], zone) -> list[tuple[datetime, datetime]]:
    """Consecutive days as [first midnight, midnight after the last)."""
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and runs[-1][1] == day:
            runs[-1] = (runs[-1][0], day + timedelta(days=1))
        else:
            runs.append((day, day + timedelta(days=1)))
    return [(_midnight(a, zone), _midnight(b, zone)) for a, b in runs]


def marked_days(
    org_ids: list[int], zones: dict[int, zoneinfo.ZoneInfo], upto: int | None = None
) -> set[tuple[int, date]]:
    """The (organization, day) pairs with a change mark (of id ≤ `upto`)."""
    marks = RollupMark.objects.filter(organization_id__in=org_ids)
    if upto is not None:
        marks = marks.filter(pk__lte=upto)
    days = set()
    hours = (
        marks.order_by()
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values_list("organization_id", "hour")
        .distinct()
    )
    for pk, hour in hours:
        zone = zones.get(pk)
        if zone is None:
            continue
        # an hour can straddle two days in a zone a half or quarter hour off UTC
        days.add((pk, hour.astimezone(zone).date()))
        days.add((pk, (hour + timedelta(minutes=59, seconds=59)).astimezone(zone).date()))
    return days


def read(rolled: dict[int, list[date]], workflow_id: int | None = None) -> Tally:
    """The rolled days' rows as a tally."""
    result = Tally()
    if not rolled:
        return result
    days = Q(pk__in=[])
    for pk, dates in rolled.items():
        days |= Q(organization_id=pk, day__in=dates)
    q = days if workflow_id is None else days & Q(workflow_id=workflow_id)
    runs = DailyRollup.objects.filter(q)
    fields = ["workflow_id", "day", "status", "executions", "timed", "duration_us"]
    if workflow_id is None:  # the days' own histograms: one a day
        for durations in RolledDay.objects.filter(days).values_list("durations", flat=True):
            result.merged.update({int(k): v for k, v in durations.items()})
    else:
        fields.append("durations")
    for row in runs.values_list(*fields):
        workflow, day, status, n, timed, us = row[:6]
        key = (workflow, day, status)
        result.runs[key] += n
        if timed:
            result.timed[key] += timed
            result.duration_us[key] += us
            if workflow_id is not None:
                result.durations[key].update({int(k): v for k, v in row[6].items()})
    for workflow, worker, queue, n, us in (
        AgentRollup.objects.filter(q)
        .order_by()
        .values_list("workflow_id", "worker", "queue")
        .annotate(n=Sum("steps"), us=Sum("busy_us"))
    ):
        result.steps[(workflow, worker, queue)] += n
        result.busy_us[(workflow, worker, queue)] += us
    return result


# --- folding ---


def fold(
    now: datetime | None = None,
    organization_ids: list[int] | None = None,
    progress: Callable[[int, date], None] | None = None,
    limit: int | None = None,
) -> int | None:
    """Take the change marks, forget their days, and roll every past day not rolled (of these
    organizations, or all; at most `limit` days, the rest next time). Returns the days rolled;
    None when another fold holds the lock."""
    from apps.accounts.models import Organization

    now = now or timezone.now()
    with _lock() as held:
        if not held:
            return None
        organizations = Organization.objects.all()
        if organization_ids is not None:
            organizations = organizations.filter(pk__in=organization_ids)
        zones = {pk: zone_or_utc(name) for pk, name in organizations.values_list("pk", "time_zone")}
        _take_marks(zones)
        rolled = 0
        for pk, zone in zones.items():
            for day in _days_to_roll(pk, zone, now):
                if limit is not None and rolled >= limit:
                    return rolled
                _roll_day(pk, zone, day, now)
                rolled += 1
                if progress is not None:
                    progress(pk, day)
        return rolled


def scheduled_fold() -> None:
    """The scheduler's fold: a month of days at most a pass (a first fold over a long history
    takes several passes; the summary counts the days not rolled yet meanwhile)."""
    fold(limit=FOLD_LIMIT)


def _take_marks(zones: dict[int, zoneinfo.ZoneInfo]) -> None:
    """The marked days are forgotten (counted from the executions again) in the transaction
    that deletes their marks: a fold that stops after it leaves them to roll, never stale."""
    with transaction.atomic():
        top = RollupMark.objects.order_by("-pk").values_list("pk", flat=True).first()
        if top is None:
            return
        forget(marked_days(list(zones), zones, upto=top))
        RollupMark.objects.filter(pk__lte=top, organization_id__in=list(zones)).delete()
        # marks of organizations deleted since: nothing to forget
        RollupMark.objects.filter(pk__lte=top).exclude(
            organization_id__in=_existing_organizations()
        ).delete()


def _existing_organizations():
    from apps.accounts.models import Organization

    return Organization.objects.values("pk")


def forget(days: Iterable[tuple[int, date]]) -> None:
    by_org: dict[int, list[date]] = defaultdict(list)
    for pk, day in days:
        by_org[pk].append(day)
    for pk, dates in by_org.items():
        for model in (RolledDay, DailyRollup, AgentRollup):
            model.objects.filter(organization_id=pk, day__in=dates).delete()


def forget_organizations(org_ids: list[int]) -> None:
    """Roll these organizations' days again (their history was loaded behind the triggers)."""
    for model in (RolledDay, DailyRollup, AgentRollup):
        model.objects.filter(organization_id__in=org_ids).delete()


def _days_to_roll(pk: int, zone: zoneinfo.ZoneInfo, now: datetime) -> list[date]:
    """The past days not rolled since the organization's first run; those without a run are
    marked rolled here, in one statement."""
    # days rolled in another zone (the organization changed it) are forgotten first
    stale = list(
        RolledDay.objects.filter(organization_id=pk)
        .exclude(time_zone=zone.key)
        .values_list("day", flat=True)
    )
    if stale:
        forget((pk, day) for day in stale)
    first = (
        Execution.objects.filter(organization_id=pk)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if first is None:
        return []
    today = now.astimezone(zone).date()
    rolled = set(RolledDay.objects.filter(organization_id=pk).values_list("day", flat=True))
    missing, day = [], first.astimezone(zone).date()
    while day < today:
        if day not in rolled:
            missing.append(day)
        day += timedelta(days=1)
    if not missing:
        return []
    busy = set(
        Execution.objects.filter(
            organization_id=pk,
            created_at__gte=_midnight(missing[0], zone),
            created_at__lt=_midnight(missing[-1] + timedelta(days=1), zone),
        )
        .order_by()
        .annotate(day=TruncDate("created_at", tzinfo=zone))
        .values_list("day", flat=True)
        .distinct()
    )
    RolledDay.objects.bulk_create(
        RolledDay(organization_id=pk, day=day, time_zone=zone.key, folded_at=now)
        for day in missing
        if day not in busy
    )
    return [day for day in missing if day in busy]


def _roll_day(pk: int, zone: zoneinfo.ZoneInfo, day: date, now: datetime) -> None:
    span = Span(pk, _midnight(day, zone), _midnight(day + timedelta(days=1), zone), ENDED)
    with transaction.atomic():
        forget([(pk, day)])
        counted = tally([span], zone, now=now)
        DailyRollup.objects.bulk_create(
            DailyRollup(
                organization_id=pk,
                day=on,
                workflow_id=workflow,
                status=status,
                executions=n,
                timed=counted.timed[(workflow, on, status)],
                duration_us=counted.duration_us[(workflow, on, status)],
                durations={
                    str(k): v for k, v in counted.durations.get((workflow, on, status), {}).items()
                },
            )
            for (workflow, on, status), n in counted.runs.items()
        )
        AgentRollup.objects.bulk_create(
            AgentRollup(
                organization_id=pk,
                day=day,
                workflow_id=workflow,
                worker=worker,
                queue=queue,
                steps=n,
                busy_us=counted.busy_us[(workflow, worker, queue)],
            )
            for (workflow, worker, queue), n in counted.steps.items()
        )
        RolledDay.objects.create(
            organization_id=pk,
            day=day,
            time_zone=zone.key,
            folded_at=now,
            durations={str(k): v for k, v in counted.histogram().items()},
        )


class _lock:
    """PostgreSQL: a session advisory lock, tried, not waited for (another fold is at work).
    SQLite writes one at a time anyway."""

    def __enter__(self) -> bool:
        self.held = True
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
                self.held = cursor.fetchone()[0]
        return self.held

    def __exit__(self, *exc) -> None:
        if self.held and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])


# --- the triggers that write the marks ---


def _in(column: str, statuses: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in statuses)})"


def _insert(row: str) -> str:
    return (
        f"INSERT INTO {MARK_TABLE} (organization_id, created_at) "
        f"VALUES ({row}.organization_id, {row}.created_at);"
    )


def _postgresql() -> list[str]:
    old = ", ".join(f"OLD.{c}" for c in WATCHED)
    new = ", ".join(f"NEW.{c}" for c in WATCHED)
    return [
        f"""
CREATE OR REPLACE FUNCTION analytics_mark_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        {_insert("OLD")}
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND (NEW.organization_id, NEW.created_at)
                            IS DISTINCT FROM (OLD.organization_id, OLD.created_at)) THEN
        {_insert("NEW")}
    END IF;
    RETURN NULL;
END
$$""",
        *(f"DROP TRIGGER IF EXISTS {name} ON {EXECUTION_TABLE}" for name in TRIGGERS),
        f"""CREATE TRIGGER {TRIGGERS[0]} AFTER INSERT ON {EXECUTION_TABLE} FOR EACH ROW
WHEN ({_in("NEW.status", ENDED)}) EXECUTE FUNCTION analytics_mark_run()""",
        f"""CREATE TRIGGER {TRIGGERS[1]} AFTER UPDATE OF {", ".join(WATCHED)} ON {EXECUTION_TABLE}
FOR EACH ROW WHEN (({_in("OLD.status", ENDED)} OR {_in("NEW.status", ENDED)})
                   AND ({old}) IS DISTINCT FROM ({new}))
EXECUTE FUNCTION analytics_mark_run()""",
        f"""CREATE TRIGGER {TRIGGERS[2]} AFTER DELETE ON {EXECUTION_TABLE} FOR EACH ROW
WHEN ({_in("OLD.status", ENDED)}) EXECUTE FUNCTION analytics_mark_run()""",
    ]


def _sqlite() -> list[str]:
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in WATCHED)
    moved = "NEW.organization_id IS NOT OLD.organization_id OR NEW.created_at IS NOT OLD.created_at"
    return [
        f"""CREATE TRIGGER IF NOT EXISTS {TRIGGERS[0]} AFTER INSERT ON {EXECUTION_TABLE}
FOR EACH ROW WHEN {_in("NEW.status", ENDED)} BEGIN {_insert("NEW")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS {TRIGGERS[1]} AFTER UPDATE OF {", ".join(WATCHED)}
ON {EXECUTION_TABLE} FOR EACH ROW
WHEN ({_in("OLD.status", ENDED)} OR {_in("NEW.status", ENDED)}) AND ({changed})
BEGIN
    {_insert("OLD")}
    INSERT INTO {MARK_TABLE} (organization_id, created_at)
        SELECT NEW.organization_id, NEW.created_at WHERE {moved};
END""",
        f"""CREATE TRIGGER IF NOT EXISTS {TRIGGERS[2]} AFTER DELETE ON {EXECUTION_TABLE}
FOR EACH ROW WHEN {_in("OLD.status", ENDED)} BEGIN {_insert("OLD")} END""",
    ]


def install(connection) -> None:
    """Create (or replace) the marking triggers on this database."""
    triggers.execute(connection, {"postgresql": _postgresql, "sqlite": _sqlite}, "rollup marks")


def uninstall(connection) -> None:
    with connection.cursor() as cursor:
        for name in TRIGGERS:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {EXECUTION_TABLE}")
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
        if connection.vendor == "postgresql":
            cursor.execute("DROP FUNCTION IF EXISTS analytics_mark_run()")
