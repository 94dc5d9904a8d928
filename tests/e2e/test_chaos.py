"""Chaos tests (DESIGN §6 Durability, §10.1): real `rqworker` and `run_scheduler` processes on
PostgreSQL and Redis, and the things that go wrong in production: a worker killed with SIGKILL,
Redis losing every job, an outage that leaves a backlog of cron fires, PostgreSQL restarting,
two schedulers at once, and a warm (and a cold) shutdown.

Thresholds are shortened through the processes' environment (settings are read at start):
heartbeat 1 s, an agent is lost after 5 s, a lost dispatch is re-enqueued after 3 s, and the
scheduler leader lock lives 3 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from django.db import InterfaceError, OperationalError, connections
from django.utils import timezone
from rq import Queue
from rq.job import Job

from apps.executions import services
from apps.executions.choices import EXECUTION_TERMINAL, EventKind, Trigger
from apps.executions.models import Agent, Execution, ExecutionEvent, Step
from apps.executions.scheduler import LEADER_KEY
from apps.workflows.models import Workflow
from tests.e2e.conftest import Processes, needs_services
from tests.e2e.test_multiprocess import create_and_publish, wait_for
from tests.factories import chain_definition

pytestmark = [needs_services, pytest.mark.multiprocess]

T = TypeVar("T")

HEARTBEAT = 1
AGENT_TIMEOUT = 5
LOST_DISPATCH_AFTER = 3
LEADER_TTL = 3
FAST = {
    "OPSFLOW_HEARTBEAT_SECONDS": str(HEARTBEAT),
    "OPSFLOW_AGENT_TIMEOUT": str(AGENT_TIMEOUT),
    "OPSFLOW_LOST_DISPATCH_AFTER": str(LOST_DISPATCH_AFTER),
    "OPSFLOW_SCHEDULER_LEADER_TTL": str(LEADER_TTL),
}


# --- helpers ---


def wait_until(check: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll `check()` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def retrying_db(read: Callable[[], T], timeout: float = 60) -> T:
    """One database read that survives a PostgreSQL restart: reconnect and read again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise
            connections.close_all()
            time.sleep(0.2)


def wait_for_agents(*workers, timeout: float = 30) -> dict[int, str]:
    """Wait until each worker process has registered as a running agent; pid → agent name."""
    pids = {w.pid for w in workers}

    def registered() -> dict[int, str]:
        rows = dict(Agent.objects.filter(pid__in=pids, state="running").values_list("pid", "name"))
        return rows if set(rows) == pids else {}

    return wait_until(registered, timeout, f"agents with pids {sorted(pids)} to register")


def running_step(execution_id: int, node_id: str, timeout: float = 30) -> Step:
    return wait_until(
        lambda: Step.objects.filter(
            execution_id=execution_id, node_id=node_id, status="running"
        ).first(),
        timeout,
        f"{node_id} of execution {execution_id} to run",
        every=0.05,
    )


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (Linux /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                kids = [int(c) for c in children.read().split()]
        except FileNotFoundError:
            continue
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


def kill_9(process) -> None:
    """SIGKILL a worker process, then what it had started (its RQ scheduler child, the shell
    command): as when its machine or container dies. Killed alone, the worker would leave its
    `--with-scheduler` child running after the test, holding the dead worker's database session."""
    children = descendants(process.pid)
    process.kill()
    process.wait(timeout=10)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def process_of_agent(processes: Processes, agent_name: str):
    """The worker process that registered `agent_name` (the step's `worker` field)."""
    pid = Agent.objects.get(name=agent_name).pid
    (process,) = [p for p, _log in processes.running if p.pid == pid]
    return process


def slow_then_after(slug: str, script: str) -> dict:
    """A slow shell step on the `shell` queue, then a noop successor on `default`."""
    return {
        "slug": slug,
        "name": slug.title(),
        "nodes": [
            {
                "id": "slow",
                "type": "shell.command",
                "queue": "shell",
                "config": {"command": ["sh", "-c", script]},
            },
            {"id": "after", "type": "noop", "config": {"output": {"ok": True}}},
        ],
        "edges": [{"from": "slow", "to": "after"}],
    }


def attempts(execution_id: int) -> list[tuple[str, int, str]]:
    return list(
        Step.objects.filter(execution_id=execution_id)
        .order_by("node_id", "attempt")
        .values_list("node_id", "attempt", "status")
    )


# --- 1. kill -9 a worker in the middle of a step ---


def test_a_worker_killed_mid_step_is_detected_by_heartbeat_and_the_step_reruns_elsewhere(
    api, processes, settings
):
    """Worker A runs the step and is killed; the scheduler notices from A's silent heartbeat.
    Worker B starts only after that, so the state the reconciler leaves (attempt interrupted,
    execution interrupted, attempt 2 dispatched) can be read before anyone moves it on."""
    settings.OPSFLOW_AGENT_TIMEOUT = AGENT_TIMEOUT  # the API's agent list judges `lost` with it
    processes.start("run_scheduler", **FAST)
    worker_a = processes.worker(**FAST)
    wait_for_agents(worker_a)
    create_and_publish(api, slow_then_after("killed", "sleep 3; echo done"))
    execution_id = api.post("/workflows/killed/trigger/", json={}).json()["id"]

    first = running_step(execution_id, "slow")
    agent_a = Agent.objects.get(name=first.worker)
    assert agent_a.pid == worker_a.pid  # the process we kill really runs the step
    kill_9(worker_a)

    def interrupted() -> bool:
        first.refresh_from_db()
        return first.status == "interrupted"

    # Detected from the database heartbeat, not RQ's ~15-minute abandoned-job cleanup.
    wait_until(interrupted, AGENT_TIMEOUT + 6, "the killed attempt to be interrupted")
    assert first.error_type == "WorkerLostError" and agent_a.name in first.error_message
    # No worker is alive yet, so what the reconciler left is stable and visible.
    assert Execution.objects.get(pk=execution_id).status == "interrupted"
    second = Step.objects.get(execution_id=execution_id, node_id="slow", attempt=2)
    assert second.status == "dispatched"
    agents = {a["name"]: a for a in api.get("/agents/").json()["results"]}
    assert agents[agent_a.name]["state"] == "lost"

    worker_b = processes.worker(**FAST)
    done = wait_for(api, execution_id, {"completed", "failed", "cancelled"}, timeout=40)
    assert done["status"] == "completed", done
    slow = [s for s in done["steps"] if s["node_id"] == "slow"]
    assert [(s["attempt"], s["status"]) for s in slow] == [(1, "interrupted"), (2, "completed")]
    agent_b = slow[1]["worker"]
    assert agent_b != agent_a.name
    assert Agent.objects.get(name=agent_b).pid == worker_b.pid
    assert slow[1]["output"]["stdout"] == "done\n"
    assert [(s["attempt"], s["status"]) for s in done["steps"] if s["node_id"] == "after"] == [
        (1, "completed")
    ]

    # The log shows both attempts, in order.
    events = api.get(f"/executions/{execution_id}/events/").json()["results"]

    def index(kind: str, step_id: int, text: str = "") -> int:
        found = [
            i
            for i, e in enumerate(events)
            if e["kind"] == kind and e["step"] == step_id and text in e["message"]
        ]
        assert len(found) == 1, (kind, step_id, text, events)
        return found[0]

    order = [
        index(EventKind.NODE_STARTED, first.pk, f"on {agent_a.name} (attempt 1)"),
        index(EventKind.NODE_INTERRUPTED, first.pk, agent_a.name),
        index(EventKind.NODE_DISPATCHED, second.pk, "(attempt 2)"),
        index(EventKind.NODE_STARTED, second.pk, f"on {agent_b} (attempt 2)"),
        index(EventKind.NODE_COMPLETED, second.pk),
    ]
    assert order == sorted(order), events
    assert events[-1]["kind"] == EventKind.EXECUTION_COMPLETED
    assert events[order[1]]["data"] == {"agent": agent_a.name, "interruptions": 1}


def test_a_job_enqueued_after_a_worker_alone_is_killed_stays_in_its_queue(
    api, processes, redis_conn
):
    """Regression (issue 16): RQ's forked scheduler child inherited the worker's Redis socket.
    With the worker killed and the child alive, Redis still saw the dead worker blocked in
    BLPOP and handed it the next job: gone from the list, its hash `queued`, never run."""
    worker = processes.worker(**FAST)
    wait_for_agents(worker)

    db = redis_conn.connection_pool.connection_kwargs.get("db", 0)

    def blocked() -> bool:  # on this test's Redis database (others may be in use meanwhile)
        return any(
            c.get("cmd") in ("blpop", "blmove") and int(c["db"]) == db
            for c in redis_conn.client_list()
        )

    wait_until(blocked, 20, "the worker to block on its queues")
    children = descendants(worker.pid)
    assert children, "the worker forked no RQ scheduler child"
    worker.kill()  # the worker alone: its scheduler child lives on
    worker.wait(timeout=10)
    try:
        create_and_publish(api, chain_definition("after-kill", 1))
        execution_id = api.post("/workflows/after-kill/trigger/", json={}).json()["id"]
        step = Step.objects.get(execution_id=execution_id)
        # A blocked client would have been handed the job by the very push: no wait needed.
        assert Queue(step.queue, connection=redis_conn).get_job_ids() == [step.rq_job_id]
        assert not blocked()
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_a_redis_outage_mid_step_keeps_the_worker_and_loses_no_run(
    api, processes, settings, tmp_path
):
    """Redis (a server of the test's own) dies while a real worker runs a step and comes back
    empty. Webhooks and triggers meanwhile answer 202/201; the worker process rides it out
    (RQ alone quits: "found an unhandled exception"); every run completes, each node once."""
    from django.test import Client

    from apps.executions import dispatch
    from tests.redis_server import OwnRedis

    if not shutil.which("redis-server"):
        pytest.skip("needs the redis-server program")
    own = OwnRedis(tmp_path)
    own.start()
    settings.REDIS_URL = own.url  # this process (the live server) and the ones it starts
    dispatch.reset_connection()
    try:
        processes.start("run_scheduler", **FAST)
        worker = processes.worker(**FAST)
        wait_for_agents(worker)
        create_and_publish(api, slow_then_after("outage", "sleep 2; echo done"))
        key = Workflow.objects.get(slug="outage").webhook_key
        first = api.post("/workflows/outage/trigger/", json={}).json()["id"]
        running_step(first, "slow")

        own.kill()
        hooks = Client(raise_request_exception=False)
        answers = [
            hooks.post(f"/hooks/{key}/", {"variables": {}}, content_type="application/json")
            for _ in range(3)
        ]
        answers.append(api.post("/workflows/outage/trigger/", json={}))
        assert [a.status_code for a in answers] == [202, 202, 202, 201]
        ids = [first, *(a.json()["execution"] for a in answers[:3]), answers[3].json()["id"]]
        wait_until(
            lambda: Step.objects.filter(execution_id=first, node_id="slow", status="completed"),
            20,
            "the step that was running to be recorded",
        )
        own.start()  # back, and empty

        wait_until(
            lambda: (
                Execution.objects.filter(pk__in=ids, status__in=EXECUTION_TERMINAL).count()
                == len(ids)
            ),
            60,
            "every run to finish after Redis came back",
            every=0.3,
        )
        assert worker.poll() is None, "the worker quit during the outage"
        for execution_id in ids:
            assert attempts(execution_id) == [
                ("after", 1, "completed"),
                ("slow", 1, "completed"),
            ], execution_id
        assert Execution.objects.count() == len(ids)
    finally:
        processes.stop()
        own.kill()
        dispatch.reset_connection()


# --- 2. Redis loses every job while 20 executions are in flight ---


def test_every_execution_completes_after_redis_loses_all_dispatched_jobs(
    api, processes, redis_conn
):
    processes.start("run_scheduler", **FAST)
    workers = [processes.worker(**FAST), processes.worker(**FAST)]
    wait_for_agents(*workers)
    create_and_publish(
        api,
        {
            "slug": "flushed",
            "name": "Flushed",
            "nodes": [
                {"id": "first", "type": "noop"},
                {"id": "wait", "type": "delay", "config": {"seconds": 6}},
                {"id": "last", "type": "noop", "config": {"output": {"done": True}}},
            ],
            "edges": [{"from": "first", "to": "wait"}, {"from": "wait", "to": "last"}],
        },
    )
    ids = [api.post("/workflows/flushed/trigger/", json={}).json()["id"] for _ in range(20)]
    parked = Step.objects.filter(execution_id__in=ids, node_id="wait")
    wait_until(
        lambda: parked.filter(status="dispatched").count() == 20,
        20,
        "every execution to park its delay step in the RQ schedule",
    )
    job_ids = list(parked.values_list("rq_job_id", flat=True))
    assert all(Job.exists(j, connection=redis_conn) for j in job_ids)

    # FLUSHALL wipes every database of the server, and this Redis is shared with people
    # developing: only CI gets FLUSHALL. Opsflow uses exactly one database (REDIS_URL), so
    # FLUSHDB on it loses Opsflow the same things: queues, scheduled jobs, the leader lock.
    if os.environ.get("CI"):
        redis_conn.flushall()
    else:
        redis_conn.flushdb()
    # And, as a restart of a Redis without persistence would, drop the connections of every
    # process on this database (the workers sit in BLPOP); other databases' clients are left be.
    db = redis_conn.connection_pool.connection_kwargs.get("db", 0)
    me = redis_conn.client_id()
    for client in redis_conn.client_list():
        if int(client["db"]) == db and int(client["id"]) != me:
            redis_conn.client_kill_filter(_id=client["id"])

    assert not any(Job.exists(j, connection=redis_conn) for j in job_ids)
    # The loss hit all 20 runs in flight: none had got past its delay.
    assert parked.filter(status="dispatched").count() == 20
    assert Execution.objects.filter(pk__in=ids, status__in=EXECUTION_TERMINAL).count() == 0

    wait_until(
        lambda: Execution.objects.filter(pk__in=ids, status__in=EXECUTION_TERMINAL).count() == 20,
        40,
        "all 20 executions to finish",
        every=0.3,
    )
    assert Counter(Execution.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        "completed": 20
    }
    for execution_id in ids:
        assert attempts(execution_id) == [
            ("first", 1, "completed"),
            ("last", 1, "completed"),
            ("wait", 1, "completed"),
        ]
    # It was the reconciler that brought each lost delay step back, once.
    reenqueued = ExecutionEvent.objects.filter(
        execution_id__in=ids, kind=EventKind.NODE_DISPATCHED, message__contains="Redis lost it"
    )
    assert Counter(reenqueued.values_list("node_id", flat=True)) == {"wait": 20}
    assert sorted(reenqueued.values_list("execution_id", flat=True)) == sorted(ids)


# --- 3. a backlog of 200 cron fires while nothing runs ---


def test_two_hundred_cron_runs_due_during_an_outage_are_overdue_then_each_run_once(
    api, processes, settings
):
    settings.OPSFLOW_OVERDUE_GRACE = 60
    create_and_publish(
        api,
        {
            "slug": "backlog",
            "name": "Backlog",
            "trigger": {
                "type": "cron",
                "schedule": "* * * * *",
                "catchup": "all",
                "max_lateness": 86400,
            },
            "nodes": [{"id": "fetch", "type": "noop", "config": {"output": {"n": 1}}}],
        },
    )
    workflow = Workflow.objects.select_related("current_version").get(slug="backlog")
    # 200 minute fires, all older than the grace period, held as the `scheduled` rows the
    # scheduler keeps for a cron workflow (what cron.materialize creates): they came due while
    # no worker and no scheduler ran. The API cannot schedule a run, so they are made here.
    grace = timedelta(seconds=settings.OPSFLOW_OVERDUE_GRACE)
    last = (timezone.now() - grace - timedelta(minutes=1)).replace(second=0, microsecond=0)
    fires = [last - timedelta(minutes=199 - i) for i in range(200)]
    ids = [
        services.trigger_workflow(
            workflow,
            trigger=Trigger.CRON,
            trigger_data={"scheduled_for": when.isoformat()},
            scheduled_for=when,
        ).pk
        for when in fires
    ]

    overdue = api.get("/executions/", params={"workflow": "backlog", "overdue": "true"}).json()
    assert overdue["count"] == 200
    assert {e["status"] for e in overdue["results"]} == {"scheduled"}

    processes.start("run_scheduler", **FAST)
    processes.worker(**FAST)
    processes.worker(**FAST)
    mine = Execution.objects.filter(pk__in=ids)
    wait_until(
        lambda: mine.filter(status__in=EXECUTION_TERMINAL).count() == 200,
        60,  # ~7 s on an idle 2-core machine; far more when it is busy
        "the 200 overdue runs to finish",
        every=0.3,
    )
    assert Counter(mine.values_list("status", flat=True)) == {"completed": 200}
    steps = Step.objects.filter(execution_id__in=ids)
    assert Counter(steps.values_list("node_id", "attempt", "status")) == {
        ("fetch", 1, "completed"): 200
    }
    # Exactly once: no fire of the backlog got a second execution, each run started once.
    backlog = Execution.objects.filter(workflow=workflow, scheduled_for__lte=last)
    assert sorted(backlog.values_list("pk", flat=True)) == sorted(ids)
    started = ExecutionEvent.objects.filter(execution_id__in=ids, kind=EventKind.EXECUTION_STARTED)
    released = ExecutionEvent.objects.filter(
        execution_id__in=ids, kind=EventKind.EXECUTION_RELEASED
    )
    assert Counter(started.values_list("execution_id", flat=True)) == dict.fromkeys(ids, 1)
    assert Counter(released.values_list("execution_id", flat=True)) == dict.fromkeys(ids, 1)
    after = api.get("/executions/", params={"workflow": "backlog", "overdue": "true"}).json()
    assert after["count"] == 0


# --- 4. PostgreSQL restarts mid-run ---


def local_cluster() -> tuple[str, str]:
    """(version, name) of the local PostgreSQL cluster that serves the test database."""
    if not shutil.which("pg_ctlcluster") or not shutil.which("pg_lsclusters"):
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster (Debian's postgresql-common)")
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root")
    db = connections["default"].settings_dict
    if (db.get("HOST") or "localhost") not in ("localhost", "127.0.0.1", "::1"):
        pytest.skip(f"the test database is on {db['HOST']}, not a local cluster")
    port = str(db.get("PORT") or 5432)
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for line in listing.splitlines():
        version, name, cluster_port, status, *_ = line.split()
        if cluster_port == port and status == "online":
            return version, name
    pytest.skip(f"no online local cluster listens on port {port}")


def test_workers_reconnect_after_postgresql_restarts_mid_run(api, processes):
    """Two slow steps are running when the server restarts: their results are recorded once
    it answers again (each step runs once), and the two runs still queued start afterwards."""
    version, cluster = local_cluster()
    # A restart takes a second or two here; a longer agent timeout keeps the heartbeats missed
    # meanwhile from being read as dead agents.
    env = {**FAST, "OPSFLOW_AGENT_TIMEOUT": "15"}
    processes.start("run_scheduler", **env)
    workers = [processes.worker(**env), processes.worker(**env)]
    wait_for_agents(*workers)
    create_and_publish(api, slow_then_after("pgrestart", "sleep 3; echo done"))
    ids = [api.post("/workflows/pgrestart/trigger/", json={}).json()["id"] for _ in range(4)]

    def two_running() -> list[int]:
        running = Step.objects.filter(execution_id__in=ids, status="running")
        return list(running.values_list("pk", flat=True)) if running.count() == 2 else []

    in_flight = wait_until(two_running, 30, "both workers to run a slow step", every=0.05)

    restart_began = timezone.now()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"],
        check=True,
        timeout=120,
    )
    connections.close_all()  # this process's connections died with the server too
    # … and so did those idle in its pool: lent later, they fail the next tests' first query
    if hasattr(connections["default"], "close_pool"):
        connections["default"].close_pool()

    def finished() -> bool:
        return (
            retrying_db(
                lambda: Execution.objects.filter(pk__in=ids, status__in=EXECUTION_TERMINAL).count()
            )
            == 4
        )

    try:
        wait_until(finished, 40, "the four runs to finish after the restart", every=0.5)
    finally:
        states = retrying_db(lambda: {i: attempts(i) for i in ids})
    assert Counter(Execution.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        "completed": 4
    }, states
    for execution_id in ids:
        assert states[execution_id] == [("after", 1, "completed"), ("slow", 1, "completed")]
    slow = {s.pk: s for s in Step.objects.filter(execution_id__in=ids, node_id="slow")}
    for step_id in in_flight:  # these ran across the restart and were recorded after it
        assert slow[step_id].started_at < restart_began < slow[step_id].finished_at
    later = [s for pk, s in slow.items() if pk not in in_flight]
    assert len(later) == 2 and all(s.started_at > restart_began for s in later)
    assert all(w.poll() is None for w in workers)  # the workers survived the restart


# --- 5. two schedulers ---


def leader_token(redis_conn) -> str:
    token = redis_conn.get(LEADER_KEY)
    return token.decode() if token else ""


def scheduler_with_token(schedulers: dict[Any, Any], token: str):
    """The scheduler process that logged taking the lead with this token."""

    def find():
        for process, log in schedulers.items():
            log.flush()
            with open(log.name, encoding="utf-8", errors="replace") as lines:
                if f"scheduler {token[:8]} is now the leader" in lines.read():
                    return process
        return None

    return wait_until(find, 5, f"a scheduler log to name the leader {token[:8]}")


def test_two_schedulers_create_one_execution_per_cron_fire_and_the_standby_takes_over(
    api, processes, redis_conn, settings
):
    # A per-second cron (croniter's optional sixth field), so fires keep coming during the test:
    # faster than a real workflow may go (OPSFLOW_CRON_MIN_INTERVAL), so the limit is lowered.
    settings.OPSFLOW_CRON_MIN_INTERVAL = 1
    create_and_publish(
        api,
        {
            "slug": "ticker",
            "name": "Ticker",
            "trigger": {
                "type": "cron",
                "schedule": "* * * * * *",
                "catchup": "all",
                "max_lateness": 3600,
            },
            "nodes": [{"id": "tick", "type": "noop"}],
        },
    )
    workflow = Workflow.objects.get(slug="ticker")
    # A backlog both schedulers race for as they start: the last 30 seconds of fires.
    started = timezone.now().replace(microsecond=0)
    Workflow.objects.filter(pk=workflow.pk).update(next_fire_at=started - timedelta(seconds=30))
    first, second = (processes.start("run_scheduler", **FAST) for _ in range(2))
    logs = {p: log for p, log in processes.running if p in (first, second)}
    fires = Execution.objects.filter(workflow=workflow, trigger=Trigger.CRON)

    def fires_after(moment: datetime, count: int = 1) -> bool:
        return (
            fires.filter(scheduled_for__gt=moment, scheduled_for__lte=timezone.now()).count()
            >= count
        )

    wait_until(lambda: fires_after(started, 2), 30, "cron fires after the backlog", every=0.2)
    first_token = wait_until(lambda: leader_token(redis_conn), 5, "a leader")
    leader = scheduler_with_token(logs, first_token)
    standby = second if leader is first else first

    # A leader paused past its TTL (a long GC pause, a frozen VM) loses the lock to the standby;
    # resumed, it finds the lock taken and stands by. (Fires are not checked during the pause:
    # if it froze inside a transaction, the standby rightly waits on its row locks.)
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        token = wait_until(
            lambda: (t := leader_token(redis_conn)) and t != first_token and t,
            LEADER_TTL + 5,
            "the standby to take the lead from the paused leader",
        )
        assert scheduler_with_token(logs, token) is standby
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    # Resumed, the old leader runs alongside the new one for a few fires; the lead stays put.
    resumed_at = timezone.now()
    wait_until(lambda: fires_after(resumed_at, 3), 10, "fires after the old leader resumed")
    assert leader_token(redis_conn) == token

    # kill -9 of the new leader: it cannot release the lock; the other takes over within the TTL.
    killed_at, killed_clock = timezone.now(), time.monotonic()
    os.kill(standby.pid, signal.SIGKILL)
    standby.wait(timeout=10)
    taken = wait_until(
        lambda: (t := leader_token(redis_conn)) and t != token and t,
        LEADER_TTL + 5,
        "the remaining scheduler to take the lead after the kill",
    )
    assert time.monotonic() - killed_clock <= LEADER_TTL + 2
    assert scheduler_with_token(logs, taken) is leader
    wait_until(lambda: fires_after(killed_at + timedelta(seconds=LEADER_TTL + 1), 2), 10, "fires")

    leader.terminate()
    assert leader.wait(timeout=15) == 0
    times = sorted(fires.values_list("scheduled_for", flat=True))
    assert len(times) == len(set(times)), "a cron fire created more than one execution"
    # No fire lost either, across both takeovers: every second from the first to the last.
    span = int((times[-1] - times[0]).total_seconds())
    assert times == [times[0] + timedelta(seconds=s) for s in range(span + 1)]
    assert times[0] == started - timedelta(seconds=30) and times[-1] > killed_at


# --- 6. warm shutdown ---


def test_a_warm_shutdown_lets_the_running_step_finish_and_another_worker_runs_its_successor(
    api, processes
):
    processes.start("run_scheduler", **FAST)
    workers = [processes.worker(**FAST), processes.worker(**FAST)]
    names = wait_for_agents(*workers)
    create_and_publish(api, slow_then_after("drained", "sleep 4; echo done"))
    execution_id = api.post("/workflows/drained/trigger/", json={}).json()["id"]

    step = running_step(execution_id, "slow")
    stopping = process_of_agent(processes, step.worker)
    (other,) = [w for w in workers if w is not stopping]
    asked_at = timezone.now()
    stopping.send_signal(signal.SIGTERM)  # one SIGTERM: a warm shutdown

    def draining() -> bool:
        if Agent.objects.get(name=step.worker).state == "stopping":
            return True
        assert Step.objects.get(pk=step.pk).status == "running", "it never showed as stopping"
        return False

    wait_until(draining, 3, "the agent to show as stopping while its step runs")
    assert stopping.wait(timeout=20) == 0  # it exits by itself once the step is done

    step.refresh_from_db()
    assert (step.status, step.attempt, step.output["stdout"]) == ("completed", 1, "done\n")
    assert step.started_at < asked_at < step.finished_at
    agent = Agent.objects.get(name=step.worker)
    assert agent.state == "stopped" and agent.stopped_at is not None

    done = wait_for(api, execution_id, {"completed", "failed", "cancelled"}, timeout=30)
    assert done["status"] == "completed", done
    by_node = {s["node_id"]: s for s in done["steps"]}
    assert [(s["node_id"], s["attempt"]) for s in done["steps"]] == [("slow", 1), ("after", 1)]
    assert by_node["after"]["worker"] == names[other.pid] != step.worker
    assert not ExecutionEvent.objects.filter(
        execution_id=execution_id, kind=EventKind.NODE_INTERRUPTED
    ).exists()
    assert other.poll() is None


def test_a_cold_shutdown_interrupts_the_step_at_once_and_another_worker_reruns_it(api, processes):
    """A second SIGTERM stops the worker in the middle of its step (RQ's cold shutdown). The
    agent records that it stopped as it exits, so its step is interrupted at the next
    reconciler tick, long before the heartbeat timeout would have noticed."""
    env = {**FAST, "OPSFLOW_AGENT_TIMEOUT": "60"}
    processes.start("run_scheduler", **env)
    workers = [processes.worker(**env), processes.worker(**env)]
    names = wait_for_agents(*workers)
    create_and_publish(api, slow_then_after("cold", "sleep 4; echo done"))
    execution_id = api.post("/workflows/cold/trigger/", json={}).json()["id"]

    first = running_step(execution_id, "slow")
    stopping = process_of_agent(processes, first.worker)
    (other,) = [w for w in workers if w is not stopping]
    stopping.send_signal(signal.SIGTERM)
    # RQ ignores a second signal that comes within a second of the first (a pool's duplicate).
    time.sleep(1.2)
    stopping.send_signal(signal.SIGTERM)
    assert stopping.wait(timeout=15) == 0
    exited = time.monotonic()

    def interrupted() -> bool:
        first.refresh_from_db()
        return first.status == "interrupted"

    wait_until(interrupted, 10, "the step of the stopped agent to be interrupted")
    assert time.monotonic() - exited < 10  # not the 60 s heartbeat timeout
    assert f"its agent {first.worker} stopped while running it" in first.error_message
    assert Agent.objects.get(name=first.worker).state == "stopped"

    done = wait_for(api, execution_id, {"completed", "failed", "cancelled"}, timeout=30)
    assert done["status"] == "completed", done
    assert [(s["node_id"], s["attempt"], s["status"], s["worker"]) for s in done["steps"]] == [
        ("slow", 1, "interrupted", first.worker),
        ("slow", 2, "completed", names[other.pid]),
        ("after", 1, "completed", names[other.pid]),
    ]
