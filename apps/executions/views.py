import logging

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from apps.executions.choices import StepStatus
from apps.executions.dispatch import ENQUEUE_FAILURES, ping
from apps.executions.models import Step

logger = logging.getLogger(__name__)


@require_GET
def healthz(request):
    """The process is up."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """The database and Redis are reachable; 503 otherwise, naming the store that is down.

    Also: steps waiting for Redis to come back (their enqueue failed; the reconciler sends
    them when it answers) and this process's failed enqueues since it started. Why a store is
    down goes to the log, not to this unauthenticated page.
    """
    checks = {"database": False, "redis": False}
    redis_problem = ping()
    checks["redis"] = not redis_problem
    if redis_problem:
        logger.warning("readyz: Redis is down: %s", redis_problem)
    unsent = None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            checks["database"] = cursor.fetchone() == (1,)
        unsent = Step.objects.filter(
            status=StepStatus.DISPATCHED, unsent_since__isnull=False
        ).count()
    except Exception as exc:
        logger.warning("readyz: the database is down: %s", exc)
    ok = all(checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    if not ok:
        body["down"] = [name for name, up in checks.items() if not up]
    body["unsent_steps"] = unsent
    body["enqueue_failures"] = ENQUEUE_FAILURES.value
    return JsonResponse(body, status=200 if ok else 503)
