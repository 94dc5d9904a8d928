"""The analytics summary (issue 13 item 1) against a fixture computed by hand: every status,
runs that never started, a day boundary that only the organization's time zone puts on the
right side, another organization's runs that must never count, and p95 on a known
distribution."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from apps.accounts.choices import Role
from apps.analytics import services
from apps.executions.models import Execution, Step
from apps.executions.services import trigger_workflow
from tests.factories import make_org, make_user

pytestmark = pytest.mark.django_db


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


def run(workflow, status, created, seconds=None, started=True) -> Execution:
    """One execution with exactly these times (test data: the engine is not the subject)."""
    execution = trigger_workflow(workflow)
    started_at = created + timedelta(seconds=1) if started else None
    finished_at = None
    if seconds is not None:
        finished_at = (started_at or created) + timedelta(seconds=seconds)
    Execution.objects.filter(pk=execution.pk).update(
        status=status, created_at=created, started_at=started_at, finished_at=finished_at
    )
    execution.refresh_from_db()
    return execution


def scope(user, **params):
    return services.scope_for(user, {"from": "2026-01-10", "to": "2026-01-11", **params})


def test_the_summary_matches_the_hand_computed_figures(history, analyst):
    result = services.summary(scope(analyst))

    assert result["from"] == at(9, 23) and result["to"] == at(11, 23)  # Paris days
    assert result["total"] == 8
    assert result["by_status"] == {
        "scheduled": 1,
        "pending": 0,
        "running": 1,
        "paused": 0,
        "retrying": 0,
        "interrupted": 0,
        "incomplete": 1,
        "completed": 3,
        "failed": 1,
        "cancelled": 1,
    }
    assert result["success_rate"] == 60.0  # 3 / (3 + 1 + 1); the cancelled one is not rated
    # ended runs that started: 10, 20, 30, 40, 100 s
    assert result["avg_duration_ms"] == 40_000
    assert result["p50_duration_ms"] == 30_000
    assert result["p95_duration_ms"] == 88_000  # 40 + (100 − 40) × 0.8, at rank 3.8
    assert result["active_workflows"] == 2  # alpha, beta; gamma is inactive
    assert result["daily"] == [
        {"date": date(2026, 1, 10), "completed": 2, "failed": 1, "incomplete": 0, "cancelled": 0},
        {"date": date(2026, 1, 11), "completed": 1, "failed": 0, "incomplete": 1, "cancelled": 1},
    ]
    assert [
        {k: v for k, v in w.items() if k != "workflow_id"} for w in result["top_workflows"]
    ] == [
        {"slug": "alpha", "name": "Alpha", "executions": 6, "success_rate": 50.0},
        {"slug": "beta", "name": "Beta", "executions": 2, "success_rate": 100.0},
    ]


def test_in_utc_the_first_run_falls_on_the_day_before(history, paris, analyst):
    paris.time_zone = "UTC"
    paris.save()

    result = services.summary(scope(analyst))

    assert result["from"] == at(10, 0)
    assert [d["date"] for d in result["daily"]] == [date(2026, 1, 10), date(2026, 1, 11)]
    assert result["total"] == 8 - 1 + 1  # the first run leaves, the one at 23:30 UTC enters


def test_a_workflow_filter_narrows_every_figure(history, analyst):
    result = services.summary(scope(analyst, workflow="beta"))

    assert result["total"] == 2 and result["success_rate"] == 100.0
    assert result["active_workflows"] == 1
    assert [w["slug"] for w in result["top_workflows"]] == ["beta"]


def steps_that_ran(history) -> None:
    """Steps on two agents and two queues: host/a ran 100 + 200 ms, host/b 300 ms in `shell`."""
    first, second = history["first"], history["second"]

    def ran(started, ms):
        return {"started_at": started, "finished_at": started + timedelta(milliseconds=ms)}

    Step.objects.filter(execution=first).update(worker="host/a", **ran(at(9, 23, 31), 100))
    Step.objects.filter(execution=second).update(
        worker="host/b", queue="shell", **ran(at(10, 12, 1), 300)
    )
    Step.objects.create(
        execution=history["failed"],
        node_id="n0",
        node_type="noop",
        attempt=9,
        worker="host/a",
        **ran(at(10, 13, 1), 200),
    )


UTILIZATION = {
    "agents": [
        {"worker": "host/a", "steps": 2, "busy_ms": 300, "share": 66.7},
        {"worker": "host/b", "steps": 1, "busy_ms": 300, "share": 33.3},
    ],
    "queues": [
        {"queue": "default", "steps": 2, "busy_ms": 300, "share": 66.7},
        {"queue": "shell", "steps": 1, "busy_ms": 300, "share": 33.3},
    ],
}


def test_agent_utilization_counts_the_steps_that_ran_by_agent_and_by_queue(history, analyst):
    steps_that_ran(history)

    assert services.summary(scope(analyst))["agent_utilization"] == UTILIZATION


def test_p95_of_a_known_distribution():
    values = [float(v) for v in range(1, 101)]  # 1 … 100

    assert services.percentile(values, 0.95) == pytest.approx(95.05)
    assert services.percentile(values, 0.5) == pytest.approx(50.5)
    assert services.percentile([], 0.95) is None


def test_another_organizations_runs_never_count(history):
    outsider = make_user("outsider", make_org("far"), Role.ADMIN)

    result = services.summary(scope(outsider))

    assert result["total"] == 0 and result["success_rate"] is None
    assert result["avg_duration_ms"] is None and result["p95_duration_ms"] is None


@pytest.mark.parametrize(
    "params, message",
    [
        ({"from": "2026-13-01"}, "from: not a date"),
        ({"to": "yesterday"}, "to: not a date"),
        ({"from": "2026-01-12", "to": "2026-01-10"}, "from: must be before to."),
        ({"from": "2020-01-01", "to": "2026-01-10"}, "longer than 400 days"),
        ({"workflow": "nope"}, "workflow: no workflow 'nope'"),
        ({"organization": "elsewhere"}, "organization: no organization 'elsewhere' of yours."),
        ({"from": "", "range": "1y"}, "range: one of 24h, 7d, 30d, 90d."),
    ],
)
def test_a_bad_range_or_filter_says_what_is_wrong(history, analyst, params, message):
    with pytest.raises(services.BadRange, match=message):
        services.scope_for(analyst, {"from": "2026-01-10", "to": "2026-01-11", **params})


def test_the_presets_count_back_from_now_in_the_zone(paris, analyst):
    from django.utils import timezone

    last_day = services.scope_for(analyst, {"range": "24h"})
    month = services.scope_for(analyst, {"range": "30d"})

    assert abs((timezone.now() - last_day.end).total_seconds()) < 5
    assert last_day.end - last_day.start == timedelta(hours=24)
    start = month.start.astimezone(month.zone)
    assert (start.hour, start.minute) == (0, 0)  # midnight in Paris
    assert (month.end.astimezone(month.zone).date() - start.date()).days == 29
