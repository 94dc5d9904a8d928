"""GET /api/v1/executions/{id}/stream/: Server-Sent Events of one execution, read through
Django's ASGI handler (AsyncClient). The run on real processes is in tests/e2e/test_stream_e2e.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from apps.executions.choices import EventKind, ExecutionStatus
from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from apps.executions.stream import Cursor
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)  # the stream reads on its own threads


@pytest.fixture(autouse=True)
def quick(settings):
    settings.OPSFLOW_SSE_POLL_SECONDS = 0.05
    settings.OPSFLOW_SSE_MAX_SECONDS = 3


@pytest.fixture
def workflow(org):
    return make_workflow(org, chain_definition("streamed", 2))


def parse(raw: bytes) -> list[dict]:
    """SSE messages as dicts: event, id, data (decoded JSON), or comment / retry."""
    messages = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        message: dict = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                message["comment"] = value
            elif name == "data":
                message["data"] = json.loads(value)
            else:
                message[name] = value
        messages.append(message)
    return messages


def read(
    user, path: str, headers: dict | None = None, token: bool = False
) -> tuple[int, dict, list]:
    async def go():
        client = AsyncClient()
        extra = dict(headers or {})
        if token:
            key = await Token.objects.acreate(user=user)
            extra["Authorization"] = f"Token {key.key}"
        elif user is not None:
            await client.aforce_login(user)
        response = await client.get(path, headers=extra)
        if not response.streaming:
            return response.status_code, response, response.content
        body = b""
        async for chunk in response.streaming_content:
            body += chunk
        return response.status_code, response, body

    status, response, body = asyncio.run(go())
    return status, response, body


def finish(execution: Execution) -> None:
    """Move the run to completed the way the engine would log it (test data)."""
    execution.log(EventKind.NODE_STARTED, "n0 started")
    Execution.objects.filter(pk=execution.pk).update(status=ExecutionStatus.COMPLETED)
    execution.log(EventKind.EXECUTION_COMPLETED, "Execution completed")


def test_a_finished_run_streams_its_log_steps_and_status_then_ends(workflow, viewer):
    execution = trigger_workflow(workflow)
    finish(execution)

    status, response, body = read(viewer, f"/api/v1/executions/{execution.pk}/stream/")

    assert status == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"].startswith("no-cache")
    messages = parse(body)
    assert messages[0] == {"retry": "2000"}
    logs = [m for m in messages if m.get("event") == "log"]
    assert [m["data"]["id"] for m in logs] == sorted(m["data"]["id"] for m in logs)
    assert [m["id"] for m in logs] == [str(m["data"]["id"]) for m in logs]
    assert logs[-1]["data"]["message"] == "Execution completed"
    steps = [m["data"] for m in messages if m.get("event") == "step"]
    assert [s["node_id"] for s in steps] == ["n0"] and steps[0]["status"] == "dispatched"
    (state,) = [m["data"] for m in messages if m.get("event") == "status"]
    assert state["status"] == "completed" and state["jobs_total"] == 2
    assert messages[-1]["event"] == "end" and messages[-1]["data"] == {"status": "completed"}


def test_last_event_id_resumes_after_that_event(workflow, viewer):
    execution = trigger_workflow(workflow)
    finish(execution)
    events = list(execution.events.order_by("id").values_list("id", flat=True))

    _, _, body = read(
        viewer,
        f"/api/v1/executions/{execution.pk}/stream/",
        headers={"Last-Event-ID": str(events[-2])},
    )

    logs = [m["data"]["id"] for m in parse(body) if m.get("event") == "log"]
    assert logs == [events[-1]]
    # the query form says the same
    _, _, again = read(
        viewer, f"/api/v1/executions/{execution.pk}/stream/?last_event_id={events[-2]}"
    )
    assert [m["data"]["id"] for m in parse(again) if m.get("event") == "log"] == [events[-1]]


def test_a_waiting_run_sends_heartbeats_and_closes_after_the_maximum_without_end(
    workflow, viewer, settings
):
    settings.OPSFLOW_SSE_HEARTBEAT_SECONDS = 1
    settings.OPSFLOW_SSE_MAX_SECONDS = 2
    execution = trigger_workflow(workflow)
    Execution.objects.filter(pk=execution.pk).update(status=ExecutionStatus.PAUSED)

    _, _, body = read(viewer, f"/api/v1/executions/{execution.pk}/stream/")

    messages = parse(body)
    assert {"comment": "heartbeat"} in messages
    assert not any(m.get("event") == "end" for m in messages)
    # the status went out once: nothing changed after
    assert sum(m.get("event") == "status" for m in messages) == 1


def test_token_auth_works_and_other_organizations_get_404(workflow, viewer, outsider):
    execution = trigger_workflow(workflow)
    finish(execution)

    assert read(viewer, f"/api/v1/executions/{execution.pk}/stream/", token=True)[0] == 200
    status, _, body = read(outsider, f"/api/v1/executions/{execution.pk}/stream/")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert read(None, f"/api/v1/executions/{execution.pk}/stream/")[0] in (401, 403)


def test_a_client_asking_for_an_event_stream_gets_its_refusal_as_one(workflow, outsider):
    execution = trigger_workflow(workflow)

    status, response, body = read(
        outsider,
        f"/api/v1/executions/{execution.pk}/stream/",
        headers={"Accept": "text/event-stream"},
    )

    assert status == 404
    assert response["Content-Type"].startswith("text/event-stream")
    (message,) = parse(body)
    assert message["event"] == "error" and message["data"]["error"]["code"] == "not_found"


@pytest.mark.parametrize("bad", ["-1", "x", "1e3", "9" * 40])
def test_a_bad_last_event_id_is_a_clear_400(workflow, viewer, bad):
    execution = trigger_workflow(workflow)

    status, _, body = read(
        viewer, f"/api/v1/executions/{execution.pk}/stream/", headers={"Last-Event-ID": bad}
    )

    assert status == 400
    assert "Not an event id" in body.decode()


def test_a_late_commit_below_the_last_sent_id_is_still_sent_once():
    cursor = Cursor()
    cursor.advance(0.0, [10, 12])  # 11 was not committed yet when these were read

    floor = cursor.floor(1.0)
    assert floor < 11  # the next read looks back far enough for 11 …
    assert cursor.sent == {10, 12}  # … and skips what it sent
    cursor.advance(1.0, [11])
    assert cursor.last == 12

    later = cursor.floor(10.0)  # past the lookback window: the floor catches up
    assert later == 12 and cursor.sent == set()
