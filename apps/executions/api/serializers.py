from rest_framework import serializers

from apps.executions.models import Execution, ExecutionEvent, Step


class StepSerializer(serializers.ModelSerializer):
    duration_ms = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = Step
        fields = [
            "id",
            "node_id",
            "node_type",
            "attempt",
            "status",
            "queue",
            "worker",
            "input",
            "output",
            "error_type",
            "error_message",
            "started_at",
            "finished_at",
            "duration_ms",
            "next_attempt_at",
        ]
        read_only_fields = fields


class ExecutionSerializer(serializers.ModelSerializer):
    workflow = serializers.CharField(source="workflow.slug", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    triggered_by = serializers.CharField(
        source="triggered_by.username", default=None, read_only=True
    )
    duration_ms = serializers.IntegerField(read_only=True, allow_null=True)
    jobs_completed = serializers.IntegerField(read_only=True)
    jobs_total = serializers.IntegerField(read_only=True)

    class Meta:
        model = Execution
        fields = [
            "id",
            "workflow",
            "version",
            "status",
            "trigger",
            "variables",
            "trigger_data",
            "triggered_by",
            "scheduled_for",
            "created_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "jobs_completed",
            "jobs_total",
            "retriggered_from",
            "error_message",
        ]
        read_only_fields = fields


class ExecutionDetailSerializer(ExecutionSerializer):
    steps = StepSerializer(many=True, read_only=True)
    approvals = serializers.SerializerMethodField()
    incomplete_execution = serializers.SerializerMethodField()

    class Meta(ExecutionSerializer.Meta):
        fields = ExecutionSerializer.Meta.fields + ["steps", "approvals", "incomplete_execution"]
        read_only_fields = fields

    def get_approvals(self, obj) -> list:
        return []  # approval gates arrive with the approvals issue

    def get_incomplete_execution(self, obj) -> int | None:
        return None  # incomplete executions arrive with the failure-semantics issue


class ExecutionEventSerializer(serializers.ModelSerializer):
    step = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = ExecutionEvent
        fields = ["id", "created_at", "kind", "node_id", "step", "message", "data"]
        read_only_fields = fields
