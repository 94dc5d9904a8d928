from django.db.models import ProtectedError
from drf_spectacular.utils import OpenApiTypes, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from apps.accounts.api.errors import Conflict, DefinitionInvalid
from apps.accounts.api.lookups import one_of_organizations, organization_for_create
from apps.accounts.api.permissions import OrganizationRole
from apps.accounts.choices import CAN_EDIT, CAN_EXECUTE
from apps.accounts.permissions import scope_to_user
from apps.executions.api.serializers import ExecutionDetailSerializer
from apps.executions.services import WorkflowNotRunnable, trigger_workflow
from apps.workflows.api.serializers import (
    TriggerSerializer,
    WorkflowPatchSerializer,
    WorkflowSerializer,
    WorkflowVersionSerializer,
)
from apps.workflows.definition import DefinitionError
from apps.workflows.filtersets import WorkflowFilterSet
from apps.workflows.models import Workflow
from apps.workflows.services import (
    change_workflow,
    create_workflow,
    delete_workflow,
    publish_workflow,
    update_draft,
)


def definition_problems(exc: DefinitionError) -> DefinitionInvalid:
    return DefinitionInvalid([p.as_dict() for p in exc.problems])


class WorkflowViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Workflows of your organizations. POST takes the definition document (DESIGN §3)."""

    serializer_class = WorkflowSerializer
    filterset_class = WorkflowFilterSet
    lookup_field = "slug"
    lookup_value_regex = "[a-z0-9-]+"
    permission_classes = [IsAuthenticated, OrganizationRole]
    action_roles = {
        "partial_update": CAN_EDIT,
        "destroy": CAN_EDIT,
        "draft": CAN_EDIT,
        "publish": CAN_EDIT,
        "trigger": CAN_EXECUTE,
    }

    def organization_of(self, obj):
        return obj.organization

    def get_queryset(self):
        qs = Workflow.objects.select_related("organization", "current_version").order_by(
            "organization__slug", "slug"
        )
        return scope_to_user(qs, self.request.user)

    def get_object(self):
        workflow = one_of_organizations(
            self.request, self.get_queryset(), "slug", self.kwargs["slug"], "workflow"
        )
        self.check_object_permissions(self.request, workflow)
        return workflow

    @extend_schema(request=OpenApiTypes.OBJECT, responses={201: WorkflowSerializer})
    def create(self, request):
        document = request.data
        if not isinstance(document, dict):
            raise ValidationError("The body must be a workflow definition object.")
        organization = organization_for_create(request.user, document.get("organization"), CAN_EDIT)
        try:
            workflow = create_workflow(organization, document, request.user)
        except DefinitionError as exc:
            raise definition_problems(exc) from None
        return Response(self.get_serializer(workflow).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=WorkflowPatchSerializer, responses=WorkflowSerializer)
    def partial_update(self, request, slug=None):
        workflow = self.get_object()
        serializer = WorkflowPatchSerializer(workflow, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        change_workflow(workflow, request.user, **serializer.validated_data)
        return Response(self.get_serializer(workflow).data)

    def perform_destroy(self, instance):
        try:
            delete_workflow(instance, self.request.user)
        except ProtectedError:
            raise Conflict("This workflow still has executions that must be kept.") from None

    @extend_schema(request=OpenApiTypes.OBJECT, responses=WorkflowSerializer)
    @action(detail=True, methods=["put"])
    def draft(self, request, slug=None):
        """Replace the draft with a new definition document (validated completely)."""
        workflow = self.get_object()
        try:
            update_draft(workflow, request.data, request.user)
        except DefinitionError as exc:
            raise definition_problems(exc) from None
        return Response(self.get_serializer(workflow).data)

    @extend_schema(request=None, responses=WorkflowVersionSerializer)
    @action(detail=True, methods=["post"])
    def publish(self, request, slug=None):
        """Freeze the draft into the next version; new executions run it."""
        workflow = self.get_object()
        try:
            version = publish_workflow(workflow, request.user)
        except DefinitionError as exc:
            raise definition_problems(exc) from None
        return Response(
            WorkflowVersionSerializer(version, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(responses=WorkflowVersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request, slug=None):
        workflow = self.get_object()
        page = self.paginate_queryset(
            workflow.versions.select_related("workflow", "created_by").order_by("-number")
        )
        return self.get_paginated_response(
            WorkflowVersionSerializer(page, many=True, context={"request": request}).data
        )

    @extend_schema(request=TriggerSerializer, responses={201: ExecutionDetailSerializer})
    @action(detail=True, methods=["post"])
    def trigger(self, request, slug=None):
        """Start an execution of the published version with these variables."""
        workflow = self.get_object()
        body = TriggerSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            execution = trigger_workflow(
                workflow, variables=body.validated_data["variables"], user=request.user
            )
        except WorkflowNotRunnable as exc:
            raise Conflict(str(exc)) from None
        except DefinitionError as exc:
            raise ValidationError({p.path: p.message for p in exc.problems}) from None
        return Response(
            ExecutionDetailSerializer(execution, context={"request": request}).data, status=201
        )
