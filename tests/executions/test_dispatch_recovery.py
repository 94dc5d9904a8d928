"""Dispatch that survives its transport (issue 16): the reconciler decides "will this RQ job run?"
from where the job is, not from its hash, and an enqueue that fails after commit never fails the
request: the step waits, marked unsent, until Redis answers.

The two lost-job cases are made by hand in Redis, exactly as a dead worker leaves them: a job
popped from its queue list by a worker that died (its hash still says `queued`), and a job
`started` by a worker that is gone before it could start the step. The outage test starts a
redis-server of its own, kills it and starts it again; never the machine's.
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta

import pytest
import redis
from django.test import Client
from django.utils import timezone
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.worker import Worker

from apps.accounts.choices import Role
from apps.executions import dispatch, services
from apps.executions.choices import EventKind, ExecutionStatus, StepStatus
from apps.executions.models import Agent, Execution, Step
from apps.executions.services import reconcile_lost_dispatches, trigger_workflow
from tests.conftest import WorkerDriver
from tests.factories import chain_definition, make_user, make_workflow
from tests.redis_server import OwnRedis

pytestmark = pytest.mark.django_db(transaction=True)


def later() -> timezone.datetime:
    """Past OPSFLOW_LOST_DISPATCH_AFTER: the reconciler may call a job lost."""
    return timezone.now() + timedelta(seconds=120)


def entry_step(execution: Execution) -> Step:
    return execution.steps.get(node_id="n0")


def ran_once_each(execution: Execution, length: int) -> bool:
    return list(execution.steps.values_list("node_id", "attempt", "status")) == [
        (f"n{i}", 1, StepStatus.COMPLETED) for i in range(length)
    ]


def re_enqueued(execution: Execution) -> list[str]:
    return list(
        execution.events.filter(
            kind=EventKind.NODE_DISPATCHED, message__contains="re-enqueued"
        ).values_list("message", flat=True)
    )


# --- a job that left its queue list but never ran -------------------------------------------


def test_a_job_popped_by_a_worker_that_died_is_enqueued_again_and_the_run_completes_once(
    org, workers, redis_conn
):
    """Redis handed the job to a dead worker's BLPOP: gone from the list, its hash `queued`."""
    execution = trigger_workflow(make_workflow(org, chain_definition("popped", 2)))
    step = entry_step(execution)
    old_job = step.rq_job_id
    queue = Queue(step.queue, connection=redis_conn)
    assert redis_conn.lpop(queue.key) == old_job.encode()  # the dead worker's BLPOP
    assert Job.fetch(old_job, connection=redis_conn).get_status() == "queued"

    assert reconcile_lost_dispatches() == 0  # too recent to call it lost
    assert reconcile_lost_dispatches(now=later()) == 1

    step.refresh_from_db()
    assert step.status == StepStatus.DISPATCHED
    assert step.rq_job_id != old_job  # a new job: nothing RQ kept of the old one can touch it
    assert queue.get_job_ids() == [step.rq_job_id]
    assert not redis_conn.exists(Job.key_for(old_job))
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran_once_each(execution, 2)
    (why,) = re_enqueued(execution)
    assert "queued but in no queue or registry" in why


def test_a_job_stuck_in_the_intermediate_list_of_a_worker_that_died_is_enqueued_again(
    org, workers, redis_conn
):
    """A one-queue worker takes jobs with BLMOVE into `<queue>:intermediate`, then died."""
    execution = trigger_workflow(make_workflow(org, chain_definition("taken", 2)))
    step = entry_step(execution)
    key = Queue(step.queue, connection=redis_conn).key
    intermediate = IntermediateQueue.get_intermediate_queue_key(key)
    redis_conn.lmove(key, intermediate)

    assert reconcile_lost_dispatches(now=later()) == 1

    assert redis_conn.lrange(intermediate, 0, -1) == []  # RQ's own clean-up has nothing to fail
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran_once_each(execution, 2)
    assert "a worker took it from the queue and never started it" in re_enqueued(execution)[0]


def test_the_old_job_delivered_after_all_does_not_run_the_step_twice(org, workers, redis_conn):
    """The dead worker's job comes back (it was only slow): the step still runs once."""
    execution = trigger_workflow(make_workflow(org, chain_definition("comeback", 2)))
    step = entry_step(execution)
    queue = Queue(step.queue, connection=redis_conn)
    old_job = redis_conn.lpop(queue.key)
    assert reconcile_lost_dispatches(now=later()) == 1

    redis_conn.rpush(queue.key, old_job)  # delivered again, late
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran_once_each(execution, 2)


def test_jobs_waiting_in_their_queue_or_schedule_are_left_alone(org, redis_conn):
    """A backlog is not a loss: listed and scheduled jobs will run."""
    queued = trigger_workflow(make_workflow(org, chain_definition("backlog", 1)))
    delayed = trigger_workflow(
        make_workflow(
            org,
            {
                "slug": "later",
                "name": "later",
                "nodes": [{"id": "n0", "type": "delay", "config": {"seconds": 3600}}],
                "edges": [],
            },
        )
    )
    assert Job.fetch(entry_step(delayed).rq_job_id, connection=redis_conn).get_status() == (
        "scheduled"
    )
    Step.objects.filter(pk=entry_step(delayed).pk).update(next_attempt_at=timezone.now())

    assert reconcile_lost_dispatches(now=later()) == 0
    assert re_enqueued(queued) == re_enqueued(delayed) == []


# --- a job started by a worker that is gone ---------------------------------------------------


def _start_job_then_die(redis_conn, step: Step, worker_name: str, *, registered: bool) -> Worker:
    """A real RQ worker takes the job and marks it started, then dies before running it."""
    worker = Worker([step.queue], connection=redis_conn, name=worker_name)
    if registered:
        worker.register_birth()
    job, _queue = Queue.dequeue_any([Queue(step.queue, connection=redis_conn)], None, redis_conn)
    assert job.id == step.rq_job_id
    worker.prepare_job_execution(job)
    assert job.get_status() == "started"
    return worker


def test_a_job_started_by_a_worker_rq_no_longer_knows_is_enqueued_again(org, workers, redis_conn):
    execution = trigger_workflow(make_workflow(org, chain_definition("ghost", 2)))
    _start_job_then_die(redis_conn, entry_step(execution), "ghost", registered=False)

    assert reconcile_lost_dispatches(now=later()) == 1
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran_once_each(execution, 2)
    assert "started by worker ghost, which is gone" in re_enqueued(execution)[0]


def test_a_job_started_by_an_agent_whose_heartbeat_stopped_is_enqueued_again(
    org, workers, redis_conn
):
    """RQ still lists the worker (its key lives minutes), but its agent's heartbeat is dead."""
    execution = trigger_workflow(make_workflow(org, chain_definition("silent", 2)))
    worker = _start_job_then_die(redis_conn, entry_step(execution), "silent", registered=True)
    now = later()
    Agent.register(f"{worker.hostname}/silent", [worker.queue_names()[0]], worker.hostname, 1)
    Agent.objects.update(last_heartbeat_at=now - timedelta(seconds=3600))

    assert reconcile_lost_dispatches(now=now) == 1
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran_once_each(execution, 2)


def test_a_job_started_by_a_live_agent_is_left_to_it(org, redis_conn):
    execution = trigger_workflow(make_workflow(org, chain_definition("alive", 2)))
    worker = _start_job_then_die(redis_conn, entry_step(execution), "alive", registered=True)
    now = later()
    Agent.register(f"{worker.hostname}/alive", [worker.queue_names()[0]], worker.hostname, 1)
    Agent.objects.update(last_heartbeat_at=now)

    assert reconcile_lost_dispatches(now=now) == 0
    assert re_enqueued(execution) == []


def test_a_job_a_live_worker_takes_while_the_reconciler_looks_is_not_sent_again(
    org, redis_conn, monkeypatch
):
    """Popped but not yet started looks lost for a few milliseconds: the second look sees the
    live worker's started job, and nothing is re-enqueued or deleted under it."""
    execution = trigger_workflow(make_workflow(org, chain_definition("race", 2)))
    step = entry_step(execution)
    queue = Queue(step.queue, connection=redis_conn)
    worker = Worker([step.queue], connection=redis_conn, name="quick")
    worker.register_birth()
    Agent.register(f"{worker.hostname}/quick", [step.queue], worker.hostname, 1)
    job, _ = Queue.dequeue_any([queue], None, redis_conn)  # popped: in no list, still `queued`

    def meanwhile(seconds):  # the worker marks it started between the two looks
        worker.prepare_job_execution(job)

    monkeypatch.setattr(services.time, "sleep", meanwhile)
    now = later()
    Agent.objects.update(last_heartbeat_at=now)

    assert reconcile_lost_dispatches(now=now) == 0
    assert re_enqueued(execution) == []
    assert Job.fetch(step.rq_job_id, connection=redis_conn).get_status() == "started"


# --- Redis down when a step is dispatched -----------------------------------------------------


def redis_down(monkeypatch) -> list:
    """From now on every enqueue fails as it does when Redis is stopped (connection refused)."""
    calls: list = []

    def refused(*args, **kwargs):
        calls.append(args)
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(services.engine, "enqueue_step", refused)
    return calls


def test_a_trigger_answers_201_when_its_enqueue_fails_and_the_step_is_sent_when_redis_answers(
    org, workers, redis_conn, api_for, monkeypatch
):
    make_workflow(org, chain_definition("outage", 2))
    editor = make_user("ed", org, Role.EDITOR)
    refused = redis_down(monkeypatch)

    api = api_for(editor)
    api.raise_request_exception = False  # a 500 is an answer here, not an exception
    response = api.post("/api/v1/workflows/outage/trigger/", {"variables": {}}, format="json")

    assert response.status_code == 201, response.content
    execution = Execution.objects.get(pk=response.json()["id"])
    step = entry_step(execution)
    assert refused and step.status == StepStatus.DISPATCHED and step.unsent_since is not None
    assert Client().get("/readyz").json()["unsent_steps"] == 1

    monkeypatch.undo()  # Redis answers again
    assert services.send_unsent_steps() == 1  # at once: no OPSFLOW_LOST_DISPATCH_AFTER wait
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran_once_each(execution, 2)
    assert "never sent: Redis did not answer" in re_enqueued(execution)[0]
    assert Step.objects.filter(unsent_since__isnull=False).count() == 0


def test_a_successor_whose_enqueue_fails_in_the_worker_waits_unsent_instead_of_failing_the_job(
    org, workers, redis_conn, monkeypatch
):
    execution = trigger_workflow(make_workflow(org, chain_definition("mid-chain", 2)))

    def refused(*args, **kwargs):
        raise redis.ConnectionError("Connection refused.")

    monkeypatch.setattr(services.engine, "enqueue_step", refused)  # the entry is queued already
    monkeypatch.setattr(services, "_may_continue_locally", lambda *a: False)
    workers.drain()

    successor = execution.steps.get(node_id="n1")
    assert successor.status == StepStatus.DISPATCHED and successor.unsent_since is not None
    monkeypatch.undo()
    assert services.send_unsent_steps() == 1
    workers.run_to_end(execution)
    assert ran_once_each(execution, 2)


def _sent_when_redis_answers(monkeypatch, workers, execution: Execution) -> Execution:
    """The steps waiting unsent go as soon as Redis answers, and the run ends completed."""
    waiting = Step.objects.filter(execution=execution, unsent_since__isnull=False).count()
    assert waiting >= 1
    monkeypatch.undo()
    assert services.send_unsent_steps() == waiting
    return workers.run_to_end(execution)


def test_a_retrigger_answers_201_with_redis_down(org, operator, workers, api_for, monkeypatch):
    first = workers.run_to_end(trigger_workflow(make_workflow(org, chain_definition("again", 2))))
    redis_down(monkeypatch)

    response = api_for(operator).post(f"/api/v1/executions/{first.pk}/retrigger/")

    assert response.status_code == 201, response.content
    again = Execution.objects.get(pk=response.json()["id"])
    assert _sent_when_redis_answers(monkeypatch, workers, again).status == "completed"
    assert ran_once_each(again, 2)


def test_an_approval_answers_200_with_redis_down_and_the_run_goes_on(
    org, operator, workers, api_for, monkeypatch
):
    from apps.approvals.models import Approval
    from tests.approvals.test_api_and_web import gate_definition

    execution = trigger_workflow(make_workflow(org, gate_definition("gate", ["operator"])))
    workers.drain()
    approval = Approval.objects.get(execution=execution)
    redis_down(monkeypatch)

    response = api_for(operator).post(
        f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json"
    )

    assert response.status_code == 200, response.content
    execution = _sent_when_redis_answers(monkeypatch, workers, execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get(node_id="restart").status == StepStatus.COMPLETED


def test_a_resume_of_an_incomplete_execution_answers_200_with_redis_down(
    org, operator, workers, api_for, monkeypatch, tmp_path
):
    from tests.executions.test_failure_api import check_definition

    flag = tmp_path / "flag"
    workflow = make_workflow(org, check_definition("resume"))
    execution = trigger_workflow(workflow, variables={"flag": str(flag)})
    workers.drain()
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.INCOMPLETE
    flag.touch()
    redis_down(monkeypatch)

    record = execution.incomplete_records.get()
    response = api_for(operator).post(
        f"/api/v1/incomplete-executions/{record.pk}/retry/", {}, format="json"
    )

    assert response.status_code == 200, response.content
    execution = _sent_when_redis_answers(monkeypatch, workers, execution)
    assert execution.status == ExecutionStatus.COMPLETED


# --- a real Redis outage, on a redis-server of the test's own ---------------------------------


@pytest.fixture
def own_redis(tmp_path, settings):
    if not shutil.which("redis-server"):
        pytest.skip("needs the redis-server program (installed in CI)")
    server = OwnRedis(tmp_path)
    server.start()
    settings.REDIS_URL = server.url
    dispatch.reset_connection()
    yield server
    server.kill()
    dispatch.reset_connection()


def test_a_redis_outage_answers_webhooks_and_triggers_as_usual_and_loses_nothing(
    org, own_redis, api_for
):
    workflow = make_workflow(org, chain_definition("outage-real", 2))
    editor = make_user("ed", org, Role.EDITOR)
    api, hooks = api_for(editor), Client(raise_request_exception=False)
    api.raise_request_exception = False
    hook = f"/hooks/{workflow.webhook_key}/"
    workers = WorkerDriver(dispatch.get_connection(), ["default"])
    before = workers.run_to_end(trigger_workflow(workflow))
    assert before.status == ExecutionStatus.COMPLETED

    own_redis.kill()  # mid-stream: the web goes on answering
    answers, slowest = [], 0.0
    for n in range(5):
        started = time.monotonic()
        answers.append(
            hooks.post(
                hook,
                {"variables": {}},
                content_type="application/json",
                headers={"Idempotency-Key": f"delivery-{n}"},
            )
        )
        slowest = max(slowest, time.monotonic() - started)
    answers.append(api.post(f"/api/v1/workflows/{workflow.slug}/trigger/", {}, format="json"))

    assert [a.status_code for a in answers] == [202] * 5 + [201], [a.content for a in answers]
    assert slowest < 2, f"a webhook took {slowest:.2f}s with Redis down"
    ready = Client().get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["down"] == ["redis"] and ready.json()["unsent_steps"] == 6
    during = Execution.objects.exclude(pk=before.pk)
    assert during.count() == 6

    own_redis.start()  # back, empty (no persistence), on the same port
    assert services.send_unsent_steps() == 6
    redelivered = hooks.post(
        hook,
        {"variables": {}},
        content_type="application/json",
        headers={"Idempotency-Key": "delivery-0"},
    )
    assert redelivered.status_code in (200, 202)
    workers = WorkerDriver(dispatch.get_connection(), ["default"])
    workers.drain(
        until=lambda: not during.exclude(status=ExecutionStatus.COMPLETED).exists(), timeout=60
    )
    assert Execution.objects.count() == 7  # the redelivery made no duplicate
    for execution in during:
        assert ran_once_each(execution, 2)
    assert Client().get("/readyz").json()["unsent_steps"] == 0
