"""The scheduler process: one leader at a time, a loop of due work read from the database.

Each tick: cron fires, approvals past their timeout (expired) or unanswered (escalated),
auto-retries of incomplete executions that are due, workflows that may come back or release
held runs, running steps whose agent died (interrupted, then a new attempt), dispatched steps
whose enqueue failed (sent as soon as Redis answers), dispatched steps that no RQ job will run
(a Redis restart, a dead worker that took the job; checked every third of
OPSFLOW_LOST_DISPATCH_AFTER), and retention once a day. When embedded it also promotes due RQ
scheduled jobs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from django.conf import settings
from django.db import close_old_connections
from redis.exceptions import RedisError

from apps.executions.dispatch import get_connection

logger = logging.getLogger(__name__)

LEADER_KEY = "opsflow:scheduler:leader"
ROLLUP_SECONDS = 60  # the analytics rollup folds its marks this often
TICK_SECONDS = 1.0


def lost_dispatch_check_seconds() -> float:
    """How often the lost-dispatch check runs: it reads each queue's list once a pass (about
    20 ms for a backlog of 10,000 jobs, 100 ms for 100,000; bench/dispatch_checks.py), so a
    third of OPSFLOW_LOST_DISPATCH_AFTER, not every tick; unsent steps go every tick."""
    return max(TICK_SECONDS, settings.OPSFLOW_LOST_DISPATCH_AFTER / 3)


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('expire', KEYS[1], ARGV[2])
end
return 0
"""


class SchedulerLoop:
    """Holds the leader lock in Redis and runs `tick()` about once a second while leading."""

    def __init__(self, embedded: bool = False):
        self.token = uuid.uuid4().hex
        self.embedded = embedded
        self.is_leader = False
        self._rq_scheduler = None
        self._last_run: dict[object, float] = {}

    def acquire_or_renew(self) -> bool:
        connection = get_connection()
        if self.is_leader:
            self.is_leader = bool(
                connection.eval(
                    _RENEW, 1, LEADER_KEY, self.token, settings.OPSFLOW_SCHEDULER_LEADER_TTL
                )
            )
        if not self.is_leader:
            self.is_leader = bool(
                connection.set(
                    LEADER_KEY, self.token, nx=True, ex=settings.OPSFLOW_SCHEDULER_LEADER_TTL
                )
            )
            if self.is_leader:
                logger.info("scheduler %s is now the leader", self.token[:8])
        return self.is_leader

    def release(self) -> None:
        if self.is_leader:
            connection = get_connection()
            try:
                if connection.get(LEADER_KEY) == self.token.encode():
                    connection.delete(LEADER_KEY)
            except RedisError:  # Redis is down: the lock expires by itself
                logger.warning("scheduler %s could not release the leader lock", self.token[:8])
            self.is_leader = False

    def tick(self) -> None:
        """One pass over everything due. The lock is renewed between phases, so a long phase (a
        backlog of cron fires) cannot outlive it unnoticed; a lost lock ends the pass."""
        from apps.analytics.rollup import scheduled_fold
        from apps.approvals.services import escalate_due_approvals, expire_due_approvals
        from apps.executions import cron
        from apps.executions.services import (
            reactivate_when_space_is_free,
            reconcile_lost_agents,
            reconcile_lost_dispatches,
            release_all_held,
            run_due_incomplete_retries,
            send_unsent_steps,
        )

        phases = [
            cron.tick,
            expire_due_approvals,
            escalate_due_approvals,
            run_due_incomplete_retries,
            reactivate_when_space_is_free,
            release_all_held,
            reconcile_lost_agents,
            send_unsent_steps,
            self._every(lost_dispatch_check_seconds(), reconcile_lost_dispatches),
            self._every(ROLLUP_SECONDS, scheduled_fold),
            self._prune_daily,
        ]
        if self.embedded:
            phases.insert(0, self._promote_scheduled_jobs)
        for index, phase in enumerate(phases):
            if index and not self.acquire_or_renew():
                logger.warning("scheduler %s lost the leader lock mid-tick", self.token[:8])
                return
            phase()

    def _every(self, seconds: float, phase):
        """`phase`, at most once every `seconds` of this loop."""

        def throttled() -> None:
            now = time.monotonic()
            if now - self._last_run.get(phase, -seconds) >= seconds:
                self._last_run[phase] = now
                phase()

        return throttled

    def _prune_daily(self) -> None:
        """Retention runs once a day, whichever scheduler leads when the day starts."""
        from django.utils import timezone

        from apps.executions.retention import prune_agents, prune_executions

        if get_connection().set(
            f"opsflow:prune:{timezone.now():%Y-%m-%d}", self.token, nx=True, ex=2 * 86400
        ):
            counts = prune_executions()
            prune_agents()
            from apps.analytics.exports import expire_exports
            from apps.workflows.incidents import prune_skipped

            expire_exports()
            prune_skipped()
            if counts:
                logger.info("retention pruned %s execution(s)", sum(counts.values()))

    def _promote_scheduled_jobs(self) -> None:
        """Embedded only: worker threads do not run RQ's scheduler process, so the loop does."""
        from rq.scheduler import RQScheduler

        if self._rq_scheduler is None:
            self._rq_scheduler = RQScheduler(settings.OPSFLOW_QUEUES, connection=get_connection())
            self._rq_scheduler._connection = (
                get_connection()
            )  # share the in-process fakeredis client
        self._rq_scheduler.acquire_locks()
        self._rq_scheduler.enqueue_scheduled_jobs()

    def run(self, stop: threading.Event) -> None:
        redis_down = False
        try:
            while not stop.is_set():
                try:
                    if self.acquire_or_renew():
                        self.tick()
                    if redis_down:
                        logger.warning("scheduler %s: Redis answers again", self.token[:8])
                        redis_down = False
                except RedisError as exc:  # an outage: one warning, not a traceback a second
                    if not redis_down:
                        logger.warning(
                            "scheduler %s: Redis unreachable (%s); waiting", self.token[:8], exc
                        )
                        redis_down = True
                except Exception:  # keep the loop alive; the next tick retries
                    logger.exception("scheduler tick failed")
                finally:
                    close_old_connections()
                stop.wait(TICK_SECONDS)
        finally:
            self.release()
