from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.analytics.api.views import ExportJobViewSet, ExportView, HealthView, SummaryView

router = SimpleRouter()
router.register("analytics/exports", ExportJobViewSet, basename="analytics-export")

urlpatterns = [
    path("analytics/summary/", SummaryView.as_view(), name="analytics-summary"),
    path("analytics/export/", ExportView.as_view(), name="analytics-export"),
    path("analytics/health/", HealthView.as_view(), name="analytics-health"),
    *router.urls,
]
