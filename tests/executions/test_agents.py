"""Agents and the heartbeat reconciler (DESIGN §6 Durability, issue 5).

A step "running on a dead agent" is made the way a crash leaves it: the step row was started by
an agent (`Step.start`) whose heartbeat then stopped. The reconciler is driven through its `now`
argument, never by sleeping; the real-process version (kill -9) is in tests/e2e/test_chaos.py.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.executions import services
from apps.executions.choices import (
    AgentState,
    EventKind,
    ExecutionStatus,
    IncompleteStatus,
    StepStatus,
)
from apps.executions.models import Agent, Execution, Step
from apps.executions.services import reconcile_lost_agents, trigger_workflow
from apps.executions.worker import HEARTBEAT, AgentContext, ThreadAgentWorker
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 30  # OPSFLOW_AGENT_TIMEOUT's default, which the tests run with


def agent(
    name: str,
    *,
    silent_for: float = 0,
    state: str = AgentState.RUNNING,
    queues: list[str] | None = None,
) -> Agent:
    row = Agent.register(name, queues or ["default"], "host", 4242)
    Agent.objects.filter(pk=row.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=silent_for), state=state
    )
    row.refresh_from_db()
    return row


def started_by(execution: Execution, node_id: str, agent_name: str) -> Step:
    """The agent picked the step up (and then, in these tests, died)."""
    step = execution.steps.get(node_id=node_id, status=StepStatus.DISPATCHED)
    assert step.start(agent_name)
    return step


def run_first_node(workers, settings) -> None:
    """One RQ job, without local continuation: the entry node runs, its successor is dispatched."""
    settings.OPSFLOW_LOCAL_CONTINUATION = False
    assert workers.worker().work(burst=True, max_jobs=1)


def attempts(execution: Execution, node_id: str) -> list[tuple[int, str, int]]:
    return list(
        execution.steps.filter(node_id=node_id)
        .order_by("attempt")
        .values_list("attempt", "status", "retry_number")
    )


def test_a_running_step_of_a_silent_agent_is_interrupted_and_a_new_attempt_completes_the_run(
    org, workers
):
    workflow = make_workflow(org, chain_definition("lost-agent", 3))
    execution = trigger_workflow(workflow)
    dead = agent("host/dead", silent_for=TIMEOUT + 1)
    started_by(execution, "n0", dead.name)

    assert reconcile_lost_agents() == 1

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.INTERRUPTED
    first = execution.steps.get(node_id="n0", attempt=1)
    assert first.status == StepStatus.INTERRUPTED
    assert first.error_type == "WorkerLostError"
    assert "host/dead" in first.error_message and "no heartbeat" in first.error_message
    assert attempts(execution, "n0") == [
        (1, StepStatus.INTERRUPTED, 0),
        (2, StepStatus.DISPATCHED, 0),
    ]

    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert attempts(execution, "n0") == [
        (1, StepStatus.INTERRUPTED, 0),
        (2, StepStatus.COMPLETED, 0),
    ]
    second = execution.steps.get(node_id="n0", attempt=2)
    assert second.worker and second.worker != "host/dead"
    log = list(execution.events.filter(node_id="n0").values_list("kind", "message"))
    kinds = [kind for kind, _ in log]
    assert kinds.index(EventKind.NODE_INTERRUPTED) < kinds.index(EventKind.NODE_COMPLETED)
    assert any(kind == EventKind.NODE_STARTED and "host/dead" in msg for kind, msg in log)
    assert any(
        kind == EventKind.NODE_STARTED and second.worker in msg and "attempt 2" in msg
        for kind, msg in log
    )
    assert reconcile_lost_agents() == 0  # nothing left to do: it acts once


def test_an_agent_that_still_beats_keeps_its_step(org):
    execution = trigger_workflow(make_workflow(org, chain_definition("alive", 2)))
    alive = agent("host/alive", silent_for=TIMEOUT - 5)
    step = started_by(execution, "n0", alive.name)

    assert reconcile_lost_agents() == 0
    step.refresh_from_db()
    assert step.status == StepStatus.RUNNING
    # ...until its heartbeat is older than the timeout.
    assert reconcile_lost_agents(now=timezone.now() + timedelta(seconds=6)) == 1
    step.refresh_from_db()
    assert step.status == StepStatus.INTERRUPTED


def test_a_stopped_agent_s_running_step_is_interrupted_without_waiting_for_the_timeout(org):
    execution = trigger_workflow(make_workflow(org, chain_definition("stopped", 2)))
    gone = agent("host/gone", state=AgentState.STOPPED)
    started_by(execution, "n0", gone.name)

    assert reconcile_lost_agents() == 1
    step = execution.steps.get(node_id="n0", attempt=1)
    assert step.status == StepStatus.INTERRUPTED
    assert "stopped while running it" in step.error_message


def test_interruptions_do_not_use_up_retries(org, workers, settings):
    definition = chain_definition("retried", 2)
    definition["nodes"][1]["retry"] = {"max_retries": 1, "delay": 0}
    execution = trigger_workflow(make_workflow(org, definition))
    run_first_node(workers, settings)
    dead = agent("host/dead", silent_for=TIMEOUT + 1)
    started_by(execution, "n1", dead.name)

    reconcile_lost_agents()
    started_by(execution, "n1", dead.name)
    reconcile_lost_agents()

    assert attempts(execution, "n1") == [
        (1, StepStatus.INTERRUPTED, 0),
        (2, StepStatus.INTERRUPTED, 0),
        (3, StepStatus.DISPATCHED, 0),  # still the first try as far as max_retries goes
    ]
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED


def test_the_third_interruption_fails_the_step_with_a_worker_lost_error(org, workers, settings):
    execution = trigger_workflow(make_workflow(org, chain_definition("doomed", 3)))
    run_first_node(workers, settings)
    dead = agent("host/oom", silent_for=TIMEOUT + 1)
    for _ in range(3):
        started_by(execution, "n1", dead.name)
        assert reconcile_lost_agents() == 1

    assert attempts(execution, "n1") == [
        (1, StepStatus.INTERRUPTED, 0),
        (2, StepStatus.INTERRUPTED, 0),
        (3, StepStatus.FAILED, 0),
    ]
    failed = execution.steps.get(node_id="n1", attempt=3)
    assert failed.error_type == "WorkerLostError"
    assert list(failed.events.values_list("kind", flat=True)) == [
        EventKind.NODE_DISPATCHED,
        EventKind.NODE_STARTED,
        EventKind.NODE_FAILED,
    ]
    assert failed.error_message.startswith("Worker lost: n1 was interrupted 3 times")
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert "n1 failed with WorkerLostError: Worker lost" in execution.error_message
    assert not execution.steps.filter(node_id="n2").exists()


def test_a_worker_lost_failure_is_stored_as_incomplete_without_auto_retry(org, workers, settings):
    definition = chain_definition("doomed-store", 3)
    definition["settings"] = {"store_incomplete_executions": True}
    execution = trigger_workflow(make_workflow(org, definition))
    run_first_node(workers, settings)
    dead = agent("host/oom", silent_for=TIMEOUT + 1)
    for _ in range(3):
        started_by(execution, "n1", dead.name)
        reconcile_lost_agents()

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.INCOMPLETE
    record = execution.incomplete_records.get()
    assert (record.error_type, record.auto_retry, record.status) == (
        "WorkerLostError",
        False,
        IncompleteStatus.UNRESOLVED,
    )
    services.retry_incomplete(record)
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert attempts(execution, "n1")[-1] == (4, StepStatus.COMPLETED, 0)


def test_a_waiting_approval_step_is_not_interrupted_when_its_agent_is_gone(org, workers):
    definition = {
        "slug": "gated",
        "name": "Gated",
        "nodes": [
            {"id": "gate", "type": "approval", "config": {"message": "Go?"}},
            {"id": "after", "type": "noop"},
        ],
        "edges": [{"from": "gate", "to": "after", "on": "approved"}],
    }
    execution = trigger_workflow(make_workflow(org, definition))
    workers.drain(until=lambda: execution.steps.filter(status=StepStatus.RUNNING).exists())
    gate = execution.steps.get(node_id="gate")
    Agent.register(gate.worker, ["default"], "host", 1)
    Agent.mark_stopped(gate.worker)

    assert reconcile_lost_agents(now=timezone.now() + timedelta(days=1)) == 0
    gate.refresh_from_db()
    assert gate.status == StepStatus.RUNNING
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.PAUSED


def test_a_step_whose_worker_never_registered_is_left_alone(org):
    execution = trigger_workflow(make_workflow(org, chain_definition("unknown", 2)))
    step = started_by(execution, "n0", "elsewhere/pid-1")
    assert reconcile_lost_agents(now=timezone.now() + timedelta(days=1)) == 0
    step.refresh_from_db()
    assert step.status == StepStatus.RUNNING


def test_a_cancelled_run_s_lost_step_is_interrupted_and_nothing_starts_again(org):
    execution = trigger_workflow(make_workflow(org, chain_definition("cancelled", 2)))
    dead = agent("host/dead", silent_for=TIMEOUT + 1)
    started_by(execution, "n0", dead.name)
    services.cancel_execution(execution)

    assert reconcile_lost_agents() == 1
    assert attempts(execution, "n0") == [(1, StepStatus.INTERRUPTED, 0)]
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.CANCELLED


def test_a_resumed_incomplete_execution_re_runs_a_branch_interrupted_while_it_was_stopped(
    org, workers, tmp_path, settings
):
    flag = tmp_path / "flag"
    definition = {
        "slug": "branches",
        "name": "Branches",
        "settings": {"store_incomplete_executions": True},
        "nodes": [
            {"id": "start", "type": "noop"},
            {
                "id": "a",
                "type": "shell.command",
                "config": {"command": ["test", "-f", str(flag)]},
                "on_error": "break",
            },
            {"id": "b", "type": "noop", "config": {"output": {"b": 1}}},
            {"id": "join", "type": "noop"},
        ],
        "edges": [
            {"from": "start", "to": "a"},
            {"from": "start", "to": "b"},
            {"from": "a", "to": "join"},
            {"from": "b", "to": "join"},
        ],
    }
    execution = trigger_workflow(make_workflow(org, definition))
    run_first_node(workers, settings)
    dead = agent("host/dead", silent_for=TIMEOUT + 1)
    started_by(execution, "b", dead.name)
    workers.drain(until=lambda: Execution.objects.get(pk=execution.pk).status == "incomplete")

    assert reconcile_lost_agents() == 1
    assert attempts(execution, "b") == [(1, StepStatus.INTERRUPTED, 0)]  # stopped: not re-run yet

    flag.touch()
    services.retry_incomplete(execution.incomplete_records.get())
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert attempts(execution, "b") == [
        (1, StepStatus.INTERRUPTED, 0),
        (2, StepStatus.COMPLETED, 0),
    ]
    assert execution.steps.get(node_id="join").status == StepStatus.COMPLETED


def test_a_draining_agent_does_not_continue_locally(org):
    execution = trigger_workflow(make_workflow(org, chain_definition("drain", 2)))
    step = execution.steps.get()
    context = AgentContext("host/w", frozenset({"default"}), time.monotonic(), 180.0)
    assert services._may_continue_locally(context, step, 1)
    context.draining.set()
    assert not services._may_continue_locally(context, step, 1)


def test_a_long_running_worker_registers_beats_and_stops(org, redis_conn, settings):
    settings.OPSFLOW_HEARTBEAT_SECONDS = 1
    worker = ThreadAgentWorker(["default"], connection=redis_conn, name="beating")
    thread = threading.Thread(target=worker.work, kwargs={"max_idle_time": 3}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not Agent.objects.filter(name=worker.agent_name).exists():
        assert time.monotonic() < deadline, "the worker never registered"
        time.sleep(0.05)
    row = Agent.objects.get(name=worker.agent_name)
    assert (row.state, row.queues) == (AgentState.RUNNING, ["default"])
    first_beat = row.last_heartbeat_at
    while Agent.objects.get(pk=row.pk).last_heartbeat_at == first_beat:
        assert time.monotonic() < deadline, "no heartbeat within the interval"
        time.sleep(0.05)

    thread.join(timeout=10)  # idle for 3 s: it quits
    assert not thread.is_alive()
    row.refresh_from_db()
    assert row.state == AgentState.STOPPED and row.stopped_at is not None
    assert row.display_state() == AgentState.STOPPED
    deadline = time.monotonic() + 5
    while HEARTBEAT._thread is not None:  # no agent left in this process: the thread ends
        assert time.monotonic() < deadline, "the heartbeat thread kept running"
        time.sleep(0.05)


def test_an_agent_silent_past_the_timeout_displays_as_lost():
    row = agent("host/quiet", silent_for=TIMEOUT + 1)
    assert row.display_state() == AgentState.LOST
    assert agent("host/loud").display_state() == AgentState.RUNNING


# --- GET /api/v1/agents/ and the admin page -----------------------------------------------------


def test_the_agents_api_lists_state_queues_and_the_caller_s_running_steps(
    org, other_org, viewer, outsider, api_for
):
    ours = trigger_workflow(make_workflow(org, chain_definition("ours", 2)))
    theirs = trigger_workflow(make_workflow(other_org, chain_definition("theirs", 2)))
    busy = agent("host/busy")
    started_by(ours, "n0", busy.name)
    started_by(theirs, "n0", busy.name)
    agent("host/quiet", silent_for=TIMEOUT + 1)
    agent("host/done", state=AgentState.STOPPED)

    response = api_for(viewer).get("/api/v1/agents/")
    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()["results"]}
    assert {name: row["state"] for name, row in rows.items()} == {
        "host/busy": "running",
        "host/quiet": "lost",
        "host/done": "stopped",
    }
    assert rows["host/busy"]["queues"] == ["default"]
    assert rows["host/busy"]["running_steps"] == [
        {
            "id": ours.steps.get(node_id="n0").pk,
            "execution": ours.pk,
            "node_id": "n0",
            "attempt": 1,
        }
    ]
    theirs_seen = api_for(outsider).get("/api/v1/agents/").json()["results"]
    assert [s["execution"] for r in theirs_seen for s in r["running_steps"]] == [theirs.pk]

    lost = api_for(viewer).get("/api/v1/agents/", {"state": "lost"}).json()["results"]
    assert [row["name"] for row in lost] == ["host/quiet"]
    running = api_for(viewer).get("/api/v1/agents/", {"state": "running"}).json()["results"]
    assert [row["name"] for row in running] == ["host/busy"]
    bad = api_for(viewer).get("/api/v1/agents/", {"state": "asleep"})
    assert bad.status_code == 400
    assert "state" in bad.content.decode()


def test_the_agents_api_needs_a_login(client):
    assert client.get("/api/v1/agents/").status_code in (401, 403)


def test_the_agents_admin_page_shows_state_and_links_to_what_runs(org, viewer, client):
    execution = trigger_workflow(make_workflow(org, chain_definition("admin-agents", 2)))
    busy = agent("host/busy")
    started_by(execution, "n0", busy.name)
    agent("host/quiet", silent_for=TIMEOUT + 1)
    client.force_login(viewer)

    page = client.get("/executions/agent/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "host/busy" in html and "host/quiet" in html
    assert "opsflow-lost" in html and "opsflow-running" in html
    assert f'href="{execution.get_absolute_url()}"' in html
    assert f"#{execution.pk} n0" in html


def test_the_agents_page_shows_each_queue_and_warns_of_one_no_live_agent_serves(
    org, viewer, client
):
    trigger_workflow(make_workflow(org, chain_definition("queued", 1)))  # waits in "default"
    agent("host/shell-only", queues=["shell"])
    Agent.objects.filter(name="host/shell-only").update(steps_done=1234, steps_failed=5)
    client.force_login(viewer)

    html = client.get("/executions/agent/").content.decode()

    assert "No live agent for queue <code>default</code>: 1 step waits there." in html
    assert "<td><code>shell</code></td><td>0</td><td>1</td>" in html
    assert "1,234" in html and re.search(r'<td class="field-failed\b[^>]*>5</td>', html)


# --- an agent that is alive but lost the step (its result could not be recorded) ----------------


def test_a_step_its_live_agent_no_longer_reports_is_interrupted_and_run_again(org, workers):
    execution = trigger_workflow(make_workflow(org, chain_definition("orphan", 2)))
    busy = agent("host/busy")
    step = started_by(execution, "n0", busy.name)
    Step.objects.filter(pk=step.pk).update(started_at=timezone.now() - timedelta(seconds=10))

    Agent.beat(busy.name, timezone.now(), [step.pk], draining=False)
    assert reconcile_lost_agents() == 0  # it still reports the step: it is working on it

    Agent.beat(busy.name, timezone.now(), [], draining=False)
    assert reconcile_lost_agents() == 1
    step.refresh_from_db()
    assert step.status == StepStatus.INTERRUPTED
    assert "is alive but no longer runs it" in step.error_message
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_step_started_after_the_last_heartbeat_is_not_an_orphan(org):
    execution = trigger_workflow(make_workflow(org, chain_definition("fresh", 2)))
    busy = agent("host/busy", silent_for=3)  # beat 3 s ago, listing nothing
    step = started_by(execution, "n0", busy.name)  # started just now: not in that list yet
    assert reconcile_lost_agents() == 0
    step.refresh_from_db()
    assert step.status == StepStatus.RUNNING


def test_a_worker_reports_the_step_it_runs_in_its_heartbeat(org, redis_conn, settings):
    """The heartbeat thread lists a step from its start until its outcome is recorded."""
    settings.OPSFLOW_HEARTBEAT_SECONDS = 1
    definition = chain_definition("slow", 1)
    definition["nodes"][0] = {
        "id": "n0",
        "type": "shell.command",
        "config": {"command": ["sleep", "2.5"]},
    }
    execution = trigger_workflow(make_workflow(org, definition))
    worker = ThreadAgentWorker(["shell"], connection=redis_conn, name="reporting")
    thread = threading.Thread(target=worker.work, kwargs={"max_idle_time": 2}, daemon=True)
    thread.start()
    step = execution.steps.get()
    deadline = time.monotonic() + 10

    def listed() -> list[int]:
        row = Agent.objects.filter(name=worker.agent_name).first()
        return row.running_step_ids if row else []

    while step.pk not in listed():
        assert time.monotonic() < deadline, "the heartbeat never listed the running step"
        time.sleep(0.05)
    assert reconcile_lost_agents() == 0
    thread.join(timeout=15)
    step.refresh_from_db()
    assert step.status == StepStatus.COMPLETED
    row = Agent.objects.get(name=worker.agent_name)
    assert row.running_step_ids == []
    # and it counted the step it ran (sent with the heartbeat)
    assert (row.steps_done, row.steps_failed) == (1, 0)


def test_a_result_is_recorded_once_the_database_answers_again(org, workers, monkeypatch):
    from django.db import OperationalError

    monkeypatch.setattr(services, "RECORD_RETRY_DELAYS", (0.01, 0.01))
    real, calls = services.record_attempt, []

    def flaky(step, attempt, agent):
        calls.append(step.pk)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(step, attempt, agent)

    monkeypatch.setattr(services, "record_attempt", flaky)
    execution = workers.run_to_end(
        trigger_workflow(make_workflow(org, chain_definition("flaky-db", 2)))
    )
    assert execution.status == ExecutionStatus.COMPLETED
    assert calls[0] == calls[1]  # the first step's outcome was recorded on the second try
    assert attempts(execution, "n0") == [(1, StepStatus.COMPLETED, 0)]


def test_a_dispatched_step_whose_rq_job_failed_before_running_it_is_enqueued_again(
    org, workers, redis_conn
):
    from rq.job import Job

    execution = trigger_workflow(make_workflow(org, chain_definition("failed-job", 1)))
    step = execution.steps.get()
    job = Job.fetch(step.rq_job_id, connection=redis_conn)
    job.set_status("failed")  # the worker could not load the step (database down) and gave up
    redis_conn.delete(f"rq:queue:{step.queue}")
    later = timezone.now() + timedelta(seconds=60)

    assert services.reconcile_lost_dispatches(now=later) == 1
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED


def test_the_heartbeat_thread_survives_a_database_error(org, settings, monkeypatch):
    """A heartbeat thread that died would make a live agent look lost and its steps run twice."""
    from django.db import OperationalError

    settings.OPSFLOW_HEARTBEAT_SECONDS = 1
    row = agent("host/solo", silent_for=100)
    real, calls = Agent.beat.__func__, []

    def flaky(cls, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OperationalError("the database system is shutting down")
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Agent, "beat", classmethod(flaky))
    HEARTBEAT.add(row.name, threading.Event(), set())
    try:
        deadline = time.monotonic() + 10
        while Agent.objects.get(pk=row.pk).display_state() == AgentState.LOST:
            assert time.monotonic() < deadline, "the heartbeat stopped after the error"
            time.sleep(0.05)
    finally:
        HEARTBEAT.remove(row.name)
    assert len(calls) >= 2


def test_an_agent_whose_loop_quits_works_again_until_it_is_asked_to_stop(org, redis_conn):
    """RQ quits its loop when Redis fails it (here: this worker's earlier registration, never
    marked dead, makes RQ refuse the name, as after an outage). The agent works again."""
    worker = ThreadAgentWorker(["default"], connection=redis_conn, name="comeback")
    redis_conn.hset(worker.key, mapping={"birth": "2026-01-01T00:00:00Z"})  # alive, says Redis
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not redis_conn.hexists(worker.key, "queues"):  # registered by its second loop
        assert time.monotonic() < deadline and thread.is_alive(), "the agent never came back"
        time.sleep(0.05)

    execution = trigger_workflow(make_workflow(org, chain_definition("after-restart", 1)))
    deadline = time.monotonic() + 15
    while execution.status != "completed":
        assert time.monotonic() < deadline, "the agent that came back ran nothing"
        time.sleep(0.05)
        execution.refresh_from_db()
    worker._stop_requested = True  # what a warm shutdown sets
    trigger_workflow(make_workflow(org, chain_definition("wake-up", 1)))  # ends its BLPOP
    thread.join(timeout=15)
    assert not thread.is_alive()


def test_the_embedded_default_marks_its_agents_stopped_when_it_stops(tmp_path):
    """`make run` stopped with Ctrl+C or SIGTERM: its worker threads are gone, and the Agents
    page says so (stopped), instead of showing them lost for ever."""
    import os
    import signal
    import socket
    import sqlite3
    import subprocess
    import sys

    from django.conf import settings as django_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(OPSFLOW_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings.base")
    env.pop("OPSFLOW_SECRETS_KEYS", None)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "standalone", "--port", str(port), "--no-seed"],
        cwd=django_settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def states() -> list[str]:
        try:
            with sqlite3.connect(tmp_path / "opsflow.sqlite3") as db:
                return [r[0] for r in db.execute("SELECT state FROM executions_agent")]
        except sqlite3.OperationalError:  # not migrated yet
            return []

    try:
        deadline = time.monotonic() + 60
        while states().count("running") < 2:
            assert process.poll() is None and time.monotonic() < deadline, "never started"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert states() and set(states()) == {"stopped"}
