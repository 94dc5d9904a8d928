"""Retention: finished executions older than their retention are pruned; nothing else is."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.executions.choices import ExecutionStatus
from apps.executions.models import Execution, ExecutionEvent, Step
from apps.executions.retention import prune_executions
from apps.executions.services import trigger_workflow
from tests.factories import chain_definition, make_workflow


def aged(workflow, status: str, days: int) -> Execution:
    """An execution with a step and an event, finished (or not) `days` ago."""
    execution = trigger_workflow(workflow)
    finished = timezone.now() - timedelta(days=days)
    Execution.objects.filter(pk=execution.pk).update(
        status=status, finished_at=finished if status != ExecutionStatus.INCOMPLETE else None
    )
    return execution


@pytest.fixture
def workflow(org):
    return make_workflow(org, chain_definition("keep-me", 1))


@pytest.mark.django_db
def test_it_prunes_finished_executions_older_than_the_retention_with_their_steps_and_events(
    workflow, settings
):
    settings.OPSFLOW_RETENTION_DAYS = 30
    old = aged(workflow, ExecutionStatus.COMPLETED, 31)
    failed = aged(workflow, ExecutionStatus.FAILED, 40)
    recent = aged(workflow, ExecutionStatus.COMPLETED, 5)

    counts = prune_executions()

    assert counts == {"acme/keep-me": 2}
    assert list(Execution.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not Step.objects.filter(execution_id__in=[old.pk, failed.pk]).exists()
    assert not ExecutionEvent.objects.filter(execution_id__in=[old.pk, failed.pk]).exists()


@pytest.mark.django_db
def test_it_never_prunes_unfinished_or_incomplete_executions(workflow, settings):
    settings.OPSFLOW_RETENTION_DAYS = 1
    waiting = aged(workflow, ExecutionStatus.INCOMPLETE, 90)
    running = aged(workflow, ExecutionStatus.RUNNING, 90)

    assert prune_executions() == {}
    assert set(Execution.objects.values_list("pk", flat=True)) == {waiting.pk, running.pk}


@pytest.mark.django_db
def test_the_workflow_setting_beats_the_organization_which_beats_the_environment(org, settings):
    settings.OPSFLOW_RETENTION_DAYS = 1
    org.retention_days = 100
    org.save()
    by_org = make_workflow(org, chain_definition("by-org", 1))
    forever = make_workflow(
        org, {**chain_definition("forever", 1), "settings": {"retention_days": 0}}
    )
    short = make_workflow(org, {**chain_definition("short", 1), "settings": {"retention_days": 3}})
    kept = aged(by_org, ExecutionStatus.COMPLETED, 50)
    ancient = aged(forever, ExecutionStatus.COMPLETED, 5000)
    gone = aged(short, ExecutionStatus.COMPLETED, 4)

    assert prune_executions() == {"acme/short": 1}
    assert set(Execution.objects.values_list("pk", flat=True)) == {kept.pk, ancient.pk}
    assert not Execution.objects.filter(pk=gone.pk).exists()


@pytest.mark.django_db
def test_the_command_dry_run_counts_without_deleting(workflow, settings):
    settings.OPSFLOW_RETENTION_DAYS = 7
    aged(workflow, ExecutionStatus.CANCELLED, 8)
    out = StringIO()

    call_command("prune_executions", "--dry-run", stdout=out)

    assert "Would delete 1 execution(s) of acme/keep-me" in out.getvalue()
    assert Execution.objects.count() == 1
    call_command("prune_executions", stdout=StringIO())
    assert Execution.objects.count() == 0
