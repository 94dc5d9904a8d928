from __future__ import annotations

import uuid
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from apps.executions.choices import (
    EXECUTION_ADVANCING,
    EXECUTION_TERMINAL,
    STEP_RUNNABLE,
    EventKind,
    ExecutionStatus,
    StepStatus,
    Trigger,
)
from apps.workflows.models import Workflow, WorkflowVersion


class IllegalTransition(Exception):
    """A status change that the current status does not allow."""


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if not start or not end:
        return None
    return int((end - start).total_seconds() * 1000)


class ExecutionQuerySet(models.QuerySet):
    def with_counts(self) -> ExecutionQuerySet:
        return self.annotate(
            completed_steps=models.Count(
                "steps", filter=models.Q(steps__status=StepStatus.COMPLETED)
            )
        )


class Execution(models.Model):
    """One run of one published workflow version, created by one trigger event."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="executions")
    version = models.ForeignKey(
        WorkflowVersion, on_delete=models.PROTECT, related_name="executions"
    )
    status = models.CharField(
        max_length=16,
        choices=ExecutionStatus.choices,
        default=ExecutionStatus.PENDING,
        db_index=True,
    )
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    trigger_data = models.JSONField(default=dict, blank=True)
    variables = models.JSONField(default=dict, blank=True)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    retriggered_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retriggers"
    )
    scheduled_for = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error_message = models.TextField(blank=True)

    objects = ExecutionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["workflow", "status"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.workflow.slug} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("admin:executions_execution_change", args=[self.pk])

    @property
    def duration_ms(self) -> int | None:
        return _ms(self.started_at, self.finished_at)

    @property
    def is_terminal(self) -> bool:
        return self.status in EXECUTION_TERMINAL

    @property
    def jobs_total(self) -> int:
        return len(self.version.definition.get("nodes", []))

    @property
    def jobs_completed(self) -> int:
        counted = getattr(self, "completed_steps", None)
        if counted is not None:
            return counted
        return self.steps.filter(status=StepStatus.COMPLETED).count()

    # --- the event log ---
    def log(
        self,
        kind: str,
        message: str,
        *,
        node_id: str = "",
        step: Step | None = None,
        data: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> ExecutionEvent:
        event = ExecutionEvent(
            execution=self,
            kind=kind,
            message=message,
            node_id=node_id,
            step=step,
            data=data or {},
            created_at=at or timezone.now(),
        )
        buffer = getattr(self, "_event_buffer", None)
        if buffer is not None:
            buffer.append(event)
        else:
            event.save()
        return event

    @contextmanager
    def batched_log(self):
        """Events logged inside the block are inserted in one statement when it ends (a hot path)."""
        self._event_buffer: list[ExecutionEvent] | None = []
        try:
            yield
            events = self._event_buffer
        finally:
            self._event_buffer = None
        ExecutionEvent.objects.bulk_create(events)

    # --- transitions (callers hold the execution's row lock, or rely on compare-and-swap) ---
    def mark_running(self) -> bool:
        """pending → running, once, on the first step start. Compare-and-swap; safe without a lock."""
        now = timezone.now()
        changed = Execution.objects.filter(pk=self.pk, status=ExecutionStatus.PENDING).update(
            status=ExecutionStatus.RUNNING, started_at=now
        )
        if changed:
            self.status, self.started_at = ExecutionStatus.RUNNING, now
            self.log(EventKind.EXECUTION_STARTED, "Execution started", at=now)
        return bool(changed)

    def _finish(self, status: str, kind: str, message: str, error: str = "") -> None:
        if self.status not in EXECUTION_ADVANCING:
            raise IllegalTransition(f"execution {self.pk} is {self.status}; cannot become {status}")
        now = timezone.now()
        self.status, self.finished_at = status, now
        self.started_at = self.started_at or now
        self.error_message = error
        self.save(update_fields=["status", "finished_at", "started_at", "error_message"])
        self.log(kind, message, at=now)

    def complete(self) -> None:
        self._finish(
            ExecutionStatus.COMPLETED, EventKind.EXECUTION_COMPLETED, "Execution completed"
        )

    def fail(self, reason: str) -> None:
        self._finish(
            ExecutionStatus.FAILED,
            EventKind.EXECUTION_FAILED,
            f"Execution failed: {reason}",
            reason,
        )


class Step(models.Model):
    """One attempt of one node in one execution. A node retried twice has three rows."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="steps")
    node_id = models.CharField(max_length=64)
    node_type = models.CharField(max_length=64)
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(
        max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING, db_index=True
    )
    queue = models.CharField(max_length=64, default="default")
    worker = models.CharField(max_length=200, blank=True)
    rq_job_id = models.CharField(max_length=64, blank=True)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error_type = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text="Not to run before this time (delays, retries)."
    )

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "node_id", "attempt"], name="unique_step_attempt"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.node_id} #{self.attempt} ({self.status})"

    @property
    def duration_ms(self) -> int | None:
        return _ms(self.started_at, self.finished_at)

    @classmethod
    def new_dispatched(
        cls,
        execution: Execution,
        node: dict[str, Any],
        attempt: int = 1,
        not_before: datetime | None = None,
    ) -> Step:
        """An unsaved step row, already `dispatched` with its RQ job id, for bulk creation."""
        return cls(
            execution=execution,
            node_id=node["id"],
            node_type=node["type"],
            attempt=attempt,
            status=StepStatus.DISPATCHED,
            queue=node.get("queue") or "default",
            rq_job_id=uuid.uuid4().hex,
            next_attempt_at=not_before,
        )

    @classmethod
    def new_skipped(cls, execution: Execution, node: dict[str, Any]) -> Step:
        now = timezone.now()
        return cls(
            execution=execution,
            node_id=node["id"],
            node_type=node["type"],
            status=StepStatus.SKIPPED,
            queue=node.get("queue") or "default",
            started_at=now,
            finished_at=now,
        )

    def start(self, worker: str) -> bool:
        """dispatched → running. Compare-and-swap, so a duplicate delivery does nothing."""
        now = timezone.now()
        changed = Step.objects.filter(pk=self.pk, status__in=STEP_RUNNABLE).update(
            status=StepStatus.RUNNING, started_at=now, worker=worker[:200]
        )
        if changed:
            self.status, self.started_at, self.worker = StepStatus.RUNNING, now, worker[:200]
        return bool(changed)

    def finish(
        self,
        status: str,
        *,
        input: Any = None,
        output: Any = None,
        error_type: str = "",
        error_message: str = "",
    ) -> None:
        """running → completed / failed / timeout, recording what the node received and produced."""
        if self.status != StepStatus.RUNNING or status not in (
            StepStatus.COMPLETED,
            StepStatus.FAILED,
            StepStatus.TIMEOUT,
        ):
            raise IllegalTransition(f"step {self.pk} is {self.status}; cannot become {status}")
        self.status, self.finished_at = status, timezone.now()
        self.input, self.output = input, output
        self.error_type, self.error_message = error_type, error_message
        self.save(
            update_fields=[
                "status",
                "finished_at",
                "input",
                "output",
                "error_type",
                "error_message",
            ]
        )

    @classmethod
    def cancel_open(cls, execution: Execution) -> list[str]:
        """pending/dispatched → cancelled for every step of the execution that has not started."""
        node_ids = list(
            cls.objects.filter(execution=execution, status__in=STEP_RUNNABLE).values_list(
                "node_id", flat=True
            )
        )
        cls.objects.filter(execution=execution, status__in=STEP_RUNNABLE).update(
            status=StepStatus.CANCELLED, finished_at=timezone.now()
        )
        return node_ids


class ExecutionEvent(models.Model):
    """The execution log: every engine decision, in order."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="events")
    step = models.ForeignKey(
        Step, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    node_id = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.created_at:%H:%M:%S} {self.kind} {self.message}"
