"""Redis and RQ plumbing. RQ only carries dispatch; the database row is the truth.

With REDIS_URL unset, every connection talks to one in-process fakeredis server (the embedded
default, DESIGN §1): web, worker threads and the scheduler share it inside one process.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.utils import timezone
from rq import Queue

JOB_FUNC = "apps.executions.jobs.run_step"
FAILURE_TTL = 7 * 24 * 3600

_lock = threading.RLock()
_connection: tuple[int, redis.Redis] | None = None
_fake_server = None


def fake_server():
    """The process-wide fakeredis server of the embedded default (and of tests without REDIS_URL)."""
    global _fake_server
    with _lock:
        if _fake_server is None:
            import fakeredis

            _fake_server = fakeredis.FakeServer()
        return _fake_server


def get_connection() -> redis.Redis:
    """One client (with its pool) per process; a forked child opens its own."""
    global _connection
    pid = os.getpid()
    if _connection and _connection[0] == pid:
        return _connection[1]
    with _lock:
        if _connection and _connection[0] == pid:
            return _connection[1]
        if settings.REDIS_URL:
            client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=None,
                socket_connect_timeout=5,
                health_check_interval=30,
            )
        else:
            import fakeredis

            client = fakeredis.FakeRedis(server=fake_server())
        _connection = (pid, client)
        return client


def reset_connection() -> None:
    """Forget the cached client (tests switch between fakeredis servers with this)."""
    global _connection, _fake_server
    with _lock:
        _connection = None
        _fake_server = None


def get_queue(name: str) -> Queue:
    return Queue(name, connection=get_connection())


def enqueue_step(
    step_id: int, queue: str, job_id: str, timeout: int, not_before: datetime | None = None
) -> None:
    """Put `run_step(step_id)` on the node's queue (now, or at `not_before`)."""
    q = get_queue(queue)
    options = {
        "job_id": job_id,
        "job_timeout": timeout,
        "result_ttl": 0,
        "failure_ttl": FAILURE_TTL,
        "description": f"run_step({step_id})",
    }
    if not_before and not_before > timezone.now():
        # RQ scores scheduled jobs in whole seconds, rounded down: round up so it never runs early.
        if not_before.microsecond:
            not_before = not_before.replace(microsecond=0) + timedelta(seconds=1)
        q.enqueue_at(not_before, JOB_FUNC, step_id, **options)
    else:
        q.enqueue(JOB_FUNC, step_id, **options)


def ping() -> bool:
    try:
        return bool(get_connection().ping())
    except redis.RedisError:
        return False
