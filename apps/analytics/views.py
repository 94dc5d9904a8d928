"""The analytics page of the portal (issue 13 item 2): the summary of a range as cards, the
daily trend as a stacked chart (unfold's Chart.js), top workflows and agent utilization, every
number a link to the executions it counts, and the exports."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, QueryDict
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django_htmx.http import HttpResponseStopPolling

from apps.accounts.permissions import organization_ids_for
from apps.analytics import services
from apps.workflows.models import Workflow

PRESETS = [("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days"), ("90d", "90 days")]
COLOURS = {  # the badge palette's (opsflow.css), read by unfold's chart code as CSS variables
    "completed": "var(--color-green-600)",
    "failed": "var(--color-red-600)",
    "incomplete": "var(--color-orange-500)",
    "cancelled": "var(--color-base-400)",
}


def _params(request) -> QueryDict:
    """The query; a preset (`range`) gives way to dates typed in the form."""
    params = request.GET.copy()
    if params.get("from") or params.get("to"):
        params.pop("range", None)
    return params


def _list(scope: services.Scope, **filters) -> str:
    """The executions list, filtered to what a figure counts."""
    query = {
        "created_at__gte": scope.start.isoformat(),
        "created_at__lt": scope.end.isoformat(),
        **filters,
    }
    if scope.workflow is not None:
        query.setdefault("workflow__id__exact", scope.workflow.pk)
    return f"{reverse('admin:executions_execution_changelist')}?{urlencode(query)}"


def analytics_view(request):
    params = _params(request)
    context = {
        **admin.site.each_context(request),
        "title": "Analytics",
        "presets": PRESETS,
        "preset": request.GET.get("range", ""),
        "workflows": Workflow.objects.filter(
            organization_id__in=organization_ids_for(request.user)
        ).order_by("name"),
        "params": params,
    }
    try:
        scope = services.scope_for(request.user, params)
    except services.BadRange as exc:
        context["problem"] = str(exc)
        return TemplateResponse(request, "admin/analytics/index.html", context, status=400)
    figures = services.summary(scope)
    export = urlencode(scope.params())
    context.update(
        scope=scope,
        figures=figures,
        cards=_cards(scope, figures),
        days=_days(scope, figures["daily"]),
        chart=json.dumps(_chart(figures["daily"])),
        chart_options=json.dumps(_chart_options()),
        top=[
            {**row, "url": _list(scope, workflow__id__exact=row["workflow_id"])}
            for row in figures["top_workflows"]
        ],
        agents=_usage(figures["agent_utilization"]["agents"]),
        queues=_usage(figures["agent_utilization"]["queues"]),
        background=figures["total"] > settings.OPSFLOW_EXPORT_SYNC_MAX_ROWS,
        kept=scope.params(),
        export_csv=f"{reverse('analytics-export')}?format=csv&{export}",
        export_xlsx=f"{reverse('analytics-export')}?format=xlsx&{export}",
    )
    return TemplateResponse(request, "admin/analytics/index.html", context)


def _cards(scope, figures) -> list[dict]:
    by_status = figures["by_status"]

    def ms(value):
        return "—" if value is None else _duration(value)

    rate = figures["success_rate"]
    return [
        {"label": "Executions", "value": f"{figures['total']:,}", "url": _list(scope)},
        {
            "label": "Success rate",
            "value": "—" if rate is None else f"{rate} %",
            "note": "completed of completed, failed and incomplete",
            "url": _list(scope, status__exact="completed"),
        },
        *(
            {
                "label": status.capitalize(),
                "value": f"{by_status[status]:,}",
                "url": _list(scope, status__exact=status),
                "alarm": status in ("failed", "incomplete") and by_status[status] > 0,
            }
            for status in ("completed", "failed", "incomplete", "cancelled")
        ),
        {
            "label": "Duration",
            "value": ms(figures["avg_duration_ms"]),
            "note": f"p50 {ms(figures['p50_duration_ms'])} · p95 {ms(figures['p95_duration_ms'])}",
            "url": _list(scope),
        },
        {
            "label": "Active workflows",
            "value": figures["active_workflows"],
            "note": "active, with a published version",
            "url": reverse("admin:workflows_workflow_changelist") + "?is_active__exact=1",
        },
    ]


AGENT_ROWS = 10


def _usage(rows: list[dict]) -> dict:
    """The busiest rows, their busy time in words, and how many more there are."""
    shown = [{**row, "busy": _duration(row["busy_ms"])} for row in rows[:AGENT_ROWS]]
    return {"rows": shown, "more": max(len(rows) - AGENT_ROWS, 0)}


def _duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _days(scope, daily) -> list[dict]:
    from datetime import datetime, time

    rows = []
    for day in daily:
        start = datetime.combine(day["date"], time.min, tzinfo=scope.zone)
        bounds = {
            "created_at__gte": max(start, scope.start).isoformat(),
            "created_at__lt": min(start + timedelta(days=1), scope.end).isoformat(),
        }
        if scope.workflow is not None:
            bounds["workflow__id__exact"] = scope.workflow.pk
        base = reverse("admin:executions_execution_changelist")
        rows.append(
            {
                "date": day["date"],
                "cells": [
                    (day[s], f"{base}?{urlencode({**bounds, 'status__exact': s})}")
                    for s in ("completed", "failed", "incomplete", "cancelled")
                ],
            }
        )
    return rows


def _chart(daily) -> dict:
    return {
        "labels": [d["date"].strftime("%b %d") for d in daily],
        "datasets": [
            {
                "label": status.capitalize(),
                "data": [d[status] for d in daily],
                "backgroundColor": COLOURS[status],
                "stack": "runs",
            }
            for status in ("completed", "failed", "incomplete", "cancelled")
        ],
    }


def _chart_options() -> dict:
    return {
        "animation": False,
        "responsive": True,
        "maintainAspectRatio": False,
        "plugins": {"legend": {"display": True, "position": "top", "align": "end"}},
        "scales": {
            "x": {"stacked": True, "grid": {"display": False}},
            "y": {"stacked": True, "beginAtZero": True, "ticks": {"precision": 0}},
        },
    }


def start_export_view(request):
    """The page's "export in the background" buttons: queue it, then show its progress."""
    from apps.analytics import exports

    if request.method != "POST":
        raise PermissionDenied("Start an export with the analytics page's buttons.")
    fmt = request.POST.get("format")
    if fmt not in ("csv", "xlsx"):
        raise Http404("No such export format.")
    params = {k: request.POST.get(k, "") for k in ("from", "to", "workflow", "organization")}
    try:
        export = exports.start_export(request.user, params, fmt)
    except services.BadRange as exc:
        return TemplateResponse(
            request,
            "admin/analytics/export.html",
            {**admin.site.each_context(request), "title": "Export", "problem": str(exc)},
            status=400,
        )
    return redirect("admin:analytics_export", pk=export.pk)


def export_view(request, pk: int):
    """A background export's progress (the bar refreshes itself until it ends) and its file."""
    from apps.analytics.choices import EXPORT_COLOURS
    from apps.analytics.models import Export
    from apps.executions.admin import status_badge, wants_partial

    export = Export.objects.filter(pk=pk, user=request.user).first()
    if export is None:
        raise Http404("No such export of yours.")
    context = {
        **admin.site.each_context(request),
        "title": f"Export #{export.pk}",
        "export": export,
        "badge": status_badge(export.status, colours=EXPORT_COLOURS),
        "download": reverse("analytics-export-download", args=[export.pk]),
    }
    if wants_partial(request):
        response = TemplateResponse(request, "admin/analytics/export.html#progress", context)
        if not export.is_active:
            response.status_code = HttpResponseStopPolling.status_code  # 286: polling ends
        return response
    return TemplateResponse(request, "admin/analytics/export.html", context)
