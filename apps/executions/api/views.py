from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated

from apps.accounts.api.permissions import OrganizationRole
from apps.accounts.permissions import scope_to_user
from apps.executions.api.serializers import (
    ExecutionDetailSerializer,
    ExecutionEventSerializer,
    ExecutionSerializer,
)
from apps.executions.filtersets import ExecutionFilterSet
from apps.executions.models import Execution


class ExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    """Executions of your organizations' workflows."""

    filterset_class = ExecutionFilterSet
    permission_classes = [IsAuthenticated, OrganizationRole]

    def organization_of(self, obj):
        return obj.workflow.organization

    def get_queryset(self):
        qs = (
            Execution.objects.select_related("workflow__organization", "version", "triggered_by")
            .with_counts()
            .order_by("-created_at", "-id")
        )  # grouped queries ignore Meta.ordering
        if self.action == "retrieve":
            qs = qs.prefetch_related("steps")
        return scope_to_user(qs, self.request.user, field="workflow__organization")

    def get_serializer_class(self):
        return ExecutionDetailSerializer if self.action == "retrieve" else ExecutionSerializer

    @extend_schema(responses=ExecutionEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        """The execution log, oldest first."""
        execution = self.get_object()
        page = self.paginate_queryset(execution.events.order_by("created_at", "id"))
        return self.get_paginated_response(ExecutionEventSerializer(page, many=True).data)
