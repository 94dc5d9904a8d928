from django.db import models


class TriggerType(models.TextChoices):
    MANUAL = "manual", "Manual"
    WEBHOOK = "webhook", "Webhook"
    CRON = "cron", "Cron"
    INCIDENT = "incident", "Incident"


class Catchup(models.TextChoices):
    ALL = "all", "All missed runs"
    LATEST = "latest", "Only the latest missed run"
    NONE = "none", "No missed runs"


class OnError(models.TextChoices):
    FAIL = "fail", "Fail (default routing)"
    CONTINUE = "continue", "Continue with empty output"
    BREAK = "break", "Store an incomplete execution"


class Backoff(models.TextChoices):
    FIXED = "fixed", "Fixed"
    EXPONENTIAL = "exponential", "Exponential"


EDGE_ON = ("success", "error", "approved", "rejected", "true", "false", "always")
VARIABLE_TYPES = ("string", "number", "integer", "boolean", "object", "array", "any")


class IncidentSource(models.TextChoices):
    ALERTMANAGER = "alertmanager", "Prometheus Alertmanager"
    PAGERDUTY = "pagerduty", "PagerDuty (v3 webhooks)"
    GENERIC = "generic", "Generic JSON"


class IncidentOutcome(models.TextChoices):
    STARTED = "started", "Started a run"
    DUPLICATE = "duplicate", "Duplicate (the earlier run answered)"
    SKIPPED = "skipped", "Skipped (match)"
