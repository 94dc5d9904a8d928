from rest_framework import serializers

from apps.executions.models import Agent, Execution, ExecutionEvent, IncompleteExecution, Step
from apps.executions.nodes import REGISTRY


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
            "retry_number",
            "handling",
        ]
        read_only_fields = fields


class ExecutionSerializer(serializers.ModelSerializer):
    workflow = serializers.CharField(source="workflow.slug", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    triggered_by = serializers.CharField(
        source="triggered_by.username", default=None, read_only=True, allow_null=True
    )
    duration_ms = serializers.IntegerField(read_only=True, allow_null=True)
    jobs_completed = serializers.IntegerField(source="steps_completed", read_only=True)
    jobs_failed = serializers.IntegerField(
        source="steps_failed", read_only=True, help_text="Attempts that failed or timed out."
    )
    jobs_skipped = serializers.IntegerField(source="steps_skipped", read_only=True)
    jobs_total = serializers.IntegerField(
        source="steps_total", read_only=True, help_text="Nodes in the execution's version."
    )

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
            "jobs_failed",
            "jobs_skipped",
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
        from apps.approvals.api.serializers import ApprovalSerializer

        return ApprovalSerializer(obj.approvals.all(), many=True, context=self.context).data

    def get_incomplete_execution(self, obj) -> int | None:
        """The execution's open incomplete-execution record, else its latest one."""
        records = sorted(obj.incomplete_records.all(), key=lambda r: (not r.is_open, -r.pk))
        return records[0].pk if records else None


class ExecutionEventSerializer(serializers.ModelSerializer):
    step = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = ExecutionEvent
        fields = ["id", "created_at", "kind", "node_id", "step", "message", "data"]
        read_only_fields = fields


class IncompleteExecutionSerializer(serializers.ModelSerializer):
    workflow = serializers.CharField(source="workflow.slug", read_only=True)

    class Meta:
        model = IncompleteExecution
        fields = [
            "id",
            "execution",
            "workflow",
            "node_id",
            "error_type",
            "error_message",
            "status",
            "auto_retry",
            "attempts",
            "next_retry_at",
            "size_bytes",
            "created_at",
            "updated_at",
            "closed_at",
        ]
        read_only_fields = fields


class IncompleteExecutionDetailSerializer(IncompleteExecutionSerializer):
    class Meta(IncompleteExecutionSerializer.Meta):
        fields = IncompleteExecutionSerializer.Meta.fields + ["bundles", "blueprint"]
        read_only_fields = fields


class RetrySerializer(serializers.Serializer):
    input = serializers.JSONField(
        required=False, help_text="Replaces the failed node's rendered input."
    )
    bundles = serializers.JSONField(
        required=False, help_text="Edited variables and upstream outputs."
    )
    use_current_version = serializers.BooleanField(required=False, default=False)

    def validate_input(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object (the node's config)")
        record = self.context.get("record")
        if record is not None:
            nodes = record.blueprint.get("nodes", [])
            node = next((n for n in nodes if n.get("id") == record.node_id), None)
            node_type = REGISTRY.get(node["type"]) if node else None
            problems = node_type.check_config(value) if node_type else []
            if problems:
                raise serializers.ValidationError(dict(problems))
        return value

    def validate_bundles(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object with variables and nodes")
        if "variables" in value and not isinstance(value["variables"], dict):
            raise serializers.ValidationError({"variables": "must be an object"})
        if "nodes" in value and not isinstance(value["nodes"], dict):
            raise serializers.ValidationError({"nodes": "must be an object of node ids"})
        bad = {
            k: "must be an object"
            for k, v in value.get("nodes", {}).items()
            if not isinstance(v, dict)
        }
        if bad:
            raise serializers.ValidationError({"nodes": bad})
        return value


class BulkSerializer(serializers.Serializer):
    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),  # the BigAutoField range
        required=False,
        max_length=1000,
    )
    all_matching = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Act on every record matching the query-string filters.",
    )

    def validate(self, attrs):
        if not attrs.get("ids") and not attrs.get("all_matching"):
            raise serializers.ValidationError("give ids, or all_matching: true with filters")
        return attrs


class BulkSkippedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    reason = serializers.CharField()


class BulkResultSerializer(serializers.Serializer):
    """What a bulk action did: the ids it acted on, and each one it skipped with why."""

    done = serializers.ListField(child=serializers.IntegerField())
    skipped = BulkSkippedSerializer(many=True)


class MarkSucceededSerializer(serializers.Serializer):
    output = serializers.JSONField()

    def validate_output(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object")
        return value


class AgentSerializer(serializers.ModelSerializer):
    """An agent (RQ worker) and what it runs now."""

    state = serializers.SerializerMethodField()
    running_steps = serializers.SerializerMethodField()

    class Meta:
        model = Agent
        fields = [
            "name",
            "hostname",
            "pid",
            "queues",
            "state",
            "started_at",
            "last_heartbeat_at",
            "stopped_at",
            "running_steps",
        ]
        read_only_fields = fields

    def get_state(self, obj: Agent) -> str:
        return obj.display_state()

    def get_running_steps(self, obj: Agent) -> list[dict]:
        """Steps it runs now, limited to the caller's organizations."""
        steps = obj.running_steps_for(self.context["request"].user)
        return [
            {"id": s.pk, "execution": s.execution_id, "node_id": s.node_id, "attempt": s.attempt}
            for s in steps
        ]
