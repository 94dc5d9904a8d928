"""An execution as Server-Sent Events (`GET /api/v1/executions/{id}/stream/`).

The stream reads the database every OPSFLOW_SSE_POLL_SECONDS on a worker thread and gives
its connection back after each read, so an open stream holds no database connection while it
waits (a page can stay open on a paused run for hours). It sends:

- `log`: each new execution event (the log), with the event's id as the SSE id;
- `step`: a step row whenever its status or times change (the first read sends them all);
- `status`: the execution's status and job counters whenever they change;
- `end`: once the execution is terminal and its log is sent; then the stream closes.

A comment line goes out when nothing else did for OPSFLOW_SSE_HEARTBEAT_SECONDS, so that
proxies keep the connection. A client that reconnects with `Last-Event-ID` (browsers do it by
themselves) gets the log after that event, then the current steps and status again. After
OPSFLOW_SSE_MAX_SECONDS the server ends the stream without `end`, and the client reconnects.

Events committed out of id order (two workers logging at once) are caught: each read looks
back to the position of a few seconds before and skips the ids it already sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from apps.executions.choices import EXECUTION_TERMINAL
from apps.executions.models import Execution, ExecutionEvent

LOOKBACK_SECONDS = 5.0  # an event's transaction commits within this after a later one's
BATCH = 500  # events read at most per poll


def _encoder(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE message. JSON has no raw newlines, so `data` is a single line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {_encoder(data)}\n\n".encode()


@dataclass
class Poll:
    status: dict[str, Any] | None
    steps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    terminal: bool


def read(execution_id: int, after: int, skip: frozenset[int]) -> Poll:
    """The execution's status and steps now, and its events with an id above `after` (less
    those in `skip`). Runs on a worker thread; gives the connection back when done."""
    from apps.executions.api.serializers import (
        ExecutionEventSerializer,
        ExecutionSerializer,
        StepSerializer,
    )

    try:
        execution = (
            Execution.objects.select_related("workflow", "version", "triggered_by")
            .defer("workflow__draft", "version__definition")
            .filter(pk=execution_id)
            .first()
        )
        if execution is None:  # deleted (retention) while watched
            return Poll(None, [], [], True)
        events = [
            e
            for e in ExecutionEvent.objects.filter(execution_id=execution_id, id__gt=after)
            .exclude(id__in=skip)
            .order_by("id")[:BATCH]
        ]
        steps = list(execution.steps.order_by("created_at", "id"))
        return Poll(
            status=dict(ExecutionSerializer(execution).data),
            steps=[dict(s) for s in StepSerializer(steps, many=True).data],
            events=[dict(e) for e in ExecutionEventSerializer(events, many=True).data],
            terminal=execution.status in EXECUTION_TERMINAL,
        )
    finally:
        connection.close()  # this thread's: nothing is held between polls


@dataclass
class Cursor:
    """Where the stream is in the log, with what it already sent near that point."""

    last: int = 0
    sent: set[int] = field(default_factory=set)
    history: list[tuple[float, int]] = field(default_factory=list)  # (read at, last before)

    def floor(self, now: float) -> int:
        """Where the next read starts: the position before the reads of the last
        LOOKBACK_SECONDS, so that an event committed late below `last` is still found."""
        self.history = [(t, last) for t, last in self.history if now - t <= LOOKBACK_SECONDS]
        floor = self.history[0][1] if self.history else self.last
        self.sent = {i for i in self.sent if i > floor}
        return floor

    def advance(self, now: float, ids: list[int]) -> None:
        self.history.append((now, self.last))
        self.sent.update(ids)
        self.last = max([self.last, *ids])


async def events(execution_id: int, last_event_id: int = 0) -> AsyncIterator[bytes]:
    """The SSE stream of one execution (see the module's docstring)."""
    poll = settings.OPSFLOW_SSE_POLL_SECONDS
    heartbeat = settings.OPSFLOW_SSE_HEARTBEAT_SECONDS
    started = quiet_since = time.monotonic()
    cursor = Cursor(last=last_event_id)
    steps_seen: dict[int, tuple] = {}
    status_seen: tuple | None = None
    yield f"retry: {int(settings.OPSFLOW_SSE_RETRY_MS)}\n\n".encode()
    while True:
        now = time.monotonic()
        floor = cursor.floor(now)
        state = await sync_to_async(read, thread_sensitive=False)(
            execution_id, floor, frozenset(cursor.sent)
        )
        out: list[bytes] = []
        ids = [e["id"] for e in state.events]
        for event in state.events:
            out.append(frame("log", event, event["id"]))
        cursor.advance(now, ids)
        for step in state.steps:
            key = (step["status"], step["started_at"], step["finished_at"], step["next_attempt_at"])
            if steps_seen.get(step["id"]) != key:
                steps_seen[step["id"]] = key
                out.append(frame("step", step, cursor.last or None))
        if state.status is not None:
            status = state.status
            key = tuple(status[k] for k in ("status", "jobs_completed", "jobs_failed",
                                              "jobs_skipped", "finished_at"))  # fmt: skip
            if key != status_seen:
                status_seen = key
                out.append(frame("status", status, cursor.last or None))
        if out:
            yield b"".join(out)
            quiet_since = now
        if state.terminal and len(state.events) < BATCH:
            final = state.status["status"] if state.status else "deleted"
            yield frame("end", {"status": final}, cursor.last or None)
            return
        if now - started >= settings.OPSFLOW_SSE_MAX_SECONDS:
            return  # the client reconnects with Last-Event-ID
        if now - quiet_since >= heartbeat:
            yield b": heartbeat\n\n"
            quiet_since = now
        if len(state.events) < BATCH:  # (a long log is read on without waiting)
            await asyncio.sleep(poll)
