"""Failure semantics (DESIGN §6), rule by rule: retries, error routes, `on_error`, the entry-node
rule, storing incomplete executions by error type, timeouts, and no new step after a failure.

Every run goes through real RQ workers in-process (see `workers` in conftest). Error types come
from a test-only node type, `test.raise`, registered for this module; retries and Retry-After
talk to a real HTTP server on 127.0.0.1; timeouts and in-flight work run real shell processes.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.utils import timezone

from apps.executions import errors
from apps.executions.choices import (
    EXECUTION_TERMINAL,
    EventKind,
    ExecutionStatus,
    IncompleteStatus,
    StepHandling,
    StepStatus,
)
from apps.executions.models import Execution, IncompleteExecution, Step
from apps.executions.nodes.base import REGISTRY, NodeContext, NodeType, register
from apps.executions.services import retry_delay, run_step_once, trigger_workflow
from apps.executions.worker import ThreadAgentWorker
from tests.factories import make_workflow

pytestmark = pytest.mark.django_db(transaction=True)


# --- a test-only node type that fails with the error type named in its config ---------------


class RaiseNode(NodeType):
    """`test.raise`: raises `config.error` (a class from apps.executions.errors, or an unknown
    NodeError subclass of that name), carrying `config.output` as the failed attempt's output."""

    name = "test.raise"

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        type_name = ctx.config["error"]
        error_class = getattr(errors, type_name, None)
        if not (isinstance(error_class, type) and issubclass(error_class, errors.NodeError)):
            error_class = type(type_name, (errors.NodeError,), {})
        raise error_class(f"raised {type_name} on purpose", output=ctx.config.get("output"))


@pytest.fixture(autouse=True)
def raise_node_type():
    register(RaiseNode)
    yield
    REGISTRY.pop(RaiseNode.name, None)


AUTO_RETRY_TYPES = ["ConnectionError", "RateLimitError", "OutOfSpaceError", "ModuleTimeoutError"]
NO_AUTO_RETRY_TYPES = [
    "DataError",
    "InvalidConfigurationError",
    "InvalidAccessTokenError",
    "UnexpectedError",
    "MaxFileSizeExceededError",
    "MaxResultsExceededError",
]
UNKNOWN_TYPE = "QuotaWobbleError"  # not in the taxonomy
ALL_TYPES = [*AUTO_RETRY_TYPES, *NO_AUTO_RETRY_TYPES, UNKNOWN_TYPE]


# --- a real HTTP server that answers a scripted sequence of statuses ------------------------


class _SequenceHandler(BaseHTTPRequestHandler):
    """GET /seq/<key>?codes=503,503,200[&retry_after=N]: the n-th request to a key gets the n-th
    code (the last one repeats). A 429 carries `Retry-After: N` when retry_after is given."""

    protocol_version = "HTTP/1.1"
    server: _SequenceServer

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        codes = [int(c) for c in query["codes"].split(",")]
        with self.server.lock:
            seen = self.server.counts.get(url.path, 0)
            self.server.counts[url.path] = seen + 1
        status = codes[min(seen, len(codes) - 1)]
        body = f"status {status}".encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            if status == 429 and "retry_after" in query:
                self.send_header("Retry-After", query["retry_after"])
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class _SequenceServer(ThreadingHTTPServer):
    daemon_threads = True
    lock: threading.Lock
    counts: dict[str, int]


@pytest.fixture(scope="module")
def http_server_url():
    server = _SequenceServer(("127.0.0.1", 0), _SequenceHandler)
    server.lock, server.counts = threading.Lock(), {}
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


_keys = itertools.count(1)


@pytest.fixture
def sequence_url(http_server_url, monkeypatch):
    """sequence_url(503, 503, 200, retry_after=2) → a fresh URL that answers those statuses."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)

    def make(*codes: int, retry_after: int | None = None) -> str:
        url = f"{http_server_url}/seq/{time.monotonic_ns()}-{next(_keys)}"
        url += "?codes=" + ",".join(str(c) for c in codes)
        if retry_after is not None:
            url += f"&retry_after={retry_after}"
        return url

    return make


# --- helpers ---------------------------------------------------------------------------------


def definition(
    slug: str, nodes: list[dict[str, Any]], edges: list[tuple], *, store: bool = False
) -> dict[str, Any]:
    """A definition document; edges are (from, to) or (from, to, on)."""
    return {
        "slug": slug,
        "name": slug.replace("-", " ").title(),
        "settings": {"store_incomplete_executions": store},
        "nodes": nodes,
        "edges": [
            {"from": e[0], "to": e[1], "on": e[2] if len(e) > 2 else "success"} for e in edges
        ],
    }


def noop(node_id: str, output: dict[str, Any] | None = None, **extra) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "type": "noop", **extra}
    if output is not None:
        node["config"] = {"output": output}
    return node


def raiser(node_id: str, error: str, output: dict[str, Any] | None = None, **extra):
    config: dict[str, Any] = {"error": error}
    if output is not None:
        config["output"] = output
    return {"id": node_id, "type": "test.raise", "config": config, **extra}


def http_get(node_id: str, url: str, **extra) -> dict[str, Any]:
    return {"id": node_id, "type": "http.request", "config": {"url": url}, **extra}


def shell(node_id: str, script: str, **extra) -> dict[str, Any]:
    return {"id": node_id, "type": "shell.command", "config": {"script": script}, **extra}


STOPPED = EXECUTION_TERMINAL | {ExecutionStatus.INCOMPLETE}


def settle(workers, execution: Execution, timeout: float = 30.0) -> Execution:
    """Work until the run has stopped (completed, failed, cancelled or incomplete), then deliver
    every job still queued or scheduled, so that anything wrongly started would show."""

    def stopped() -> bool:
        execution.refresh_from_db()
        return execution.status in STOPPED

    workers.drain(until=stopped, timeout=timeout)
    workers.drain(timeout=timeout)
    execution.refresh_from_db()
    return execution


def step_of(execution: Execution, node_id: str) -> Step:
    return execution.steps.get(node_id=node_id)


def attempts_of(execution: Execution, node_id: str) -> list[Step]:
    return list(execution.steps.filter(node_id=node_id).order_by("attempt"))


def retry_delays(execution: Execution, node_id: str) -> list[float]:
    events = execution.events.filter(kind=EventKind.RETRY_SCHEDULED, node_id=node_id)
    return [e.data["delay"] for e in events.order_by("created_at", "id")]


def gap_seconds(before: Step, after: Step) -> float:
    """From one attempt's finish to the next attempt's start."""
    return (after.started_at - before.finished_at).total_seconds()


def inner_failure(slug: str, error_type: str, *, store: bool, **node_extra) -> dict[str, Any]:
    """start → boom (fails with `error_type`) → after: the failing node is not an entry node."""
    return definition(
        slug,
        nodes=[noop("start"), raiser("boom", error_type, **node_extra), noop("after")],
        edges=[("start", "boom"), ("boom", "after")],
        store=store,
    )


def entry_failure(slug: str, error_type: str, *, store: bool, **node_extra) -> dict[str, Any]:
    """boom (fails with `error_type`) → after: the failing node is the entry node."""
    return definition(
        slug,
        nodes=[raiser("boom", error_type, **node_extra), noop("after")],
        edges=[("boom", "after")],
        store=store,
    )


def assert_failed_without_record(execution: Execution, error_type: str) -> None:
    assert execution.status == ExecutionStatus.FAILED
    assert f"boom failed with {error_type}: raised {error_type} on purpose" in (
        execution.error_message
    )
    assert not IncompleteExecution.objects.filter(execution=execution).exists()


def assert_stored(execution: Execution, error_type: str, *, auto_retry: bool) -> None:
    assert execution.status == ExecutionStatus.INCOMPLETE
    [record] = IncompleteExecution.objects.filter(execution=execution)
    assert record.auto_retry is auto_retry
    assert (record.node_id, record.error_type) == ("boom", error_type)
    if auto_retry:
        assert record.status == IncompleteStatus.SCHEDULED
        assert record.next_retry_at is not None and record.next_retry_at > timezone.now()
    else:
        assert record.status == IncompleteStatus.UNRESOLVED
        assert record.next_retry_at is None


# --- rule 5: the error type decides, when storing is on ---------------------------------------


@pytest.mark.parametrize(
    ("error_type", "outcome"),
    [(t, "auto_retry") for t in AUTO_RETRY_TYPES]
    + [(t, "no_auto_retry") for t in NO_AUTO_RETRY_TYPES]
    + [(UNKNOWN_TYPE, "failed")],
)
def test_with_storing_on_an_inner_node_failure_is_stored_or_fails_by_its_error_type(
    org, workers, error_type, outcome
):
    workflow = make_workflow(org, inner_failure("store-by-type", error_type, store=True))

    execution = settle(workers, trigger_workflow(workflow))

    boom = step_of(execution, "boom")
    assert boom.error_type == error_type
    expected_status = (
        StepStatus.TIMEOUT if error_type == "ModuleTimeoutError" else StepStatus.FAILED
    )
    assert boom.status == expected_status
    assert not execution.steps.filter(node_id="after").exists()
    if outcome == "failed":
        assert_failed_without_record(execution, error_type)
    else:
        assert_stored(execution, error_type, auto_retry=outcome == "auto_retry")
        assert execution.finished_at is None


@pytest.mark.parametrize("error_type", ALL_TYPES)
def test_with_storing_off_an_inner_node_failure_fails_the_run_whatever_its_error_type(
    org, workers, error_type
):
    workflow = make_workflow(org, inner_failure("store-off", error_type, store=False))

    execution = settle(workers, trigger_workflow(workflow))

    assert step_of(execution, "boom").error_type == error_type
    assert_failed_without_record(execution, error_type)
    assert not execution.steps.filter(node_id="after").exists()


@pytest.mark.parametrize("error_type", ALL_TYPES)
def test_a_failing_entry_node_fails_the_run_even_with_storing_on_whatever_its_error_type(
    org, workers, error_type
):
    workflow = make_workflow(org, entry_failure("entry-fails", error_type, store=True))

    execution = settle(workers, trigger_workflow(workflow))

    assert step_of(execution, "boom").error_type == error_type
    assert_failed_without_record(execution, error_type)
    assert execution.error_message.endswith("(it is an entry node)")
    assert not execution.steps.filter(node_id="after").exists()


# --- rule 1: node retries ---------------------------------------------------------------------


def test_exponential_retries_wait_longer_each_time_and_the_run_shows_retrying_meanwhile(
    org, workers, sequence_url
):
    # delay 2 (not 1): RQ schedules in whole seconds, rounded up, which adds up to 1 s to every
    # gap; with delay 1 and 25 % jitter the two gaps could overlap. With 2 they cannot.
    retry = {"max_retries": 2, "delay": 2, "backoff": "exponential"}
    workflow = make_workflow(
        org,
        definition(
            "retry-exponential",
            nodes=[http_get("call", sequence_url(503, 503, 200), retry=retry), noop("after")],
            edges=[("call", "after")],
        ),
    )
    execution = trigger_workflow(workflow)

    workers.worker().work(burst=True, with_scheduler=True)  # runs the first attempt only

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.RETRYING
    first, waiting = attempts_of(execution, "call")
    assert (first.status, first.error_type) == (StepStatus.FAILED, "ConnectionError")
    assert waiting.status == StepStatus.DISPATCHED
    assert waiting.next_attempt_at > timezone.now()
    assert not execution.steps.filter(node_id="after").exists()

    execution = settle(workers, execution)

    assert execution.status == ExecutionStatus.COMPLETED
    steps = attempts_of(execution, "call")
    assert [(s.attempt, s.retry_number, s.status) for s in steps] == [
        (1, 0, StepStatus.FAILED),
        (2, 1, StepStatus.FAILED),
        (3, 2, StepStatus.COMPLETED),
    ]
    assert [s.error_type for s in steps] == ["ConnectionError", "ConnectionError", ""]
    assert steps[2].output["status_code"] == 200
    first_gap, second_gap = gap_seconds(steps[0], steps[1]), gap_seconds(steps[1], steps[2])
    assert first_gap >= 2.0
    assert second_gap >= 4.0
    assert second_gap > first_gap
    first_delay, second_delay = retry_delays(execution, "call")
    assert 2.0 <= first_delay <= 2.5
    assert 4.0 <= second_delay <= 5.0
    assert step_of(execution, "after").status == StepStatus.COMPLETED


def test_a_429_retry_waits_at_least_the_retry_after_seconds(org, workers, sequence_url):
    workflow = make_workflow(
        org,
        definition(
            "retry-after",
            nodes=[
                http_get(
                    "call",
                    sequence_url(429, 200, retry_after=2),
                    retry={"max_retries": 1, "delay": 0},
                )
            ],
            edges=[],
        ),
    )

    execution = settle(workers, trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    first, second = attempts_of(execution, "call")
    assert (first.status, first.error_type) == (StepStatus.FAILED, "RateLimitError")
    assert second.status == StepStatus.COMPLETED
    assert gap_seconds(first, second) >= 2.0
    assert retry_delays(execution, "call") == [2.0]


def test_fixed_backoff_waits_the_same_delay_before_every_retry(org, workers, sequence_url):
    retry = {"max_retries": 2, "delay": 1, "backoff": "fixed"}
    workflow = make_workflow(
        org,
        definition(
            "retry-fixed",
            nodes=[http_get("call", sequence_url(503, 503, 200), retry=retry)],
            edges=[],
        ),
    )

    execution = settle(workers, trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    steps = attempts_of(execution, "call")
    assert [s.status for s in steps] == [StepStatus.FAILED, StepStatus.FAILED, StepStatus.COMPLETED]
    assert retry_delays(execution, "call") == [1.0, 1.0]
    for before, after in itertools.pairwise(steps):
        # At least the delay; at most the delay plus RQ's rounding up to the next whole second.
        assert 1.0 <= gap_seconds(before, after) < 2.5


def test_a_retry_delivered_before_its_time_is_parked_again_not_run(org, workers):
    """A retry job delivered early (a duplicate, or a reconciler) is parked again, not run."""
    workflow = make_workflow(
        org,
        definition(
            "early-delivery",
            nodes=[raiser("boom", "ConnectionError", retry={"max_retries": 1, "delay": 60})],
            edges=[],
        ),
    )
    execution = trigger_workflow(workflow)
    workers.worker().work(burst=True, with_scheduler=True)
    _, waiting = attempts_of(execution, "boom")
    assert waiting.next_attempt_at > timezone.now() + timedelta(seconds=50)

    assert run_step_once(waiting.pk, None) is None

    waiting.refresh_from_db()
    assert waiting.status == StepStatus.DISPATCHED
    assert waiting.started_at is None
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.RETRYING


@pytest.mark.parametrize("number", [1, 2, 3, 7])
def test_retry_delay_with_fixed_backoff_is_the_delay_every_time(number):
    retry = {"max_retries": 10, "delay": 5, "backoff": "fixed", "max_delay": 3600}

    assert retry_delay(retry, number, None) == 5.0


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5])
def test_retry_delay_with_exponential_backoff_doubles_with_upward_jitter(number):
    retry = {"max_retries": 10, "delay": 3, "backoff": "exponential", "max_delay": 3600}
    base = 3 * 2 ** (number - 1)

    delays = [retry_delay(retry, number, None) for _ in range(200)]

    assert all(base <= d <= 1.25 * base for d in delays)
    assert len(set(delays)) > 1, "no jitter"


@pytest.mark.parametrize("number", [3, 4, 6])
def test_retry_delay_with_exponential_backoff_is_capped_at_max_delay(number):
    retry = {"max_retries": 10, "delay": 10, "backoff": "exponential", "max_delay": 45}
    base = 10 * 2 ** (number - 1)

    delays = [retry_delay(retry, number, None) for _ in range(200)]

    assert all(min(base, 45) <= d <= min(1.25 * base, 45) for d in delays)
    assert max(delays) == 45.0


@pytest.mark.parametrize(
    ("retry", "retry_after", "expected"),
    [
        ({"delay": 1, "backoff": "fixed", "max_delay": 3600}, 7.0, 7.0),
        ({"delay": 10, "backoff": "fixed", "max_delay": 3600}, 2.0, 10.0),
        ({"delay": 0, "backoff": "fixed", "max_delay": 3600}, 2.0, 2.0),
        ({"delay": 1, "backoff": "exponential", "max_delay": 5}, 30.0, 30.0),
    ],
    ids=["above-fixed", "below-fixed", "no-delay", "above-the-cap"],
)
def test_retry_after_is_the_minimum_retry_delay(retry, retry_after, expected):
    assert retry_delay({"max_retries": 3, **retry}, 1, retry_after) == expected


def test_retries_come_before_the_error_route(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "retry-then-route",
            nodes=[
                noop("start"),
                raiser("boom", "ConnectionError", retry={"max_retries": 1, "delay": 0}),
                noop("handler"),
            ],
            edges=[("start", "boom"), ("boom", "handler", "error")],
        ),
    )

    execution = settle(workers, trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    first, second = attempts_of(execution, "boom")
    assert (first.status, first.handling) == (StepStatus.FAILED, StepHandling.NONE)
    assert (second.status, second.handling) == (StepStatus.FAILED, StepHandling.ERROR_ROUTE)
    assert step_of(execution, "handler").status == StepStatus.COMPLETED


# --- rule 2: an error route handles the failure -----------------------------------------------


def test_an_error_route_beats_storing_an_incomplete_execution(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "error-route-first",
            nodes=[
                noop("start"),
                raiser("boom", "ConnectionError"),
                noop("handler", {"caught": "{{ nodes.boom.error.type }}"}),
                noop("next"),
            ],
            edges=[("start", "boom"), ("boom", "handler", "error"), ("boom", "next")],
            store=True,
        ),
    )

    execution = settle(workers, trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    assert not IncompleteExecution.objects.filter(execution=execution).exists()
    boom = step_of(execution, "boom")
    assert (boom.status, boom.handling) == (StepStatus.FAILED, StepHandling.ERROR_ROUTE)
    handler = step_of(execution, "handler")
    assert handler.status == StepStatus.COMPLETED
    assert handler.output == {"caught": "ConnectionError"}
    assert step_of(execution, "next").status == StepStatus.SKIPPED


# --- rule 3: on_error -------------------------------------------------------------------------


def test_on_error_continue_runs_the_success_edge_with_an_empty_output(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "on-error-continue",
            nodes=[
                noop("start"),
                raiser("boom", "DataError", output={"partial": 1}, on_error="continue"),
                noop("next", {"seen": "{{ nodes.boom.output }}"}),
            ],
            edges=[("start", "boom"), ("boom", "next")],
            store=True,
        ),
    )

    execution = settle(workers, trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    boom = step_of(execution, "boom")
    assert (boom.status, boom.handling) == (StepStatus.FAILED, StepHandling.CONTINUE)
    assert boom.output == {"partial": 1}  # what the node produced is still recorded
    nxt = step_of(execution, "next")
    assert nxt.status == StepStatus.COMPLETED
    assert nxt.output == {"seen": {}}
    assert not IncompleteExecution.objects.filter(execution=execution).exists()


@pytest.mark.parametrize("error_type", [UNKNOWN_TYPE, "DataError"])
@pytest.mark.parametrize("shape", [inner_failure, entry_failure], ids=["inner", "entry"])
def test_on_error_break_stores_with_auto_retry_whatever_the_type_even_with_storing_off(
    org, workers, shape, error_type
):
    workflow = make_workflow(
        org, shape("on-error-break", error_type, store=False, on_error="break")
    )

    execution = settle(workers, trigger_workflow(workflow))

    assert step_of(execution, "boom").error_type == error_type
    assert_stored(execution, error_type, auto_retry=True)
    assert not execution.steps.filter(node_id="after").exists()


# --- rule 4: the entry node -------------------------------------------------------------------


def test_a_failing_entry_node_stops_the_run_at_once_and_starts_nothing_after_it(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "entry-stops",
            nodes=[raiser("boom", "ConnectionError"), noop("after"), noop("later")],
            edges=[("boom", "after"), ("after", "later")],
            store=True,
        ),
    )

    execution = settle(workers, trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.FAILED
    assert execution.finished_at is not None
    assert execution.error_message == (
        "boom failed with ConnectionError: raised ConnectionError on purpose (it is an entry node)"
    )
    assert not IncompleteExecution.objects.filter(execution=execution).exists()
    assert list(execution.steps.values_list("node_id", flat=True)) == ["boom"]
    assert execution.events.filter(kind=EventKind.EXECUTION_FAILED).count() == 1


# --- timeouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "outcome"),
    [("entry", ExecutionStatus.FAILED), ("inner", ExecutionStatus.INCOMPLETE)],
)
def test_a_shell_command_that_ignores_sigterm_times_out_quickly(org, workers, shape, outcome):
    stubborn = shell("boom", "trap '' TERM; sleep 30", timeout=1)
    if shape == "entry":
        nodes, edges = [stubborn, noop("after")], [("boom", "after")]
    else:
        nodes, edges = (
            [noop("start"), stubborn, noop("after")],
            [("start", "boom"), ("boom", "after")],
        )
    workflow = make_workflow(org, definition("timeout", nodes, edges, store=True))
    began = time.monotonic()

    execution = settle(workers, trigger_workflow(workflow))

    assert time.monotonic() - began < 10
    boom = step_of(execution, "boom")
    assert (boom.status, boom.error_type) == (StepStatus.TIMEOUT, "ModuleTimeoutError")
    assert 1000 <= boom.duration_ms < 5000
    assert execution.status == outcome
    if outcome == ExecutionStatus.INCOMPLETE:
        assert_stored(execution, "ModuleTimeoutError", auto_retry=True)
    assert not execution.steps.filter(node_id="after").exists()


# --- rule 6: no new step after an unhandled failure; running steps finish ---------------------


@pytest.mark.parametrize(
    ("store", "error_type", "outcome"),
    [
        (False, UNKNOWN_TYPE, ExecutionStatus.FAILED),
        (True, "ConnectionError", ExecutionStatus.INCOMPLETE),
    ],
)
def test_a_step_running_when_the_run_stops_finishes_and_its_successor_never_starts(
    org, workers, store, error_type, outcome
):
    workflow = make_workflow(
        org,
        definition(
            "in-flight",
            nodes=[
                noop("a"),
                raiser("b", error_type),
                shell("c", "sleep 1", queue="shell"),
                noop("d"),
            ],
            edges=[("a", "b"), ("a", "c"), ("c", "d")],
            store=store,
        ),
    )
    execution = trigger_workflow(workflow)
    run_step_once(step_of(execution, "a").pk, None)  # no agent: b and c both go through RQ
    c_id = step_of(execution, "c").pk
    failures: list[BaseException] = []

    def shell_agent() -> None:
        try:
            ThreadAgentWorker(["shell"], connection=workers.connection).work(burst=True)
        except BaseException as exc:  # reported in the test's thread
            failures.append(exc)
        finally:
            connection.close()

    agent = threading.Thread(target=shell_agent)
    agent.start()
    try:
        deadline = time.monotonic() + 10
        while Step.objects.get(pk=c_id).status != StepStatus.RUNNING:
            assert time.monotonic() < deadline, "c never started on the shell agent"
            time.sleep(0.01)
        ThreadAgentWorker(["default"], connection=workers.connection).work(burst=True)  # b fails
    finally:
        agent.join(timeout=30)
    assert not agent.is_alive() and not failures, failures
    execution = settle(workers, execution)

    assert execution.status == outcome
    b, c = step_of(execution, "b"), step_of(execution, "c")
    assert b.status == StepStatus.FAILED
    assert c.started_at < b.finished_at < c.finished_at, "c was not running when b failed"
    assert c.status == StepStatus.COMPLETED
    assert c.output["exit_code"] == 0
    assert execution.events.filter(kind=EventKind.NODE_COMPLETED, node_id="c").count() == 1
    assert not execution.steps.filter(node_id="d").exists()
    assert not execution.events.filter(node_id="d").exists()


# --- critical: false --------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [False, True], ids=["inner", "entry"])
def test_a_non_critical_node_failing_does_not_fail_the_run(org, workers, entry):
    boom = raiser("boom", "DataError", critical=False)
    if entry:
        nodes, edges = [boom, noop("side")], []
    else:
        nodes, edges = [noop("start"), boom, noop("side")], [("start", "boom"), ("start", "side")]
    workflow = make_workflow(org, definition("non-critical", nodes, edges, store=True))

    execution = settle(workers, trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    boom_step = step_of(execution, "boom")
    assert (boom_step.status, boom_step.handling) == (
        StepStatus.FAILED,
        StepHandling.NOT_CRITICAL,
    )
    assert step_of(execution, "side").status == StepStatus.COMPLETED
    assert not IncompleteExecution.objects.filter(execution=execution).exists()
    assert execution.error_message == ""
