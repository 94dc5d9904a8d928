from __future__ import annotations

import functools
import operator
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.urls import reverse
from django.utils import timezone

from apps.executions.choices import (
    EXECUTION_ADVANCING,
    EXECUTION_TERMINAL,
    INCOMPLETE_OPEN,
    STEP_FAILED,
    STEP_OPEN,
    STEP_RUNNABLE,
    AgentState,
    EventKind,
    ExecutionStatus,
    IncompleteStatus,
    StepHandling,
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


class Execution(models.Model):
    """One run of one published workflow version, created by one trigger event."""

    # No index of its own: execution_wf_recent and (workflow, status) lead with it.
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="executions", db_index=False
    )
    # The workflow's organization, copied at creation (a workflow never changes organization):
    # scoping a list to the user's organizations is then an index range, not a join.
    organization = models.ForeignKey(
        "accounts.Organization",
        on_delete=models.CASCADE,
        related_name="+",
        editable=False,
        db_index=False,  # execution_org_recent leads with it
    )
    version = models.ForeignKey(
        WorkflowVersion, on_delete=models.PROTECT, related_name="executions"
    )
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.PENDING
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
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error_message = models.TextField(blank=True)
    # Counters over the step rows, kept by database triggers in the statement that inserts or
    # moves a step (migration 0009), so lists never touch the steps table.
    steps_total = models.PositiveIntegerField(
        default=0, editable=False, help_text="Nodes in the version: each completes at most once."
    )
    steps_completed = models.PositiveIntegerField(default=0, editable=False)
    steps_failed = models.PositiveIntegerField(
        default=0, editable=False, help_text="Attempts that failed or timed out."
    )
    steps_skipped = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        # Each list filter with the list's order, so a page is an index range; the organization
        # rides along (PostgreSQL's INCLUDE) so that scoping and counting read the index only
        # (docs/performance.md).
        indexes = [
            models.Index(
                fields=["-created_at", "-id"], include=["organization"], name="execution_recent"
            ),
            models.Index(
                fields=["organization", "-created_at", "-id"], name="execution_org_recent"
            ),
            models.Index(
                fields=["workflow", "-created_at", "-id"],
                include=["organization"],
                name="execution_wf_recent",
            ),
            models.Index(
                fields=["status", "-created_at", "-id"],
                include=["organization"],
                name="execution_status_recent",
            ),
            models.Index(fields=["workflow", "status"], name="executions__workflo_8b472b_idx"),
        ]
        constraints = [
            # One execution per cron fire, however many schedulers race to create it.
            models.UniqueConstraint(
                fields=["workflow", "version", "scheduled_for"],
                condition=models.Q(trigger="cron"),
                name="one_execution_per_cron_fire",
            ),
        ]

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
        """pending/retrying → running when a step starts. Compare-and-swap; safe without a lock."""
        now = timezone.now()
        if self.status == ExecutionStatus.PENDING:
            changed = Execution.objects.filter(pk=self.pk, status=ExecutionStatus.PENDING).update(
                status=ExecutionStatus.RUNNING, started_at=now
            )
            if changed:
                self.status, self.started_at = ExecutionStatus.RUNNING, now
                self.log(EventKind.EXECUTION_STARTED, "Execution started", at=now)
            return bool(changed)
        changed = Execution.objects.filter(
            pk=self.pk, status__in=[ExecutionStatus.RETRYING, ExecutionStatus.INTERRUPTED]
        ).update(status=ExecutionStatus.RUNNING)
        if changed:
            self.status = ExecutionStatus.RUNNING
        return bool(changed)

    def _move(self, allowed: frozenset[str] | set[str], status: str) -> None:
        if self.status not in allowed:
            raise IllegalTransition(f"execution {self.pk} is {self.status}; cannot become {status}")
        self.status = status
        self.save(update_fields=["status"])

    def mark_interrupted(self) -> None:
        """A step's agent died; a new attempt is on its way (the caller holds the row lock)."""
        if self.status in (
            ExecutionStatus.PENDING,
            ExecutionStatus.RUNNING,
            ExecutionStatus.RETRYING,
        ):
            self._move(EXECUTION_ADVANCING, ExecutionStatus.INTERRUPTED)

    def mark_retrying(self) -> None:
        """A node waits for its next attempt (the caller holds the row lock)."""
        if self.status != ExecutionStatus.RETRYING:
            self._move(EXECUTION_ADVANCING, ExecutionStatus.RETRYING)

    def mark_incomplete(self, reason: str) -> None:
        """Stopped with an incomplete execution stored for an operator (DESIGN §6)."""
        self.error_message = reason
        self.save(update_fields=["error_message"])
        self._move(EXECUTION_ADVANCING, ExecutionStatus.INCOMPLETE)
        self.log(EventKind.EXECUTION_INCOMPLETE, f"Stored as an incomplete execution: {reason}")

    def resume(self, message: str, *, automatic: bool = False) -> None:
        """incomplete → running: an operator or the auto-retry resumes the same execution."""
        self._move({ExecutionStatus.INCOMPLETE}, ExecutionStatus.RUNNING)
        self.error_message = ""
        self.save(update_fields=["error_message"])
        self.log(EventKind.EXECUTION_RESUMED, message, data={"automatic": automatic})

    def pause(self, reason: str) -> None:
        """The run waits for a human (an approval gate); other branches may still run."""
        if self.status != ExecutionStatus.PAUSED:
            self._move(EXECUTION_ADVANCING, ExecutionStatus.PAUSED)
        self.log(EventKind.EXECUTION_PAUSED, reason)

    def unpause(self) -> None:
        if self.status == ExecutionStatus.PAUSED:
            self._move({ExecutionStatus.PAUSED}, ExecutionStatus.RUNNING)

    def hold(self, reason: str) -> None:
        """Created but waiting to start, in arrival order (sequential processing, concurrency limit)."""
        self._move({ExecutionStatus.PENDING}, ExecutionStatus.SCHEDULED)
        self.log(EventKind.EXECUTION_HELD, f"Held: {reason}")

    def skip(self, reason: str) -> None:
        """A run that will never start (concurrency limit with policy skip, a missed cron fire)."""
        self._move({ExecutionStatus.PENDING, ExecutionStatus.SCHEDULED}, ExecutionStatus.CANCELLED)
        self.finished_at, self.error_message = timezone.now(), reason
        self.save(update_fields=["finished_at", "error_message"])
        self.log(EventKind.EXECUTION_SKIPPED, f"Skipped: {reason}")

    def release(self, reason: str) -> None:
        self._move({ExecutionStatus.SCHEDULED}, ExecutionStatus.PENDING)
        self.log(EventKind.EXECUTION_RELEASED, f"Released: {reason}")

    def cancel(self, who: str) -> None:
        if self.status in EXECUTION_TERMINAL:
            raise IllegalTransition(f"execution {self.pk} is already {self.status}")
        now = timezone.now()
        self.status, self.finished_at = ExecutionStatus.CANCELLED, now
        self.save(update_fields=["status", "finished_at"])
        self.log(EventKind.EXECUTION_CANCELLED, f"Cancelled by {who}", at=now)

    def _finish(self, status: str, kind: str, message: str, error: str = "") -> None:
        if self.status not in EXECUTION_ADVANCING | {ExecutionStatus.INCOMPLETE}:
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

    # No index of its own: unique_step_attempt leads with the execution and serves every
    # lookup by it (one index fewer to keep on each step written).
    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="steps", db_index=False
    )
    node_id = models.CharField(max_length=64)
    node_type = models.CharField(max_length=64)
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    queue = models.CharField(max_length=64, default="default")
    worker = models.CharField(max_length=200, blank=True)
    rq_job_id = models.CharField(max_length=64, blank=True)
    unsent_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Its enqueue failed (Redis did not answer): the reconciler sends it when it does.",
    )
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
    retry_number = models.PositiveIntegerField(
        default=0, help_text="0 for a first attempt (or a resume); n for the node's n-th retry."
    )
    handling = models.CharField(max_length=16, choices=StepHandling.choices, blank=True, default="")
    overrides = models.JSONField(
        null=True, blank=True, help_text="Operator edits for this attempt: input and/or bundles."
    )

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "node_id", "attempt"], name="unique_step_attempt"
            ),
        ]
        indexes = [
            # The watchdog, the reconciler and the agents look for open steps across all
            # executions; the finished ones (nearly all of the table) stay out of this index.
            # ORed equalities rather than IN: PostgreSQL prints that predicate back the way it
            # reads it, so generate_history can rebuild the index and find it unchanged.
            models.Index(
                fields=["status"],
                condition=functools.reduce(
                    operator.or_, (models.Q(status=s.value) for s in sorted(STEP_OPEN))
                ),
                name="step_open",
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
        retry_number: int = 0,
        overrides: dict[str, Any] | None = None,
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
            retry_number=retry_number,
            overrides=overrides,
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

    @classmethod
    def manual_success(cls, failed: Step, output: dict[str, Any], who: str) -> Step:
        """A completed attempt recorded by an operator in place of a failed one."""
        now = timezone.now()
        return cls.objects.create(
            execution=failed.execution,
            node_id=failed.node_id,
            node_type=failed.node_type,
            attempt=failed.attempt + 1,
            status=StepStatus.COMPLETED,
            queue=failed.queue,
            worker=f"manual:{who}"[:200],
            input=failed.input,
            output=output,
            handling=StepHandling.MANUAL,
            started_at=now,
            finished_at=now,
        )

    def wait(self, input: Any) -> None:
        """A waiting node (an approval) keeps its step running and records what it received."""
        if self.status != StepStatus.RUNNING:
            raise IllegalTransition(f"step {self.pk} is {self.status}; only a running step waits")
        self.input = input
        self.save(update_fields=["input"])

    def cancel_waiting(self) -> None:
        """running → cancelled for a step that waits for a human; it never finishes on its own."""
        if self.status != StepStatus.RUNNING:
            raise IllegalTransition(f"step {self.pk} is {self.status}; it is not waiting")
        self.status, self.finished_at = StepStatus.CANCELLED, timezone.now()
        self.save(update_fields=["status", "finished_at"])

    def mark_handled(self, handling: str) -> None:
        """Record how a failed attempt was handled (it stays failed: the row is the truth)."""
        if self.status not in STEP_FAILED:
            raise IllegalTransition(f"step {self.pk} is {self.status}; only a failure is handled")
        self.handling = handling
        self.save(update_fields=["handling"])

    def start(self, worker: str) -> bool:
        """dispatched → running, with its `started` event committed at the same time, before
        the node runs: the live log shows a node while it runs. Compare-and-swap, so a
        duplicate delivery changes nothing and logs nothing."""
        now, worker = timezone.now(), worker[:200]
        message = f"{self.node_id} started on {worker} (attempt {self.attempt})"
        if connection.vendor == "postgresql":
            changed = self._start_in_one_statement(now, worker, message)
        else:
            with transaction.atomic():  # SQLite has no UPDATE in a CTE: two statements, one commit
                changed = bool(
                    Step.objects.filter(pk=self.pk, status__in=STEP_RUNNABLE).update(
                        status=StepStatus.RUNNING, started_at=now, worker=worker
                    )
                )
                if changed:
                    ExecutionEvent.objects.create(
                        execution_id=self.execution_id,
                        step_id=self.pk,
                        node_id=self.node_id,
                        kind=EventKind.NODE_STARTED,
                        message=message,
                        created_at=now,
                    )
        if changed:
            self.status, self.started_at, self.worker = StepStatus.RUNNING, now, worker
        return changed

    def _start_in_one_statement(self, now: datetime, worker: str, message: str) -> bool:
        """The compare-and-swap and the event insert as one autocommit statement (a
        data-modifying CTE): the start costs one round trip and one commit, as the bare update
        did. The insert reads the CTE's rows, so a swap that changed nothing inserts nothing."""
        step, event = Step._meta, ExecutionEvent._meta
        sql = (
            f"WITH started AS (UPDATE {step.db_table} SET status = %s, started_at = %s,"
            " worker = %s WHERE id = %s AND status = ANY(%s) RETURNING id, execution_id)"
            f" INSERT INTO {event.db_table}"
            " (execution_id, step_id, node_id, kind, message, data, created_at)"
            " SELECT execution_id, id, %s, %s, %s, '{}'::jsonb, %s FROM started RETURNING id"
        )
        params = [StepStatus.RUNNING, now, worker, self.pk, sorted(STEP_RUNNABLE)]
        params += [self.node_id, EventKind.NODE_STARTED, message, now]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() is not None

    def mark_unsent(self) -> bool:
        """Its enqueue failed after commit: the reconciler sends it once Redis answers."""
        now = timezone.now()
        changed = Step.objects.filter(pk=self.pk, status=StepStatus.DISPATCHED).update(
            unsent_since=now
        )
        if changed:
            self.unsent_since = now
        return bool(changed)

    def new_rq_job(self) -> bool:
        """A fresh RQ job id before a re-enqueue, so nothing RQ still holds of the old job (a
        dead worker's started entry, a stuck intermediate entry) can act on the new one.
        False when the step is no longer dispatched (it started or was cancelled meanwhile)."""
        job_id = uuid.uuid4().hex
        changed = Step.objects.filter(pk=self.pk, status=StepStatus.DISPATCHED).update(
            rq_job_id=job_id, unsent_since=None
        )
        if changed:
            self.rq_job_id, self.unsent_since = job_id, None
        return bool(changed)

    def interrupt(self, reason: str) -> None:
        """running → interrupted: the agent running it died (DESIGN §6 Durability)."""
        if self.status != StepStatus.RUNNING:
            raise IllegalTransition(f"step {self.pk} is {self.status}; only a running step stops")
        self.status, self.finished_at = StepStatus.INTERRUPTED, timezone.now()
        self.error_type, self.error_message = "WorkerLostError", reason
        self.save(update_fields=["status", "finished_at", "error_type", "error_message"])

    def finish(
        self,
        status: str,
        *,
        input: Any = None,
        output: Any = None,
        error_type: str = "",
        error_message: str = "",
    ) -> None:
        """running → completed / failed / timeout (or cancelled: stopped by Cancel now),
        recording what the node received and produced."""
        if self.status != StepStatus.RUNNING or status not in (
            StepStatus.COMPLETED,
            StepStatus.FAILED,
            StepStatus.TIMEOUT,
            StepStatus.CANCELLED,
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


class IncompleteExecutionQuerySet(models.QuerySet):
    def open(self) -> IncompleteExecutionQuerySet:
        return self.filter(status__in=INCOMPLETE_OPEN)

    def stored_bytes(self, organization_id: int) -> int:
        """What unresolved records of one organization hold, against its storage limit."""
        return self.stored_bytes_by_organization([organization_id]).get(organization_id, 0)

    def stored_bytes_by_organization(self, organization_ids: list[int]) -> dict[int, int]:
        """The same for several organizations at once (those with none are left out)."""
        totals = (
            self.open()
            .filter(organization_id__in=organization_ids)
            .values_list("organization_id")
            .annotate(n=models.Sum("size_bytes"))
            .values_list("organization_id", "n")
        )
        return {org: n or 0 for org, n in totals}


class IncompleteExecution(models.Model):
    """A failed run kept for an operator to fix and resume (DESIGN §6)."""

    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="incomplete_records"
    )
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="incomplete_executions"
    )
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="incomplete_executions"
    )
    node_id = models.CharField(max_length=64)
    error_type = models.CharField(max_length=64, db_index=True)
    error_message = models.TextField(blank=True)
    status = models.CharField(
        max_length=16,
        choices=IncompleteStatus.choices,
        default=IncompleteStatus.UNRESOLVED,
        db_index=True,
    )
    auto_retry = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(
        default=0, help_text="Retries made so far (automatic or not)."
    )
    next_retry_at = models.DateTimeField(null=True, blank=True, db_index=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    bundles = models.JSONField(default=dict, blank=True)
    blueprint = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = IncompleteExecutionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # the storage limit's and /metrics' open bytes per organization, from the index
            # alone (PostgreSQL's INCLUDE; a scrape at a million executions: 41 → 6 ms)
            models.Index(
                fields=["status", "organization"],
                include=["size_bytes"],
                name="incomplete_open_bytes",
            ),
        ]

    def __str__(self) -> str:
        return f"incomplete #{self.pk} of execution #{self.execution_id} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("admin:executions_incompleteexecution_change", args=[self.pk])

    @property
    def is_open(self) -> bool:
        return self.status in INCOMPLETE_OPEN

    def schedule_or_park(self, ladder: list[int]) -> None:
        """After a failure: the next auto-retry from the ladder, or unresolved when none is left."""
        if self.auto_retry and self.attempts < len(ladder):
            self.status = IncompleteStatus.SCHEDULED
            self.next_retry_at = timezone.now() + timedelta(seconds=ladder[self.attempts])
        else:
            self.status = IncompleteStatus.UNRESOLVED
            self.next_retry_at = None

    def begin_retry(self) -> bool:
        """unresolved/scheduled → retrying. Compare-and-swap: two clicks never both retry."""
        changed = IncompleteExecution.objects.filter(
            pk=self.pk, status__in=[IncompleteStatus.UNRESOLVED, IncompleteStatus.SCHEDULED]
        ).update(
            status=IncompleteStatus.RETRYING, attempts=models.F("attempts") + 1, next_retry_at=None
        )
        if changed:
            self.refresh_from_db(fields=["status", "attempts", "next_retry_at"])
        return bool(changed)

    def close(self, status: str, user=None) -> bool:
        """→ resolved or discarded, once. Compare-and-swap."""
        now = timezone.now()
        changed = IncompleteExecution.objects.filter(pk=self.pk, status__in=INCOMPLETE_OPEN).update(
            status=status, closed_at=now, closed_by=user, next_retry_at=None
        )
        if changed:
            self.status, self.closed_at, self.closed_by = status, now, user
        return bool(changed)


def _heartbeat_cutoff(now: datetime | None) -> datetime:
    """An agent whose last heartbeat is older than this is lost (unless it stopped)."""
    return (now or timezone.now()) - timedelta(seconds=settings.OPSFLOW_AGENT_TIMEOUT)


def _silent(now: datetime | None) -> models.Q:
    return models.Q(last_heartbeat_at__lt=_heartbeat_cutoff(now)) & ~models.Q(
        state=AgentState.STOPPED
    )


class AgentQuerySet(models.QuerySet):
    def in_state(self, state: str, now: datetime | None = None) -> AgentQuerySet:
        """By displayed state: `lost` is derived from the heartbeat, the others are stored."""
        if state == AgentState.LOST:
            return self.filter(_silent(now))
        return self.filter(state=state).exclude(_silent(now))


class Agent(models.Model):
    """A process (or embedded worker thread) that runs steps: an RQ worker (DESIGN §2).

    Its heartbeat, stamped here every OPSFLOW_HEARTBEAT_SECONDS while it works, is how the
    reconciler knows that a running step's agent died.
    """

    name = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    state = models.CharField(
        max_length=16, choices=AgentState.choices, default=AgentState.RUNNING, db_index=True
    )
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)
    running_step_ids = models.JSONField(
        default=list, blank=True, help_text="Steps it was running at its last heartbeat."
    )
    stopped_at = models.DateTimeField(null=True, blank=True)
    steps_done = models.PositiveBigIntegerField(
        default=0, help_text="Steps it ran to completion since it started (from its heartbeat)."
    )
    steps_failed = models.PositiveBigIntegerField(
        default=0, help_text="Attempts it ran that failed or timed out since it started."
    )

    objects = AgentQuerySet.as_manager()

    class Meta:
        ordering = ["-last_heartbeat_at", "name"]

    def __str__(self) -> str:
        return self.name

    def display_state(self, now: datetime | None = None) -> str:
        """The stored state, or `lost` when a live-looking agent has gone silent."""
        if self.state != AgentState.STOPPED and self.last_heartbeat_at < _heartbeat_cutoff(now):
            return AgentState.LOST
        return self.state

    def running_steps_for(self, user) -> models.QuerySet[Step]:
        """What it works on now, in the user's organizations (a step waiting for a person holds
        no agent)."""
        from apps.accounts.permissions import scope_to_user
        from apps.executions.nodes.base import waiting_types

        steps = Step.objects.filter(worker=self.name, status=StepStatus.RUNNING).exclude(
            node_type__in=waiting_types()
        )
        return scope_to_user(
            steps.select_related("execution"), user, field="execution__workflow__organization"
        )

    @classmethod
    def register(cls, name: str, queues: list[str], hostname: str, pid: int) -> Agent:
        now = timezone.now()
        agent, _ = cls.objects.update_or_create(
            name=name,
            defaults={
                "hostname": hostname,
                "pid": pid,
                "queues": queues,
                "state": AgentState.RUNNING,
                "started_at": now,
                "last_heartbeat_at": now,
                "running_step_ids": [],
                "stopped_at": None,
                "steps_done": 0,
                "steps_failed": 0,
            },
        )
        return agent

    @classmethod
    def beat(
        cls,
        name: str,
        at: datetime,
        running: list[int],
        draining: bool,
        tally: dict[str, int] | None = None,
    ) -> None:
        """One heartbeat: the time, the steps it runs, how many it ran, `stopping` once it
        drains."""
        fields: dict[str, Any] = {"last_heartbeat_at": at, "running_step_ids": running}
        if tally:
            fields["steps_done"] = tally.get("done", 0)
            fields["steps_failed"] = tally.get("failed", 0)
        if draining:
            fields["state"] = AgentState.STOPPING
        cls.objects.filter(name=name).exclude(state=AgentState.STOPPED).update(**fields)

    @classmethod
    def mark_stopped(cls, name: str) -> None:
        now = timezone.now()
        cls.objects.filter(name=name).update(
            state=AgentState.STOPPED, stopped_at=now, last_heartbeat_at=now, running_step_ids=[]
        )
