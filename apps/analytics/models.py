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
