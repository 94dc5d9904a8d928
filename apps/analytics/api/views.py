"""GET /api/v1/analytics/summary/, /export/ and /health/: scoped to the user's organizations."""

from __future__ import annotations

from django.conf import settings
from django.http import FileResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, renderers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.api.errors import Conflict
from apps.accounts.permissions import organization_ids_for
from apps.analytics import escalation, exports, services
from apps.analytics.api.serializers import (
    ExportRequestSerializer,
    ExportSerializer,
    HealthSerializer,
    SummarySerializer,
)
from apps.analytics.choices import ExportStatus
from apps.analytics.models import Export


class Gone(exceptions.APIException):
    status_code = status.HTTP_410_GONE
    default_code = "gone"
    default_detail = "This is no longer available."


RANGE_PARAMETERS = [
    OpenApiParameter(
        "from",
        str,
        description="A date (YYYY-MM-DD: that whole day, in the organization's time zone) or an "
        "ISO 8601 date and time. Default: 7 days before `to`.",
    ),
    OpenApiParameter(
        "to", str, description="A date (included) or a date and time (excluded). Default: now."
    ),
    OpenApiParameter(
        "range",
        str,
        enum=["24h", "7d", "30d", "90d"],
        description="A preset instead of `from`: the last 24 hours, or the last N days (today "
        "included).",
    ),
    OpenApiParameter("workflow", str, description="A workflow's slug."),
    OpenApiParameter("organization", str, description="An organization's slug."),
]


def scope_of(request) -> services.Scope:
    try:
        return services.scope_for(request.user, request.query_params)
    except services.BadRange as exc:
        raise exceptions.ValidationError({exc.param: [exc.message]}) from None


class SummaryView(APIView):
    @extend_schema(parameters=RANGE_PARAMETERS, responses=SummarySerializer)
    def get(self, request):
        """The metrics of the runs created in the range (see the README's Analytics section)."""
        return Response(SummarySerializer(services.summary(scope_of(request))).data)


class HealthView(APIView):
    @extend_schema(responses=HealthSerializer)
    def get(self, request):
        """Escalation signals: a failure spike across workflows, a growing overdue count,
        queues with waiting steps and no live agent."""
        org_ids = organization_ids_for(request.user)
        runs = escalation.runs_of(org_ids)
        spike = escalation.failure_spike(runs)
        overdue = escalation.overdue_trend(runs)
        offline = escalation.offline_queues(org_ids)
        body = {
            "failure_spike": {
                "last_hour": spike.last_hour,
                "hourly_average": round(spike.hourly_average, 3),
                "workflows": spike.workflows,
                "flagged": spike.flagged,
            },
            "overdue": {
                "now": overdue.now,
                "fifteen_minutes_ago": overdue.before,
                "flagged": overdue.flagged,
            },
            "agents": {
                "offline_queues": [{"queue": q.name, "waiting": q.waiting} for q in offline],
                "flagged": bool(offline),
            },
        }
        return Response(HealthSerializer(body).data)


class _FileRenderer(renderers.BaseRenderer):
    """Lets DRF's `?format=` name the export's format (the view streams the body itself)."""

    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class CSVRenderer(_FileRenderer):
    media_type = "text/csv"
    format = "csv"


class XLSXRenderer(_FileRenderer):
    media_type = exports.XLSX_TYPE
    format = "xlsx"


class ExportView(APIView):
    renderer_classes = [CSVRenderer, XLSXRenderer, renderers.JSONRenderer]

    def perform_content_negotiation(self, request, force=False):
        fmt = request.query_params.get("format")
        if fmt not in ("csv", "xlsx"):
            raise exceptions.ValidationError({"format": ["must be csv or xlsx."]})
        return super().perform_content_negotiation(request, force)

    def handle_exception(self, exc):
        # Errors are JSON whatever the format asked for.
        self.request.accepted_renderer = renderers.JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return super().handle_exception(exc)

    @extend_schema(
        parameters=[
            OpenApiParameter("format", str, enum=["csv", "xlsx"], required=True),
            *RANGE_PARAMETERS,
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY),
            (200, exports.XLSX_TYPE): OpenApiResponse(OpenApiTypes.BINARY),
        },
    )
    def get(self, request):
        """One row per execution of the range, as CSV or XLSX (with a Summary sheet), streamed.
        More rows than OPSFLOW_EXPORT_SYNC_MAX_ROWS are refused: ask for a background export
        (POST /api/v1/analytics/exports/) or narrow the range."""
        scope = scope_of(request)
        fmt = request.query_params["format"]
        limit = settings.OPSFLOW_EXPORT_SYNC_MAX_ROWS
        count = scope.executions()[: limit + 1].count()
        if count > limit:
            raise exceptions.ValidationError(
                {
                    "from": [
                        f"more than {limit:,} executions in the range "
                        "(OPSFLOW_EXPORT_SYNC_MAX_ROWS): export them in the background "
                        "(POST /api/v1/analytics/exports/) or narrow the range."
                    ]
                }
            )
        stamp = f"{scope.start:%Y%m%d}-{scope.end:%Y%m%d}"
        if fmt == "csv":
            body, media = exports.csv_stream(scope), "text/csv; charset=utf-8"
        else:
            body, media = exports.xlsx_stream(scope), exports.XLSX_TYPE
        response = StreamingHttpResponse(body, content_type=media)
        response["Content-Disposition"] = f'attachment; filename="executions-{stamp}.{fmt}"'
        return response


class ExportJobViewSet(viewsets.GenericViewSet):
    """Background exports: each user sees their own."""

    serializer_class = ExportSerializer
    queryset = Export.objects.none()  # (the schema's model; each request gets its own rows)
    lookup_value_regex = r"[0-9]+"

    def get_queryset(self):
        return Export.objects.filter(user=self.request.user)

    @extend_schema(responses=ExportSerializer(many=True))
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ExportSerializer(page, many=True).data)

    @extend_schema(request=ExportRequestSerializer, responses={202: ExportSerializer})
    def create(self, request):
        """Queue an export of the range: 202, then follow its progress at its URL."""
        asked = ExportRequestSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        params = {k: v for k, v in asked.validated_data.items() if k != "format"}
        try:
            export = exports.start_export(request.user, params, asked.validated_data["format"])
        except services.BadRange as exc:
            raise exceptions.ValidationError({exc.param: [exc.message]}) from None
        return Response(ExportSerializer(export).data, status=202)

    def retrieve(self, request, pk=None):
        return Response(ExportSerializer(self.get_object()).data)

    @extend_schema(
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY),
            (200, exports.XLSX_TYPE): OpenApiResponse(OpenApiTypes.BINARY),
        }
    )
    @action(detail=True, methods=["get"], url_path="download")
    def download(self, request, pk=None):
        """The file, once done (409 before; 410 once expired)."""
        export = self.get_object()
        if export.status == ExportStatus.EXPIRED:
            raise Gone(f"This export expired {export.expires_at:%Y-%m-%d %H:%M} UTC: ask again.")
        if export.status != ExportStatus.DONE:
            raise Conflict(f"This export is {export.status}: its file is not ready.")
        media = "text/csv" if export.format == "csv" else exports.XLSX_TYPE
        response = FileResponse(export.path().open("rb"), content_type=media)  # noqa: SIM115 (closed by the response)
        response["Content-Disposition"] = f'attachment; filename="{export.file_name}"'
        return response
