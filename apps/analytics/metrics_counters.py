"""Event counters for `/metrics`, kept in Redis so that every process adds to the same totals.

The web tier runs several processes and each agent is a process of its own, so a counter in one
process's memory would be a fraction of the truth. These counters are Redis hashes that every
process increments (HINCRBY), and `/metrics` reads them at scrape time:

- executions that ended (completed, failed, incomplete, cancelled), by workflow and status;
- step attempts that ran and ended, by workflow and status, and their duration by node type;
- webhook requests, by outcome.

Executions and steps are counted from their transitions' saves (`connect()`: a `post_save`
receiver that looks at `update_fields`), so every path that ends one is counted, whichever
process takes it: a worker recording a step, an approver's decision, a cancel, the reconciler.
A count is taken once the transaction commits; a rolled-back transition counts nothing.

The step path stays free of I/O: inside an agent (a worker running a step) the counts wait in
this process's memory and go to Redis with the agent's heartbeat (`flush`, every
OPSFLOW_HEARTBEAT_SECONDS, one pipeline), and when the worker stops. Anywhere else (a web
request, the scheduler) they are sent at once. Redis being down loses nothing until the process
ends: the counts wait for the next flush.

Fields name the workflow by id (the labels' slugs are looked up at scrape time, so a renamed
workflow keeps its history); nothing names an execution or a step.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import defaultdict

from django.db import transaction
from django.db.models.signals import post_save
from redis.exceptions import RedisError

from apps.executions.choices import ExecutionStatus, StepStatus
from apps.executions.models import Execution, Step
from apps.executions.worker import current_agent

logger = logging.getLogger(__name__)

PREFIX = "opsflow:metrics:"
EXECUTIONS = PREFIX + "executions"  # "<workflow id>|<status>" → ended executions
STEPS = PREFIX + "steps"  # "<workflow id>|<status>" → step attempts that ended
STEP_DURATION = PREFIX + "step_duration"  # "<node type>|<bucket>" / "|count" / "|sum_us"
WEBHOOKS = PREFIX + "webhooks"  # "<outcome>" → requests
KEYS = (EXECUTIONS, STEPS, STEP_DURATION, WEBHOOKS)

# The ends the definitions count: "Ended = completed, failed, incomplete, cancelled".
EXECUTION_ENDED = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.INCOMPLETE,
        ExecutionStatus.CANCELLED,
    }
)
# A step attempt that started and ended (Step.finish, Step.interrupt, a gate cancelled with its
# run). Steps decided `skipped` and dispatched steps cancelled before they started never ran.
STEP_ENDED = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.TIMEOUT,
        StepStatus.CANCELLED,
        StepStatus.INTERRUPTED,
    }
)

# Seconds. A noop step takes about a millisecond, a shell command seconds, an approval gate
# (its step runs until the decision) hours.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
INF_BUCKET = len(DURATION_BUCKETS)  # the index of the +Inf bucket

WEBHOOK_OUTCOMES = {
    202: "accepted",
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
}
WEBHOOK_DUPLICATE = "duplicate"  # a 202 for a delivery already accepted (Idempotency-Key)
WEBHOOK_ERROR = "error"  # anything else (a 500)


class Pending:
    """Counts this process has not sent to Redis yet: (hash, field) → increment."""

    def __init__(self) -> None:
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()

    def add(self, counts: list[tuple[str, str, int]]) -> None:
        with self._lock:
            for key, field, n in counts:
                self._counts[key, field] += n

    def take(self) -> dict[tuple[str, str], int]:
        with self._lock:
            counts, self._counts = self._counts, defaultdict(int)
        return counts

    def __len__(self) -> int:
        return len(self._counts)


PENDING = Pending()


def flush(connection=None) -> int:
    """Send this process's waiting counts to Redis in one pipeline; returns how many fields.

    On a Redis error the counts are kept for the next flush, and the error is raised."""
    counts = PENDING.take()
    if not counts:
        return 0
    if connection is None:
        from apps.executions.dispatch import get_connection

        connection = get_connection()
    try:
        pipe = connection.pipeline(transaction=False)
        for (key, field), n in counts.items():
            pipe.hincrby(key, field, n)
        pipe.execute()
    except Exception:
        PENDING.add([(key, field, n) for (key, field), n in counts.items()])
        raise
    return len(counts)


def _count(counts: list[tuple[str, str, int]]) -> None:
    """After commit: keep the counts for the heartbeat inside an agent, else send them now."""
    PENDING.add(counts)
    if current_agent.get() is not None:
        return  # a worker running steps: its heartbeat (or its stop) sends them
    try:
        flush()
    except RedisError as exc:
        logger.debug("metrics counts wait for Redis: %s", exc)
    except Exception:  # a count must never fail what it counts
        logger.warning("metrics counts not sent", exc_info=True)


def step_counts(workflow_id: int, status: str, node_type: str, seconds: float | None):
    counts = [(STEPS, f"{workflow_id}|{status}", 1)]
    if seconds is not None:
        bucket = bisect.bisect_left(DURATION_BUCKETS, seconds)  # the first bound ≥ seconds
        counts += [
            (STEP_DURATION, f"{node_type}|{bucket}", 1),
            (STEP_DURATION, f"{node_type}|count", 1),
            (STEP_DURATION, f"{node_type}|sum_us", max(round(seconds * 1_000_000), 0)),
        ]
    return counts


def _execution_saved(sender, instance, created, update_fields, using, **kwargs) -> None:
    try:
        _count_execution(instance, created, update_fields, using)
    except Exception:  # a count must never fail the transition it counts
        logger.warning("could not count execution %s for the metrics", instance.pk, exc_info=True)


def _step_saved(sender, instance, created, update_fields, using, **kwargs) -> None:
    try:
        _count_step(instance, created, update_fields, using)
    except Exception:  # a count must never fail the transition it counts
        logger.warning("could not count step %s for the metrics", instance.pk, exc_info=True)


def _count_execution(instance, created, update_fields, using) -> None:
    if created or not update_fields or "status" not in update_fields:
        return
    if instance.status not in EXECUTION_ENDED:
        return
    counts = [(EXECUTIONS, f"{instance.workflow_id}|{instance.status}", 1)]
    transaction.on_commit(lambda: _count(counts), using=using, robust=True)


def _count_step(instance, created, update_fields, using) -> None:
    if created or not update_fields or "status" not in update_fields:
        return
    if instance.status not in STEP_ENDED:
        return
    if Step.execution.is_cached(instance):  # the engine's paths: no query
        workflow_id = instance.execution.workflow_id
    else:
        workflow_id = Execution.objects.values_list("workflow_id", flat=True).get(
            pk=instance.execution_id
        )
    seconds = None
    if instance.started_at and instance.finished_at:
        seconds = (instance.finished_at - instance.started_at).total_seconds()
    counts = step_counts(workflow_id, instance.status, instance.node_type, seconds)
    transaction.on_commit(lambda: _count(counts), using=using, robust=True)


def connect() -> None:
    """Count executions and steps as they end, in this process (idempotent)."""
    post_save.connect(_execution_saved, sender=Execution, dispatch_uid="opsflow-metrics-execution")
    post_save.connect(_step_saved, sender=Step, dispatch_uid="opsflow-metrics-step")


def webhook_outcome(status_code: int, duplicate: bool = False) -> str:
    if status_code == 202 and duplicate:
        return WEBHOOK_DUPLICATE
    return WEBHOOK_OUTCOMES.get(status_code, WEBHOOK_ERROR)


def count_webhook(outcome: str) -> None:
    """One webhook request: sent to Redis at once (a web process has no heartbeat)."""
    _count([(WEBHOOKS, outcome, 1)])
