"""`GET /api/v1/audit/`: the audit log of the organizations where you are an admin (all of it
for superusers), newest first, filtered by user, action, object and date."""

from __future__ import annotations

import django_filters
from rest_framework import serializers, viewsets
from rest_framework.exceptions import PermissionDenied

from apps.accounts.choices import Role
from apps.accounts.models import AuditEntry
from apps.accounts.permissions import organizations_for


class AuditEntrySerializer(serializers.ModelSerializer):
    organization = serializers.CharField(source="organization.slug", default=None, allow_null=True)
    user = serializers.CharField(source="actor_name")
    object = serializers.SerializerMethodField()

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "created_at",
            "user",
            "address",
            "action",
            "organization",
            "object",
            "changes",
        ]
        read_only_fields = fields

    def get_object(self, entry) -> dict:
        return {"type": entry.object_type, "id": entry.object_id, "name": entry.object_repr}


class AuditFilterSet(django_filters.FilterSet):
    user = django_filters.CharFilter(field_name="actor_name")
    action = django_filters.CharFilter()
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    organization = django_filters.CharFilter(field_name="organization__slug")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEntry
        fields = []


class AuditViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = AuditEntrySerializer
    filterset_class = AuditFilterSet
    cursor_ordering = ("-created_at", "-id")

    queryset = AuditEntry.objects.none()  # for the schema; get_queryset scopes the real one

    def get_queryset(self):
        user = self.request.user
        queryset = AuditEntry.objects.select_related("organization")
        if getattr(self, "swagger_fake_view", False) or user.is_superuser:
            return queryset
        admin_of = organizations_for(user, Role.ADMIN)
        if not admin_of.exists():
            raise PermissionDenied("The audit log is for organization admins.")
        return queryset.filter(organization__in=admin_of)
