"""The agent: an RQ worker that runs `run_step` jobs.

We use a non-forking worker (SimpleWorker). On these machines a forking worker costs ~10 ms per
job and grows with the parent's memory; a non-forking one ~3 ms. Step isolation does not depend on
the fork: the step runner records every outcome in the database, shell commands run in their own
process group, and the reconciler (not RQ's job heartbeat) detects dead agents.
"""

from __future__ import annotations

import contextvars
import socket
import time
from dataclasses import dataclass

from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty


@dataclass(frozen=True)
class Agent:
    """Who is running the current job, for local continuation and the step's `worker` field."""

    name: str
    queues: frozenset[str]
    job_started: float
    job_timeout: float


current_agent: contextvars.ContextVar[Agent | None] = contextvars.ContextVar(
    "current_agent", default=None
)


class AgentWorker(SimpleWorker):
    """Non-forking RQ worker that tells the step runner which queues it serves."""

    def execute_job(self, job, queue):
        agent = Agent(
            name=f"{socket.gethostname()}/{self.name}",
            queues=frozenset(self.queue_names()),
            job_started=time.monotonic(),
            job_timeout=float(job.timeout or 180),
        )
        token = current_agent.set(agent)
        try:
            return super().execute_job(job, queue)
        finally:
            current_agent.reset(token)


class ThreadAgentWorker(AgentWorker):
    """For worker threads (the embedded default, tests): no signal handlers, timer timeouts."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self):
        pass

    def subscribe(self):
        # RQ's control channel (remote shutdown, kill-horse) is for worker processes; a thread
        # does not take commands, and RQ waits up to a second for that channel when it stops.
        pass
