"""Shared fixtures: organizations and role users, API clients, and real RQ workers in-process.

Engine tests run a burst loop of the real non-forking RQ worker against fakeredis by default,
and against real Redis when REDIS_URL is set (CI).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.executions import dispatch
from apps.executions.choices import EXECUTION_TERMINAL
from apps.executions.models import Execution
from apps.executions.worker import ThreadAgentWorker
from tests.factories import make_org, make_user


def _uses_database(item) -> bool:
    names = getattr(item, "fixturenames", ())
    return bool(
        item.get_closest_marker("django_db") or "db" in names or "transactional_db" in names
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After every test that used the database: each execution's step counters equal what its
    step rows say (the triggers of apps/executions/counters.py). Every engine test checks them
    through retries, interruptions, resumes, mark-succeeded, cancels and skips."""
    result = yield
    from django.db import connection

    closed = connection.in_atomic_block and connection.closed_in_transaction
    if _uses_database(item) and not closed:  # (a test that closed its connection: nothing to read)
        wrong = step_counters_off()
        assert not wrong, f"step counters (stored, from the rows) disagree: {wrong}"
    return result


def step_counters_off() -> dict[int, tuple[dict, dict]]:
    """Executions whose stored counters differ from a count of their step rows."""
    from django.db.models import Count, Q

    from apps.executions.choices import STEP_FAILED, StepStatus

    names = ["steps_completed", "steps_failed", "steps_skipped"]
    rows = Execution.objects.order_by().annotate(
        n_completed=Count("steps", filter=Q(steps__status=StepStatus.COMPLETED)),
        n_failed=Count("steps", filter=Q(steps__status__in=STEP_FAILED)),
        n_skipped=Count("steps", filter=Q(steps__status=StepStatus.SKIPPED)),
    )
    off = {}
    for e in rows:
        stored = {n: getattr(e, n) for n in names}
        counted = {n: getattr(e, "n_" + n.removeprefix("steps_")) for n in names}
        if stored != counted:
            off[e.pk] = (stored, counted)
    return off


@pytest.fixture
def org(db):
    return make_org("acme")


@pytest.fixture
def other_org(db):
    return make_org("globex")


@pytest.fixture
def owner(org):
    return make_user("owner", org, Role.ADMIN)


@pytest.fixture
def editor(org):
    return make_user("editor", org, Role.EDITOR)


@pytest.fixture
def operator(org):
    return make_user("operator", org, Role.OPERATOR)


@pytest.fixture
def viewer(org):
    return make_user("viewer", org, Role.VIEWER)


@pytest.fixture
def outsider(other_org):
    return make_user("outsider", other_org, Role.ADMIN)


def _client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api_for() -> Callable[..., APIClient]:
    """api_for(user) → an APIClient authenticated as that user."""
    return _client_for


@pytest.fixture
def redis_conn():
    """A clean Redis for the test: a fresh fakeredis server, or the real one flushed."""
    dispatch.reset_connection()
    connection = dispatch.get_connection()
    if settings.REDIS_URL:
        connection.flushdb()
    yield connection
    if settings.REDIS_URL:
        connection.flushdb()
    dispatch.reset_connection()


class WorkerDriver:
    """Runs real RQ workers (non-forking, in this thread) until there is nothing left to do."""

    def __init__(self, connection, queues: list[str]):
        self.connection = connection
        self.queues = queues

    def worker(self, name: str | None = None) -> ThreadAgentWorker:
        return ThreadAgentWorker(self.queues, connection=self.connection, name=name)

    def drain(self, until: Callable[[], bool] | None = None, timeout: float = 30.0) -> None:
        """Work the queues (and the RQ schedule) until `until()` holds or no work is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worked = self.worker().work(burst=True, with_scheduler=True)
            if until is not None and until():
                return
            if until is None and not worked and not self._scheduled_jobs():
                return
            if not worked:
                time.sleep(0.05)
        raise AssertionError(f"workers did not finish within {timeout}s")

    def _scheduled_jobs(self) -> int:
        from rq.registry import ScheduledJobRegistry

        return sum(ScheduledJobRegistry(q, connection=self.connection).count for q in self.queues)

    def run_to_end(self, execution: Execution, timeout: float = 30.0) -> Execution:
        def finished() -> bool:
            execution.refresh_from_db()
            return execution.status in EXECUTION_TERMINAL

        self.drain(until=finished, timeout=timeout)
        return execution


@pytest.fixture
def workers(redis_conn) -> WorkerDriver:
    return WorkerDriver(redis_conn, list(settings.OPSFLOW_QUEUES))
