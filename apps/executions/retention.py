"""Retention: finished executions older than their workflow's retention are pruned, with their
steps, events and closed records. Unresolved incomplete executions are never pruned.

At volume the deletes go in batches of OPSFLOW_PRUNE_BATCH executions, one transaction each, so
no lock is held for long and the engine goes on meanwhile. A batch deletes each dependent table
with one statement, children first (Django's collector would load every step row into memory
and null the events' step links it is about to delete).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections, models, router, transaction
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


def prune_executions(
    now: datetime | None = None,
    dry_run: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Delete (or with dry_run, count) what retention allows; returns the count per workflow.

    `progress(workflow, deleted so far)` is called after each batch."""
    now = now or timezone.now()
    counts: dict[str, int] = {}
    batch = settings.OPSFLOW_PRUNE_BATCH
    for workflow in Workflow.objects.select_related("organization", "current_version"):
        name = f"{workflow.organization.slug}/{workflow.slug}"
        if dry_run:
            if found := prunable(workflow, now).count():
                counts[name] = found
            continue
        oldest_first = prunable(workflow, now).order_by("pk").values_list("pk", flat=True)
        after = 0  # each batch starts past the last: not through the index entries just deleted
        while ids := list(oldest_first.filter(pk__gt=after)[:batch]):
            with transaction.atomic():
                delete_rows(Execution, ids)
            after = ids[-1]
            counts[name] = counts.get(name, 0) + len(ids)
            if progress:
                progress(name, counts[name])
    return counts


def _relations(model) -> list:
    return [
        f
        for f in model._meta.get_fields(include_hidden=True)
        if f.auto_created and not f.concrete and (f.one_to_many or f.one_to_one)
    ]


def _dependents(model) -> list:
    """The relations that point at `model`, in the order to empty them: tables with no
    dependents of their own first, then those that also point at another dependent (an
    approval at its step), so each is gone before the rows it points at are looked through."""
    relations = _relations(model)
    siblings = {r.related_model for r in relations} - {model}

    def has_own(relation) -> bool:
        return relation.related_model is not model and bool(_relations(relation.related_model))

    def points_at_sibling(relation) -> bool:
        return any(
            f.concrete
            and (f.many_to_one or f.one_to_one)
            and f.related_model in siblings - {relation.related_model}
            for f in relation.related_model._meta.get_fields()
        )

    return sorted(relations, key=lambda r: (has_own(r), not points_at_sibling(r)))


DELETE_CHUNK = 5_000  # ids a statement: well under the bound parameters a database accepts


def delete_rows(model, ids: list[int]) -> None:
    """Delete these rows of `model` and, children first, every row that depends on them: one
    statement a table (CASCADE deletes, SET_NULL clears). Call it inside a transaction."""
    if len(ids) > DELETE_CHUNK:
        for start in range(0, len(ids), DELETE_CHUNK):
            delete_rows(model, ids[start : start + DELETE_CHUNK])
        return
    if not ids:
        return
    connection = connections[router.db_for_write(model)]
    for relation in _dependents(model):
        child, field = relation.related_model, relation.field
        on_delete = field.remote_field.on_delete
        rows = child._default_manager.filter(**{f"{field.name}__in": ids})
        if on_delete is models.SET_NULL:
            rows.update(**{field.name: None})
        elif on_delete is models.CASCADE:
            if child is model:
                raise NotImplementedError(f"{model.__name__} cascades to itself")
            if _dependents(child):
                delete_rows(child, list(rows.values_list("pk", flat=True)))
            else:
                _delete_where(connection, child, field.column, ids)
        elif on_delete is not models.DO_NOTHING:
            raise NotImplementedError(f"{child.__name__}.{field.name}: {on_delete.__name__}")
    _delete_where(connection, model, model._meta.pk.column, ids)


def _delete_where(connection, model, column: str, ids: list[int]) -> None:
    quote = connection.ops.quote_name
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {quote(model._meta.db_table)} WHERE {quote(column)} IN ({marks})", ids
        )


AGENT_HISTORY_DAYS = 7


def prune_agents(now: datetime | None = None) -> int:
    """Forget agents silent for a week: each worker start registers a new one."""
    cutoff = (now or timezone.now()) - timedelta(days=AGENT_HISTORY_DAYS)
    deleted, _ = Agent.objects.filter(last_heartbeat_at__lt=cutoff).delete()
    return deleted
