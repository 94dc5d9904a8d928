"""manage.py generate_history: the shape and mix of the history it makes, on either database."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from apps.accounts.models import Membership, Organization
from apps.approvals.models import Approval
from apps.executions.choices import STEP_FAILED, EventKind, IncompleteStatus, StepStatus
from apps.executions.history import ADMIN_USERNAME
from apps.executions.models import Execution, ExecutionEvent, IncompleteExecution, Step
from apps.workflows.models import Workflow
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db

N = 2000
SEED = 7
DAYS = 365


def generate(executions: int = N, **options) -> str:
    out = StringIO()
    options = {"seed": SEED, "days": DAYS, **options}
    call_command("generate_history", executions=executions, stdout=out, **options)
    return out.getvalue()


@pytest.fixture
def history() -> str:
    return generate(batch_size=700)  # several batches


def by_status() -> Counter:
    return Counter(Execution.objects.values_list("status", flat=True))


def test_it_makes_its_organizations_workflows_and_user(history):
    orgs = Organization.objects.filter(slug__startswith="history-").order_by("slug")
    assert [o.slug for o in orgs] == ["history-1", "history-2"]
    workflows = Workflow.objects.filter(organization__in=orgs).select_related("current_version")
    assert workflows.count() == 10
    assert {w.organization.slug for w in workflows} == {"history-1", "history-2"}
    for workflow in workflows:
        assert len(workflow.current_version.definition["nodes"]) == 5
    triggers = Counter(w.current_version.definition["trigger"]["type"] for w in workflows)
    assert set(triggers) == {"manual", "webhook", "cron"}
    assert Membership.objects.filter(user__username=ADMIN_USERNAME).count() == 2
    assert "Generated 2,000 executions" in history
    assert "executions/s" in history


def test_the_garbage_collector_is_back_on_after_a_load():
    import gc

    assert gc.isenabled()
    generate(300, batch_size=100)  # (on SQLite the batches are made in this process)
    assert gc.isenabled()


def test_the_status_mix(history):
    counts = by_status()
    assert sum(counts.values()) == N
    assert 0.82 * N <= counts["completed"] <= 0.92 * N
    assert 0.035 * N <= counts["failed"] <= 0.09 * N
    assert 0.015 * N <= counts["cancelled"] <= 0.05 * N
    assert 0.015 * N <= counts["incomplete"] <= 0.05 * N
    for live in ("running", "paused", "pending", "scheduled"):
        assert 1 <= counts[live] <= 0.01 * N, live


def test_every_execution_belongs_to_its_workflow(history):
    for execution in Execution.objects.select_related("workflow", "version"):
        assert execution.organization_id == execution.workflow.organization_id
        assert execution.version_id == execution.workflow.current_version_id
        assert execution.steps_total == len(execution.version.definition["nodes"])


def _steps_by_execution() -> dict[int, list[Step]]:
    steps = defaultdict(list)
    for step in Step.objects.order_by("execution_id", "id"):
        steps[step.execution_id].append(step)
    return steps


def test_steps_agree_with_the_execution(history):
    steps_of = _steps_by_execution()
    for execution in Execution.objects.all():
        steps = steps_of[execution.pk]
        statuses = [s.status for s in steps]
        # the counters are exactly what the rows say (the conftest hook checks it too)
        assert execution.steps_completed == statuses.count(StepStatus.COMPLETED)
        assert execution.steps_failed == sum(s in STEP_FAILED for s in statuses)
        assert execution.steps_skipped == statuses.count(StepStatus.SKIPPED)
        assert len({(s.node_id, s.attempt) for s in steps}) == len(steps)
        for step in steps:
            if step.started_at:
                assert execution.started_at <= step.started_at
            if step.finished_at and execution.finished_at:
                assert step.finished_at <= execution.finished_at
            if step.status in STEP_FAILED:
                assert step.error_type and step.error_message
        _check_statuses(execution, steps, statuses)


def _check_statuses(execution: Execution, steps: list[Step], statuses: list[str]) -> None:
    latest = {s.node_id: s.status for s in steps}  # each node's last attempt
    status = execution.status
    if status == "completed":
        assert set(latest.values()) == {StepStatus.COMPLETED}
        assert len(latest) == execution.steps_total
    elif status == "failed":
        # completed nodes, then one whose every attempt failed, then skipped ones or none
        outcomes = list(latest.values())
        stop = next(i for i, s in enumerate(outcomes) if s in STEP_FAILED)
        assert set(outcomes[:stop]) <= {StepStatus.COMPLETED}
        assert set(outcomes[stop + 1 :]) <= {StepStatus.SKIPPED}
        assert execution.error_message
    elif status == "incomplete":
        assert statuses[-1] in STEP_FAILED
        assert StepStatus.RUNNING not in statuses and execution.finished_at is None
    elif status == "running":
        assert statuses[-1] == StepStatus.RUNNING
        assert set(statuses[:-1]) <= {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.TIMEOUT}
    elif status == "paused":
        assert steps[-1].node_type == "approval" and statuses[-1] == StepStatus.RUNNING
    elif status == "cancelled":
        assert statuses[-1] == StepStatus.CANCELLED and execution.finished_at
    elif status == "pending":
        assert statuses == [StepStatus.DISPATCHED]
    elif status == "scheduled":
        assert statuses == []
    if status in ("completed", "failed", "cancelled"):
        assert execution.started_at <= execution.finished_at


def test_events(history):
    kinds = defaultdict(list)
    for execution_id, kind in ExecutionEvent.objects.order_by("id").values_list(
        "execution_id", "kind"
    ):
        kinds[execution_id].append(kind)
    for execution in Execution.objects.all():
        events = kinds[execution.pk]
        assert 2 <= len(events) <= 4
        assert events[0] == EventKind.CREATED
        last = {
            "completed": EventKind.EXECUTION_COMPLETED,
            "failed": EventKind.EXECUTION_FAILED,
            "cancelled": EventKind.EXECUTION_CANCELLED,
            "incomplete": EventKind.EXECUTION_INCOMPLETE,
            "paused": EventKind.EXECUTION_PAUSED,
            "scheduled": EventKind.EXECUTION_HELD,
            "pending": EventKind.NODE_DISPATCHED,
            "running": EventKind.EXECUTION_STARTED,
        }[execution.status]
        assert events[-1] == last


def test_incomplete_executions_have_records(history):
    open_ids = set(
        IncompleteExecution.objects.filter(status=IncompleteStatus.UNRESOLVED).values_list(
            "execution_id", flat=True
        )
    )
    incomplete = set(Execution.objects.filter(status="incomplete").values_list("id", flat=True))
    assert incomplete and incomplete == open_ids
    records = Counter(IncompleteExecution.objects.values_list("status", flat=True))
    assert records[IncompleteStatus.UNRESOLVED] > records[IncompleteStatus.RESOLVED] > 0
    assert records[IncompleteStatus.DISCARDED] > 0
    for record in IncompleteExecution.objects.select_related("execution"):
        assert record.organization_id == record.execution.organization_id
        assert record.workflow_id == record.execution.workflow_id
        expected = {"resolved": "completed", "discarded": "failed", "unresolved": "incomplete"}
        assert record.execution.status == expected[record.status]


def test_paused_executions_wait_for_a_pending_approval(history):
    paused = Execution.objects.filter(status="paused")
    assert paused.exists()
    for execution in paused:
        approval = Approval.objects.get(execution=execution, status="pending")
        assert approval.step.status == StepStatus.RUNNING
        assert approval.step.execution_id == execution.pk
    # every other gate that was passed was approved
    assert set(
        Approval.objects.exclude(execution__status="paused").values_list("status", flat=True)
    ) == {"approved"}


def test_triggers(history):
    cron = Execution.objects.filter(trigger="cron")
    assert cron.exists() and not cron.filter(scheduled_for=None).exists()
    assert not Execution.objects.exclude(trigger="cron").exclude(scheduled_for=None).exists()
    assert Execution.objects.filter(trigger="webhook").exists()
    manual = Execution.objects.filter(trigger="manual")
    assert manual.exists()
    assert not manual.filter(triggered_by=None).exists()
    assert not Execution.objects.exclude(trigger="manual").exclude(triggered_by=None).exists()
    scheduled = Execution.objects.filter(status="scheduled")
    assert all(e.scheduled_for > timezone.now() for e in scheduled)


def test_created_at_spreads_over_the_days_and_increases_with_the_id(history):
    created = list(Execution.objects.order_by("id").values_list("created_at", flat=True))
    assert created == sorted(created)
    now = timezone.now()
    assert created[0] < now - timedelta(days=DAYS - 5)
    assert created[-1] > now - timedelta(hours=1)
    fifths = Counter(int((now - c).total_seconds() // (DAYS * 86400 / 5)) for c in created)
    assert set(fifths) == {0, 1, 2, 3, 4}
    assert max(fifths.values()) < 1.3 * min(fifths.values())
    live = Execution.objects.filter(status__in=["running", "paused", "pending", "scheduled"])
    assert all(e.created_at > now - timedelta(hours=1) for e in live)
    finished = Execution.objects.exclude(finished_at=None)
    assert not finished.filter(finished_at__gt=now).exists()


def test_durations_are_mostly_seconds(history):
    done = Execution.objects.filter(status="completed", steps_total=5)
    seconds = sorted((e.finished_at - e.started_at).total_seconds() for e in done)
    assert seconds[len(seconds) // 4] < 30
    assert seconds[-1] > 60


def test_the_same_seed_makes_the_same_statuses():
    generate(500)
    first = list(Execution.objects.order_by("id").values_list("status", "trigger"))
    Execution.objects.all().delete()
    Workflow.objects.all().delete()
    Organization.objects.filter(slug__startswith="history-").delete()
    generate(500)
    assert list(Execution.objects.order_by("id").values_list("status", "trigger")) == first


def test_a_second_run_adds_to_the_same_workflows(history):
    generate(300, seed=8)
    assert Execution.objects.count() == N + 300
    assert Workflow.objects.count() == 10
    assert Organization.objects.filter(slug__startswith="history-").count() == 2


def test_it_refuses_a_database_with_other_executions(org, owner):
    workflow = make_workflow(org, chain_definition("real", 2))
    Execution.objects.create(
        workflow=workflow,
        organization=org,
        version=workflow.current_version,
        steps_total=2,
    )
    with pytest.raises(CommandError, match="outside the history-\\* organizations"):
        generate(50)
    assert Execution.objects.count() == 1
    generate(50, force=True)
    assert Execution.objects.count() == 51


def test_the_counting_triggers_are_back_afterwards(history):
    execution = Execution.objects.filter(status="running").first()
    before = execution.steps_completed
    Step.objects.create(
        execution=execution, node_id="extra", node_type="noop", status=StepStatus.COMPLETED
    )
    execution.refresh_from_db()
    assert execution.steps_completed == before + 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="COPY is PostgreSQL's")
def test_postgres_sequences_follow_the_rows(history):
    for model in (Execution, Step, ExecutionEvent):
        new = model.objects.order_by("-id").first()
        table = model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'id')::regclass)",
                [table],
            )
            assert cursor.fetchone()[0] == new.pk


def _index_definitions() -> list[str]:
    tables = [m._meta.db_table for m in (Execution, Step, ExecutionEvent, IncompleteExecution)]
    tables.append(Approval._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = ANY(%s) "
            "UNION ALL SELECT conrelid::regclass::text || ' ' || conname || ' ' || "
            "pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid::regclass::text = ANY(%s) "
            "ORDER BY 1",
            [tables, tables],
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the index rebuild is PostgreSQL's")
def test_postgres_indexes_and_constraints_are_rebuilt_as_they_were():
    before = _index_definitions()
    assert any("one_execution_per_cron_fire" in d and "WHERE" in d for d in before)
    assert any("unique_step_attempt UNIQUE" in d for d in before)
    # a partial index PostgreSQL prints back differently from how it reads it would not
    # compare equal after the rebuild: step_open is written so that it does
    assert any("step_open" in d and "WHERE" in d for d in before)
    out = generate(800, batch_size=300)  # into empty tables: the indexes are dropped
    assert "Rebuilt" in out
    assert _index_definitions() == before


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the index rebuild is PostgreSQL's")
def test_postgres_a_failed_load_leaves_the_indexes(monkeypatch):
    from apps.executions import history

    before = _index_definitions()

    def fail(self, batch):
        raise RuntimeError("disk full")

    monkeypatch.setattr(history.PostgresWriter, "write", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(800, batch_size=300)
    assert _index_definitions() == before
    assert not Execution.objects.exists() and not Step.objects.exists()
