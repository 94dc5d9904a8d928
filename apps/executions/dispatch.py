"""Redis and RQ plumbing. RQ only carries dispatch; the database row is the truth.

With REDIS_URL unset, every connection talks to one in-process fakeredis server (the embedded
default, DESIGN §1): web, worker threads and the scheduler share it inside one process.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.utils import timezone
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry
from rq.worker import Worker

logger = logging.getLogger(__name__)

JOB_FUNC = "apps.executions.jobs.run_step"
FAILURE_TTL = 7 * 24 * 3600


class Counter:
    """A count for this process, safe across threads (shown by /readyz)."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        return self._value


ENQUEUE_FAILURES = Counter()  # enqueues that Redis did not take since this process started

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
            # Only short commands go through this client (worker processes block on django-rq's
            # own; worker threads run only on the embedded default), so a hung Redis costs a
            # request OPSFLOW_REDIS_TIMEOUT, never forever; and few retries, so a Redis that is
            # down answers a trigger in milliseconds (redis-py's default retries for seconds),
            # and the step waits for the reconciler instead.
            client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=settings.OPSFLOW_REDIS_TIMEOUT,
                socket_connect_timeout=settings.OPSFLOW_REDIS_TIMEOUT,
                health_check_interval=30,
                retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 2),
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


def ping() -> str:
    """ "" when Redis answers, else why not (for /readyz)."""
    try:
        return "" if get_connection().ping() else "no answer to PING"
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


# --- where is a job? (the reconciler's question: will anyone run it?) ---

ENDED = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


@dataclass(frozen=True)
class JobPlace:
    """Where one RQ job is, read in one atomic snapshot of Redis."""

    exists: bool
    status: str = ""
    worker_name: str = ""
    listed: bool = False  # in its queue's list: a worker will pop it
    parked: bool = False  # in its queue's scheduled or deferred registry: it will be queued
    taken: bool = False  # in its queue's intermediate list: a worker popped it, never started it


def locate_jobs(jobs: dict[str, str]) -> dict[str, JobPlace]:
    """{job id: queue name} → where each job is. One MULTI/EXEC, so a job moving from the list
    to a worker between two reads cannot look lost. Each queue's list is read once, whatever
    the number of jobs asked about."""
    if not jobs:
        return {}
    connection = get_connection()
    queues = sorted(set(jobs.values()))
    pipe = connection.pipeline(transaction=True)
    for name in queues:
        key = Queue(name, connection=connection).key
        pipe.lrange(key, 0, -1)
        pipe.lrange(IntermediateQueue.get_intermediate_queue_key(key), 0, -1)
    for job_id, name in jobs.items():
        pipe.hmget(Job.key_for(job_id), "status", "worker_name")
        pipe.zscore(ScheduledJobRegistry(name, connection=connection).key, job_id)
        pipe.zscore(DeferredJobRegistry(name, connection=connection).key, job_id)
    replies = iter(pipe.execute())
    listed: dict[str, set[bytes]] = {}
    taken: dict[str, set[bytes]] = {}
    for name in queues:
        listed[name], taken[name] = set(next(replies)), set(next(replies))
    places = {}
    for job_id, name in jobs.items():
        (status, worker), scheduled, deferred = next(replies), next(replies), next(replies)
        raw = job_id.encode()
        places[job_id] = JobPlace(
            exists=status is not None,
            status=(status or b"").decode(),
            worker_name=(worker or b"").decode(),
            listed=raw in listed[name],
            parked=scheduled is not None or deferred is not None,
            taken=raw in taken[name],
        )
    return places


def rq_worker_hosts(names: set[str]) -> dict[str, str]:
    """RQ worker name → its host, for the workers RQ still lists (a dead one's key expires)."""
    if not names:
        return {}
    connection = get_connection()
    pipe = connection.pipeline(transaction=False)
    ordered = sorted(names)
    for name in ordered:
        pipe.hget(Worker.redis_worker_namespace_prefix + name, "hostname")
    return {
        name: host.decode()
        for name, host in zip(ordered, pipe.execute(), strict=True)
        if host is not None
    }


def discard_job(job_id: str, queue: str) -> None:
    """Forget a job nobody will run: its hash, and its id in the queue's lists and registries,
    so RQ's own clean-ups never act on it later."""
    connection = get_connection()
    key = Queue(queue, connection=connection).key
    pipe = connection.pipeline(transaction=True)
    pipe.lrem(key, 0, job_id)
    pipe.lrem(IntermediateQueue.get_intermediate_queue_key(key), 0, job_id)
    pipe.zrem(ScheduledJobRegistry(queue, connection=connection).key, job_id)
    pipe.delete(Job.key_for(job_id))
    pipe.execute()
