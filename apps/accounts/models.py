from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.accounts.choices import ROLE_RANK, Role
from apps.accounts.timezones import validate_time_zone


class Organization(models.Model):
    """The tenant: workflows, executions and limits belong to one organization."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Days to keep finished executions; empty uses OPSFLOW_RETENTION_DAYS; 0 keeps them forever.",
    )
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        db_default="UTC",  # rows written without the ORM (older code, raw inserts) get it too
        validators=[validate_time_zone],
        help_text="An IANA time zone (Europe/Paris): analytics count days in it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MembershipQuerySet(models.QuerySet):
    def at_least(self, role: str) -> MembershipQuerySet:
        allowed = [r for r, rank in ROLE_RANK.items() if rank >= ROLE_RANK[Role(role)]]
        return self.filter(role__in=allowed)


class Membership(models.Model):
    """A user's role in one organization."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="unique_membership"),
        ]
        ordering = ["organization__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class AuditEntry(models.Model):
    """One state-changing action by a person (or a login failure): who, when, from where, what,
    and the before/after of the fields it changed, secrets masked. Written by `audit.record`,
    never edited."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True, help_text="Kept if the user goes.")
    address = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"])]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name or 'system'} {self.action}"
