from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from apps.executions.views import healthz, readyz
from apps.workflows.webhooks import receive

admin.site.site_header = "Opsflow"
admin.site.site_title = "Opsflow"
admin.site.index_title = "Operations portal"

api_v1 = [
    path("", include("apps.workflows.api.urls")),
    path("", include("apps.executions.api.urls")),
    path("", include("apps.approvals.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("api/v1/", include(api_v1)),
    path("django-rq/", include("django_rq.urls")),
    path("approvals/", include("apps.approvals.urls")),
    path("hooks/<str:key>/", receive, name="webhook"),
    path("", admin.site.urls),  # last: the admin's catch-all would shadow the routes above
]
