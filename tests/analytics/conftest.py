"""The analytics tests' history: a hand-computed fixture (tests/analytics/test_summary.py says
what it holds and why)."""

from __future__ import annotations

import pytest

from apps.accounts.choices import Role
from apps.executions.choices import ExecutionStatus as S
from tests.analytics.test_summary import at, run
from tests.factories import chain_definition, make_org, make_user, make_workflow


@pytest.fixture
def paris(db):
    org = make_org("paris")
    org.time_zone = "Europe/Paris"  # UTC+1 in January
    org.save()
    return org


@pytest.fixture
def history(paris):
    alpha = make_workflow(paris, chain_definition("alpha", 1))
    beta = make_workflow(paris, chain_definition("beta", 1))
    gamma = make_workflow(paris, chain_definition("gamma", 1))
    gamma.is_active = False
    gamma.save()
    made = {
        # 00:30 in Paris on the 10th, still the 9th in UTC: the day boundary
        "first": run(alpha, S.COMPLETED, at(9, 23, 30), 10),
        "second": run(alpha, S.COMPLETED, at(10, 12), 20),
        "failed": run(alpha, S.FAILED, at(10, 13), 30),
        "incomplete": run(alpha, S.INCOMPLETE, at(11, 9), 40),
        "cancelled": run(alpha, S.CANCELLED, at(11, 10), 0, started=False),  # never started
        "running": run(alpha, S.RUNNING, at(11, 11)),
        "late": run(beta, S.COMPLETED, at(11, 22, 30), 100),  # 23:30 in Paris, the 11th
        "scheduled": run(beta, S.SCHEDULED, at(10, 8), started=False),
        # out of the range: 23:00 in Paris on the 9th, and 00:30 on the 12th
        "before": run(alpha, S.COMPLETED, at(9, 22), 5),
        "after": run(beta, S.FAILED, at(11, 23, 30), 5),
    }
    elsewhere = make_workflow(make_org("elsewhere"), chain_definition("alpha", 1))
    run(elsewhere, S.COMPLETED, at(10, 12), 1000)
    return made


@pytest.fixture
def analyst(paris):
    return make_user("analyst", paris, Role.VIEWER)
