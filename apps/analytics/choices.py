from django.db import models


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


EXPORT_ACTIVE = frozenset({ExportStatus.QUEUED, ExportStatus.RUNNING})
EXPORT_COLOURS = {
    ExportStatus.QUEUED: "grey",
    ExportStatus.RUNNING: "blue",
    ExportStatus.DONE: "green",
    ExportStatus.FAILED: "red",
    ExportStatus.EXPIRED: "light",
}
