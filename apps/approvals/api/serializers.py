from rest_framework import serializers

from apps.approvals.models import Approval


class ApprovalSerializer(serializers.ModelSerializer):
    workflow = serializers.CharField(source="execution.workflow.slug", read_only=True)
    decided_by = serializers.CharField(
        source="decided_by.username", default=None, read_only=True, allow_null=True
    )
    responses = serializers.SerializerMethodField()
    can_respond = serializers.SerializerMethodField()

    class Meta:
        model = Approval
        fields = [
            "id",
            "execution",
            "workflow",
            "node_id",
            "status",
            "message",
            "approvers",
            "required_approvals",
            "allow_self_approval",
            "responses",
            "expires_at",
            "escalate_to",
            "escalated_at",
            "created_at",
            "decided_at",
            "decided_by",
            "reason",
            "can_respond",
        ]
        read_only_fields = fields

    def get_responses(self, obj) -> list[dict]:
        return [r.as_dict() for r in obj.responses.all()]  # prefetched with their users

    def get_can_respond(self, obj) -> bool:
        from apps.approvals.services import can_respond

        request = self.context.get("request")
        return bool(request and can_respond(obj, request.user))


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF's CharField would turn 42 into "42"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class DecisionSerializer(serializers.Serializer):
    note = StrictCharField(required=False, allow_blank=True, default="", max_length=10_000)
