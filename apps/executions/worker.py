"""The agent: an RQ worker that runs `run_step` jobs and keeps a heartbeat in the database.

We use a non-forking worker (SimpleWorker). On these machines a forking worker costs ~10 ms per
job and grows with the parent's memory; a non-forking one ~3 ms. Step isolation does not depend on
the fork: the step runner records every outcome in the database, shell commands run in their own
process group, and the reconciler detects dead agents from the heartbeat below, not from RQ's
job heartbeat (which a SimpleWorker does not send during a job; see NOTES.md).

Warm shutdown (one SIGTERM or SIGINT): RQ lets the running job finish; the agent stops running
successors itself (they go through Redis to other agents) and shows as `stopping` until it exits.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.timeouts import TimerDeathPenalty

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentContext:
    """Who is running the current job, for local continuation and the step's `worker` field."""

    name: str
    queues: frozenset[str]
    job_started: float
    job_timeout: float
    draining: threading.Event = field(default_factory=threading.Event)
    running: set[int] = field(default_factory=set)  # step ids between start and record
    tally: dict[str, int] = field(default_factory=lambda: {"done": 0, "failed": 0})


current_agent: contextvars.ContextVar[AgentContext | None] = contextvars.ContextVar(
    "current_agent", default=None
)


def send_metrics() -> None:
    """The Prometheus counts of the steps this process ran (apps/analytics/metrics_counters.py)
    go to Redis with the heartbeat, in one pipeline, so the step path itself sends nothing. A
    Redis outage keeps them for the next beat and does not fail the heartbeat."""
    from apps.analytics import metrics_counters

    try:
        metrics_counters.flush()
    except Exception as exc:
        logger.debug("metrics not sent with the heartbeat: %s", exc)


class Heartbeat:
    """One daemon thread per process stamps the heartbeat of every agent the process runs.

    It has its own database connection, so a long step does not delay it; if the process dies,
    the heartbeat stops with it and the reconciler takes over.
    """

    def __init__(self) -> None:
        self._agents: dict[str, tuple[threading.Event, set[int], dict[str, int]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(
        self,
        name: str,
        draining: threading.Event,
        running: set[int],
        tally: dict[str, int] | None = None,
    ) -> None:
        with self._lock:
            self._agents[name] = (draining, running, tally if tally is not None else {})
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="opsflow-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, name: str) -> None:
        with self._lock:
            self._agents.pop(name, None)

    def beat(self) -> None:
        """Stamp each agent with the time, then what it runs: a step started before the stamp
        and missing from the list is no longer being run (the reconciler's orphan check)."""
        from django.utils import timezone

        from apps.executions.models import Agent

        now = timezone.now()
        with self._lock:
            agents = {
                name: (draining.is_set(), sorted(running), dict(tally))
                for name, (draining, running, tally) in self._agents.items()
            }
        for name, (draining, running, tally) in agents.items():
            Agent.beat(name, now, running, draining, tally)
        send_metrics()

    def _run(self) -> None:
        """Never dies while an agent needs it: a silent heartbeat would get its steps re-run."""
        while True:
            time.sleep(settings.OPSFLOW_HEARTBEAT_SECONDS)
            with self._lock:
                if not self._agents:  # every agent of this process stopped: so does the thread
                    self._thread = None
                    break
            try:
                self.beat()
            except Exception:  # the database may be restarting: beat again next time
                logger.warning("agent heartbeat failed", exc_info=True)
            try:
                close_old_connections()  # drops a connection the failure left unusable
            except Exception:
                logger.warning("agent heartbeat could not reset its connection", exc_info=True)
        try:
            connection.close()
        except Exception:
            logger.debug("closing the heartbeat's connection failed", exc_info=True)


HEARTBEAT = Heartbeat()


class AgentWorker(SimpleWorker):
    """Non-forking RQ worker that registers as an agent and tells the step runner who it is."""

    forks_scheduler = True  # `--with-scheduler` starts RQ's scheduler as a forked process

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draining = threading.Event()
        self.running_steps: set[int] = set()
        self.tally = {"done": 0, "failed": 0}  # steps this process ran, for the Agents page

    @property
    def agent_name(self) -> str:
        return f"{socket.gethostname()}/{self.name}"

    def work(self, burst: bool = False, *args, **kwargs) -> bool:
        """A long-running worker is an agent with a heartbeat; a burst (tests, benchmarks) is not."""
        if burst:
            try:
                return super().work(True, *args, **kwargs)
            finally:
                send_metrics()  # no heartbeat: the counts go when the burst ends
        from apps.executions.models import Agent

        name = self.agent_name
        Agent.register(name, self.queue_names(), socket.gethostname(), os.getpid())
        HEARTBEAT.add(name, self.draining, self.running_steps, self.tally)
        try:
            return self._work_through_outages(*args, **kwargs)
        finally:
            HEARTBEAT.remove(name)
            send_metrics()  # what it ran since the last heartbeat
            try:
                Agent.mark_stopped(name)  # a step left running now is interrupted at once
            except DatabaseError:
                logger.warning("could not record that agent %s stopped", name, exc_info=True)

    def _work_through_outages(self, *args, **kwargs) -> bool:
        """RQ's work loop, started again whenever it quits without being asked to.

        RQ rides out a Redis outage while it waits for a job, but quits when Redis goes away
        during a job's bookkeeping ("found an unhandled exception, quitting"), or times out. An
        agent that quit would leave its runs waiting for a supervisor; this one keeps its
        heartbeat, waits for Redis with a growing pause, and works again. Only a signal (warm or
        cold shutdown) or --max-jobs / --max-idle-time end it.
        """
        worked, pause = False, 1.0
        bounded = kwargs.get("max_jobs") is not None or kwargs.get("max_idle_time") is not None
        while True:
            started = time.monotonic()
            try:
                worked = super().work(False, *args, **kwargs) or worked
            except (RedisError, ValueError) as exc:
                # Redis was down for RQ's own set-up or clean-up, or came back just before a
                # restart still holding this worker's previous registration ("There exists an
                # active worker named …", a ValueError): the next try registers it afresh.
                logger.warning("agent %s: its work loop ended: %s", self.name, exc)
            if bounded or self._stop_requested or self._shutdown_requested_date:
                return worked
            if time.monotonic() - started > 60:
                pause = 1.0  # it had worked for a while: a new outage starts the pauses afresh
            logger.error(
                "agent %s: RQ's work loop quit (Redis unreachable?); working again in %.0fs",
                self.name,
                pause,
            )
            try:
                time.sleep(pause)
            except StopRequested:  # a warm shutdown signal while it waited
                return worked
            pause = min(pause * 2, 30.0)
            self._forget_previous_loop()

    def _forget_previous_loop(self) -> None:
        """What RQ's teardown may have left when Redis was down, so that the next loop can
        register this worker again (RQ refuses a name that is alive) and subscribe once."""
        with contextlib.suppress(RedisError):
            self.register_death()
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop()
            self.pubsub_thread.join(timeout=1)
            self.pubsub_thread = None
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                self.pubsub.close()
            self.pubsub = None

    def _start_scheduler(self, *args, **kwargs):
        """`--with-scheduler`: RQ forks its scheduler here (and again in maintenance, below,
        if it died)."""
        self._close_sockets_before_fork()
        return super()._start_scheduler(*args, **kwargs)

    def run_maintenance_tasks(self):
        if self.forks_scheduler and self.scheduler is not None:
            self._close_sockets_before_fork()  # the scheduler may be forked again first thing
        return super().run_maintenance_tasks()

    def _close_sockets_before_fork(self) -> None:
        """A forked child inherits its parent's open sockets. Had RQ's scheduler child kept this
        worker's Redis connection, a kill -9 of the worker alone would leave that connection
        open, and Redis would go on handing jobs to the dead worker's BLPOP: each one lost
        without a trace. The child must not share a database socket either. So both are closed
        just before the fork (RQ's scheduler opens its own); the worker reconnects on its next
        command. Idle Redis connections only: the pubsub thread's carries no jobs."""
        if not self.forks_scheduler:
            return
        self.connection.connection_pool.disconnect(inuse_connections=False)
        connection.close()
        if hasattr(connection, "close_pool"):
            connection.close_pool()  # PostgreSQL's pool: opened again on the first job

    def handle_warm_shutdown_request(self):
        super().handle_warm_shutdown_request()
        self.draining.set()  # read by the step runner and the heartbeat thread; no I/O here

    def execute_job(self, job, queue):
        agent = AgentContext(
            name=self.agent_name,
            queues=frozenset(self.queue_names()),
            job_started=time.monotonic(),
            job_timeout=float(job.timeout or 180),
            draining=self.draining,
            running=self.running_steps,
            tally=self.tally,
        )
        token = current_agent.set(agent)
        try:
            return super().execute_job(job, queue)
        finally:
            current_agent.reset(token)


class ThreadAgentWorker(AgentWorker):
    """For worker threads (the embedded default, tests): no signal handlers, timer timeouts."""

    death_penalty_class = TimerDeathPenalty
    forks_scheduler = False  # the embedded scheduler loop promotes RQ's scheduled jobs instead

    def _install_signal_handlers(self):
        pass

    def subscribe(self):
        # RQ's control channel (remote shutdown, kill-horse) is for worker processes; a thread
        # does not take commands, and RQ waits up to a second for that channel when it stops.
        pass
