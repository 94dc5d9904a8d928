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
    ApprovalStatus.PENDING: "indigo",
    ApprovalStatus.APPROVED: "green",
    ApprovalStatus.REJECTED: "red",
    ApprovalStatus.EXPIRED: "brown",
    ApprovalStatus.CANCELLED: "grey",
}
