"""Production volume (issue 11): counters instead of step scans, counts that stop at a bound,
cursor pages, batched retention, query counts that do not grow with the rows."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts import audit
from apps.accounts.models import AuditEntry
from apps.approvals.models import Approval
from apps.executions.choices import ExecutionStatus, IncompleteStatus, StepStatus
from apps.executions.models import Execution, ExecutionEvent, IncompleteExecution, Step
from apps.executions.retention import prune_executions
from apps.executions.services import retrigger_execution, trigger_workflow
from apps.workflows.models import WebhookDelivery
from tests.factories import chain_definition, make_workflow


@pytest.fixture
def workflow(org):
    return make_workflow(org, chain_definition("volume", 3))


def many(workflow, n: int) -> list[Execution]:
    return [trigger_workflow(workflow) for _ in range(n)]


def with_gate_and_record(execution, status: str = IncompleteStatus.UNRESOLVED) -> None:
    """An approval on the run's first step and an incomplete-execution record for it."""
    step = execution.steps.first()
    Approval.objects.create(execution=execution, step=step, node_id=step.node_id)
    IncompleteExecution.objects.create(
        execution=execution,
        workflow=execution.workflow,
        organization=execution.workflow.organization,
        node_id=step.node_id,
        error_type="X",
        status=status,
    )


# --- counters ---


@pytest.mark.django_db
def test_an_execution_stores_its_node_count_and_organization_at_creation(workflow, org):
    execution = trigger_workflow(workflow)

    execution.refresh_from_db()
    assert execution.steps_total == 3
    assert execution.organization_id == org.pk
    assert (execution.steps_completed, execution.steps_failed, execution.steps_skipped) == (0, 0, 0)


@pytest.mark.django_db
def test_the_counters_follow_every_step_transition_in_the_same_statement(workflow):
    execution = trigger_workflow(workflow)
    step = execution.steps.get()

    def counters():
        execution.refresh_from_db()
        return execution.steps_completed, execution.steps_failed, execution.steps_skipped

    assert step.start("w1")
    step.finish(StepStatus.FAILED, error_type="X", error_message="boom")
    assert counters() == (0, 1, 0)
    # A status moved by a queryset update (no model method) is counted too: the trigger sees it.
    Step.objects.filter(pk=step.pk).update(status=StepStatus.COMPLETED)
    assert counters() == (1, 0, 0)
    Step.objects.bulk_create([Step.new_skipped(execution, {"id": "b", "type": "noop"})])
    assert counters() == (1, 0, 1)
    Step.objects.filter(pk=step.pk).update(status=StepStatus.TIMEOUT)
    assert counters() == (0, 1, 1)


@pytest.mark.django_db
def test_the_api_reads_the_counters_not_the_steps(workflow, operator, api_for):
    execution = trigger_workflow(workflow)
    Execution.objects.filter(pk=execution.pk).update(
        steps_completed=2, steps_failed=1, steps_skipped=0
    )
    Step.objects.filter(execution=execution).update(status=StepStatus.DISPATCHED)  # not counted

    row = api_for(operator).get("/api/v1/executions/").json()["results"][0]

    assert (row["jobs_completed"], row["jobs_failed"], row["jobs_skipped"], row["jobs_total"]) == (
        2,
        1,
        0,
        3,
    )
    Execution.objects.filter(pk=execution.pk).update(steps_completed=0, steps_failed=0)


# --- counts that stop at a bound ---


def count_queries(queries) -> list[str]:
    return [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]


@pytest.mark.django_db
def test_a_list_counts_exactly_below_the_bound(workflow, operator, api_for, settings):
    settings.OPSFLOW_EXACT_COUNT_MAX = 100
    many(workflow, 3)

    body = api_for(operator).get("/api/v1/executions/").json()

    assert (body["count"], body["count_exact"]) == (3, True)


@pytest.mark.django_db
def test_no_list_counts_past_the_bound(workflow, operator, api_for, settings):
    settings.OPSFLOW_EXACT_COUNT_MAX = 100
    many(workflow, 101)
    if connection.vendor == "postgresql":
        connection.cursor().execute("ANALYZE executions_execution")

    with CaptureQueriesContext(connection) as queries:
        body = api_for(operator).get("/api/v1/executions/").json()

    counts = count_queries(queries.captured_queries)
    assert counts and "LIMIT 101" in counts[0]
    if connection.vendor == "postgresql":
        assert len(counts) == 1
    if connection.vendor == "postgresql":
        assert body["count_exact"] is False  # the planner's estimate, said as such
        assert body["count"] >= 101
    else:  # no planner to ask: SQLite (the embedded default, small) counts
        assert (body["count"], body["count_exact"]) == (101, True)
    assert len(body["results"]) == 50 and body["next"]


@pytest.mark.django_db
def test_an_estimated_count_still_pages_to_the_real_end(workflow, monkeypatch):
    """Past the bound the last page is not known from the count: every page from 1 may be
    asked, `next` comes from one extra row, and past the rows there is a 404."""
    from django.core.paginator import EmptyPage

    from apps.accounts import pagination

    monkeypatch.setattr(pagination, "planner_estimate", lambda queryset: 2)  # far too low
    many(workflow, 7)
    paginator = pagination.EstimatingPaginator(
        Execution.objects.order_by("-created_at", "-id"), 3, exact_up_to=5
    )

    pages = [paginator.page(n) for n in (1, 2, 3)]

    assert (paginator.count, paginator.count_exact) == (6, False)  # at least what was seen
    assert [len(p.object_list) for p in pages] == [3, 3, 1]
    assert [p.has_next() for p in pages] == [True, True, False]
    with pytest.raises(EmptyPage):
        paginator.page(4)
    with pytest.raises(EmptyPage):  # not a database error about a bigint OFFSET
        paginator.page(10**20)


@pytest.mark.django_db
def test_a_deep_page_reads_its_ids_first_and_keeps_the_order(workflow, monkeypatch):
    from apps.accounts import pagination

    monkeypatch.setattr(pagination, "planner_estimate", lambda queryset: 2)
    monkeypatch.setattr(pagination, "DEEP_OFFSET", 0)
    runs = many(workflow, 7)
    newest_first = [e.pk for e in sorted(runs, key=lambda e: (e.created_at, e.pk), reverse=True)]
    paginator = pagination.EstimatingPaginator(
        Execution.objects.select_related("workflow").order_by("-created_at", "-id"),
        3,
        exact_up_to=5,
    )

    with CaptureQueriesContext(connection) as queries:
        second = paginator.page(2)

    assert [e.pk for e in second.object_list] == newest_first[3:6]
    assert second.object_list[0].workflow.slug == "volume"  # the rows, joined as asked
    assert any('SELECT "executions_execution"."id" AS "pk"' in q["sql"] for q in queries)


@pytest.mark.django_db
def test_the_admin_list_never_counts_the_whole_table(workflow, owner, client, settings):
    settings.OPSFLOW_EXACT_COUNT_MAX = 100
    many(workflow, 101)
    client.force_login(owner)

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/executions/execution/?status__exact=pending")

    assert response.status_code == 200
    counts = count_queries(queries.captured_queries)
    bounded = [sql for sql in counts if "LIMIT 101" in sql]
    assert bounded, "the paginator counts up to the bound first"
    if connection.vendor == "postgresql":
        assert counts == bounded, "and past it asks the planner, not COUNT(*)"
        text = response.content.decode()
        assert re.search(r"about \d+ results", text)  # the search bar's count: an estimate
        assert re.search(r"about \d+ executions", text)  # and the paginator's
    assert not [q for q in queries.captured_queries if "executions_step" in q["sql"]]


# --- cursor pages ---


@pytest.mark.django_db
def test_cursor_pages_return_each_row_once_while_runs_are_created(workflow, operator, api_for):
    before = {e.pk for e in many(workflow, 120)}
    api = api_for(operator)

    seen: list[int] = []
    url = "/api/v1/executions/?cursor="
    while url:
        body = api.get(url).json()
        assert "count" not in body
        seen += [row["id"] for row in body["results"]]
        many(workflow, 7)  # new runs arrive between pages
        url = body["next"]

    assert len(seen) == len(set(seen)), "no row twice"
    assert set(seen) == before, "every row that existed, none of those created meanwhile"


@pytest.mark.django_db
def test_a_cursor_keeps_the_filters_and_goes_back(workflow, operator, api_for):
    many(workflow, 60)
    api = api_for(operator)

    first = api.get("/api/v1/executions/?status=pending&cursor=").json()
    second = api.get(first["next"]).json()
    back = api.get(second["previous"]).json()

    assert "status=pending" in first["next"]
    assert [r["id"] for r in back["results"]] == [r["id"] for r in first["results"]]
    assert len(first["results"]) == 50 and len(second["results"]) == 10


@pytest.mark.django_db
def test_a_cursor_that_is_not_one_is_a_clear_400(operator, api_for):
    response = api_for(operator).get("/api/v1/executions/?cursor=not-a-cursor")

    assert response.status_code == 400
    assert "Not a cursor from this list" in str(response.json())


@pytest.mark.django_db
def test_page_numbers_keep_working(workflow, operator, api_for):
    many(workflow, 55)
    api = api_for(operator)

    second = api.get("/api/v1/executions/?page=2").json()

    assert len(second["results"]) == 5 and second["previous"] and second["next"] is None
    assert api.get("/api/v1/executions/?page=3").status_code == 404


# --- retention in batches ---


@pytest.mark.django_db
def test_retention_deletes_in_batches_with_every_dependent_row(workflow, owner, settings):
    settings.OPSFLOW_RETENTION_DAYS = 30
    settings.OPSFLOW_PRUNE_BATCH = 2
    old = many(workflow, 5)
    keep = trigger_workflow(workflow)
    retrigger = retrigger_execution(old[0], owner)  # survives, its link to the old run cleared
    for execution in old:
        with_gate_and_record(execution, IncompleteStatus.RESOLVED)
        WebhookDelivery.objects.create(
            workflow=workflow, idempotency_key=f"k{execution.pk}", execution=execution
        )
    ids = [e.pk for e in old]
    Execution.objects.filter(pk__in=ids).update(
        status=ExecutionStatus.COMPLETED, finished_at=timezone.now() - timedelta(days=31)
    )
    batches = []

    counts = prune_executions(progress=lambda workflow, done: batches.append(done))

    assert counts == {"acme/volume": 5}
    assert batches == [2, 4, 5]
    assert set(Execution.objects.values_list("pk", flat=True)) == {keep.pk, retrigger.pk}
    for model in (Step, ExecutionEvent, Approval, IncompleteExecution):
        assert not model.objects.filter(execution_id__in=ids).exists(), model.__name__
    assert not WebhookDelivery.objects.filter(execution_id__in=ids).exists()
    retrigger.refresh_from_db()
    assert retrigger.retriggered_from_id is None
    assert keep.steps.exists() and keep.events.exists()


# --- queries that do not grow with the rows ---


# The most queries each may make with twenty rows (what they make today, plus a little): an N+1
# would add twenty.
LISTS = [
    ("/api/v1/executions/", 5),
    ("/api/v1/executions/?status=pending", 5),
    ("/api/v1/executions/?workflow=volume", 6),
    ("/api/v1/executions/?cursor=", 4),
    ("/api/v1/incomplete-executions/", 5),
    ("/api/v1/approvals/", 7),
    ("/api/v1/audit/", 5),
    ("/api/v1/workflows/", 6),
    ("/api/v1/agents/", 3),
    ("/api/v1/credentials/", 3),
    ("/executions/execution/", 15),
    ("/executions/execution/?status__exact=pending", 15),
    ("/executions/incompleteexecution/", 15),
    ("/approvals/approval/", 15),
    ("/approvals/approval/inbox/", 13),
    ("/workflows/workflow/", 17),
    ("/accounts/auditentry/", 21),
    ("/", 26),  # the dashboard: its figures are one query each
]


@pytest.fixture
def busy(workflow, owner):
    """Twenty runs with steps, approvals and incomplete records: an N+1 shows as 20 queries."""
    runs = many(workflow, 20)
    for execution in runs:
        with_gate_and_record(execution)
        audit.record("execution.cancel", execution, user=owner)
    return runs


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "most"), LISTS)
def test_a_list_costs_the_same_queries_however_many_rows(
    url, most, busy, owner, client, api_for, django_assert_max_num_queries
):
    if url.startswith("/"):
        client.force_login(owner)
        get = client.get
    else:
        get = api_for(owner).get
    with django_assert_max_num_queries(most):
        assert get(url).status_code == 200


@pytest.mark.django_db
def test_details_cost_a_fixed_number_of_queries(
    busy, owner, client, api_for, django_assert_max_num_queries
):
    execution = busy[0]
    record = IncompleteExecution.objects.filter(execution=execution).first()
    approval = execution.approvals.get()
    entry = AuditEntry.objects.first()
    client.force_login(owner)
    api = api_for(owner)
    for get, url, most in [
        (api.get, f"/api/v1/executions/{execution.pk}/", 8),
        (api.get, f"/api/v1/executions/{execution.pk}/events/", 6),
        (api.get, f"/api/v1/incomplete-executions/{record.pk}/", 4),
        (api.get, f"/api/v1/approvals/{approval.pk}/", 5),
        (client.get, f"/executions/execution/{execution.pk}/change/", 22),
        (client.get, f"/executions/incompleteexecution/{record.pk}/change/", 16),
        (client.get, f"/approvals/approval/{approval.pk}/change/", 17),
        (api.get, "/api/v1/workflows/volume/", 5),
        (api.get, "/api/v1/workflows/volume/versions/", 8),
        (api.get, f"/api/v1/audit/{entry.pk}/", 4),
        (client.get, f"/workflows/workflow/{execution.workflow_id}/change/", 20),
        (client.get, f"/accounts/auditentry/{entry.pk}/change/", 15),
    ]:
        with django_assert_max_num_queries(most):
            assert get(url).status_code == 200, url


# --- the migration that fills the counters ---


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_counters_and_organization_for_existing_rows():
    from django.core.management import call_command
    from django.db.migrations.executor import MigrationExecutor

    before = ("executions", "0008_step_unsent_since")
    call_command("migrate", *before, verbosity=0)
    try:
        old = MigrationExecutor(connection).loader.project_state(before).apps
        org = old.get_model("accounts", "Organization").objects.create(slug="old", name="Old")
        workflow = old.get_model("workflows", "Workflow").objects.create(
            organization=org, slug="w", name="W", draft={}
        )
        version = old.get_model("workflows", "WorkflowVersion").objects.create(
            workflow=workflow, number=1, definition=chain_definition("w", 4)
        )
        Old = old.get_model("executions", "Execution")
        OldStep = old.get_model("executions", "Step")
        runs = [Old.objects.create(workflow=workflow, version=version) for _ in range(3)]
        for node, status in zip("abcd", ["completed", "timeout", "failed", "skipped"], strict=True):
            OldStep.objects.create(execution=runs[0], node_id=node, node_type="noop", status=status)
        OldStep.objects.create(execution=runs[1], node_id="a", node_type="noop", status="running")
    finally:
        # every app: some depend on the executions' migrations (workflows 0003 does)
        call_command("migrate", verbosity=0)

    filled = {e.pk: e for e in Execution.objects.all()}
    first, second, third = (filled[r.pk] for r in runs)
    assert (first.steps_completed, first.steps_failed, first.steps_skipped) == (1, 2, 1)
    assert (second.steps_completed, second.steps_failed, second.steps_skipped) == (0, 0, 0)
    assert all(e.steps_total == 4 and e.organization_id == org.pk for e in filled.values())
    # and the triggers are back: a step moving now is counted
    Step.objects.filter(execution_id=second.pk).update(status=StepStatus.COMPLETED)
    second.refresh_from_db()
    assert second.steps_completed == 1
    assert third.steps_completed == 0


@pytest.mark.django_db
@pytest.mark.parametrize("position", ["p=not-a-date", "p=2026-13-45", "o=-3", "r=x", "p=%00"])
def test_a_forged_cursor_is_a_clear_400_too(workflow, operator, api_for, position):
    import base64

    many(workflow, 2)
    cursor = base64.b64encode(position.encode()).decode()

    response = api_for(operator).get(f"/api/v1/executions/?cursor={cursor}")

    assert response.status_code == 400
    assert "Not a cursor from this list" in str(response.json())


@pytest.mark.django_db
def test_the_workflow_filter_means_the_same_on_every_list(workflow, org, owner, api_for):
    other = make_workflow(org, chain_definition("other", 1))
    for run in (trigger_workflow(workflow), trigger_workflow(other)):
        with_gate_and_record(run)
    api = api_for(owner)

    for path in ("executions", "incomplete-executions", "approvals"):
        rows = api.get(f"/api/v1/{path}/?workflow=other").json()["results"]
        assert [row["workflow"] for row in rows] == ["other"], path
        assert api.get(f"/api/v1/{path}/?workflow=nope").json()["results"] == [], path
