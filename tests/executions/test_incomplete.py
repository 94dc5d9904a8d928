"""Incomplete executions, cancel, re-trigger and sequential processing (DESIGN §6).

Every test runs real RQ workers in-process (see `workers` in conftest). Nodes fail or succeed
deterministically: a shell command checks a flag file under `tmp_path`, or an HTTP request hits a
local server whose answer the test flips between 503 (ConnectionError) and 200. Time is driven
through the `now` arguments of the scheduler's services, never by sleeping.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from apps.executions import services
from apps.executions.choices import (
    EXECUTION_TERMINAL,
    EventKind,
    ExecutionStatus,
    IncompleteStatus,
    StepHandling,
    StepStatus,
)
from apps.executions.models import Execution, IncompleteExecution, Step
from apps.executions.scheduler import SchedulerLoop
from apps.executions.services import (
    WorkflowNotRunnable,
    WrongState,
    cancel_execution,
    discard_incomplete,
    mark_step_succeeded,
    reconcile_lost_dispatches,
    retrigger_execution,
    retry_incomplete,
    run_due_incomplete_retries,
    trigger_workflow,
)
from apps.workflows.services import publish_workflow, update_draft
from tests.factories import chain_definition, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

# Written out, not imported: the wording is part of the contract (DESIGN §6).
IEQ_FULL_TEXT = (
    "There is NOT ENOUGH SPACE to add a bundle to the IEQ. "
    "The reason is: Too many incomplete executions."
)
STOPPED = EXECUTION_TERMINAL | {ExecutionStatus.INCOMPLETE}


# --- helpers ---------------------------------------------------------------------------------


def definition(
    slug: str,
    nodes: list[dict[str, Any]],
    edges: list[tuple],
    *,
    store: bool = True,
    sequential: bool = False,
    allow_data_loss: bool = False,
) -> dict[str, Any]:
    """A definition with a required `flag` variable; edges are (from, to) or (from, to, on)."""
    return {
        "slug": slug,
        "name": slug.replace("-", " ").title(),
        "settings": {
            "store_incomplete_executions": store,
            "sequential_processing": sequential,
            "allow_data_loss": allow_data_loss,
        },
        "variables": {"flag": {"type": "string", "required": True}},
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


FLAG = {"FLAG": "{{ vars.flag }}"}  # scripts read values from env, never from templates


def shell(node_id: str, script: str, env: dict | None = None, **extra) -> dict[str, Any]:
    config: dict[str, Any] = {"script": script}
    if env:
        config["env"] = env
    return {"id": node_id, "type": "shell.command", "config": config, **extra}


def flag_checked(slug: str, script: str = 'test -f "$FLAG"', env: dict = FLAG, **settings) -> dict:
    """start → check → after: `check` fails (UnexpectedError) until the flag file exists, and
    `after` maps check's stdout."""
    return definition(
        slug,
        [
            noop("start", {"word": "hello"}),
            shell("check", script, env),
            noop("after", {"out": "{{ nodes.check.output.stdout }}"}),
        ],
        [("start", "check"), ("check", "after")],
        **settings,
    )


def settle(workers, execution: Execution, statuses=STOPPED) -> Execution:
    """Run the workers until the execution reaches one of `statuses` (terminal or incomplete)."""

    def reached() -> bool:
        execution.refresh_from_db()
        return execution.status in statuses

    workers.drain(until=reached)
    return execution


def attempts_of(execution: Execution, node_id: str) -> list[Step]:
    return list(execution.steps.filter(node_id=node_id).order_by("attempt"))


def stopped_incomplete(workers, workflow, flag: Path) -> tuple[Execution, IncompleteExecution]:
    execution = settle(workers, trigger_workflow(workflow, variables={"flag": str(flag)}))
    assert execution.status == ExecutionStatus.INCOMPLETE, execution.error_message
    return execution, execution.incomplete_records.get()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# --- a local HTTP endpoint whose answer the test flips ---------------------------------------


class _FlakyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FlakyServer

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):
        with self.server.lock:
            self.server.hits += 1
            status = self.server.status
        body = json.dumps({"ok": status == 200}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _FlakyServer(ThreadingHTTPServer):
    daemon_threads = True
    lock: threading.Lock
    status: int
    hits: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/health"


@pytest.fixture(scope="module")
def _flaky_server():
    server = _FlakyServer(("127.0.0.1", 0), _FlakyHandler)
    server.lock, server.status, server.hits = threading.Lock(), 503, 0
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def endpoint(_flaky_server, monkeypatch):
    """The endpoint answers 503 (ConnectionError) until the test sets `.status = 200`."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _flaky_server.status, _flaky_server.hits = 503, 0
    return _flaky_server


def calls_endpoint(slug: str, url: str) -> dict[str, Any]:
    return definition(
        slug,
        [noop("start"), {"id": "call", "type": "http.request", "config": {"url": url}}],
        [("start", "call")],
    )


# --- storing ---------------------------------------------------------------------------------


def test_it_stores_an_incomplete_execution_with_blueprint_bundles_and_size(org, workers, tmp_path):
    flag = tmp_path / "flag"
    workflow = make_workflow(
        org,
        definition(
            "store-bundles",
            [
                noop("start", {"word": "hello"}),
                {
                    "id": "setv",
                    "type": "set",
                    "config": {"values": {"greeting": "{{ nodes.start.output.word }} world"}},
                },
                noop("side", {"x": 1}),
                shell(
                    "check",
                    'test -f "$FLAG" && echo "$GREETING"',
                    {**FLAG, "GREETING": "{{ vars.greeting }}"},
                ),
            ],
            [("start", "setv"), ("setv", "check"), ("start", "side")],
        ),
    )

    execution, record = stopped_incomplete(workers, workflow, flag)

    check = execution.steps.get(node_id="check")
    assert check.status == StepStatus.FAILED
    assert check.input == {
        "script": 'test -f "$FLAG" && echo "$GREETING"',
        "env": {"FLAG": str(flag), "GREETING": "hello world"},
    }
    assert record.node_id == "check"
    assert record.error_type == "UnexpectedError"
    assert record.error_message == "Command exited with status 1"
    assert record.status == IncompleteStatus.UNRESOLVED
    assert record.auto_retry is False
    assert record.next_retry_at is None
    assert record.attempts == 0
    assert record.workflow_id == workflow.pk
    assert record.organization_id == org.pk
    assert record.bundles == {
        "variables": {"flag": str(flag), "greeting": "hello world"},
        "nodes": {  # every ancestor of `check`, and nothing else (`side` is a sibling branch)
            "start": {"output": {"word": "hello"}, "status": StepStatus.COMPLETED, "error": None},
            "setv": {
                "output": {"greeting": "hello world"},
                "status": StepStatus.COMPLETED,
                "error": None,
            },
        },
        "input": check.input,
    }
    assert record.blueprint == workflow.current_version.definition
    stored_json = json.dumps({"blueprint": record.blueprint, "bundles": record.bundles})
    assert record.size_bytes > 0
    assert record.size_bytes == len(stored_json.encode())
    assert "check failed with UnexpectedError" in execution.error_message
    assert execution.events.filter(kind=EventKind.EXECUTION_INCOMPLETE).count() == 1
    # a record without auto-retry is never picked up by the scheduler
    assert run_due_incomplete_retries(now=timezone.now() + timedelta(days=30)) == 0


def test_an_entry_node_failure_fails_the_run_without_storing(org, workers, tmp_path):
    workflow = make_workflow(
        org, definition("entry-fails", [shell("check", 'test -f "$FLAG"', FLAG)], [])
    )

    execution = settle(workers, trigger_workflow(workflow, variables={"flag": str(tmp_path / "f")}))

    assert execution.status == ExecutionStatus.FAILED
    assert not IncompleteExecution.objects.exists()


def test_with_storing_off_a_failure_fails_the_run(org, workers, tmp_path):
    workflow = make_workflow(org, flag_checked("storing-off", store=False))

    execution = settle(workers, trigger_workflow(workflow, variables={"flag": str(tmp_path / "f")}))

    assert execution.status == ExecutionStatus.FAILED
    assert not IncompleteExecution.objects.exists()


# --- auto-retry ------------------------------------------------------------------------------


def test_a_connection_error_is_auto_retried_along_the_ladder_until_the_endpoint_recovers(
    org, workers, endpoint, settings
):
    settings.OPSFLOW_IE_RETRY_SCHEDULE = [60, 600]
    workflow = make_workflow(org, calls_endpoint("auto-retry-recovers", endpoint.url))

    before = timezone.now()
    execution = settle(workers, trigger_workflow(workflow, variables={"flag": "-"}))
    after = timezone.now()

    assert execution.status == ExecutionStatus.INCOMPLETE
    record = execution.incomplete_records.get()
    assert (record.status, record.error_type, record.auto_retry, record.attempts) == (
        IncompleteStatus.SCHEDULED,
        "ConnectionError",
        True,
        0,
    )
    assert before + timedelta(seconds=60) <= record.next_retry_at <= after + timedelta(seconds=60)

    assert run_due_incomplete_retries() == 0  # the first rung is a minute away
    assert run_due_incomplete_retries(now=timezone.now() + timedelta(seconds=61)) == 1
    record.refresh_from_db()
    assert (record.status, record.attempts) == (IncompleteStatus.RETRYING, 1)

    before = timezone.now()
    settle(workers, execution)
    after = timezone.now()
    assert execution.status == ExecutionStatus.INCOMPLETE
    record.refresh_from_db()
    assert (record.status, record.attempts) == (IncompleteStatus.SCHEDULED, 1)
    assert before + timedelta(seconds=600) <= record.next_retry_at <= after + timedelta(seconds=600)
    assert run_due_incomplete_retries(now=timezone.now() + timedelta(seconds=61)) == 0

    endpoint.status = 200
    assert run_due_incomplete_retries(now=timezone.now() + timedelta(seconds=601)) == 1
    settle(workers, execution)

    assert execution.status == ExecutionStatus.COMPLETED
    record.refresh_from_db()
    assert record.status == IncompleteStatus.RESOLVED
    assert record.next_retry_at is None
    assert IncompleteExecution.objects.count() == 1  # the same record, not a new one per failure
    assert [(s.attempt, s.status) for s in attempts_of(execution, "call")] == [
        (1, StepStatus.FAILED),
        (2, StepStatus.FAILED),
        (3, StepStatus.COMPLETED),
    ]
    assert len(attempts_of(execution, "start")) == 1
    assert endpoint.hits == 3


def test_after_the_last_rung_an_auto_retried_record_stays_unresolved(
    org, workers, endpoint, settings
):
    settings.OPSFLOW_IE_RETRY_SCHEDULE = [0, 0]
    workflow = make_workflow(org, calls_endpoint("auto-retry-gives-up", endpoint.url))
    execution = settle(workers, trigger_workflow(workflow, variables={"flag": "-"}))
    record = execution.incomplete_records.get()

    for rung in (1, 2):
        assert record.status == IncompleteStatus.SCHEDULED
        assert run_due_incomplete_retries() == 1
        settle(workers, execution)
        assert execution.status == ExecutionStatus.INCOMPLETE
        record.refresh_from_db()
        assert record.attempts == rung

    assert record.status == IncompleteStatus.UNRESOLVED
    assert record.attempts == len(settings.OPSFLOW_IE_RETRY_SCHEDULE)
    assert record.next_retry_at is None
    assert record.auto_retry is True
    assert run_due_incomplete_retries(now=timezone.now() + timedelta(days=30)) == 0
    assert [s.status for s in attempts_of(execution, "call")] == [StepStatus.FAILED] * 3
    assert endpoint.hits == 3


def test_a_retry_that_fails_with_a_no_auto_retry_type_is_not_auto_retried_again(
    org, workers, endpoint, settings
):
    settings.OPSFLOW_IE_RETRY_SCHEDULE = [0, 0, 0]
    workflow = make_workflow(org, calls_endpoint("auto-retry-type-changes", endpoint.url))
    execution = settle(workers, trigger_workflow(workflow, variables={"flag": "-"}))
    record = execution.incomplete_records.get()
    assert record.status == IncompleteStatus.SCHEDULED

    endpoint.status = 500  # now an UnexpectedError: stored without auto-retry
    assert run_due_incomplete_retries() == 1
    settle(workers, execution)

    record.refresh_from_db()
    assert record.error_type == "UnexpectedError"
    assert (record.status, record.next_retry_at) == (IncompleteStatus.UNRESOLVED, None)


# --- resolve ---------------------------------------------------------------------------------


def test_retrying_with_an_edited_input_resumes_the_same_execution_from_the_failed_node(
    org, workers, tmp_path
):
    workflow = make_workflow(org, flag_checked("resolve-input"))
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "flag")

    returned = retry_incomplete(record, input={"script": "echo edited"})

    assert (returned.status, returned.attempts) == (IncompleteStatus.RETRYING, 1)
    settle(workers, execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert Execution.objects.count() == 1
    check = attempts_of(execution, "check")
    assert [(s.attempt, s.status) for s in check] == [
        (1, StepStatus.FAILED),
        (2, StepStatus.COMPLETED),
    ]
    assert check[1].input == {"script": "echo edited"}
    assert check[1].output["stdout"] == "edited\n"
    assert execution.steps.get(node_id="after").output == {"out": "edited\n"}
    assert [s.attempt for s in attempts_of(execution, "start")] == [1]  # not re-run
    record.refresh_from_db()
    assert record.status == IncompleteStatus.RESOLVED
    with pytest.raises(WrongState):
        retry_incomplete(record)


def test_a_resolved_record_shows_the_edited_input_and_who_retried(
    org, workers, tmp_path, operator, client
):
    workflow = make_workflow(org, flag_checked("shown-edits"))
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "flag")
    retry_incomplete(record, input={"script": "echo edited"}, user=operator)
    settle(workers, execution)
    client.force_login(operator)

    page = client.get(f"/executions/incompleteexecution/{record.pk}/change/").content.decode()

    assert "Resumed with edits" in page and "Edited input" in page
    assert "&quot;script&quot;: &quot;echo edited&quot;" in page
    assert "0 automatically, 1 by an operator" in page
    assert "off: this error type needs a person" in page


def test_the_record_shows_why_the_node_failed_and_links_its_step_page(
    org, workers, tmp_path, operator, client
):
    script = 'echo "no flag at $FLAG" >&2; test -f "$FLAG"'
    workflow = make_workflow(org, flag_checked("says-why", script=script))
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "flag")
    failed = execution.steps.get(node_id="check")
    client.force_login(operator)

    page = client.get(f"/executions/incompleteexecution/{record.pk}/change/").content.decode()

    assert f'href="/executions/execution/{execution.pk}/steps/{failed.pk}/"' in page
    stderr = page[page.index('id="failed-stderr"') :]
    assert stderr.startswith(f'id="failed-stderr">no flag at {tmp_path / "flag"}</pre>')


def test_automatic_and_manual_retries_are_told_apart_even_for_a_user_named_auto_retry(
    org, workers, tmp_path
):
    from apps.executions.admin import _retries_of
    from tests.factories import make_user

    workflow = make_workflow(org, flag_checked("told-apart"))
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "flag")
    retry_incomplete(record, auto=True)  # fails again: the flag is still missing
    settle(workers, execution)
    record.refresh_from_db()
    retry_incomplete(record, user=make_user("auto-retry"))

    counts = _retries_of(record)
    assert (counts["automatic_retries"], counts["manual_retries"]) == (1, 1)


def test_resuming_runs_the_branches_that_were_stopped_with_the_failed_node(
    org, workers, tmp_path, settings
):
    settings.OPSFLOW_SHELL_QUEUES = ["default", "shell"]  # `check` on the first queue served
    flag = tmp_path / "flag"
    workflow = make_workflow(
        org,
        definition(
            "resolve-branches",
            [
                noop("start"),
                shell("check", 'test -f "$FLAG"', FLAG, queue="default"),
                # on the lower-priority queue, so `check` fails before `side` is picked up
                noop("side", {"x": 1}, queue="shell"),
                noop("side_after"),
                noop("join"),
            ],
            [
                ("start", "check"),
                ("start", "side"),
                ("side", "side_after"),
                ("check", "join"),
                ("side_after", "join"),
            ],
        ),
    )
    execution, record = stopped_incomplete(workers, workflow, flag)
    assert [s.status for s in attempts_of(execution, "side")] == [StepStatus.CANCELLED]
    flag.touch()

    retry_incomplete(record)
    settle(workers, execution)

    assert execution.status == ExecutionStatus.COMPLETED
    assert [(s.attempt, s.status) for s in attempts_of(execution, "side")] == [
        (1, StepStatus.CANCELLED),
        (2, StepStatus.COMPLETED),
    ]
    latest = {s.node_id: s for s in execution.steps.order_by("attempt")}
    assert {n: s.status for n, s in latest.items()} == {
        n: StepStatus.COMPLETED for n in ("start", "check", "side", "side_after", "join")
    }
    completed = list(
        execution.steps.filter(status=StepStatus.COMPLETED).values_list("node_id", flat=True)
    )
    assert sorted(completed) == sorted(set(completed))  # nothing completed twice
    assert [s.attempt for s in attempts_of(execution, "check")] == [1, 2]


def test_retrying_with_edited_bundles_renders_the_new_attempt_from_them(org, workers, tmp_path):
    workflow = make_workflow(
        org,
        flag_checked(
            "resolve-bundles",
            script='test -f "$FLAG" && echo "$WORD"',
            env={**FLAG, "WORD": "{{ nodes.start.output.word }}"},
        ),
    )
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "missing")
    other = tmp_path / "other"
    other.touch()

    retry_incomplete(
        record,
        bundles={"variables": {"flag": str(other)}, "nodes": {"start": {"output": {"word": "hi"}}}},
    )
    settle(workers, execution)

    assert execution.status == ExecutionStatus.COMPLETED
    retried = attempts_of(execution, "check")[-1]
    assert retried.attempt == 2
    assert retried.input == {
        "script": 'test -f "$FLAG" && echo "$WORD"',
        "env": {"FLAG": str(other), "WORD": "hi"},
    }
    assert retried.output["stdout"] == "hi\n"
    assert [s.attempt for s in attempts_of(execution, "start")] == [1]
    record.refresh_from_db()
    assert record.status == IncompleteStatus.RESOLVED


def test_retrying_on_the_current_version_runs_the_fixed_node_config(org, workers, tmp_path):
    document = flag_checked("resolve-current-version")
    workflow = make_workflow(org, document)
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "flag")
    document["nodes"][1]["config"] = {"script": "echo fixed in v2"}
    update_draft(workflow, document)
    assert publish_workflow(workflow).number == 2

    retry_incomplete(record)  # the original version still fails
    settle(workers, execution)
    assert execution.status == ExecutionStatus.INCOMPLETE
    assert execution.version.number == 1
    assert attempts_of(execution, "check")[-1].input == {
        "script": 'test -f "$FLAG"',
        "env": {"FLAG": str(tmp_path / "flag")},
    }

    retry_incomplete(record, use_current_version=True)
    settle(workers, execution)

    assert execution.status == ExecutionStatus.COMPLETED
    execution.refresh_from_db()
    assert execution.version.number == 2
    check = attempts_of(execution, "check")
    assert [(s.attempt, s.status) for s in check] == [
        (1, StepStatus.FAILED),
        (2, StepStatus.FAILED),
        (3, StepStatus.COMPLETED),
    ]
    assert check[2].input == {"script": "echo fixed in v2"}
    assert check[2].output["stdout"] == "fixed in v2\n"
    assert [s.attempt for s in attempts_of(execution, "start")] == [1]
    record.refresh_from_db()
    assert (record.status, record.attempts) == (IncompleteStatus.RESOLVED, 2)


def test_discarding_fails_the_run_and_a_second_discard_or_a_retry_is_refused(
    org, workers, tmp_path
):
    workflow = make_workflow(org, flag_checked("discard-twice"))
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "flag")

    discard_incomplete(record)

    record.refresh_from_db()
    execution.refresh_from_db()
    assert record.status == IncompleteStatus.DISCARDED
    assert record.closed_at is not None
    assert execution.status == ExecutionStatus.FAILED
    with pytest.raises(WrongState):
        discard_incomplete(record)
    with pytest.raises(WrongState):
        retry_incomplete(record)
    assert execution.steps.count() == 2  # start and the failed check: nothing more ran


# --- storage limit ---------------------------------------------------------------------------


def test_over_the_storage_limit_the_run_fails_and_the_workflow_is_deactivated(
    org, workers, tmp_path, settings
):
    settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES = 10
    workflow = make_workflow(org, flag_checked("ieq-full"))

    execution = settle(workers, trigger_workflow(workflow, variables={"flag": str(tmp_path / "f")}))

    assert execution.status == ExecutionStatus.FAILED
    assert IEQ_FULL_TEXT in execution.error_message
    assert not IncompleteExecution.objects.exists()
    workflow.refresh_from_db()
    assert workflow.is_active is False
    assert workflow.inactive_reason == IEQ_FULL_TEXT
    with pytest.raises(WorkflowNotRunnable):
        trigger_workflow(workflow, variables={"flag": str(tmp_path / "f")})
    assert Execution.objects.count() == 1


def test_over_the_storage_limit_with_data_loss_allowed_the_loss_is_logged_and_runs_go_on(
    org, workers, tmp_path, settings
):
    settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES = 10
    workflow = make_workflow(org, flag_checked("ieq-data-loss", allow_data_loss=True))

    execution = settle(workers, trigger_workflow(workflow, variables={"flag": str(tmp_path / "f")}))

    assert execution.status == ExecutionStatus.FAILED
    assert IEQ_FULL_TEXT in execution.error_message
    assert not IncompleteExecution.objects.exists()
    loss = execution.events.get(kind=EventKind.DATA_LOSS)
    assert IEQ_FULL_TEXT in loss.message
    assert loss.node_id == "check"
    workflow.refresh_from_db()
    assert (workflow.is_active, workflow.inactive_reason) == (True, "")
    (tmp_path / "f").touch()
    later = settle(workers, trigger_workflow(workflow, variables={"flag": str(tmp_path / "f")}))
    assert later.status == ExecutionStatus.COMPLETED


def test_the_storage_limit_counts_only_the_organizations_own_records(
    org, other_org, workers, tmp_path, settings
):
    theirs = make_workflow(other_org, flag_checked("ieq-per-org"))
    _, their_record = stopped_incomplete(workers, theirs, tmp_path / "flag")
    settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES = their_record.size_bytes + their_record.size_bytes // 2
    ours = make_workflow(org, flag_checked("ieq-per-org"))

    execution, record = stopped_incomplete(workers, ours, tmp_path / "flag")

    assert record.organization_id == org.pk
    ours.refresh_from_db()
    assert ours.is_active is True


def _fill_the_queue(workers, tmp_path, settings, org, slug):
    """One stored record, then a limit that holds it but not a second one; the second run
    deactivates the workflow."""
    workflow = make_workflow(org, flag_checked(slug))
    first, record = stopped_incomplete(workers, workflow, tmp_path / "flag")
    settings.OPSFLOW_IE_STORAGE_LIMIT_BYTES = record.size_bytes + record.size_bytes // 2
    second = settle(workers, trigger_workflow(workflow, variables={"flag": str(tmp_path / "x")}))
    assert second.status == ExecutionStatus.FAILED
    assert IEQ_FULL_TEXT in second.error_message
    assert IncompleteExecution.objects.count() == 1
    workflow.refresh_from_db()
    assert (workflow.is_active, workflow.inactive_reason) == (False, IEQ_FULL_TEXT)
    return workflow, first, record


def test_discarding_a_record_frees_space_and_reactivates_the_workflow(
    org, workers, tmp_path, settings
):
    workflow, _, record = _fill_the_queue(workers, tmp_path, settings, org, "ieq-discard")

    discard_incomplete(record)

    workflow.refresh_from_db()
    assert (workflow.is_active, workflow.inactive_reason) == (True, "")
    (tmp_path / "flag").touch()
    again = settle(workers, trigger_workflow(workflow, variables={"flag": str(tmp_path / "flag")}))
    assert again.status == ExecutionStatus.COMPLETED


def test_resolving_a_record_by_retry_frees_space_and_reactivates_the_workflow(
    org, workers, tmp_path, settings
):
    workflow, first, record = _fill_the_queue(workers, tmp_path, settings, org, "ieq-resolve")
    (tmp_path / "flag").touch()

    retry_incomplete(record)
    settle(workers, first)
    assert first.status == ExecutionStatus.COMPLETED
    record.refresh_from_db()
    assert record.status == IncompleteStatus.RESOLVED
    SchedulerLoop().tick()  # give the scheduler its chance too

    workflow.refresh_from_db()
    assert (workflow.is_active, workflow.inactive_reason) == (True, "")


# --- sequential processing -------------------------------------------------------------------


def _hold_three(workers, workflow, flag: Path) -> tuple[Execution, IncompleteExecution, list]:
    first, record = stopped_incomplete(workers, workflow, flag)
    held = [trigger_workflow(workflow, variables={"flag": str(flag)}) for _ in range(3)]
    workers.drain()
    for execution in held:
        execution.refresh_from_db()
        assert execution.status == ExecutionStatus.SCHEDULED
        assert execution.scheduled_for is None
        assert execution.steps.count() == 0
        assert execution.events.filter(kind=EventKind.EXECUTION_HELD).count() == 1
    return first, record, held


def _assert_ran_in_arrival_order(workers, held: list[Execution]) -> None:
    def all_done() -> bool:
        return all(Execution.objects.get(pk=e.pk).status in EXECUTION_TERMINAL for e in held)

    workers.drain(until=all_done)
    runs = list(Execution.objects.filter(pk__in=[e.pk for e in held]))
    assert {e.status for e in runs} == {ExecutionStatus.COMPLETED}
    assert all(e.events.filter(kind=EventKind.EXECUTION_RELEASED).count() == 1 for e in runs)
    by_start = [e.pk for e in sorted(runs, key=lambda e: e.started_at)]
    assert by_start == [e.pk for e in held]


def test_sequential_processing_holds_new_runs_and_discarding_releases_them_in_order(
    org, workers, tmp_path
):
    workflow = make_workflow(org, flag_checked("sequential-discard", sequential=True))
    flag = tmp_path / "flag"
    _, record, held = _hold_three(workers, workflow, flag)
    flag.touch()

    discard_incomplete(record)  # the service releases the held runs itself

    for execution in held:
        execution.refresh_from_db()
        assert execution.status != ExecutionStatus.SCHEDULED
    _assert_ran_in_arrival_order(workers, held)


def test_sequential_processing_releases_held_runs_in_order_once_the_record_is_resolved(
    org, workers, tmp_path
):
    workflow = make_workflow(org, flag_checked("sequential-resolve", sequential=True))
    flag = tmp_path / "flag"
    first, record, held = _hold_three(workers, workflow, flag)
    flag.touch()

    retry_incomplete(record)
    # a run triggered while the record is being retried is still held, behind the others
    held.append(trigger_workflow(workflow, variables={"flag": str(flag)}))
    assert held[-1].status == ExecutionStatus.SCHEDULED
    settle(workers, first)
    assert first.status == ExecutionStatus.COMPLETED
    SchedulerLoop().tick()  # releases held runs whose workflow has no open record left

    _assert_ran_in_arrival_order(workers, held)


# --- mark a step succeeded -------------------------------------------------------------------


def test_marking_the_failed_step_succeeded_resumes_with_that_output(
    org, workers, tmp_path, operator
):
    workflow = make_workflow(org, flag_checked("mark-succeeded"))
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "flag")
    failed = execution.steps.get(node_id="check")

    done = mark_step_succeeded(failed, {"stdout": "by hand"}, operator)

    assert (done.attempt, done.status, done.handling) == (
        2,
        StepStatus.COMPLETED,
        StepHandling.MANUAL,
    )
    assert done.output == {"stdout": "by hand"}
    settle(workers, execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get(node_id="after").output == {"out": "by hand"}
    assert len(attempts_of(execution, "check")) == 2  # the node itself did not run again
    record.refresh_from_db()
    assert record.status == IncompleteStatus.RESOLVED
    assert execution.events.filter(kind=EventKind.MANUAL_SUCCESS, node_id="check").count() == 1
    with pytest.raises(WrongState):
        mark_step_succeeded(failed, {"stdout": "again"}, operator)
    assert len(attempts_of(execution, "check")) == 2


def test_a_step_of_a_completed_execution_cannot_be_marked_succeeded(
    org, workers, tmp_path, operator
):
    workflow = make_workflow(
        org,
        definition(
            "mark-completed",
            [noop("start"), shell("check", 'test -f "$FLAG"', FLAG, on_error="continue")],
            [("start", "check")],
        ),
    )
    execution = settle(workers, trigger_workflow(workflow, variables={"flag": str(tmp_path / "f")}))
    assert execution.status == ExecutionStatus.COMPLETED
    failed = execution.steps.get(node_id="check")
    assert failed.status == StepStatus.FAILED

    with pytest.raises(WrongState, match="completed"):
        mark_step_succeeded(failed, {"stdout": "x"}, operator)

    assert len(attempts_of(execution, "check")) == 1


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_lets_a_running_step_finish_and_starts_nothing_after_it(org, workers):
    workflow = make_workflow(
        org,
        definition(
            "cancel-running", [shell("slow", "sleep 1"), noop("after")], [("slow", "after")]
        ),
    )
    execution = trigger_workflow(workflow, variables={"flag": "-"})
    slow = execution.steps.get(node_id="slow")
    failures: list[BaseException] = []

    def run_slow_step() -> None:
        try:
            services.run_step_once(slow.pk, None)
        except BaseException as exc:  # surfaced in the main thread
            failures.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run_slow_step)
    thread.start()
    try:
        wait_for(lambda: Step.objects.get(pk=slow.pk).status == StepStatus.RUNNING)
        cancelled = cancel_execution(execution)
        assert cancelled.status == ExecutionStatus.CANCELLED
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert failures == []
    workers.drain()  # the step's own RQ job is still queued: it must do nothing now

    execution.refresh_from_db()
    slow.refresh_from_db()
    assert execution.status == ExecutionStatus.CANCELLED
    assert slow.status == StepStatus.COMPLETED
    assert slow.output["exit_code"] == 0
    assert slow.finished_at > execution.finished_at  # it was still running when cancelled
    assert not execution.steps.filter(node_id="after").exclude(status=StepStatus.CANCELLED)
    assert not execution.events.filter(kind=EventKind.NODE_STARTED, node_id="after").exists()
    assert execution.events.filter(kind=EventKind.EXECUTION_CANCELLED).count() == 1
    with pytest.raises(WrongState):
        cancel_execution(execution)


def test_cancelling_an_incomplete_execution_discards_its_record(org, workers, tmp_path):
    workflow = make_workflow(org, flag_checked("cancel-incomplete"))
    execution, record = stopped_incomplete(workers, workflow, tmp_path / "flag")

    cancel_execution(execution)

    execution.refresh_from_db()
    record.refresh_from_db()
    assert execution.status == ExecutionStatus.CANCELLED
    assert record.status == IncompleteStatus.DISCARDED
    with pytest.raises(WrongState):
        retry_incomplete(record)


# --- re-trigger ------------------------------------------------------------------------------


def _snapshot(execution: Execution) -> dict[str, Any]:
    execution.refresh_from_db()
    return {
        "fields": (
            execution.status,
            execution.version_id,
            execution.variables,
            execution.error_message,
            execution.started_at,
            execution.finished_at,
            execution.retriggered_from_id,
        ),
        "steps": list(execution.steps.values_list("node_id", "attempt", "status")),
        "records": list(execution.incomplete_records.values_list("pk", "status", "attempts")),
        "events": list(execution.events.values_list("pk", flat=True)),
    }


def test_retrigger_starts_a_new_run_from_the_start_and_leaves_the_old_one_alone(
    org, workers, tmp_path, operator
):
    flag = tmp_path / "flag"
    workflow = make_workflow(org, flag_checked("retrigger"))
    old, _ = stopped_incomplete(workers, workflow, flag)
    before = _snapshot(old)
    flag.touch()

    new = retrigger_execution(old, user=operator)

    assert new.pk != old.pk
    assert new.retriggered_from_id == old.pk
    assert new.variables == old.variables == {"flag": str(flag)}
    assert new.triggered_by == operator
    settle(workers, new)
    assert new.status == ExecutionStatus.COMPLETED
    assert sorted(new.steps.values_list("node_id", "attempt", "status")) == [
        ("after", 1, StepStatus.COMPLETED),
        ("check", 1, StepStatus.COMPLETED),
        ("start", 1, StepStatus.COMPLETED),
    ]
    after = _snapshot(old)
    events_before, events_after = before.pop("events"), after.pop("events")
    assert after == before
    assert events_after[: len(events_before)] == events_before
    added = list(old.events.filter(pk__in=events_after[len(events_before) :]))
    assert [e.kind for e in added] == [EventKind.RETRIGGERED]
    assert f"#{new.pk}" in added[0].message


# --- reconciler ------------------------------------------------------------------------------


def test_a_dispatched_step_whose_rq_job_was_lost_is_re_enqueued_and_the_run_completes(
    org, workers, redis_conn
):
    workflow = make_workflow(org, chain_definition("lost-job", 3))
    execution = trigger_workflow(workflow)
    later = timezone.now() + timedelta(seconds=60)
    assert reconcile_lost_dispatches(now=later) == 0  # its RQ job still exists

    redis_conn.flushdb()  # Redis loses the job
    workers.drain()
    entry = execution.steps.get()
    assert entry.status == StepStatus.DISPATCHED  # nothing could run it
    assert reconcile_lost_dispatches() == 0  # too recent to be called lost
    assert reconcile_lost_dispatches(now=later) == 1

    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert list(execution.steps.values_list("node_id", "attempt", "status")) == [
        (f"n{i}", 1, StepStatus.COMPLETED) for i in range(3)
    ]
    assert execution.events.filter(
        kind=EventKind.NODE_DISPATCHED, node_id="n0", message__contains="re-enqueued"
    ).exists()
