from django.db import models


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


class Decision(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"


class Via(models.TextChoices):
    WEB = "web", "Web"
    MOBILE = "mobile", "Emailed link"
    API = "api", "API"


APPROVAL_COLOURS = {
    ApprovalStatus.PENDING: "#4f46e5",
    ApprovalStatus.APPROVED: "#16a34a",
    ApprovalStatus.REJECTED: "#dc2626",
    ApprovalStatus.EXPIRED: "#b45309",
    ApprovalStatus.CANCELLED: "#6b7280",
}
