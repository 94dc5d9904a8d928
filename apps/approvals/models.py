from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from apps.approvals.choices import ApprovalStatus, Decision, Via
from apps.executions.models import Execution, IllegalTransition, Step


class ApprovalQuerySet(models.QuerySet):
    def pending(self) -> ApprovalQuerySet:
        return self.filter(status=ApprovalStatus.PENDING)


class Approval(models.Model):
    """A pending human decision created by an approval node (DESIGN §7)."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="approvals")
    step = models.OneToOneField(Step, on_delete=models.CASCADE, related_name="approval")
    node_id = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING, db_index=True
    )
    message = models.TextField(blank=True)
    approvers = models.JSONField(default=list, blank=True, help_text="Usernames and group:<name>.")
    open_to_members = models.BooleanField(
        default=False,
        help_text="No approvers were named: any operator-or-above member may respond.",
    )
    required_approvals = models.PositiveIntegerField(default=1)
    allow_self_approval = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    escalate_at = models.DateTimeField(null=True, blank=True, db_index=True)
    escalate_to = models.JSONField(default=list, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=32, blank=True, help_text="timeout or cancelled, when so.")
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = ApprovalQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return (
            f"approval #{self.pk} {self.node_id} of execution #{self.execution_id} ({self.status})"
        )

    def get_absolute_url(self) -> str:
        return reverse("admin:approvals_approval_change", args=[self.pk])

    @property
    def usernames(self) -> list[str]:
        return [a for a in self.approvers if not a.startswith("group:")]

    @property
    def group_names(self) -> list[str]:
        return [a.removeprefix("group:") for a in self.approvers if a.startswith("group:")]

    def is_assigned(self, user) -> bool:
        """Named, or in a named group, and a member of the workflow's organization: a Django
        group is global, so `group:sre` must never reach another organization's members. A
        member named explicitly may decide whatever their role, a viewer included: naming them
        is the grant."""
        from apps.accounts.permissions import group_names_of, is_member

        if not is_member(user, self.execution.organization):
            return False
        if user.username in self.usernames:
            return True
        return bool(self.group_names) and not group_names_of(user).isdisjoint(self.group_names)

    def decide(self, status: str, user=None, reason: str = "") -> None:
        """pending → approved/rejected/expired/cancelled. The caller holds the row lock."""
        if self.status != ApprovalStatus.PENDING:
            raise IllegalTransition(f"approval {self.pk} is already {self.status}")
        self.status, self.decided_at, self.decided_by, self.reason = (
            status,
            timezone.now(),
            user,
            reason,
        )
        self.save(update_fields=["status", "decided_at", "decided_by", "reason"])

    def escalate(self) -> None:
        self.approvers = list(dict.fromkeys([*self.approvers, *self.escalate_to]))
        self.escalated_at = timezone.now()
        self.save(update_fields=["approvers", "escalated_at"])


class ApprovalResponse(models.Model):
    """One approver's answer. Distinct approvers count toward a quorum."""

    approval = models.ForeignKey(Approval, on_delete=models.CASCADE, related_name="responses")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    note = models.TextField(blank=True)
    via = models.CharField(max_length=8, choices=Via.choices)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["approval", "user"], name="one_response_per_approver"),
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.decision} via {self.via}"

    def as_dict(self) -> dict:
        return {
            "user": self.user.username,
            "decision": self.decision,
            "note": self.note,
            "via": self.via,
            "at": self.at.isoformat(),
        }
