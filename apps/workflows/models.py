from __future__ import annotations

import secrets
from functools import cached_property
from typing import Any

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Organization
from apps.workflows.choices import IncidentOutcome, IncidentSource
from apps.workflows.definition import Graph, next_fires, normalize


def new_webhook_key() -> str:
    return secrets.token_urlsafe(24)


class Workflow(models.Model):
    """A graph of action nodes. It has an editable draft and immutable numbered versions."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="workflows"
    )
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    draft = models.JSONField(help_text="The draft definition document (DESIGN §3).")
    current_version = models.ForeignKey(
        "WorkflowVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    is_active = models.BooleanField(default=True)
    inactive_reason = models.CharField(max_length=500, blank=True)
    webhook_key = models.CharField(max_length=64, unique=True, default=new_webhook_key)
    webhook_secret = models.CharField(
        max_length=128,
        blank=True,
        help_text="When set, webhook calls must carry an HMAC-SHA256 signature.",
    )
    next_fire_at = models.DateTimeField(
        null=True,
        blank=True,
        db_index=True,
        help_text="The next cron fire time the scheduler will create.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "slug"], name="unique_workflow_slug_per_org"
            ),
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("admin:workflows_workflow_change", args=[self.pk])

    def deactivate(self, reason: str) -> None:
        """Pause the workflow (no new runs) and show why."""
        self.is_active, self.inactive_reason = False, reason[:500]
        self.save(update_fields=["is_active", "inactive_reason", "updated_at"])

    def hook_path(self) -> str:
        """Where outside systems call: the webhook, or with an incident trigger (in the draft)
        the path its alerts go to."""
        trigger = (self.draft or {}).get("trigger") or {}
        if isinstance(trigger, dict) and trigger.get("type") == "incident":
            return f"/hooks/{self.webhook_key}/incident/"
        return f"/hooks/{self.webhook_key}/"

    def rotate_webhook_key(self) -> str:
        """A new random key: the old URL stops working at once."""
        self.webhook_key = new_webhook_key()
        self.save(update_fields=["webhook_key", "updated_at"])
        return self.webhook_key

    def reactivate(self) -> None:
        self.is_active, self.inactive_reason = True, ""
        self.save(update_fields=["is_active", "inactive_reason", "updated_at"])

    @property
    def published_number(self) -> int | None:
        return self.current_version.number if self.current_version_id else None

    def next_fires(self, count: int = 5) -> list[str] | None:
        """A cron trigger's next fire times (ISO 8601, its time zone); None for other triggers."""
        trigger = self.effective_definition.get("trigger") or {}
        if trigger.get("type") != "cron":
            return None
        return next_fires(trigger, count)

    @property
    def effective_definition(self) -> dict[str, Any]:
        """What runs now, normalized: the published version, or the draft before the first publish."""
        return self.current_version.definition if self.current_version_id else normalize(self.draft)

    @property
    def has_unpublished_changes(self) -> bool:
        return not self.current_version_id or self.current_version.definition != normalize(
            self.draft
        )


class WorkflowVersion(models.Model):
    """An immutable, numbered snapshot of a workflow's definition. Executions run one of these."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    definition = models.JSONField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow", "number"], name="unique_version_number"),
        ]
        ordering = ["workflow", "-number"]

    def __str__(self) -> str:
        return f"{self.workflow.slug} v{self.number}"

    @cached_property
    def graph(self) -> Graph:
        return Graph(self.definition)


class WebhookDelivery(models.Model):
    """An accepted webhook call with an Idempotency-Key: a repeat within 24 h returns its execution."""

    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    idempotency_key = models.CharField(max_length=200)
    execution = models.ForeignKey(
        "executions.Execution", on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "idempotency_key"], name="unique_idempotency_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.slug} {self.idempotency_key}"


class IncidentDelivery(models.Model):
    """An alert delivered to a workflow's incident trigger (apps/workflows/incidents.py): the
    run it started, or why it was skipped, and how often it came again within the trigger's
    dedupe window. One current row per alert and status: the same alert again inside the
    window creates nothing."""

    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="incident_deliveries", db_index=False
    )
    incident_id = models.CharField(max_length=500, db_index=True)
    status = models.CharField(max_length=16)  # firing, resolved
    source = models.CharField(max_length=16, choices=IncidentSource.choices)
    title = models.CharField(max_length=300, blank=True)
    outcome = models.CharField(max_length=16, choices=IncidentOutcome.choices)
    reason = models.CharField(max_length=500, blank=True)
    repeats = models.PositiveIntegerField(default=0, help_text="Deliveries again in the window.")
    execution = models.ForeignKey(
        "executions.Execution",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="incident_deliveries",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The delivery that answers repeats; an older one (past the window) stays, for the run
    # it links to the alert's id.
    current = models.BooleanField(default=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "incident deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "incident_id", "status"],
                condition=models.Q(current=True),
                name="one_delivery_per_alert",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.incident_id} ({self.status}, {self.outcome})"
