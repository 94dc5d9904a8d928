from __future__ import annotations

import json

from django.contrib import admin
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django_htmx.http import HttpResponseStopPolling

from apps.accounts.admin_mixins import OrganizationScopedAdmin
from apps.executions.choices import STATUS_COLOURS
from apps.executions.models import Execution


def status_badge(status: str, label: str | None = None):
    colour = STATUS_COLOURS.get(status, "#6b7280")
    return format_html(
        '<span class="opsflow-badge opsflow-{}" style="background:{}">{}</span>',
        status,
        colour,
        label or status,
    )


def wants_partial(request) -> bool:
    """The one place that decides between the full page and the HTMX partial."""
    return bool(getattr(request, "htmx", False)) and not request.htmx.boosted


@admin.register(Execution)
class ExecutionAdmin(OrganizationScopedAdmin, admin.ModelAdmin):
    organization_field = "workflow__organization"
    list_display = [
        "id_link",
        "workflow",
        "badge",
        "trigger",
        "started_at",
        "duration",
        "jobs",
        "triggered_by",
    ]
    list_display_links = None
    list_filter = [
        "status",
        "trigger",
        ("workflow", admin.RelatedOnlyFieldListFilter),
    ]  # scoped choices
    search_fields = ["workflow__name", "workflow__slug"]
    list_select_related = ["workflow", "version", "triggered_by"]
    date_hierarchy = "created_at"
    list_per_page = 50

    def get_queryset(self, request):
        return super().get_queryset(request).with_counts()

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Execution", ordering="id")
    def id_link(self, obj):
        return format_html('<a href="{}">#{}</a>', obj.get_absolute_url(), obj.pk)

    @admin.display(description="Status", ordering="status")
    def badge(self, obj):
        return status_badge(obj.status)

    @admin.display(description="Duration")
    def duration(self, obj):
        return _format_ms(obj.duration_ms)

    @admin.display(description="Jobs")
    def jobs(self, obj):
        return f"{obj.jobs_completed}/{obj.jobs_total}"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        execution = get_object_or_404(
            self.get_queryset(request).select_related("retriggered_from"), pk=object_id
        )
        steps = list(execution.steps.order_by("created_at", "id"))
        for step in steps:
            step.input_json = _pretty(step.input)
            step.output_json = _pretty(step.output)
            step.badge = status_badge(step.status)
            step.duration = _format_ms(step.duration_ms)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Execution #{execution.pk} of {execution.workflow.name}",
            "opts": self.model._meta,
            "execution": execution,
            "badge": status_badge(execution.status),
            "duration": _format_ms(execution.duration_ms),
            "steps": steps,
            "events": execution.events.order_by("created_at", "id"),
            "variables_json": _pretty(execution.variables),
            "live": not execution.is_terminal,
        }
        if wants_partial(request):
            response = TemplateResponse(
                request, "executions/partials/_execution_detail.html", context
            )
            if execution.is_terminal:
                response.render()
                stop = HttpResponseStopPolling(response.content)
                return stop
            return response
        return TemplateResponse(request, "admin/executions/execution/detail.html", context)


def _pretty(value) -> str:
    if value is None:
        return ""
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def _format_ms(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms // 60_000} min {ms % 60_000 // 1000} s"
