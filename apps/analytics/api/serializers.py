"""The shapes the analytics API answers with (they are also its OpenAPI schema)."""

from __future__ import annotations

from rest_framework import serializers

from apps.executions.choices import ExecutionStatus


class ByStatusSerializer(serializers.Serializer):
    """How many runs ended up in each status (every status, zeros included)."""

    def get_fields(self):
        return {status: serializers.IntegerField() for status in ExecutionStatus.values}


class DaySerializer(serializers.Serializer):
    date = serializers.DateField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    incomplete = serializers.IntegerField()
    cancelled = serializers.IntegerField()


class TopWorkflowSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    executions = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True)


class AgentUsageSerializer(serializers.Serializer):
    worker = serializers.CharField(help_text="The agent (host/worker name).")
    steps = serializers.IntegerField()
    busy_ms = serializers.IntegerField(help_text="The sum of its steps' durations.")
    share = serializers.FloatField(help_text="Its share of all steps, in percent.")


class QueueUsageSerializer(serializers.Serializer):
    queue = serializers.CharField()
    steps = serializers.IntegerField()
    busy_ms = serializers.IntegerField()
    share = serializers.FloatField()


class UtilizationSerializer(serializers.Serializer):
    agents = AgentUsageSerializer(many=True)
    queues = QueueUsageSerializer(many=True)


class SummarySerializer(serializers.Serializer):
    """The README's "Analytics" section defines each figure."""

    time_zone = serializers.CharField(help_text="The zone the days are counted in.")
    total = serializers.IntegerField()
    by_status = ByStatusSerializer()
    success_rate = serializers.FloatField(
        allow_null=True, help_text="completed ÷ (completed + failed + incomplete), percent."
    )
    avg_duration_ms = serializers.IntegerField(allow_null=True)
    p50_duration_ms = serializers.IntegerField(allow_null=True)
    p95_duration_ms = serializers.IntegerField(allow_null=True)
    active_workflows = serializers.IntegerField()
    daily = DaySerializer(many=True)
    top_workflows = TopWorkflowSerializer(many=True)
    agent_utilization = UtilizationSerializer()

    def get_fields(self):
        # "from" is a Python keyword: the range's bounds are added here.
        return {
            "from": serializers.DateTimeField(help_text="Included."),
            "to": serializers.DateTimeField(help_text="Excluded."),
            **super().get_fields(),
        }


class FailureSpikeSerializer(serializers.Serializer):
    last_hour = serializers.IntegerField(help_text="Runs that failed in the last hour.")
    hourly_average = serializers.FloatField(help_text="Failures an hour in the 24 hours before.")
    workflows = serializers.IntegerField(help_text="Workflows the last hour's failures came from.")
    flagged = serializers.BooleanField()


class OverdueSerializer(serializers.Serializer):
    now = serializers.IntegerField()
    fifteen_minutes_ago = serializers.IntegerField()
    flagged = serializers.BooleanField(help_text="The count grows.")


class OfflineQueueSerializer(serializers.Serializer):
    queue = serializers.CharField()
    waiting = serializers.IntegerField(help_text="Steps dispatched to it, not taken.")


class AgentsSignalSerializer(serializers.Serializer):
    offline_queues = OfflineQueueSerializer(many=True)
    flagged = serializers.BooleanField()


class HealthSerializer(serializers.Serializer):
    failure_spike = FailureSpikeSerializer()
    overdue = OverdueSerializer()
    agents = AgentsSignalSerializer()


class ExportRequestSerializer(serializers.Serializer):
    """A background export: the format, and the range and filters of the summary."""

    format = serializers.ChoiceField(choices=["csv", "xlsx"])
    # "from" is a Python keyword: see get_fields
    to = serializers.CharField(required=False, allow_blank=True, max_length=40)
    range = serializers.ChoiceField(choices=["24h", "7d", "30d", "90d"], required=False)
    workflow = serializers.CharField(required=False, allow_blank=True, max_length=100)
    organization = serializers.CharField(required=False, allow_blank=True, max_length=100)

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.CharField(required=False, allow_blank=True, max_length=40)
        return fields


class ExportSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    format = serializers.CharField()
    status = serializers.CharField(help_text="queued, running, done, failed or expired.")
    rows_done = serializers.IntegerField()
    rows_total = serializers.IntegerField()
    percent = serializers.IntegerField()
    params = serializers.DictField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    error_message = serializers.CharField()
    download_url = serializers.SerializerMethodField()

    def get_download_url(self, export) -> str | None:
        if export.status != "done":
            return None
        from django.urls import reverse

        return reverse("analytics-export-download", args=[export.pk])
