from django.db import connection
from django.db.models import Prefetch
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from apps.accounts.api.errors import Conflict
from apps.accounts.api.permissions import OrganizationRole
from apps.accounts.choices import CAN_EXECUTE
from apps.accounts.permissions import scope_to_user
from apps.executions import services, stream
from apps.executions.api.serializers import (
    AgentSerializer,
    BulkResultSerializer,
    BulkSerializer,
    ExecutionDetailSerializer,
    ExecutionEventSerializer,
    ExecutionSerializer,
    IncompleteExecutionDetailSerializer,
    IncompleteExecutionSerializer,
    MarkSucceededSerializer,
    RetrySerializer,
    StepSerializer,
)
from apps.executions.filtersets import (
    AgentFilterSet,
    ExecutionFilterSet,
    IncompleteExecutionFilterSet,
)
from apps.executions.models import Agent, Execution, IncompleteExecution
from apps.workflows.definition import DefinitionError


class EventStreamRenderer(BaseRenderer):
    """Lets a client ask for `text/event-stream`; the stream itself is a StreamingHttpResponse,
    so this renders only a refusal (an error) as one SSE `error` event."""

    media_type = "text/event-stream"
    format = "event-stream"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return stream.frame("error", data)


# One message of the stream (OpenAPI 3.0 has no itemSchema: tools read this as each event's).
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["log", "step", "status", "end", "error"]},
        "id": {"type": "string", "description": "The last log event's id (for Last-Event-ID)."},
        "data": {
            "type": "string",
            "description": "JSON: an execution event (log), a step (step), the execution "
            '(status), {"status": ...} (end), or an error body (error).',
        },
        "retry": {"type": "integer"},
    },
}


def _last_event_id(request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query_params.get("last_event_id") or "0"
    if not raw.isdigit() or len(raw) > 18:
        raise ValidationError({"Last-Event-ID": "Not an event id (a whole number)."})
    return int(raw)


def _bulk(view, act, what: str) -> Response:
    """A bulk endpoint: the ids given, or every row matching the query-string filters."""
    body = BulkSerializer(data=view.request.data)
    body.is_valid(raise_exception=True)
    rows = view.filter_queryset(view.get_queryset())
    if body.validated_data.get("ids"):
        rows = rows.filter(pk__in=body.validated_data["ids"])
    try:
        result = services.act_on_each(rows, view.request.user, act, what)
    except services.TooMany as exc:
        raise ValidationError({"all_matching": str(exc)}) from None
    skipped = [{"id": pk, "reason": why} for pk, why in result.skipped]
    return Response({"done": result.done, "skipped": skipped})


class ExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    """Executions of your organizations' workflows."""

    filterset_class = ExecutionFilterSet
    permission_classes = [IsAuthenticated, OrganizationRole]
    action_roles = {"cancel": CAN_EXECUTE, "retrigger": CAN_EXECUTE, "mark_succeeded": CAN_EXECUTE}
    # (the bulk actions check the role on each execution: a viewer's bulk call skips them all)

    @property
    def cursor_ordering(self):
        """`?cursor=` pages: newest first; an execution's events oldest first."""
        return ("created_at", "id") if self.action == "events" else ("-created_at", "-id")

    def organization_of(self, obj):
        return obj.organization

    def get_queryset(self):
        qs = Execution.objects.select_related(
            "organization", "workflow", "version", "triggered_by"
        ).defer("workflow__draft", "version__definition")  # a row needs the slug and number
        if self.action == "retrieve":
            qs = qs.prefetch_related("steps", Prefetch("incomplete_records"))
        return scope_to_user(qs, self.request.user)

    def get_serializer_class(self):
        return ExecutionDetailSerializer if self.action == "retrieve" else ExecutionSerializer

    def _detail(self, execution, code=status.HTTP_200_OK):
        fresh = (
            self.get_queryset().prefetch_related("steps", "incomplete_records").get(pk=execution.pk)
        )
        return Response(
            ExecutionDetailSerializer(fresh, context={"request": self.request}).data, status=code
        )

    @extend_schema(responses=ExecutionEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        """The execution log, oldest first."""
        execution = self.get_object()
        page = self.paginate_queryset(execution.events.order_by("created_at", "id"))
        return self.get_paginated_response(ExecutionEventSerializer(page, many=True).data)

    @extend_schema(
        responses={(200, "text/event-stream"): SSE_EVENT},
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                OpenApiTypes.INT,
                OpenApiParameter.HEADER,
                description="Resume after this log event (browsers send it when reconnecting).",
            ),
            OpenApiParameter(
                "last_event_id",
                OpenApiTypes.INT,
                description="The same, for clients that cannot set the header.",
            ),
        ],
    )
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[JSONRenderer, EventStreamRenderer],
        pagination_class=None,
        filter_backends=[],
    )
    def stream(self, request, pk=None):
        """The execution live, as Server-Sent Events: `log` (each new event of the log, its id
        as the SSE id), `step` (a step whose status or times changed), `status` (the run's
        status and job counters), then `end` once the run is terminal, and the stream closes.
        A comment line is sent as a heartbeat. Reconnect with `Last-Event-ID` to resume."""
        execution = self.get_object()
        after = _last_event_id(request)
        if not connection.in_atomic_block:
            connection.close()  # the stream reads on its own connections, one read at a time
        response = StreamingHttpResponse(
            stream.events(execution.pk, after), content_type="text/event-stream; charset=utf-8"
        )
        response["Cache-Control"] = "no-cache, no-store"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on as it comes
        return response

    @extend_schema(
        request=None,
        responses=ExecutionDetailSerializer,
        parameters=[
            OpenApiParameter(
                "now",
                OpenApiTypes.BOOL,
                description="Stop running steps too (shell commands get SIGTERM, then SIGKILL "
                "after OPSFLOW_CANCEL_GRACE_SECONDS; HTTP requests are abandoned).",
            )
        ],
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Steps not started are cancelled; so is the run. Running steps finish and are
        recorded, or with `?now=true` are stopped and recorded cancelled."""
        now = request.query_params.get("now", "false").lower()
        if now not in ("true", "false", "1", "0"):
            raise ValidationError({"now": "true or false"})
        execution = self.get_object()
        try:
            services.cancel_execution(execution, request.user, now=now in ("true", "1"))
        except services.WrongState as exc:
            raise Conflict(str(exc)) from None
        return self._detail(execution)

    @extend_schema(request=BulkSerializer, responses=BulkResultSerializer)
    @action(detail=False, methods=["post"], url_path="bulk-cancel")
    def bulk_cancel(self, request):
        """Cancel the given ids, or every execution matching the filters (`all_matching:
        true`), at most 1,000 at once. Finished ones are skipped, with why."""
        return _bulk(self, lambda e: services.cancel_execution(e, request.user), "executions")

    @extend_schema(request=BulkSerializer, responses=BulkResultSerializer)
    @action(detail=False, methods=["post"], url_path="bulk-retrigger")
    def bulk_retrigger(self, request):
        """Re-trigger the given ids, or every execution matching the filters (`all_matching:
        true`), at most 1,000 at once: a new execution each, with the same variables."""
        return _bulk(self, lambda e: services.retrigger_execution(e, request.user), "executions")

    @extend_schema(request=None, responses={201: ExecutionDetailSerializer})
    @action(detail=True, methods=["post"])
    def retrigger(self, request, pk=None):
        """A new execution from the start with the same variables, linked to this one."""
        execution = self.get_object()
        try:
            new = services.retrigger_execution(execution, request.user)
        except services.WorkflowNotRunnable as exc:
            raise Conflict(str(exc)) from None
        except DefinitionError as exc:
            raise Conflict(f"The current version does not accept these variables: {exc}") from None
        return self._detail(new, status.HTTP_201_CREATED)

    @extend_schema(request=MarkSucceededSerializer, responses=StepSerializer)
    @action(detail=True, methods=["post"], url_path=r"steps/(?P<step_id>[0-9]+)/mark-succeeded")
    def mark_succeeded(self, request, pk=None, step_id=None):
        """Record a failed step as succeeded with this output; the run goes on from it."""
        execution = self.get_object()
        step = execution.steps.filter(pk=step_id).first()
        if step is None:
            raise NotFound(f"Execution #{execution.pk} has no step #{step_id}.")
        body = MarkSucceededSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            done = services.mark_step_succeeded(step, body.validated_data["output"], request.user)
        except services.WrongState as exc:
            raise Conflict(str(exc)) from None
        return Response(StepSerializer(done).data, status=status.HTTP_201_CREATED)


class IncompleteExecutionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Failed runs stored for resolution (DESIGN §6). DELETE discards one."""

    filterset_class = IncompleteExecutionFilterSet
    permission_classes = [IsAuthenticated, OrganizationRole]
    cursor_ordering = ("-created_at", "-id")
    action_roles = {"retry": CAN_EXECUTE, "destroy": CAN_EXECUTE}

    def organization_of(self, obj):
        return obj.organization

    def get_queryset(self):
        qs = IncompleteExecution.objects.select_related("workflow", "organization").order_by(
            "-created_at", "-id"
        )
        return scope_to_user(qs, self.request.user)

    def get_serializer_class(self):
        return (
            IncompleteExecutionDetailSerializer
            if self.action == "retrieve"
            else IncompleteExecutionSerializer
        )

    @extend_schema(request=RetrySerializer, responses=IncompleteExecutionDetailSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Resume the same execution from the failed node, optionally with edited input or bundles."""
        record = self.get_object()
        body = RetrySerializer(data=request.data, context={"record": record})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            services.retry_incomplete(
                record,
                input=data.get("input"),
                bundles=data.get("bundles"),
                use_current_version=data["use_current_version"],
                user=request.user,
            )
        except services.WrongState as exc:
            raise Conflict(str(exc)) from None
        record.refresh_from_db()
        return Response(IncompleteExecutionDetailSerializer(record).data)

    def perform_destroy(self, instance):
        try:
            services.discard_incomplete(instance, self.request.user)
        except services.WrongState as exc:
            raise Conflict(str(exc)) from None

    @extend_schema(request=BulkSerializer, responses=BulkResultSerializer)
    @action(detail=False, methods=["post"], url_path="bulk-retry")
    def bulk_retry(self, request):
        """Retry the given ids, or every record matching the filters (`all_matching: true`)."""
        return _bulk(self, lambda r: services.retry_incomplete(r, user=request.user), "records")

    @extend_schema(request=BulkSerializer, responses=BulkResultSerializer)
    @action(detail=False, methods=["post"], url_path="bulk-discard")
    def bulk_discard(self, request):
        """Discard the given ids, or every record matching the filters (`all_matching: true`)."""
        return _bulk(self, lambda r: services.discard_incomplete(r, request.user), "records")


class AgentViewSet(viewsets.ReadOnlyModelViewSet):
    """The agents (RQ workers) that run steps, with their heartbeat and current steps.

    Agents are shared by every organization; the steps listed are those of your organizations.
    """

    queryset = Agent.objects.all()  # newest heartbeat first (Meta.ordering)
    serializer_class = AgentSerializer
    filterset_class = AgentFilterSet
