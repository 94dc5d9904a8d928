"""Workflow orchestration: create, edit the draft, publish, import. Admin, API and commands call these."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from apps.accounts import audit
from apps.accounts.models import Organization
from apps.workflows.definition import (
    DefinitionError,
    Problem,
    as_draft,
    masked_definition,
    normalize,
)
from apps.workflows.models import Workflow, WorkflowVersion


def create_workflow(organization: Organization, document: Any, user=None) -> Workflow:
    """Create a workflow whose draft is the document as written (validated first)."""
    definition = normalize(document)
    if Workflow.objects.filter(organization=organization, slug=definition["slug"]).exists():
        raise DefinitionError(
            [Problem("slug", f"a workflow with slug {definition['slug']!r} already exists")]
        )
    try:
        with transaction.atomic():
            workflow = Workflow.objects.create(
                organization=organization,
                slug=definition["slug"],
                name=definition["name"],
                draft=as_draft(document),
                created_by=user,
            )
            audit.record("workflow.create", workflow, user=user)
            return workflow
    except IntegrityError:
        raise DefinitionError(
            [Problem("slug", f"a workflow with slug {definition['slug']!r} already exists")]
        ) from None


def update_draft(workflow: Workflow, document: Any, user=None) -> Workflow:
    """Replace the draft. The slug may not change (it is the workflow's address)."""
    definition = normalize(document)
    if definition["slug"] != workflow.slug:
        raise DefinitionError(
            [Problem("slug", f"cannot change the slug of {workflow.slug!r} here")]
        )
    before = {"name": workflow.name, **masked_definition(workflow.draft)}
    workflow.draft = as_draft(document)
    workflow.name = definition["name"]
    workflow.save(update_fields=["draft", "name", "updated_at"])
    after = {"name": workflow.name, **masked_definition(workflow.draft)}
    if before != after:
        audit.record("workflow.edit", workflow, user=user, changes=audit.diff(before, after))
    return workflow


def change_workflow(workflow: Workflow, user=None, **fields: Any) -> Workflow:
    """Change the name or the active flag (validated by the caller)."""
    before = {k: getattr(workflow, k) for k in fields}
    for key, value in fields.items():
        setattr(workflow, key, value)
    workflow.save(update_fields=[*fields, "updated_at"])
    changes = audit.diff(before, fields)
    if changes:
        audit.record("workflow.edit", workflow, user=user, changes=changes)
    return workflow


def set_webhook_secret(workflow: Workflow, secret: str, user=None) -> Workflow:
    """Set, replace or remove ("") the webhook secret; the log says only that it changed."""
    if secret == workflow.webhook_secret:
        return workflow
    was_set = bool(workflow.webhook_secret)
    workflow.webhook_secret = secret
    workflow.save(update_fields=["webhook_secret", "updated_at"])
    shown = {False: "(none)", True: audit.CHANGED}
    audit.record(
        "workflow.webhook_secret",
        workflow,
        user=user,
        changes={"webhook_secret": [shown[was_set], shown[bool(secret)]]},
    )
    return workflow


def rotate_webhook_key(workflow: Workflow, user=None) -> str:
    """A new webhook key: the old URL stops working at once."""
    key = workflow.rotate_webhook_key()
    audit.record(
        "workflow.rotate_webhook_key",
        workflow,
        user=user,
        changes={"webhook_key": [audit.CHANGED, audit.CHANGED]},
    )
    return key


def delete_workflow(workflow: Workflow, user=None) -> None:
    """Delete a workflow; ProtectedError while it still has executions."""
    organization, shown, pk = workflow.organization, str(workflow), workflow.pk
    workflow.delete()
    audit.record(
        "workflow.delete",
        user=user,
        organization=organization,
        target=("workflows.workflow", str(pk), shown),
    )


@transaction.atomic
def publish_workflow(workflow: Workflow, user=None) -> WorkflowVersion:
    """Freeze the draft, normalized, into the next version. An unchanged draft returns the current one."""
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    definition = normalize(locked.draft)
    if locked.current_version_id and locked.current_version.definition == definition:
        return locked.current_version
    number = (locked.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = WorkflowVersion.objects.create(
        workflow=locked, number=number, definition=definition, created_by=user
    )
    locked.current_version = version
    locked.next_fire_at = None  # the schedule may have changed: the scheduler recomputes it
    locked.save(update_fields=["current_version", "next_fire_at", "updated_at"])
    _skip_future_cron_runs(locked)
    workflow.current_version = version
    audit.record(
        "workflow.publish", workflow, user=user, changes={"version": [number - 1 or None, number]}
    )
    return version


def import_workflow(
    organization: Organization, document: Any, user=None, publish: bool = False
) -> tuple[Workflow, bool]:
    """Upsert by slug; returns (workflow, created)."""
    definition = normalize(document)
    with transaction.atomic():
        existing = Workflow.objects.filter(
            organization=organization, slug=definition["slug"]
        ).first()
        if existing:
            workflow, created = update_draft(existing, document, user), False
        else:
            workflow, created = create_workflow(organization, document, user), True
        if publish:
            publish_workflow(workflow, user)
    return workflow, created


def _skip_future_cron_runs(workflow: Workflow) -> None:
    """Runs scheduled by the previous version's schedule are skipped, with that reason."""
    from apps.executions.choices import ExecutionStatus, Trigger
    from apps.executions.services import skip_scheduled

    future = workflow.executions.filter(status=ExecutionStatus.SCHEDULED, trigger=Trigger.CRON)
    for execution_id in future.values_list("id", flat=True):
        transaction.on_commit(
            lambda e=execution_id: skip_scheduled(e, "a new version was published")
        )
