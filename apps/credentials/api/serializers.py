from rest_framework import serializers

from apps.credentials.models import Credential


class CredentialSerializer(serializers.ModelSerializer):
    """A credential as the API shows it: never its value."""

    organization = serializers.CharField(source="organization.slug", read_only=True)
    created_by = serializers.CharField(source="created_by.username", default=None, allow_null=True)
    updated_by = serializers.CharField(source="updated_by.username", default=None, allow_null=True)

    class Meta:
        model = Credential
        fields = [
            "name",
            "organization",
            "allowed_hosts",
            "description",
            "created_at",
            "created_by",
            "updated_at",
            "updated_by",
        ]
        read_only_fields = fields


class CredentialCreateSerializer(serializers.Serializer):
    """What POST takes (documentation; the service checks every field)."""

    organization = serializers.CharField(
        required=False, help_text="Organization slug; needed when you belong to several."
    )
    name = serializers.RegexField(r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)
    value = serializers.CharField(write_only=True, help_text="Write-only: never shown again.")
    allowed_hosts = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Hosts it may go to (http.request, notify.chat, ssh.command): host, host:port "
        "or *.domain.",
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=200)


class CredentialUpdateSerializer(serializers.Serializer):
    """What PATCH takes: a new value (rotation), the hosts or the description."""

    value = serializers.CharField(write_only=True, required=False)
    allowed_hosts = serializers.ListField(child=serializers.CharField(), required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=200)
