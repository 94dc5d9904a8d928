from django.urls import path

from apps.analytics.api.views import ExportView, HealthView, SummaryView

urlpatterns = [
    path("analytics/summary/", SummaryView.as_view(), name="analytics-summary"),
    path("analytics/export/", ExportView.as_view(), name="analytics-export"),
    path("analytics/health/", HealthView.as_view(), name="analytics-health"),
]
