from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from apps.executions.dispatch import ping


@require_GET
def healthz(request):
    """The process is up."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """The database and Redis are reachable; 503 otherwise."""
    checks = {"database": False, "redis": ping()}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            checks["database"] = cursor.fetchone() == (1,)
    except Exception:
        checks["database"] = False
    ok = all(checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )
