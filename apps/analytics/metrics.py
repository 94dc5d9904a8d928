"""Prometheus metrics at /metrics (issue 13 item 5): being written; answers 503 until then."""

from django.http import HttpResponse


def metrics_view(request):
    return HttpResponse("Metrics are not available yet.\n", status=503, content_type="text/plain")
