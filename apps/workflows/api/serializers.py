from rest_framework import serializers

from apps.accounts.choices import CAN_EDIT, CAN_EXECUTE
from apps.accounts.permissions import has_role
from apps.workflows.definition import masked_definition
from apps.workflows.models import Workflow, WorkflowVersion


def shown_definition(request, organization, definition: dict) -> dict:
    """As stored for editors; masked (`masked_definition`) for everyone else."""
    if request is not None and has_role(request.user, organization, CAN_EDIT):
        return definition
    return masked_definition(definition)


class WorkflowSerializer(serializers.ModelSerializer):
    organization = serializers.CharField(source="organization.slug", read_only=True)
    published_version = serializers.IntegerField(
        source="published_number", read_only=True, allow_null=True
    )
    trigger = serializers.SerializerMethodField()
    settings = serializers.SerializerMethodField()
    webhook_url = serializers.SerializerMethodField()
    next_fires = serializers.SerializerMethodField()
    definition = serializers.SerializerMethodField()

    class Meta:
        model = Workflow
        fields = [
            "slug",
            "name",
            "organization",
            "is_active",
            "inactive_reason",
            "published_version",
            "has_unpublished_changes",
            "trigger",
            "settings",
            "webhook_url",
            "next_fires",
            "definition",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_trigger(self, obj) -> dict:
        return obj.effective_definition.get("trigger", {})

    def get_settings(self, obj) -> dict:
        return obj.effective_definition.get("settings", {})

    def get_next_fires(self, obj) -> list[str] | None:
        """A cron trigger's next five fire times (its published version's, else the draft's),
        ISO 8601 in the trigger's time zone; null for other triggers."""
        return obj.next_fires()

    def get_definition(self, obj) -> dict:
        """The draft; sensitive header values masked for those who may not edit it."""
        return shown_definition(self.context.get("request"), obj.organization, obj.draft)

    def get_webhook_url(self, obj) -> str | None:
        """The URL is the key that triggers the workflow: null for those who may not trigger it
        (viewers). With an incident trigger, the path its alerts go to (`…/incident/`)."""
        request = self.context.get("request")
        if request is None or not has_role(request.user, obj.organization, CAN_EXECUTE):
            return None
        return request.build_absolute_uri(obj.hook_path())


class WorkflowPatchSerializer(serializers.ModelSerializer):
    class Meta:
        model = Workflow
        fields = ["name", "is_active"]

    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                {
                    key: "cannot be changed here (use PUT .../draft/ for the definition)"
                    for key in sorted(unknown)
                }
            )
        return attrs


class WorkflowVersionSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="number")
    definition = serializers.SerializerMethodField()
    created_by = serializers.CharField(
        source="created_by.username", default=None, read_only=True, allow_null=True
    )
    is_current = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowVersion
        fields = ["version", "created_at", "created_by", "is_current", "definition"]

    def get_definition(self, obj) -> dict:
        return shown_definition(
            self.context.get("request"), obj.workflow.organization, obj.definition
        )

    def get_is_current(self, obj) -> bool:
        return obj.workflow.current_version_id == obj.pk


class TriggerSerializer(serializers.Serializer):
    variables = serializers.JSONField(required=False, default=dict)

    def validate_variables(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object of variable names to values")
        return value
