from django.contrib import admin
from django.urls import URLPattern, include, path, re_path
from django_rq.urls import get_admin_urlpatterns, get_api_urlpatterns
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from apps.accounts.api.errors import UnknownEndpoint
from apps.accounts.api.views import TokenView
from apps.accounts.permissions import rq_dashboard
from apps.analytics.metrics import metrics_view
from apps.executions.views import healthz, readyz
from apps.workflows.incidents import receive_incident
from apps.workflows.webhooks import receive

api_v1 = [
    path("", include("apps.workflows.api.urls")),
    path("", include("apps.executions.api.urls")),
    path("", include("apps.approvals.api.urls")),
    path("", include("apps.credentials.api.urls")),
    path("", include("apps.accounts.api.urls")),
    path("", include("apps.analytics.api.urls")),
    path("auth/token/", TokenView.as_view(), name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI from the sidecar, its setup script a file of its own (the CSP allows no inline
    # script). No Redoc: its page loads web fonts from Google and inline code.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    re_path(r"^.*$", UnknownEndpoint.as_view()),  # last: the JSON 404 for the rest
]

# RQ's dashboard crosses organizations: superusers only, and only with REDIS_URL (its JSON
# stats too, which django-rq would open to a shared token).
rq_urls = [
    URLPattern(p.pattern, rq_dashboard(p.callback), p.default_args, p.name)
    for p in get_api_urlpatterns()
] + get_admin_urlpatterns(view_wrapper=rq_dashboard)

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/", include(api_v1)),
    path("approvals/", include("apps.approvals.urls")),
    path("hooks/<str:key>/", receive, name="webhook"),
    path("hooks/<str:key>/incident/", receive_incident, name="incident-webhook"),
    path("django-rq/", include((rq_urls, "django_rq"))),
    path("", admin.site.urls),  # last: the admin's catch-all would shadow the routes above
]

handler404 = "apps.accounts.views.not_found"
