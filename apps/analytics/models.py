"""A report export that runs in the background (more rows than OPSFLOW_EXPORT_SYNC_MAX_ROWS)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.analytics.choices import EXPORT_ACTIVE, ExportStatus


class Export(models.Model):
    """One export asked for by one user: its range and filters as asked (`params`, re-read in
    the user's organizations when it runs), its progress, and its file until it expires."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    format = models.CharField(max_length=8)  # csv or xlsx
    params = models.JSONField(default=dict)  # from, to, workflow, organization
    status = models.CharField(
        max_length=16, choices=ExportStatus.choices, default=ExportStatus.QUEUED
    )
    rows_total = models.PositiveIntegerField(default=0)
    rows_done = models.PositiveIntegerField(default=0)
    file_name = models.CharField(max_length=200, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"], name="export_user_recent")]

    def __str__(self) -> str:
        return f"export #{self.pk} ({self.format}, {self.status})"

    @property
    def percent(self) -> int:
        if self.status == ExportStatus.DONE:
            return 100
        return min(99, 100 * self.rows_done // self.rows_total) if self.rows_total else 0

    @property
    def is_active(self) -> bool:
        return self.status in EXPORT_ACTIVE

    def path(self):
        return settings.OPSFLOW_EXPORT_DIR / self.file_name

    # --- transitions (compare-and-swap: a second worker or a late expiry changes nothing) ---

    def start(self) -> bool:
        now = timezone.now()
        changed = Export.objects.filter(pk=self.pk, status=ExportStatus.QUEUED).update(
            status=ExportStatus.RUNNING, started_at=now
        )
        if changed:
            self.status, self.started_at = ExportStatus.RUNNING, now
        return bool(changed)

    def progress(self, rows_done: int) -> None:
        Export.objects.filter(pk=self.pk, status=ExportStatus.RUNNING).update(rows_done=rows_done)
        self.rows_done = rows_done

    def finish(self, rows: int, size: int) -> bool:
        now = timezone.now()
        expires = now + timedelta(hours=settings.OPSFLOW_EXPORT_TTL_HOURS)
        changed = Export.objects.filter(pk=self.pk, status=ExportStatus.RUNNING).update(
            status=ExportStatus.DONE,
            rows_done=rows,
            rows_total=rows,
            size_bytes=size,
            finished_at=now,
            expires_at=expires,
        )
        if changed:
            self.status, self.rows_done, self.rows_total = ExportStatus.DONE, rows, rows
            self.size_bytes, self.finished_at, self.expires_at = size, now, expires
        return bool(changed)

    def fail(self, message: str) -> None:
        now = timezone.now()
        Export.objects.filter(pk=self.pk, status__in=EXPORT_ACTIVE).update(
            status=ExportStatus.FAILED, error_message=message[:2000], finished_at=now
        )
        self.status, self.error_message, self.finished_at = ExportStatus.FAILED, message, now

    def expire(self) -> bool:
        changed = Export.objects.filter(pk=self.pk, status=ExportStatus.DONE).update(
            status=ExportStatus.EXPIRED
        )
        if changed:
            self.status = ExportStatus.EXPIRED
        return bool(changed)


# --- the daily rollup (apps/analytics/rollup.py) ---


class RolledDay(models.Model):
    """A day of an organization (in its time zone then) whose ended runs are in the rollup.
    A day not here, or with a change mark since, is counted from the executions themselves."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    time_zone = models.CharField(max_length=64)
    folded_at = models.DateTimeField(default=timezone.now)
    # the day's duration histogram across its workflows: a summary without a workflow filter
    # merges one of these a day rather than one a workflow and status
    durations = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "day"], name="rolled_day_unique")
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.day}"


class DailyRollup(models.Model):
    """The ended runs of a rolled day, one row per workflow and status: how many, how many have
    a duration, the sum of those durations and their log-bucket histogram."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    workflow = models.ForeignKey(
        "workflows.Workflow", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    status = models.CharField(max_length=16)
    executions = models.PositiveIntegerField(default=0)
    timed = models.PositiveIntegerField(default=0)
    duration_us = models.BigIntegerField(default=0)
    durations = models.JSONField(default=dict)  # {bucket: runs}

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "day", "workflow", "status"], name="daily_rollup_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.day} {self.workflow_id} {self.status}"


class AgentRollup(models.Model):
    """The steps that ran in the ended runs of a rolled day, by workflow, agent and queue."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    workflow = models.ForeignKey(
        "workflows.Workflow", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    worker = models.CharField(max_length=200)
    queue = models.CharField(max_length=64)
    steps = models.PositiveIntegerField(default=0)
    busy_us = models.BigIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["organization", "day"], name="agent_rollup_day")]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.day} {self.worker} {self.queue}"


class RollupMark(models.Model):
    """A change to an ended run (or a run becoming or ceasing to be one), written by a database
    trigger in the statement that made it: its day is counted afresh until the next fold.
    No foreign key and no index beyond the key: an insert here is on every run's last save."""

    organization_id = models.BigIntegerField()
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.organization_id} {self.created_at}"
