"""The execution stream (Server-Sent Events) of real runs: uvicorn serving the ASGI app, a real
`rqworker`, PostgreSQL and Redis."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import needs_services
from tests.e2e.test_multiprocess import create_and_publish, wait_for

pytestmark = [needs_services, pytest.mark.multiprocess]


@pytest.fixture
def web(processes, api):
    """uvicorn with a pool of two connections; an httpx client with the API token."""
    process, base = processes.serve(OPSFLOW_DB_POOL_SIZE="2", OPSFLOW_SSE_POLL_MS="100")
    with httpx.Client(
        base_url=f"{base}/api/v1", headers={"Authorization": api.headers["Authorization"]}
    ) as client:
        client.process = process
        yield client


def read_stream(client: httpx.Client, path: str, timeout: float = 60, **headers) -> list[dict]:
    """Every SSE message until the server closes the stream."""
    messages, message = [], {}
    with client.stream("GET", path, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if message:
                    messages.append(message)
                message = {}
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                message["data"] = json.loads(value)
            elif name:
                message[name] = value
            else:
                message["comment"] = value
    return messages


CHAIN = {
    "slug": "streamed",
    "name": "Streamed",
    "nodes": [
        {"id": "first", "type": "shell.command", "queue": "shell",
         "config": {"command": ["sh", "-c", "sleep 1; echo one"]}},
        {"id": "second", "type": "noop"},
        {"id": "third", "type": "noop"},
    ],
    "edges": [{"from": "first", "to": "second"}, {"from": "second", "to": "third"}],
}  # fmt: skip


def test_the_stream_follows_a_real_run_to_its_end_and_resumes(api, processes, web):
    processes.worker()
    create_and_publish(api, CHAIN)
    execution_id = api.post("/workflows/streamed/trigger/", json={}).json()["id"]

    messages = read_stream(web, f"/executions/{execution_id}/stream/")

    logs = [m for m in messages if m.get("event") == "log"]
    ids = [m["data"]["id"] for m in logs]
    assert ids == sorted(set(ids)), "each log event once, in order"
    kinds = [m["data"]["kind"] for m in logs]
    assert kinds[0] == "created" and kinds[-1] == "execution_completed", kinds
    steps = [m["data"] for m in messages if m.get("event") == "step"]
    # the first step was seen before it ended (the stream was open while it ran)
    first = [s["status"] for s in steps if s["node_id"] == "first"]
    assert first[-1] == "completed" and len(first) >= 2, first
    assert {s["node_id"] for s in steps if s["status"] == "completed"} == {
        "first",
        "second",
        "third",
    }
    statuses = [m["data"]["status"] for m in messages if m.get("event") == "status"]
    assert statuses[-1] == "completed" and "running" in statuses, statuses
    assert messages[-1]["event"] == "end" and messages[-1]["data"] == {"status": "completed"}
    final = wait_for(api, execution_id, {"completed"})
    assert final["jobs_completed"] == 3

    resumed = read_stream(
        web, f"/executions/{execution_id}/stream/", **{"Last-Event-ID": str(ids[1])}
    )

    assert [m["data"]["id"] for m in resumed if m.get("event") == "log"] == ids[2:]
    assert resumed[-1]["event"] == "end"


GATED = {
    "slug": "gated-stream",
    "name": "Gated stream",
    "nodes": [
        {"id": "gate", "type": "approval", "config": {"message": "Go?"}},
        {"id": "after", "type": "noop"},
    ],
    "edges": [{"from": "gate", "to": "after", "on": "approved"}],
}


def test_open_streams_hold_no_database_connection_while_they_wait(api, processes, web):
    """Eight streams of paused runs on a web process whose pool has two connections: each
    gets its first frames, and the process keeps no more than its pool."""
    processes.worker()
    create_and_publish(api, GATED)
    runs = [api.post("/workflows/gated-stream/trigger/", json={}).json()["id"] for _ in range(8)]
    for execution_id in runs:
        wait_for(api, execution_id, {"paused"})

    first_frames: dict[int, float] = {}
    all_open = threading.Event()
    began = time.monotonic()

    def watch(execution_id: int) -> None:
        with web.stream("GET", f"/executions/{execution_id}/stream/", timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("event: status"):
                    first_frames[execution_id] = time.monotonic() - began
                    all_open.wait(20)  # the stream stays open until every one is served
                    return

    threads = [threading.Thread(target=watch, args=(e,), daemon=True) for e in runs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(first_frames) < len(runs) and time.monotonic() < deadline:
        time.sleep(0.1)
    served = sorted(first_frames)
    all_open.set()
    for thread in threads:
        thread.join(timeout=10)

    assert served == sorted(runs), f"streams served while all were open: {served}"
    assert max(first_frames.values()) < 10  # none waited for the pool's 10 s timeout
    assert web.process.poll() is None
