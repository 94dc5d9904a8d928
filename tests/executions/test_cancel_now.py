"""Cancel now (issue 12 item 6): running steps are stopped too, on a real worker: a shell
command gets SIGTERM (then SIGKILL after the grace period), an HTTP request is abandoned; the
steps are recorded cancelled, with who did it."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from django.db import connection

from apps.executions import services
from apps.executions.choices import ExecutionStatus, StepStatus
from apps.executions.models import Execution, Step
from apps.executions.worker import ThreadAgentWorker
from tests.factories import make_workflow
from tests.local_http import serving

pytestmark = pytest.mark.django_db(transaction=True)  # the worker runs on its own thread


def one_node(slug: str, node: dict) -> dict:
    return {"slug": slug, "name": slug.title(), "nodes": [node], "edges": []}


def running(execution: Execution, timeout: float = 15) -> Step:
    deadline = time.monotonic() + timeout
    while True:
        step = execution.steps.filter(status=StepStatus.RUNNING).first()
        if step:
            return step
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)


def work_in_background(redis_conn, queue: str) -> threading.Thread:
    worker = ThreadAgentWorker([queue], connection=redis_conn)

    def work() -> None:
        try:
            worker.work(burst=True)
        finally:
            connection.close()  # this thread's: back to the pool, not held by a dead thread

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_cancel_now_stops_a_running_shell_command_with_sigterm(org, operator, redis_conn, tmp_path):
    mark = tmp_path / "finished"
    node = {
        "id": "long",
        "type": "shell.command",
        "queue": "shell",
        "config": {"command": ["sh", "-c", f"echo started; sleep 30; touch {mark}"]},
    }
    execution = services.trigger_workflow(make_workflow(org, one_node("long", node)))
    thread = work_in_background(redis_conn, "shell")
    step = running(execution)

    began = time.monotonic()
    services.cancel_execution(execution, operator, now=True)
    thread.join(timeout=15)

    assert not thread.is_alive() and time.monotonic() - began < 10
    step.refresh_from_db()
    execution.refresh_from_db()
    assert step.status == StepStatus.CANCELLED
    assert step.error_type == "Cancelled"
    assert step.error_message == "Cancelled now by operator: the command was stopped (SIGTERM)"
    assert step.output["stdout"] == "started\n"
    assert not mark.exists()
    assert execution.status == ExecutionStatus.CANCELLED
    log = list(execution.events.values_list("message", flat=True))
    assert "Cancel now by operator: stopping long" in log
    assert "Cancelled by operator (now)" in log


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(
    org, operator, redis_conn, tmp_path, settings
):
    settings.OPSFLOW_CANCEL_GRACE_SECONDS = 1
    mark = tmp_path / "finished"
    node = {
        "id": "stubborn",
        "type": "shell.command",
        "queue": "shell",
        "config": {"command": ["sh", "-c", f"trap '' TERM; sleep 30; touch {mark}"]},
    }
    execution = services.trigger_workflow(make_workflow(org, one_node("stubborn", node)))
    thread = work_in_background(redis_conn, "shell")
    step = running(execution)

    services.cancel_execution(execution, operator, now=True)
    thread.join(timeout=15)

    step.refresh_from_db()
    assert step.status == StepStatus.CANCELLED
    assert step.error_message.endswith("(SIGKILL after 1 s)")
    assert not mark.exists()


class Slow(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(20)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_cancel_now_abandons_a_running_http_request(org, operator, redis_conn):
    with serving(Slow) as base:
        node = {"id": "call", "type": "http.request", "config": {"url": f"{base}/slow"}}
        execution = services.trigger_workflow(make_workflow(org, one_node("call", node)))
        thread = work_in_background(redis_conn, "default")
        step = running(execution)

        began = time.monotonic()
        services.cancel_execution(execution, operator, now=True)
        thread.join(timeout=15)

        assert time.monotonic() - began < 5
    step.refresh_from_db()
    assert step.status == StepStatus.CANCELLED
    assert step.error_message == "Cancelled now by operator: the HTTP request was abandoned"


def test_a_plain_cancel_lets_the_running_step_finish(org, operator, redis_conn):
    node = {
        "id": "short",
        "type": "shell.command",
        "queue": "shell",
        "config": {"command": ["sh", "-c", "sleep 1; echo done"]},
    }
    execution = services.trigger_workflow(make_workflow(org, one_node("short", node)))
    thread = work_in_background(redis_conn, "shell")
    step = running(execution)

    services.cancel_execution(execution, operator)
    thread.join(timeout=15)

    step.refresh_from_db()
    assert step.status == StepStatus.COMPLETED and step.output["stdout"] == "done\n"


def test_the_api_takes_now_and_refuses_anything_else(org, operator, api_for, redis_conn):
    node = {"id": "a", "type": "noop"}
    first = services.trigger_workflow(make_workflow(org, one_node("api-now", node)))
    api = api_for(operator)

    bad = api.post(f"/api/v1/executions/{first.pk}/cancel/?now=maybe")
    assert bad.status_code == 400 and "true or false" in str(bad.json())
    assert Execution.objects.get(pk=first.pk).status != ExecutionStatus.CANCELLED

    done = api.post(f"/api/v1/executions/{first.pk}/cancel/?now=true")
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
