"""End to end across processes: the HTTP API in a live server, real `rqworker` and `run_scheduler`
processes, PostgreSQL and Redis."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.conftest import needs_services

pytestmark = [needs_services, pytest.mark.multiprocess]


def wait_for(api, execution_id: int, statuses: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = api.get(f"/executions/{execution_id}/").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"execution {execution_id} is still {body.get('status')}: {body}")


def create_and_publish(api, definition: dict) -> None:
    assert api.post("/workflows/", json=definition).status_code == 201
    published = api.post(f"/workflows/{definition['slug']}/publish/")
    assert published.status_code == 201, published.text


def test_a_workflow_runs_on_a_real_worker_process_through_the_http_api(live_server, api, processes):
    processes.worker()
    create_and_publish(
        api,
        {
            "slug": "e2e",
            "name": "End to end",
            "variables": {"base": {"type": "string", "required": True}},
            "nodes": [
                {
                    "id": "check",
                    "type": "http.request",
                    "config": {"url": "{{ vars.base }}/healthz", "expect_status": [200]},
                },
                {
                    "id": "say",
                    "type": "shell.command",
                    "queue": "shell",
                    "config": {"command": ["echo", "status {{ nodes.check.output.status_code }}"]},
                },
                {
                    "id": "done",
                    "type": "noop",
                    "config": {"output": {"said": "{{ nodes.say.output.stdout | trim }}"}},
                },
            ],
            "edges": [{"from": "check", "to": "say"}, {"from": "say", "to": "done"}],
        },
    )
    created = api.post("/workflows/e2e/trigger/", json={"variables": {"base": live_server.url}})
    assert created.status_code == 201, created.text

    body = wait_for(api, created.json()["id"], {"completed", "failed", "cancelled"})
    assert body["status"] == "completed", body
    steps = {s["node_id"]: s for s in body["steps"]}
    assert steps["check"]["output"]["status_code"] == 200
    assert steps["say"]["output"]["stdout"] == "status 200\n"
    assert steps["say"]["output"]["exit_code"] == 0
    assert steps["done"]["input"] == {"output": {"said": "status 200"}}
    assert all(s["worker"] for s in steps.values())
    assert body["jobs_completed"] == body["jobs_total"] == 3


def flaky_definition(flag) -> dict:
    """`deploy` fails (UnexpectedError) until the flag file exists."""
    return {
        "slug": "flaky",
        "name": "Flaky",
        "settings": {"store_incomplete_executions": True},
        "nodes": [
            {"id": "prepare", "type": "noop", "config": {"output": {"ready": True}}},
            {
                "id": "deploy",
                "type": "shell.command",
                "queue": "shell",
                "config": {"command": ["sh", "-c", f"test -f {flag} && echo deployed"]},
            },
            {
                "id": "notify",
                "type": "noop",
                "config": {"output": {"said": "{{ nodes.deploy.output.stdout | trim }}"}},
            },
        ],
        "edges": [{"from": "prepare", "to": "deploy"}, {"from": "deploy", "to": "notify"}],
    }


def test_an_incomplete_execution_is_resolved_through_the_api_on_real_workers(
    api, processes, tmp_path
):
    processes.worker()
    flag = tmp_path / "fixed"
    create_and_publish(api, flaky_definition(flag))
    execution_id = api.post("/workflows/flaky/trigger/", json={}).json()["id"]

    stopped = wait_for(api, execution_id, {"incomplete", "failed", "completed"})
    assert stopped["status"] == "incomplete", stopped
    record_id = stopped["incomplete_execution"]
    record = api.get(f"/incomplete-executions/{record_id}/").json()
    assert (record["node_id"], record["error_type"], record["status"]) == (
        "deploy",
        "UnexpectedError",
        "unresolved",
    )
    assert record["bundles"]["nodes"]["prepare"]["output"] == {"ready": True}

    flag.write_text("ok")
    assert api.post(f"/incomplete-executions/{record_id}/retry/", json={}).status_code == 200
    done = wait_for(api, execution_id, {"completed", "failed", "incomplete"})
    assert done["status"] == "completed", done
    attempts = [(s["node_id"], s["attempt"], s["status"]) for s in done["steps"]]
    assert ("prepare", 1, "completed") in attempts and ("prepare", 2, "completed") not in attempts
    assert ("deploy", 2, "completed") in attempts
    assert api.get(f"/incomplete-executions/{record_id}/").json()["status"] == "resolved"
    again = api.post(f"/incomplete-executions/{record_id}/retry/", json={})
    assert again.status_code == 409


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Ok(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"up": true}')

    def log_message(self, *args):
        pass


def test_the_scheduler_process_auto_retries_until_the_endpoint_recovers(api, processes):
    """A ConnectionError is stored with auto-retry; the real scheduler retries on a 1 s ladder,
    and once the endpoint listens the same execution completes and the record is resolved."""
    ladder = {
        "OPSFLOW_IE_RETRY_SCHEDULE": "1,1,1,1,1,1,1,1,1,1,1,1"
    }  # read where records are stored
    processes.worker(**ladder)
    processes.start("run_scheduler", **ladder)
    port = free_port()  # nothing listens here yet
    create_and_publish(
        api,
        {
            "slug": "recovering",
            "name": "Recovering",
            "settings": {"store_incomplete_executions": True},
            "nodes": [
                {"id": "start", "type": "noop"},
                {
                    "id": "call",
                    "type": "http.request",
                    "config": {"url": f"http://127.0.0.1:{port}/"},
                },
            ],
            "edges": [{"from": "start", "to": "call"}],
        },
    )
    execution_id = api.post("/workflows/recovering/trigger/", json={}).json()["id"]
    stopped = wait_for(api, execution_id, {"incomplete"})
    record_id = stopped["incomplete_execution"]
    record = api.get(f"/incomplete-executions/{record_id}/").json()
    assert record["auto_retry"] is True and record["error_type"] == "ConnectionError"

    deadline = time.monotonic() + 30
    while record["attempts"] < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
        record = api.get(f"/incomplete-executions/{record_id}/").json()
    assert record["attempts"] >= 2, record  # the scheduler retried, and it failed again

    server = ThreadingHTTPServer(("127.0.0.1", port), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = wait_for(api, execution_id, {"completed"}, timeout=30)
    finally:
        server.shutdown()
    call = [s for s in done["steps"] if s["node_id"] == "call"]
    assert call[-1]["status"] == "completed" and call[-1]["output"]["json"] == {"up": True}
    assert [s["attempt"] for s in done["steps"] if s["node_id"] == "start"] == [1]
    assert api.get(f"/incomplete-executions/{record_id}/").json()["status"] == "resolved"


def test_cancel_lets_the_running_step_finish_and_cancels_the_rest(api, processes):
    processes.worker()
    create_and_publish(
        api,
        {
            "slug": "slow",
            "name": "Slow",
            "nodes": [
                {
                    "id": "work",
                    "type": "shell.command",
                    "queue": "shell",
                    "config": {"command": ["sh", "-c", "sleep 2; echo done"]},
                },
                {"id": "after", "type": "noop"},
            ],
            "edges": [{"from": "work", "to": "after"}],
        },
    )
    execution_id = api.post("/workflows/slow/trigger/", json={}).json()["id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        steps = api.get(f"/executions/{execution_id}/").json()["steps"]
        if any(s["node_id"] == "work" and s["status"] == "running" for s in steps):
            break
        time.sleep(0.1)
    cancelled = api.post(f"/executions/{execution_id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = api.get(f"/executions/{execution_id}/").json()
        work = next(s for s in body["steps"] if s["node_id"] == "work")
        if work["status"] != "running":
            break
        time.sleep(0.2)
    assert work["status"] == "completed" and work["output"]["stdout"] == "done\n"
    assert [s["node_id"] for s in body["steps"]] == ["work"]  # `after` never ran
    assert body["status"] == "cancelled"
    assert api.post(f"/executions/{execution_id}/cancel/").status_code == 409


def gate_definition(timeout: int = 0) -> dict:
    return {
        "slug": "gated",
        "name": "Gated",
        "nodes": [
            {"id": "check", "type": "noop", "config": {"output": {"host": "web1"}}},
            {
                "id": "gate",
                "type": "approval",
                "config": {"message": "Restart {{ nodes.check.output.host }}?", "timeout": timeout},
            },
            {
                "id": "restart",
                "type": "shell.command",
                "queue": "shell",
                "config": {"command": ["echo", "restarted by {{ nodes.gate.output.respondedBy }}"]},
            },
            {
                "id": "skip",
                "type": "noop",
                "config": {"output": {"why": "{{ nodes.gate.output.reason }}"}},
            },
        ],
        "edges": [
            {"from": "check", "to": "gate"},
            {"from": "gate", "to": "restart", "on": "approved"},
            {"from": "gate", "to": "skip", "on": "rejected"},
        ],
    }


def test_an_approval_decided_through_the_api_resumes_the_run_on_a_real_worker(api, processes):
    processes.worker()
    create_and_publish(api, gate_definition())
    execution_id = api.post("/workflows/gated/trigger/", json={}).json()["id"]

    paused = wait_for(api, execution_id, {"paused"})
    (gate,) = paused["approvals"]
    assert gate["status"] == "pending" and gate["message"] == "Restart web1?"
    mine = api.get("/approvals/", params={"status": "pending", "mine": "true"}).json()
    assert [a["id"] for a in mine["results"]] == [gate["id"]]

    decided = api.post(f"/approvals/{gate['id']}/approve/", json={"note": "go"})
    assert decided.status_code == 200, decided.text
    done = wait_for(api, execution_id, {"completed", "failed"})
    assert done["status"] == "completed"
    restart = next(s for s in done["steps"] if s["node_id"] == "restart")
    assert restart["output"]["stdout"] == "restarted by ops\n"
    assert [s["status"] for s in done["steps"] if s["node_id"] == "skip"] == ["skipped"]
    assert api.post(f"/approvals/{gate['id']}/reject/", json={}).status_code == 409


def test_the_scheduler_process_expires_an_unanswered_approval(api, processes):
    processes.worker()
    processes.start("run_scheduler")
    create_and_publish(api, gate_definition(timeout=2))
    execution_id = api.post("/workflows/gated/trigger/", json={}).json()["id"]

    done = wait_for(api, execution_id, {"completed", "failed"}, timeout=30)
    assert done["status"] == "completed"
    (gate,) = done["approvals"]
    assert gate["status"] == "expired" and gate["reason"] == "timeout"
    skip = next(s for s in done["steps"] if s["node_id"] == "skip")
    assert skip["status"] == "completed" and skip["output"] == {"why": "timeout"}
    events = api.get(f"/executions/{execution_id}/events/", params={"page_size": 200}).json()[
        "results"
    ]
    assert any(
        e["kind"] == "approval_decided" and e["data"].get("reason") == "timeout" for e in events
    )
