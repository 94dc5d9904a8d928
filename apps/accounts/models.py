from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.accounts.choices import ROLE_RANK, Role


class Organization(models.Model):
    """The tenant: workflows, executions and limits belong to one organization."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Days to keep finished executions; empty uses OPSFLOW_RETENTION_DAYS; 0 keeps them forever.",
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
