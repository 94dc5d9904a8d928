"""The portal's admin site: django-unfold's, with the ops dashboard as its index."""

from __future__ import annotations

from django.template.response import TemplateResponse
from django.urls import path
from unfold.sites import UnfoldAdminSite


class OpsflowAdminSite(UnfoldAdminSite):
    site_header = "Opsflow"
    site_title = "Opsflow"
    index_title = "Dashboard"
    index_template = "admin/opsflow/dashboard.html"

    def get_urls(self):
        from apps.analytics.views import analytics_view, export_view, start_export_view

        return [
            path("analytics/", self.admin_view(analytics_view), name="analytics"),
            path(
                "analytics/exports/", self.admin_view(start_export_view), name="analytics_exports"
            ),
            path(
                "analytics/exports/<int:pk>/", self.admin_view(export_view), name="analytics_export"
            ),
            *super().get_urls(),
        ]

    def index(self, request, extra_context=None):
        from apps.executions import dashboard
        from apps.executions.admin import wants_partial

        context = {"dashboard": dashboard.build(request.user), **(extra_context or {})}
        if wants_partial(request):  # the dashboard refreshing itself
            return TemplateResponse(request, f"{self.index_template}#board", context)
        return super().index(request, context)
