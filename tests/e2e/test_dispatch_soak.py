"""Dispatch durability, the CI variant of bench/dispatch_soak.py: its rounds, shortened, on the
test database and Redis, with real processes (uvicorn, run_scheduler, two rqworker AgentWorkers on
two queues, so RQ dequeues with BLPOP), each in its own process group, and the same short
thresholds (heartbeat 1 s, agent lost after 4 s, lost dispatch re-enqueued after 3 s).

Every run must complete, and each node of each run must have exactly one completed step
(interrupted attempts are allowed).
"""

from __future__ import annotations

import pytest
from django.conf import settings

from bench._common import child_env
from bench.dispatch_soak import PhaseReport, Round, Soak, summarize
from tests.e2e.conftest import _database_url, needs_services

pytestmark = [needs_services, pytest.mark.multiprocess]

ROUNDS = 3
ROUND_DEADLINE = 20.0  # seconds after the (last) restart; a healthy round drains in about 5


@pytest.fixture
def soak(transactional_db, redis_conn):
    """The soak's processes on the test database and Redis, its workflow, editor and token."""
    env = {
        **child_env("unused"),  # Soak.prepare sets the queues
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "e2e",
        "LOG_LEVEL": "WARNING",
    }
    started = Soak.prepare(env=env)
    started.round_deadline, started.concurrency = ROUND_DEADLINE, 8
    try:
        started.start()
        yield started
    finally:
        started.stop()


def assert_every_run_completed_once(rounds: list[Round], runs: int) -> PhaseReport:
    report = summarize(rounds[0].phase, rounds)
    waiting = [text for r in rounds for text in r.waiting]
    failures = report.failures()
    assert report.runs == runs, report.refused
    assert not failures, "\n".join([*failures, *waiting])
    return report


def test_every_run_completes_once_when_both_idle_workers_are_killed_as_the_runs_arrive(soak):
    rounds = [soak.idle_round(number, 50) for number in range(1, ROUNDS + 1)]
    assert_every_run_completed_once(rounds, ROUNDS * 50)


def test_the_jobs_handed_to_frozen_then_killed_workers_are_re_enqueued_and_run_once(soak):
    """Stopped (SIGSTOP), the workers keep their connections open, as when their machine
    vanishes: Redis hands each blocked BLPOP the first job pushed, and then they are killed.
    The reconciler must see that those two jobs will never run and send them again: their
    hashes still say `queued`, so the job's status alone cannot tell."""
    rounds = [soak.idle_round(number, 50, freeze=True) for number in range(1, ROUNDS + 1)]
    assert_every_run_completed_once(rounds, ROUNDS * 50)
    # At least the job each frozen worker was handed. Not exactly: the reconciler may also send
    # again a job that a live worker has just popped and not yet registered as started.
    assert all(r.re_enqueues >= 2 for r in rounds), [r.re_enqueues for r in rounds]


def test_every_run_completes_once_when_busy_workers_are_killed_every_two_seconds(soak):
    rounds = [
        soak.busy_round(number, 60, kill_every=2.0, kills=2, spread=4.0)
        for number in range(1, ROUNDS + 1)
    ]
    assert_every_run_completed_once(rounds, ROUNDS * 60)
    assert sum(r.kills for r in rounds) == 2 * ROUNDS
