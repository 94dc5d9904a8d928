"""The daily rollup behind the summary (issue 13 item 4): the hand-computed figures again once
the days are rolled, the rollup equal to a recount after retries, resumes, cancels and
deletions, a changed day counted afresh until the next fold, a time zone change, and the
percentiles beyond the exact limit within 1%."""

from __future__ import annotations

import random
from datetime import date, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.analytics import rollup, services
from apps.analytics.models import AgentRollup, DailyRollup, RolledDay, RollupMark
from apps.executions.choices import ExecutionStatus as S
from apps.executions.models import Execution, Step
from tests.analytics import test_summary as hand
from tests.analytics.test_summary import UTILIZATION, at, run, scope, steps_that_ran
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db


def rows() -> dict:
    """The rollup's contents, comparable across folds."""
    return {
        "days": sorted(RolledDay.objects.values_list("organization_id", "day", "time_zone")),
        "runs": sorted(
            DailyRollup.objects.values_list(
                "organization_id",
                "day",
                "workflow_id",
                "status",
                "executions",
                "timed",
                "duration_us",
                "durations",
            ),
            key=repr,
        ),
        "steps": sorted(
            AgentRollup.objects.values_list(
                "organization_id", "day", "workflow_id", "worker", "queue", "steps", "busy_us"
            )
        ),
    }


def recounted() -> dict:
    """What a rebuild from the executions makes."""
    call_command("rebuild_rollup", stdout=StringIO())
    return rows()


def counted_live(user, **params) -> dict:
    """The summary with nothing taken from the rollup (rolled again after)."""
    rollup.forget_organizations(list(RolledDay.objects.values_list("organization_id", flat=True)))
    asked = scope(user, **params)
    assert rollup.plan(asked.org_ids, asked.start, asked.end, asked.zone).rolled == {}
    try:
        return services.summary(asked)
    finally:
        rollup.fold()


def test_the_hand_computed_figures_again_from_the_rollup(history, paris, analyst):
    steps_that_ran(history)
    rollup.fold()

    assert RolledDay.objects.filter(organization=paris, day=date(2026, 1, 10)).exists()
    split = rollup.plan([paris.pk], at(9, 23), at(11, 23), services.scope_for(analyst, {}).zone)
    assert split.rolled == {paris.pk: [date(2026, 1, 10), date(2026, 1, 11)]}
    hand.test_the_summary_matches_the_hand_computed_figures(history, analyst)
    hand.test_a_workflow_filter_narrows_every_figure(history, analyst)
    assert services.summary(scope(analyst))["agent_utilization"] == UTILIZATION


def test_the_summary_reads_rolled_days_from_the_rollup(history, paris, analyst):
    rollup.fold()
    row = DailyRollup.objects.get(
        organization=paris, day=date(2026, 1, 10), workflow__slug="alpha", status=S.FAILED
    )
    row.executions += 100  # a rollup row that no longer says what the executions say
    row.save()

    assert services.summary(scope(analyst))["by_status"]["failed"] == 101


def test_a_change_to_a_rolled_day_is_counted_afresh_until_the_next_fold(history, paris, analyst):
    rollup.fold()
    before = services.summary(scope(analyst))

    incomplete = history["incomplete"]
    incomplete.resume("an operator resumed it")  # incomplete → running, on a rolled day

    assert RollupMark.objects.count() == 1
    after = services.summary(scope(analyst))
    assert after["by_status"]["incomplete"] == before["by_status"]["incomplete"] - 1
    assert after["by_status"]["running"] == before["by_status"]["running"] + 1
    assert after == counted_live(analyst)

    incomplete.complete()
    rollup.fold()

    assert not RollupMark.objects.exists()
    final = services.summary(scope(analyst))
    assert final["by_status"]["completed"] == before["by_status"]["completed"] + 1
    assert final == counted_live(analyst)


def test_the_rollup_equals_a_recount_after_retries_resumes_cancels_and_deletions(paris, analyst):
    rng = random.Random(13)
    workflows = [make_workflow(paris, chain_definition(slug, 2)) for slug in ("one", "two")]
    runs = []
    for n in range(60):
        created = at(1 + n % 12, rng.randrange(24), rng.randrange(60))
        status = rng.choice([S.COMPLETED, S.FAILED, S.INCOMPLETE, S.CANCELLED, S.RUNNING])
        execution = run(
            workflows[n % 2], status, created, rng.randrange(1, 500), started=n % 7 != 0
        )
        for attempt in (2, 3) if n % 3 == 0 else (2,):  # a retried node: two attempts
            Step.objects.create(
                execution=execution,
                node_id="n0",
                node_type="noop",
                attempt=attempt,
                worker=f"host/{n % 3}",
                queue=("default", "shell")[n % 2],
                started_at=created + timedelta(seconds=attempt),
                finished_at=created + timedelta(seconds=attempt, milliseconds=rng.randrange(900)),
            )
        runs.append(execution)
    rollup.fold()
    assert rows() == recounted()

    # resumes (incomplete → running → completed or failed), cancels, retention's deletions
    for execution in runs:
        execution.refresh_from_db()
        if execution.status == S.INCOMPLETE:
            execution.resume("resumed")
            if execution.pk % 2:
                execution.complete()
        elif execution.status == S.RUNNING and execution.pk % 2:
            execution.cancel("an operator")
    Execution.objects.filter(pk__in=[r.pk for r in runs[::9]]).delete()
    retried = runs[1]
    Step.objects.create(
        execution=retried,
        node_id="n1",
        node_type="noop",
        attempt=5,
        worker="host/late",
        started_at=retried.created_at,
        finished_at=retried.created_at + timedelta(seconds=2),
    )
    Execution.objects.filter(pk=retried.pk).update(status=S.INCOMPLETE)  # marks its day
    retried.refresh_from_db()
    retried.resume("resumed once more")
    retried.fail("and failed")

    live = counted_live(analyst, **{"from": "2026-01-01", "to": "2026-01-12"})
    assert services.summary(scope(analyst, **{"from": "2026-01-01", "to": "2026-01-12"})) == live
    rollup.fold()
    folded = rows()
    assert folded == recounted()
    assert services.summary(scope(analyst, **{"from": "2026-01-01", "to": "2026-01-12"})) == live
    assert any(row[3] == "host/late" for row in folded["steps"])


def test_a_new_time_zone_rolls_the_days_again(history, paris, analyst):
    rollup.fold()
    assert set(
        RolledDay.objects.filter(organization=paris).values_list("time_zone", flat=True)
    ) == {"Europe/Paris"}
    paris.time_zone = "UTC"
    paris.save()

    hand.test_in_utc_the_first_run_falls_on_the_day_before(history, paris, analyst)  # live
    rollup.fold()

    assert set(
        RolledDay.objects.filter(organization=paris).values_list("time_zone", flat=True)
    ) == {"UTC"}
    assert rollup.plan([paris.pk], at(10, 0), at(12, 0), rollup.zoneinfo.ZoneInfo("UTC")).rolled
    hand.test_in_utc_the_first_run_falls_on_the_day_before(history, paris, analyst)


def test_beyond_the_exact_limit_the_percentiles_are_within_one_percent(paris, analyst, monkeypatch):
    rng = random.Random(7)
    workflow = make_workflow(paris, chain_definition("spread", 1))
    for n in range(400):
        run(workflow, S.COMPLETED, at(10, n % 24, n % 60), rng.lognormvariate(3, 1.2))
    exact = services.summary(scope(analyst))
    rollup.fold()
    monkeypatch.setattr(rollup, "EXACT_PERCENTILES_MAX", 100)

    estimated = services.summary(scope(analyst))

    for name in ("p50_duration_ms", "p95_duration_ms"):
        assert estimated[name] == pytest.approx(exact[name], rel=0.01)
        assert estimated[name] != exact[name]  # (the histogram answered, not the sort)
    assert estimated["avg_duration_ms"] == exact["avg_duration_ms"]  # sums are exact


def test_the_histogram_percentile_of_a_known_distribution():
    values = [float(v) for v in range(1, 1001)]
    histogram = rollup.Counter(rollup.bucket(v) for v in values)

    for fraction in (0.5, 0.95, 0.99):
        exact = services.percentile(values, fraction)
        assert rollup.histogram_percentile(histogram, fraction) == pytest.approx(exact, rel=0.01)
    assert rollup.histogram_percentile(rollup.Counter(), 0.5) is None
    assert rollup.bucket(0.4) == 0 and rollup.middle(0) == 0


def test_the_rebuild_command_says_what_it_did(history, paris):
    out = StringIO()

    call_command("rebuild_rollup", organization=["paris"], stdout=out)

    assert "of 1 organization(s)" in out.getvalue()
    with pytest.raises(Exception, match="no organization nope"):
        call_command("rebuild_rollup", organization=["nope"], stdout=StringIO())


def test_the_scheduler_folds_a_month_of_days_a_pass(history, paris, monkeypatch):
    monkeypatch.setattr(rollup, "FOLD_LIMIT", 2)

    def busy_days_rolled() -> int:
        return len(set(DailyRollup.objects.values_list("organization_id", "day")))

    passes = [rollup.scheduled_fold() or busy_days_rolled() for _ in range(4)]  # a minute apart

    # five days have runs: Paris's 9th to 12th, and the 10th elsewhere
    assert passes == [2, 4, 5, 5]
    today_in_paris = timezone.now().astimezone(rollup.zoneinfo.ZoneInfo("Europe/Paris")).date()
    assert not RolledDay.objects.filter(organization=paris, day__gte=today_in_paris).exists()


@pytest.mark.django_db(transaction=True)
def test_a_scheduler_pass_runs_the_fold(redis_conn, monkeypatch):
    from apps.executions.scheduler import SchedulerLoop

    folds = []
    monkeypatch.setattr(rollup, "scheduled_fold", lambda: folds.append(1))
    loop = SchedulerLoop()
    assert loop.acquire_or_renew()

    loop.tick()
    loop.tick()  # within the minute: not again

    assert folds == [1]
