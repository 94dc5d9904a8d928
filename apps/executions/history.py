"""Synthetic execution history for benchmarks (`manage.py generate_history`).

What it makes:

- organizations `history-1` … `history-K`, one admin member of them all (`history-admin`, no
  usable password), and W published workflows spread over them, each a chain of N nodes
  (http.request, shell.command, set, noop; every third workflow has an approval gate), with
  manual, webhook and cron (every 5 minutes) triggers. These few rows go through the ORM and
  the workflow services.
- then, in batches, executions spread over the last D days, created_at increasing with the id,
  with their step rows, 2–4 events each, incomplete-execution records and approvals:
  ~87 % completed (a few after a retry, some after a resolved incomplete record), ~6 % failed,
  ~3 % cancelled, ~3 % incomplete (an open record each) and, among the last hour's, a few
  running, paused (a pending approval on a running gate step), pending and scheduled (a future
  cron fire). The step counters are written directly, with the counting triggers of
  `apps.executions.counters` off while the rows load.

How it is fast: the executions are made in chunks (`Chunk`), each with its own random stream
and id ranges, so forked worker processes make them side by side and encode them to COPY's
binary format (timestamps stay Unix seconds until then; a step's constant columns are a shared
template tuple, encoded once). The main process only feeds the bytes to COPY, all in one
transaction. When the load is larger than what the tables hold, their secondary indexes and
unique constraints (and foreign keys without replica mode) are dropped first and built again
at the end from their catalog definitions, checked to be identical; a failure anywhere rolls
the transaction back, indexes included. VACUUM (ANALYZE) then runs on two connections at once.
Other databases (SQLite) get the same rows through executemany, in one process.

A seed gives the same rows (ids and times aside) for the same chunk size (--batch-size); the
ids of a table leave a gap between chunks (each chunk has a range for its most rows). Running
it again adds more executions to the same workflows.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import json
import math
import multiprocessing
import os
import random
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import call
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, models, transaction
from django.utils import timezone

from apps.accounts.choices import Role
from apps.accounts.models import Membership, Organization
from apps.approvals.choices import ApprovalStatus
from apps.approvals.models import Approval
from apps.executions import counters
from apps.executions.choices import (
    EventKind,
    IncompleteStatus,
    StepStatus,
    Trigger,
)
from apps.executions.errors import incomplete_policy
from apps.executions.models import Execution, ExecutionEvent, IncompleteExecution, Step
from apps.workflows.definition import masked_definition
from apps.workflows.models import Workflow
from apps.workflows.services import create_workflow, publish_workflow

ORG_PREFIX = "history-"
ORG_SLUG_REGEX = r"^history-[0-9]+$"
ADMIN_USERNAME = "history-admin"
CRON_SCHEDULE = "*/5 * * * *"
CRON_GRID = 300  # seconds between the schedule's fires: one cron execution per slot
LIVE_WINDOW = 3600.0  # live executions (running, paused, …) were created in the last hour

# The row layout of each bulk table: every concrete field, in this order (checked at load).
EXECUTION_FIELDS = (
    "id", "workflow", "organization", "version", "status", "trigger", "trigger_data",
    "variables", "triggered_by", "retriggered_from", "scheduled_for", "created_at",
    "started_at", "finished_at", "error_message", "steps_total", "steps_completed",
    "steps_failed", "steps_skipped",
)  # fmt: skip
# A step row is STEP_VARIABLE's values, then a tuple of STEP_TEMPLATE's, shared by the rows
# of like attempts (encoded once for COPY).
STEP_VARIABLE = (
    "id", "execution", "worker", "rq_job_id", "created_at", "started_at", "finished_at",
    "next_attempt_at",
)  # fmt: skip
STEP_TEMPLATE = (
    "node_id", "node_type", "attempt", "status", "queue", "unsent_since", "input", "output",
    "error_type", "error_message", "retry_number", "handling", "overrides",
)  # fmt: skip
STEP_FIELDS = STEP_VARIABLE + STEP_TEMPLATE
EVENT_FIELDS = ("id", "execution", "step", "node_id", "kind", "message", "data", "created_at")
INCOMPLETE_FIELDS = (
    "id", "execution", "workflow", "organization", "node_id", "error_type", "error_message",
    "status", "auto_retry", "attempts", "next_retry_at", "size_bytes", "bundles", "blueprint",
    "created_at", "updated_at", "closed_at", "closed_by",
)  # fmt: skip
APPROVAL_FIELDS = (
    "id", "execution", "step", "node_id", "status", "message", "approvers", "open_to_members",
    "required_approvals", "allow_self_approval", "expires_at", "escalate_at", "escalate_to",
    "escalated_at", "reason", "decided_at", "decided_by", "created_at",
)  # fmt: skip
TABLES: tuple[tuple[type[models.Model], tuple[str, ...]], ...] = (
    (Execution, EXECUTION_FIELDS),
    (Step, STEP_FIELDS),
    (ExecutionEvent, EVENT_FIELDS),
    (IncompleteExecution, INCOMPLETE_FIELDS),
    (Approval, APPROVAL_FIELDS),
)

# Outcomes of a run. Historical runs draw from MIX; the live ones fill the last hour.
COMPLETED, FAILED, CANCELLED, INCOMPLETE, RESOLVED, DISCARDED = (
    "completed", "failed", "cancelled", "incomplete", "resolved", "discarded",
)  # fmt: skip
RUNNING, PAUSED, PENDING, SCHEDULED = "running", "paused", "pending", "scheduled"
MIX = {  # RESOLVED ends completed and DISCARDED failed: 87 % completed, 6 % failed in all
    COMPLETED: 86.4,
    FAILED: 5.6,
    CANCELLED: 3.0,
    INCOMPLETE: 3.0,
    RESOLVED: 0.6,
    DISCARDED: 0.4,
}
LIVE_SHARES = ((PAUSED, 0.25), (SCHEDULED, 0.2), (PENDING, 0.15))  # the rest: RUNNING
RETRY_RATE = 0.02  # a node with retries fails its first attempt this often in a good run

# Node templates of the generated workflows, cycled along the chain.
CHAIN = (
    ("check", "http.request"),
    ("deploy", "shell.command"),
    ("record", "set"),
    ("notify", "http.request"),
    ("cleanup", "shell.command"),
    ("done", "noop"),
)
NAMES = (
    "Deploy web", "Rotate logs", "Nightly backup", "Sync inventory", "Renew certificates",
    "Restart workers", "Health check", "Provision VM", "Purge caches", "Triage tickets",
)  # fmt: skip
HOSTS = tuple(f"web-{n}" for n in range(1, 13)) + tuple(f"db-{n}" for n in range(1, 5))
ENVS = ("production", "staging")

# Seconds a node of each type runs: (median, spread) of a log-normal distribution.
DURATIONS = {
    "http.request": (0.25, 0.8),
    "shell.command": (1.5, 1.1),
    "set": (0.004, 0.5),
    "noop": (0.002, 0.5),
    "approval": (300.0, 1.0),
}
FAILURES = {  # (step status, error type, message)
    "http.request": (
        (StepStatus.FAILED, "ConnectionError", "Connection refused: api-3.internal:443"),
        (StepStatus.FAILED, "RateLimitError", "HTTP 429 Too Many Requests"),
        (StepStatus.TIMEOUT, "ModuleTimeoutError", "No response within 30 s"),
        (StepStatus.FAILED, "DataError", "HTTP 422 Unprocessable Entity"),
    ),
    "shell.command": (
        (StepStatus.FAILED, "UnexpectedError", "exit status 1: deploy: lock held by another run"),
        (StepStatus.TIMEOUT, "ModuleTimeoutError", "Killed after 300 s"),
        (StepStatus.FAILED, "OutOfSpaceError", "No space left on device"),
    ),
    "set": ((StepStatus.FAILED, "DataError", "'vars.host' is undefined"),),
}
ACTING = frozenset(FAILURES)  # node types that may fail, be cancelled or be caught running


@dataclass(frozen=True)
class Options:
    executions: int
    steps_per_execution: int = 5
    workflows: int = 10
    organizations: int = 2
    days: int = 365
    seed: int | None = None
    batch_size: int = 10_000


@dataclass(frozen=True)
class NodePlan:
    id: str
    type: str
    queue: str
    max_retries: int
    retry_delay: float
    input: str  # JSON text
    output: str  # JSON text
    mu: float  # log-normal parameters of its duration
    sigma: float
    timeout: float
    workers: tuple[str, ...]


@dataclass(frozen=True)
class WorkflowPlan:
    id: int
    organization_id: int
    version_id: int
    version_number: int
    trigger: str
    nodes: tuple[NodePlan, ...]
    gate: int | None  # index of the approval node
    gate_message: str
    blueprint: str  # JSON text of the masked definition, for incomplete records
    acting: tuple[int, ...]  # indexes of nodes that may fail
    stoppable: tuple[int, ...]  # indexes of nodes a cancel or a running run may stop at


@dataclass
class Batch:
    """One chunk's rows; for COPY, `Writer.prepare` turns them into `payload`, bytes a table."""

    rows: dict[type[models.Model], list[tuple]] = field(
        default_factory=lambda: {model: [] for model, _ in TABLES}
    )
    counts: dict[type[models.Model], int] = field(default_factory=dict)
    last_ids: dict[type[models.Model], int] = field(default_factory=dict)
    payload: dict[type[models.Model], bytes] = field(default_factory=dict)

    def seal(self) -> None:
        self.counts = {model: len(rows) for model, rows in self.rows.items()}
        self.last_ids = {model: rows[-1][0] for model, rows in self.rows.items() if rows}

    def count(self, model: type[models.Model]) -> int:
        return self.counts[model]


@dataclass
class Report:
    executions: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


# --- the few rows made through the ORM ---


def foreign_executions() -> int:
    """Executions outside the generated organizations (someone's real data)."""
    return Execution.objects.exclude(organization__slug__regex=ORG_SLUG_REGEX).count()


def workflow_definition(number: int, steps: int) -> dict[str, Any]:
    """A chain of `steps` nodes; workflow 2, 5, 8 … has an approval gate second."""
    name = f"{NAMES[(number - 1) % len(NAMES)]} {number}"
    kinds = [CHAIN[i % len(CHAIN)] for i in range(steps)]
    if number % 3 == 2 and steps >= 2:
        kinds[1] = ("approve", "approval")
    nodes = []
    for index, (base, node_type) in enumerate(kinds):
        cycle = index // len(CHAIN)
        node: dict[str, Any] = {
            "id": base if cycle == 0 else f"{base}_{cycle + 1}",
            "type": node_type,
            "config": _node_config(node_type, name),
        }
        if node_type == "http.request":
            node["retry"] = {"max_retries": 2, "delay": 5}
        elif node_type == "shell.command":
            node["retry"] = {"max_retries": 1, "delay": 10}
        nodes.append(node)
    edges = [
        {"from": a["id"], "to": b["id"], "on": "approved" if a["type"] == "approval" else "success"}
        for a, b in itertools.pairwise(nodes)
    ]
    trigger: dict[str, Any] = {"type": ("manual", "webhook", "cron")[number % 3]}
    if trigger["type"] == "cron":
        trigger["schedule"] = CRON_SCHEDULE
    return {
        "slug": f"{name.lower().replace(' ', '-')}",
        "name": name,
        "trigger": trigger,
        # Keep the history (retention would prune it) and store incomplete runs.
        "settings": {"store_incomplete_executions": True, "retention_days": 0},
        "variables": {
            "host": {"type": "string", "default": "web-1"},
            "env": {"type": "string", "default": "production"},
        },
        "nodes": nodes,
        "edges": edges,
    }


def _node_config(node_type: str, name: str) -> dict[str, Any]:
    if node_type == "http.request":
        return {"url": "https://status.example.com/api/health", "expect_status": [200]}
    if node_type == "shell.command":
        return {"command": ["/bin/echo", name.lower()]}
    if node_type == "set":
        return {"values": {"done_by": "history", "ticket": "OPS-1234"}}
    if node_type == "approval":
        return {"message": f"{name}: go ahead?"}
    return {"output": {"ok": True}}


def prepare(options: Options) -> tuple[list[WorkflowPlan], int]:
    """The organizations, the admin user and the workflows: (plans, the user's id)."""
    orgs = [
        Organization.objects.get_or_create(
            slug=f"{ORG_PREFIX}{k}", defaults={"name": f"History {k}"}
        )[0]
        for k in range(1, options.organizations + 1)
    ]
    user = _admin_user(orgs)
    plans = []
    for number in range(1, options.workflows + 1):
        definition = workflow_definition(number, options.steps_per_execution)
        workflow = (
            Workflow.objects.filter(
                organization__slug__regex=ORG_SLUG_REGEX, slug=definition["slug"]
            )
            .select_related("current_version")
            .first()
        )
        if workflow is None:
            workflow = create_workflow(orgs[(number - 1) % len(orgs)], definition, user)
        if workflow.current_version_id is None:
            publish_workflow(workflow, user)
            workflow.refresh_from_db()
        plans.append(_plan(workflow))
    return plans, user.pk


def _admin_user(orgs: list[Organization]):
    user, created = get_user_model().objects.get_or_create(
        username=ADMIN_USERNAME, defaults={"email": "history-admin@example.com", "is_staff": True}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    for org in orgs:
        Membership.objects.get_or_create(organization=org, user=user, defaults={"role": Role.ADMIN})
    return user


def _plan(workflow: Workflow) -> WorkflowPlan:
    version = workflow.current_version
    definition = version.definition
    nodes = tuple(_node_plan(node) for node in definition["nodes"])
    gate = next((i for i, n in enumerate(nodes) if n.type == "approval"), None)
    acting = tuple(i for i, n in enumerate(nodes) if n.type in ACTING)
    return WorkflowPlan(
        id=workflow.pk,
        organization_id=workflow.organization_id,
        version_id=version.pk,
        version_number=version.number,
        trigger=(definition.get("trigger") or {}).get("type", Trigger.MANUAL),
        nodes=nodes,
        gate=gate,
        gate_message=definition["nodes"][gate]["config"].get("message", "")
        if gate is not None
        else "",
        blueprint=_json(masked_definition(definition)),
        acting=acting or tuple(i for i in range(len(nodes)) if i != gate),
        stoppable=tuple(i for i in range(len(nodes)) if i != gate),
    )


def _node_plan(node: dict[str, Any]) -> NodePlan:
    node_type, config = node["type"], node.get("config") or {}
    median, sigma = DURATIONS.get(node_type, (0.05, 0.8))
    retry = node.get("retry") or {}
    queue = node.get("queue") or "default"
    hosts = "shell-runner" if queue in settings.OPSFLOW_SHELL_QUEUES else "ops-worker"
    return NodePlan(
        id=node["id"],
        type=node_type,
        queue=queue,
        max_retries=int(retry.get("max_retries") or 0),
        retry_delay=float(retry.get("delay") or 0),
        input=_json(config),
        output=_json(_node_output(node_type, config)),
        mu=math.log(median),
        sigma=sigma,
        timeout=float(
            node.get("timeout") or {"http.request": 30, "shell.command": 300}.get(node_type, 60)
        ),
        workers=tuple(f"{hosts}-{h}/rq-{w}" for h in range(1, 5) for w in range(1, 4)),
    )


def _node_output(node_type: str, config: dict[str, Any]) -> Any:
    if node_type == "http.request":
        return {
            "status": 200,
            "headers": {"content-type": "application/json"},
            "body": {"ok": True},
        }
    if node_type == "shell.command":
        return {"exit_code": 0, "stdout": " ".join(config.get("command", [])[1:]), "stderr": ""}
    if node_type == "set":
        return dict(config.get("values") or {})
    if node_type == "approval":
        return {"decision": "approved", "status": "approved", "respondedBy": ADMIN_USERNAME}
    return dict(config.get("output") or {})


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- the row generator ---


@dataclass(frozen=True)
class Chunk:
    """Executions first … first+count-1, made with their own random stream and id ranges, so
    that chunks can be made in any process. Cron fires before `floor` are earlier chunks'."""

    number: int
    first: int
    count: int
    floor: float


class HistoryGenerator:
    """Rows for executions 0 … total-1 of one run, in chunks (`chunks`, `batch`)."""

    def __init__(
        self,
        plans: list[WorkflowPlan],
        user_id: int,
        total: int,
        days: int,
        seed: int | None,
        now: datetime,
        taken_cron_slots: set[tuple[int, int]] | None = None,
        first_ids: dict[type[models.Model], int] | None = None,
    ):
        self.seed = random.SystemRandom().getrandbits(64) if seed is None else seed
        self.rng = random.Random(self.seed)
        self.plans = plans
        self.user_id = user_id
        self.total = total
        self.now = now.timestamp()
        self.start = self.now - days * 86400.0
        self.live = _live_count(total)
        self.live_kinds = self._live_kinds()
        self.taken = taken_cron_slots if taken_cron_slots is not None else set()
        self.floor = 0.0
        weights = [1.0 / (rank + 1) ** 0.7 for rank in range(len(plans))]
        self.cum_weights = list(itertools.accumulate(weights))
        self.gated = [p for p in plans if p.gate is not None]
        self.cron = [p for p in plans if p.trigger == Trigger.CRON]
        self.mix_kinds, self.mix_weights = list(MIX), list(itertools.accumulate(MIX.values()))
        self.variables = [_json({"host": h, "env": e}) for h in HOSTS for e in ENVS]
        self.next_cron: dict[int, float] = {}
        self.ladder = len(settings.OPSFLOW_IE_RETRY_SCHEDULE)
        self.bounds = _upper_bounds(plans)
        self.first_ids = first_ids or {model: 1 for model, _ in TABLES}
        self.step_templates: dict[tuple, tuple] = {}

    def chunks(self, size: int) -> list[Chunk]:
        """The history in chunks of `size`, then the live tail (the last hour) as one chunk."""
        history = self.total - self.live
        starts = [*range(0, history, size), history]
        chunks = []
        for number, (first, end) in enumerate(itertools.pairwise([*starts, self.total])):
            if end > first:
                chunks.append(Chunk(number, first, end - first, self._earliest(first)))
        return chunks

    def _earliest(self, index: int) -> float:
        """No execution from `index` on is created before this."""
        history = self.total - self.live
        if index < history:
            return self.start + (self.now - LIVE_WINDOW - self.start) * index / history
        return self.now - LIVE_WINDOW

    def batch(self, chunk: Chunk) -> Batch:
        self.rng, self.floor = random.Random(f"{self.seed}:{chunk.number}"), chunk.floor
        ids = {
            model: itertools.count(self.first_ids[model] + chunk.first * self.bounds[model])
            for model, _ in TABLES
        }
        batch = Batch()
        for index in range(chunk.first, chunk.first + chunk.count):
            created = self.created_at(index)
            kind = self.kind(index)
            plan = self._workflow_for(kind)
            if kind == PAUSED and plan.gate is None:
                kind = RUNNING
            if kind == SCHEDULED and plan.trigger != Trigger.CRON:
                kind = PENDING
            Run(self, batch, ids, plan, kind, created).build()
        return batch

    def _live_kinds(self) -> list[str]:
        kinds = []
        for kind, share in LIVE_SHARES:
            kinds += [kind] * max(1, round(self.live * share))
        kinds = kinds[: self.live]
        kinds += [RUNNING] * (self.live - len(kinds))
        self.rng.shuffle(kinds)
        return kinds

    def created_at(self, index: int) -> float:
        """Increasing with the index: history up to an hour ago, then the live tail."""
        history = self.total - self.live
        if index < history:
            end = self.now - LIVE_WINDOW
            return self.start + (end - self.start) * (index + self.rng.random()) / history
        position = index - history
        return (
            self.now
            - LIVE_WINDOW
            + (LIVE_WINDOW - 1) * (position + self.rng.random()) / max(self.live, 1)
        )

    def kind(self, index: int) -> str:
        history = self.total - self.live
        if index >= history:
            return self.live_kinds[index - history]
        return self.rng.choices(self.mix_kinds, cum_weights=self.mix_weights)[0]

    def _workflow_for(self, kind: str) -> WorkflowPlan:
        if kind == PAUSED and self.gated:
            return self.rng.choice(self.gated)
        if kind == SCHEDULED and self.cron:
            return self.rng.choice(self.cron)
        return self.rng.choices(self.plans, cum_weights=self.cum_weights)[0]

    def cron_slot(self, plan: WorkflowPlan, created: float) -> int | None:
        """The fire time (epoch seconds) a cron run created at `created` was for, or None when
        that fire already has its run (the unique constraint one_execution_per_cron_fire)."""
        slot = int((created - 0.2) // CRON_GRID) * CRON_GRID
        key = (plan.version_id, slot)
        if slot < self.floor or key in self.taken:  # (an earlier chunk's fire)
            return None
        self.taken.add(key)
        return slot

    def future_cron_slot(self, plan: WorkflowPlan) -> int:
        slot = int(self.next_cron.get(plan.version_id, (self.now // CRON_GRID + 1) * CRON_GRID))
        while (plan.version_id, slot) in self.taken:
            slot += CRON_GRID
        self.taken.add((plan.version_id, slot))
        self.next_cron[plan.version_id] = slot + CRON_GRID
        return slot


def _live_count(total: int) -> int:
    return min(max(8, total // 500), 2000, total // 10)


_fromtimestamp = datetime.fromtimestamp


def _dt(seconds: float) -> datetime:
    return _fromtimestamp(seconds, UTC)


@dataclass(slots=True)
class StepSpec:
    node: NodePlan
    attempt: int
    status: str
    retry_number: int = 0
    error: tuple[str, str, str] | None = None
    # offsets in seconds from the execution's creation
    created: float = 0.0
    not_before: float | None = None
    started: float | None = None
    finished: float | None = None


# The step statuses as module names: a lookup on the enum class costs more in the hot loops.
S_COMPLETED, S_FAILED, S_TIMEOUT, S_RUNNING = (
    StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.TIMEOUT, StepStatus.RUNNING,
)  # fmt: skip
S_SKIPPED, S_CANCELLED, S_DISPATCHED = (
    StepStatus.SKIPPED,
    StepStatus.CANCELLED,
    StepStatus.DISPATCHED,
)
RAN = frozenset({S_COMPLETED, S_FAILED, S_TIMEOUT, S_RUNNING})
FAILED_STEP = frozenset({S_FAILED, S_TIMEOUT})


def _step_template(spec: StepSpec) -> tuple:
    """The columns of STEP_TEMPLATE, the same for every attempt like this one."""
    node, status, error = spec.node, spec.status, spec.error
    return (
        node.id,
        node.type,
        spec.attempt,
        status,
        node.queue,
        None,
        node.input if status in RAN else None,
        node.output if status == StepStatus.COMPLETED else None,
        error[1] if error else "",
        error[2] if error else "",
        spec.retry_number,
        "",
        None,
    )


class Run:
    """One execution: decide its steps, time them, and append its rows to the batch."""

    def __init__(
        self,
        gen: HistoryGenerator,
        batch: Batch,
        ids: dict[type[models.Model], Iterator[int]],
        plan: WorkflowPlan,
        kind: str,
        created: float,
    ):
        self.gen, self.rng, self.batch, self.ids = gen, gen.rng, batch, ids
        self.plan, self.kind, self.created = plan, kind, created
        self.id = next(ids[Execution])
        self.steps: list[StepSpec] = []
        self.stop: int | None = None  # the node the run stopped at
        self.failure: tuple[str, str, str] | None = None
        self.marks: dict[str, float] = {}  # offsets of the run's own moments
        self.resume_at: int | None = None  # index in steps of a resolved run's resumed attempt

    def build(self) -> None:
        getattr(self, f"_script_{self.kind}")()
        self._time()
        self._rows()

    # the script: which step rows, with which statuses
    def _good(self, start: int, end: int) -> None:
        random, steps = self.rng.random, self.steps
        for node in self.plan.nodes[start:end]:
            if node.max_retries and random() < RETRY_RATE:
                steps.append(StepSpec(node, 1, S_FAILED, 0, self._error(node)))
                steps.append(StepSpec(node, 2, S_COMPLETED, 1))
            else:
                steps.append(StepSpec(node, 1, S_COMPLETED))

    def _fail_at(self, index: int) -> None:
        node = self.plan.nodes[index]
        self.failure = failure = self._error(node)
        for attempt in range(1, node.max_retries + 2):  # every retry the node has fails too
            self.steps.append(StepSpec(node, attempt, failure[0], attempt - 1, failure))
        self.stop = index

    def _error(self, node: NodePlan) -> tuple[str, str, str]:
        return self.rng.choice(FAILURES.get(node.type) or FAILURES["set"])

    def _script_completed(self) -> None:
        self._good(0, len(self.plan.nodes))

    def _script_failed(self) -> None:
        index = self.rng.choice(self.plan.acting)
        self._good(0, index)
        self._fail_at(index)
        if self.rng.random() < 0.5:
            for node in self.plan.nodes[index + 1 :]:
                self.steps.append(StepSpec(node, 1, S_SKIPPED))

    def _script_incomplete(self) -> None:
        index = self.rng.choice(self.plan.acting)
        self._good(0, index)
        self._fail_at(index)

    _script_discarded = _script_incomplete

    def _script_resolved(self) -> None:
        self._script_incomplete()
        node = self.plan.nodes[self.stop]
        self.resume_at = len(self.steps)
        self.steps.append(StepSpec(node, self.steps[-1].attempt + 1, S_COMPLETED))
        self._good(self.stop + 1, len(self.plan.nodes))

    def _script_cancelled(self) -> None:
        index = self.rng.choice(self.plan.stoppable)
        self._good(0, index)
        self.steps.append(StepSpec(self.plan.nodes[index], 1, S_CANCELLED))
        self.stop = index

    def _script_running(self) -> None:
        index = self.rng.choice(self.plan.stoppable)
        self._good(0, index)
        self.steps.append(StepSpec(self.plan.nodes[index], 1, S_RUNNING))
        self.stop = index

    def _script_paused(self) -> None:
        self._good(0, self.plan.gate)
        self.steps.append(StepSpec(self.plan.nodes[self.plan.gate], 1, S_RUNNING))
        self.stop = self.plan.gate

    def _script_pending(self) -> None:
        self.steps.append(StepSpec(self.plan.nodes[0], 1, S_DISPATCHED))

    def _script_scheduled(self) -> None:
        pass

    # the clock
    def _time(self) -> None:
        rng = self.rng
        uniform, gauss, exp, random = rng.uniform, rng.gauss, math.exp, rng.random
        speed = exp(0.4 * gauss(0.0, 1.0))  # some runs are slow all along
        cursor = uniform(0.005, 0.3)  # queued before the first step starts
        marks = self.marks
        marks["started"] = cursor
        for index, spec in enumerate(self.steps):
            if index == self.resume_at:
                marks["incomplete"] = cursor
                cursor += exp(math.log(1800) + gauss(0.0, 1.0))  # until an operator resumes
                marks["resumed"] = cursor
            spec.created = cursor
            status = spec.status
            if spec.retry_number:
                spec.not_before = cursor = cursor + spec.node.retry_delay
            if status == S_DISPATCHED:
                continue
            if status == S_CANCELLED:
                spec.finished = cursor
                continue
            spec.started = cursor = cursor + 0.003 + 0.077 * random()
            if status == S_RUNNING:
                continue
            if status == S_TIMEOUT:
                cursor += spec.node.timeout
            elif status != S_SKIPPED:
                node = spec.node
                cursor += exp(node.mu + node.sigma * gauss(0.0, 1.0)) * speed
            spec.finished = cursor
            cursor += 0.002 + 0.038 * random()  # until the next dispatch
        if self.kind in (INCOMPLETE, DISCARDED):
            marks["incomplete"] = cursor
        if self.kind == DISCARDED:
            cursor += exp(math.log(7200) + gauss(0.0, 1.0))  # until an operator gives up
        marks["end"] = cursor
        self._fit()

    def _fit(self) -> None:
        """Squeeze a run that would end after now into the time it has (runs near the end)."""
        room = self.gen.now - 0.5 - self.created
        end = self.marks["end"]
        if end <= room:
            return
        scale = max(room, 0.001) / end
        for spec in self.steps:
            spec.created *= scale
            if spec.not_before is not None:
                spec.not_before *= scale
            if spec.started is not None:
                spec.started *= scale
            if spec.finished is not None:
                spec.finished *= scale
        self.marks = {k: v * scale for k, v in self.marks.items()}

    # the rows
    def _rows(self) -> None:
        base, execution_id = self.created, self.id
        append, step_ids = self.batch.rows[Step].append, self.ids[Step]
        random, getrandbits = self.rng.random, self.rng.getrandbits
        templates = self.gen.step_templates
        completed = failed = skipped = 0
        self.step_ids: list[int] = []
        for spec in self.steps:
            node, status = spec.node, spec.status
            step_id = next(step_ids)
            self.step_ids.append(step_id)
            if status == S_COMPLETED:
                completed += 1
            elif status == S_SKIPPED:
                skipped += 1
            elif status in FAILED_STEP:
                failed += 1
            key = (id(node), spec.attempt, status, spec.retry_number, spec.error)
            template = templates.get(key) or templates.setdefault(key, _step_template(spec))
            workers = node.workers
            started, finished, not_before = spec.started, spec.finished, spec.not_before
            append(
                (
                    step_id,
                    execution_id,
                    workers[int(random() * len(workers))] if status in RAN else "",
                    f"{getrandbits(128):032x}" if status != S_SKIPPED else "",
                    base + spec.created,
                    None if started is None else base + started,
                    None if finished is None else base + finished,
                    None if not_before is None else base + not_before,
                    template,
                )
            )
        self._execution(completed, failed, skipped)
        self._events()
        if self.plan.gate is not None:
            self._approval()
        if self.kind in (INCOMPLETE, RESOLVED, DISCARDED):
            self._incomplete()

    def _execution(self, completed: int, failed: int, skipped: int) -> None:
        gen, plan, kind, base = self.gen, self.plan, self.kind, self.created
        self.trigger, trigger_data, self.scheduled_for = self._trigger()
        status = {RESOLVED: COMPLETED, DISCARDED: FAILED}.get(kind, kind)
        started = None if kind in (PENDING, SCHEDULED) else base + self.marks["started"]
        ended = status in (COMPLETED, FAILED, CANCELLED)
        self.variables = gen.variables[int(self.rng.random() * len(gen.variables))]
        self.batch.rows[Execution].append(
            (
                self.id,
                plan.id,
                plan.organization_id,
                plan.version_id,
                status,
                self.trigger,
                trigger_data,
                self.variables,
                gen.user_id if self.trigger == Trigger.MANUAL else None,
                None,
                self.scheduled_for,
                base,
                started,
                base + self.marks["end"] if ended else None,
                self._error_message(),
                len(plan.nodes),
                completed,
                failed,
                skipped,
            )
        )

    def _trigger(self) -> tuple[str, str, float | None]:
        plan, random = self.plan, self.rng.random
        if self.kind == SCHEDULED:
            return self._cron(self.gen.future_cron_slot(plan))
        if plan.trigger == Trigger.CRON and random() < 0.9:
            slot = self.gen.cron_slot(plan, self.created)
            if slot is not None:
                return self._cron(slot)
        if plan.trigger == Trigger.WEBHOOK and random() < 0.85:
            data = f'{{"ref":"refs/heads/main","sha":"{self.rng.getrandbits(28):07x}"}}'
            return Trigger.WEBHOOK, data, None
        return Trigger.MANUAL, "{}", None

    @staticmethod
    def _cron(slot: float) -> tuple[str, str, float]:
        return Trigger.CRON, f'{{"scheduled_for":"{_dt(slot).isoformat()}"}}', slot

    def _error_message(self) -> str:
        if self.kind in (FAILED, INCOMPLETE):
            return self._failure_text()
        if self.kind == DISCARDED:
            return f"Incomplete execution discarded by {ADMIN_USERNAME}"
        return ""

    def _failure_text(self) -> str:
        _, error_type, message = self.failure
        return f"{self.plan.nodes[self.stop].id} failed with {error_type}: {message}"

    def _last_failed(self) -> tuple[int, StepSpec]:
        for index in range(len(self.steps) - 1, -1, -1):
            if self.steps[index].status in FAILED_STEP:
                return self.step_ids[index], self.steps[index]
        raise AssertionError("a failed run has a failed step")

    def _events(self) -> None:
        """2–4 events: created, then started (or held/dispatched), then how it ended."""
        kind, marks = self.kind, self.marks
        who = f" by {ADMIN_USERNAME}" if self.trigger == Trigger.MANUAL else ""
        number = self.plan.version_number
        events: list[tuple] = []
        text = f"Created by {self.trigger} trigger{who} (version {number})"
        self._log(events, EventKind.CREATED, text)
        if kind == SCHEDULED:
            due = _dt(self.scheduled_for).strftime("%Y-%m-%d %H:%M:%S UTC")
            self._log(events, EventKind.EXECUTION_HELD, f"Held: due at {due}")
        elif kind == PENDING:
            node = self.plan.nodes[0]
            text = f"{node.id} dispatched to queue {node.queue}"
            self._log(events, EventKind.NODE_DISPATCHED, text, 0.0, self.step_ids[0], node.id)
        else:
            self._log(events, EventKind.EXECUTION_STARTED, "Execution started", marks["started"])
        getattr(self, f"_events_{kind}")(events)
        rows, event_ids, base = (
            self.batch.rows[ExecutionEvent],
            self.ids[ExecutionEvent],
            self.created,
        )
        for event in events:
            event_kind, message, offset, step_id, node_id = event
            rows.append(
                (
                    next(event_ids),
                    self.id,
                    step_id,
                    node_id,
                    event_kind,
                    message,
                    "{}",
                    base + offset,
                )
            )

    @staticmethod
    def _log(
        events: list,
        kind: str,
        message: str,
        offset: float = 0.0,
        step_id: int | None = None,
        node_id: str = "",
    ) -> None:
        events.append((kind, message, offset, step_id, node_id))

    def _events_completed(self, events: list) -> None:
        self._log(events, EventKind.EXECUTION_COMPLETED, "Execution completed", self.marks["end"])

    def _events_failed(self, events: list) -> None:
        step_id, spec = self._last_failed()
        node_id, (_, error_type, message) = spec.node.id, self.failure
        text = f"{node_id} failed: {error_type}: {message}"
        self._log(events, EventKind.NODE_FAILED, text, spec.finished, step_id, node_id)
        text = f"Execution failed: {self._failure_text()}"
        self._log(events, EventKind.EXECUTION_FAILED, text, self.marks["end"])

    def _events_cancelled(self, events: list) -> None:
        text = f"Cancelled by {ADMIN_USERNAME}"
        self._log(events, EventKind.EXECUTION_CANCELLED, text, self.marks["end"])

    def _events_incomplete(self, events: list) -> None:
        text = f"Stored as an incomplete execution: {self._failure_text()}"
        self._log(events, EventKind.EXECUTION_INCOMPLETE, text, self.marks["incomplete"])

    def _events_discarded(self, events: list) -> None:
        self._events_incomplete(events)
        text = f"Execution failed: Incomplete execution discarded by {ADMIN_USERNAME}"
        self._log(events, EventKind.EXECUTION_FAILED, text, self.marks["end"])

    def _events_resolved(self, events: list) -> None:
        node_id = self.plan.nodes[self.stop].id
        text = f"Resumed from {node_id} by {ADMIN_USERNAME} (attempt 1)"
        self._log(events, EventKind.EXECUTION_RESUMED, text, self.marks["resumed"])
        self._events_completed(events)

    def _events_running(self, events: list) -> None:
        pass

    _events_pending = _events_scheduled = _events_running

    def _events_paused(self, events: list) -> None:
        spec, step_id = self.steps[-1], self.step_ids[-1]
        node_id, message = spec.node.id, self.plan.gate_message
        text = f"{node_id}: waiting for any operator of the organization: {message}"
        self._log(events, EventKind.APPROVAL_REQUESTED, text, spec.started, step_id, node_id)
        text = f"Paused: {node_id} waits for an approval"
        self._log(events, EventKind.EXECUTION_PAUSED, text, spec.started)

    def _incomplete(self) -> None:
        plan, marks, gen = self.plan, self.marks, self.gen
        _, error_type, message = self.failure
        node = plan.nodes[self.stop]
        auto_retry = bool(incomplete_policy(error_type))
        bundles = f'{{"variables":{self.variables},"nodes":{{}},"input":{node.input}}}'
        opened = self.created + marks["incomplete"]
        status, closed_at, closed_by = IncompleteStatus.UNRESOLVED, None, None
        attempts = gen.ladder if auto_retry else 0  # automatic retries used up: a person's turn
        if self.kind == RESOLVED:
            status, closed_at = IncompleteStatus.RESOLVED, self.created + marks["end"]
            closed_by, attempts = gen.user_id, attempts + 1
        elif self.kind == DISCARDED:
            status, closed_at = IncompleteStatus.DISCARDED, self.created + marks["end"]
            closed_by = gen.user_id
        self.batch.rows[IncompleteExecution].append(
            (
                next(self.ids[IncompleteExecution]),
                self.id,
                plan.id,
                plan.organization_id,
                node.id,
                error_type,
                message,
                status,
                auto_retry,
                attempts,
                None,
                len(bundles) + len(plan.blueprint) + 24,
                bundles,
                plan.blueprint,
                opened,
                opened if closed_at is None else closed_at,
                closed_at,
                closed_by,
            )
        )

    def _approval(self) -> None:
        """The gate's approval: pending while the run waits, approved once it went on."""
        gate = self.plan.gate
        found = [i for i, spec in enumerate(self.steps) if spec.node is self.plan.nodes[gate]]
        if not found:
            return
        spec, step_id = self.steps[found[0]], self.step_ids[found[0]]
        if spec.status == S_RUNNING:
            status, decided_at, decided_by = ApprovalStatus.PENDING, None, None
        else:
            status, decided_by = ApprovalStatus.APPROVED, self.gen.user_id
            decided_at = self.created + spec.finished
        self.batch.rows[Approval].append(
            (
                next(self.ids[Approval]),
                self.id,
                step_id,
                spec.node.id,
                status,
                self.plan.gate_message,
                "[]",
                True,
                1,
                True,
                None,
                None,
                "[]",
                None,
                "",
                decided_at,
                decided_by,
                self.created + spec.started,
            )
        )


# --- the writers ---


def _columns(model: type[models.Model], fields: tuple[str, ...]) -> list[str]:
    concrete = {f.name for f in model._meta.concrete_fields}
    if concrete != set(fields):
        raise RuntimeError(
            f"generate_history writes {model._meta.db_table} with {sorted(fields)} but the model "
            f"has {sorted(concrete)}: update apps/executions/history.py"
        )
    return [model._meta.get_field(name).column for name in fields]


def _upper_bounds(plans: list[WorkflowPlan]) -> dict[type[models.Model], int]:
    """The most rows of each table that one execution can have."""
    steps = max(sum(1 + n.max_retries for n in p.nodes) + 1 for p in plans)
    return {Execution: 1, Step: steps, ExecutionEvent: 4, IncompleteExecution: 1, Approval: 1}


def _flat(model: type[models.Model], row: tuple) -> tuple:
    """A row with every column in place (a step row carries its template as a tuple)."""
    return row[:-1] + row[-1] if model is Step else row


class Writer:
    """Loads the batches; ids are reserved for the whole load first."""

    def __init__(self):
        self.columns = {model: _columns(model, fields) for model, fields in TABLES}

    def reserve(self, counts: dict[type[models.Model], int]) -> dict[type[models.Model], int]:
        """The first of `counts[model]` ids of each table that no one else will use."""
        raise NotImplementedError

    def release(self, last: dict[type[models.Model], int]) -> None:
        """After the load: give back the reserved ids that were not used."""

    @contextlib.contextmanager
    def loading(self, rebuild: bool, progress: Callable[[str], None]) -> Iterator[None]:
        """Around the load. `rebuild`: the load is larger than the tables, so their secondary
        indexes may be dropped and built again at the end."""
        yield

    def prepare(self, batch: Batch) -> Batch:
        """What `write` takes; runs in a worker process."""
        batch.seal()
        return batch

    def write(self, batch: Batch) -> None:
        raise NotImplementedError


# Binary COPY (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4)
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + bytes(8)
COPY_TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"
PG_EPOCH = 946684800.0  # 2000-01-01 UTC, where PostgreSQL's timestamps count from
_int8, _int4 = struct.Struct(">iq").pack, struct.Struct(">ii").pack
_length = struct.Struct(">i").pack


def _timestamp(value: float | None) -> bytes:
    return NULL if value is None else _int8(8, round((value - PG_EPOCH) * 1e6))


def _text(value: str) -> bytes:
    data = value.encode()
    return _length(len(data)) + data


def _jsonb(value: str) -> bytes:
    data = value.encode()
    return _length(len(data) + 1) + b"\x01" + data


def _memoized(encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """`encode`, remembering the last few thousand values (most repeat)."""
    memo: dict[Any, bytes] = {None: NULL}

    def encoded(value: Any) -> bytes:
        data = memo.get(value)
        if data is None:
            if len(memo) > 4096:
                memo.clear()
                memo[None] = NULL
            data = memo[value] = encode(value)
        return data

    return encoded


def _binary_encoder(pg_type: str) -> Callable[[Any], bytes]:
    """Value → length-prefixed binary field; timestamps are Unix seconds (floats)."""
    if pg_type == "timestamp with time zone":
        return _timestamp
    if pg_type in ("bigint", "integer"):
        pack, size = (_int8, 8) if pg_type == "bigint" else (_int4, 4)
        return lambda v: NULL if v is None else pack(size, v)
    encoders = {
        "boolean": lambda v: b"\0\0\0\1\1" if v else b"\0\0\0\1\0",
        "text": _text,
        "character varying": _text,
        "jsonb": _jsonb,
    }
    return _memoized(encoders[pg_type])


class BinaryRows:
    """Rows of one table → a binary COPY stream. A step's template columns are encoded once."""

    def __init__(self, model: type[models.Model], types: list[str]):
        self.model = model
        self.encoders = [_binary_encoder(t) for t in types]
        self.field_count = struct.pack(">h", len(types))
        self.templates: dict[tuple, bytes] = {}
        if model is Step and types[:2] != ["bigint", "bigint"]:
            raise RuntimeError("BinaryRows._steps packs the step and execution ids as bigint")

    def encode(self, rows: list[tuple]) -> bytes:
        if not rows:
            return b""
        if self.model is Step:
            return self._steps(rows)
        count, encoders, width = self.field_count, self.encoders, len(self.encoders)
        out = [COPY_SIGNATURE]
        append, extend = out.append, out.extend
        for row in rows:
            if len(row) != width:
                raise ValueError(f"{self.model.__name__} row of {len(row)} values, not {width}")
            append(count)
            extend(map(call, encoders, row))  # each value through its column's encoder
        append(COPY_TRAILER)
        return b"".join(out)

    def _steps(self, rows: list[tuple]) -> bytes:
        fields, templates = len(self.encoders), self.templates
        tail_encoders = self.encoders[len(STEP_VARIABLE) :]
        worker_field, time, head = self.encoders[2], _timestamp, struct.Struct(">hiqiq").pack
        out = [COPY_SIGNATURE]
        append = out.append
        for step_id, execution_id, worker, job, created, started, finished, due, tpl in rows:
            tail = templates.get(tpl)
            if tail is None:
                tail = b"".join(e(v) for e, v in zip(tail_encoders, tpl, strict=True))
                templates[tpl] = tail
            append(head(fields, 8, step_id, 8, execution_id) + worker_field(worker) + _text(job))
            append(time(created) + time(started) + time(finished) + time(due) + tail)
        append(COPY_TRAILER)
        return b"".join(out)


class PostgresWriter(Writer):
    """Binary COPY through psycopg 3 in one transaction, the counting trigger off; the rows
    are encoded to COPY's binary format by the worker processes that make them."""

    def __init__(self):
        super().__init__()
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            self.superuser = cursor.fetchone()[0]
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s",
                [counters.STEP_TABLE, counters.INSERT_TRIGGER],
            )
            self.triggers = [row[0] for row in cursor.fetchall()]
            self.binary = {
                model: BinaryRows(model, self._types(cursor, model)) for model, _ in TABLES
            }

    def _types(self, cursor, model: type[models.Model]) -> list[str]:
        cursor.execute(
            "SELECT attname, atttypid::regtype::text FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            [model._meta.db_table],
        )
        types = dict(cursor.fetchall())
        return [types[column] for column in self.columns[model]]

    def _lock(self, cursor) -> None:
        tables = ", ".join(model._meta.db_table for model, _ in TABLES)
        cursor.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")

    def reserve(self, counts: dict[type[models.Model], int]) -> dict[type[models.Model], int]:
        first = {}
        self.reserved = {}
        with transaction.atomic(), connection.cursor() as cursor:
            self._lock(cursor)  # no insert takes an id between nextval and setval
            for model, count in counts.items():
                table = model._meta.db_table
                cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table])
                first[model] = cursor.fetchone()[0]
                self.reserved[model] = first[model] + count - 1
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
                    [table, self.reserved[model]],
                )
        return first

    def release(self, last: dict[type[models.Model], int]) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            self._lock(cursor)
            for model, end in self.reserved.items():
                # Only when no one else took ids meanwhile (the sequence is where we left it).
                cursor.execute(
                    "SELECT setval(seq, %s) "
                    "FROM (SELECT pg_get_serial_sequence(%s, 'id') AS seq) AS s "
                    "WHERE pg_sequence_last_value(seq::regclass) = %s",
                    [max(last[model], 1), model._meta.db_table, end],
                )

    @contextlib.contextmanager
    def loading(self, rebuild: bool, progress: Callable[[str], None]) -> Iterator[None]:
        """One transaction: if anything fails, the rows and the dropped indexes roll back."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")  # a reload, not a payment
            # Foreign keys checked per statement: ALTER TABLE refuses while checks are pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            self._lock(cursor)
            if self.superuser:
                # Skips the foreign-key checks (the rows refer to rows made with them), which
                # cost as much as the rest of the load.
                cursor.execute("SET LOCAL session_replication_role = replica")
            for name in self.triggers:
                cursor.execute(f"ALTER TABLE {counters.STEP_TABLE} DISABLE TRIGGER {name}")
            indexes = None
            if rebuild:
                tables = [model._meta.db_table for model, _ in TABLES]
                # Without replica mode the foreign keys go too: one check each at the end.
                indexes = SecondaryIndexes(cursor, tables, foreign_keys=not self.superuser)
                indexes.drop()
            yield
            if indexes:
                began = time.monotonic()
                indexes.restore()
                progress(
                    f"Rebuilt {len(indexes.statements)} indexes and constraints: "
                    f"{time.monotonic() - began:.1f} s"
                )
            for name in self.triggers:
                cursor.execute(f"ALTER TABLE {counters.STEP_TABLE} ENABLE TRIGGER {name}")
            if self.superuser:  # (a caller's enclosing transaction, as in tests, goes on)
                cursor.execute("SET LOCAL session_replication_role = origin")

    def prepare(self, batch: Batch) -> Batch:
        batch.seal()
        batch.payload = {
            model: self.binary[model].encode(rows) for model, rows in batch.rows.items()
        }
        batch.rows = {}
        return batch

    def write(self, batch: Batch) -> None:
        with connection.cursor() as cursor:
            for model, data in batch.payload.items():
                if data:
                    columns = ", ".join(self.columns[model])
                    sql = f"COPY {model._meta.db_table} ({columns}) FROM STDIN (FORMAT BINARY)"
                    with cursor.cursor.copy(sql) as copy:
                        copy.write(data)


class SecondaryIndexes:
    """The indexes and constraints of some tables but their primary keys (foreign keys only
    when asked), read from the catalog, so that a bulk load can drop them and then make them
    again exactly as they were (checked against the catalog; a difference raises). Run inside
    the load's transaction: a failure anywhere rolls the drops back too."""

    STATEMENTS = """
        SELECT format('DROP INDEX %%s', x.indexrelid::regclass), pg_get_indexdef(x.indexrelid), 1
        FROM pg_index x
        WHERE x.indrelid = ANY(%(tables)s::regclass[]) AND NOT x.indisprimary
          AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = x.indexrelid
                          AND c.conrelid = x.indrelid AND c.contype IN ('p', 'u', 'x'))
        UNION ALL
        SELECT format('ALTER TABLE %%s DROP CONSTRAINT %%I', c.conrelid::regclass, c.conname),
               format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', c.conrelid::regclass, c.conname,
                      pg_get_constraintdef(c.oid)),
               CASE c.contype WHEN 'f' THEN 3 ELSE 2 END
        FROM pg_constraint c
        WHERE c.conrelid = ANY(%(tables)s::regclass[])
          AND (c.contype IN ('u', 'x') OR (c.contype = 'f' AND %(foreign_keys)s))
        ORDER BY 3, 1"""
    SCHEMA = """
        SELECT pg_get_indexdef(indexrelid) || CASE WHEN indisvalid THEN '' ELSE ' INVALID' END
        FROM pg_index WHERE indrelid = ANY(%(tables)s::regclass[])
        UNION ALL
        SELECT format('%%s %%I %%s', conrelid::regclass, conname, pg_get_constraintdef(oid))
        FROM pg_constraint WHERE conrelid = ANY(%(tables)s::regclass[])
        ORDER BY 1"""

    def __init__(self, cursor, tables: list[str], foreign_keys: bool):
        self.cursor, self.tables = cursor, tables
        self.before = self.schema()
        cursor.execute(self.STATEMENTS, {"tables": tables, "foreign_keys": foreign_keys})
        self.statements: list[tuple[str, str]] = [(drop, make) for drop, make, _ in cursor]

    def schema(self) -> list[str]:
        """Every index and constraint definition of the tables."""
        self.cursor.execute(self.SCHEMA, {"tables": self.tables})
        return [row[0] for row in self.cursor.fetchall()]

    def drop(self) -> None:
        for drop, _ in self.statements:
            self.cursor.execute(drop)

    def restore(self) -> None:
        self.cursor.execute("SET LOCAL maintenance_work_mem = '1GB'")
        workers = max(1, min(4, _cpus() - 1))
        self.cursor.execute(f"SET LOCAL max_parallel_maintenance_workers = {workers}")
        for _, make in self.statements:
            self.cursor.execute(make)
        after = self.schema()
        if after != self.before:
            lost = sorted(set(self.before) - set(after))
            gained = sorted(set(after) - set(self.before))
            raise RuntimeError(
                "the rebuilt indexes differ from the dropped ones (rolled back): "
                f"before only {lost}, after only {gained}"
            )


class RowsWriter(Writer):
    """Multi-row executemany for the other databases (SQLite), a transaction a batch, the
    counting triggers off (`counters.uninstall`) around the whole load."""

    CHUNK = 5000

    def __init__(self):
        super().__init__()
        adapt = connection.ops.adapt_datetimefield_value
        self.adapters: dict[type[models.Model], list[Callable[[Any], Any] | None]] = {
            model: [
                (lambda v: adapt(_dt(v)))
                if isinstance(model._meta.get_field(n), models.DateTimeField)
                else None
                for n in fields
            ]
            for model, fields in TABLES
        }

    def reserve(self, counts: dict[type[models.Model], int]) -> dict[type[models.Model], int]:
        first = {}
        with connection.cursor() as cursor:
            for model in counts:
                cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {model._meta.db_table}")
                first[model] = cursor.fetchone()[0]
        return first

    @contextlib.contextmanager
    def loading(self, rebuild: bool, progress: Callable[[str], None]) -> Iterator[None]:
        counters.uninstall(connection)
        try:
            yield
        finally:
            counters.install(connection)

    def write(self, batch: Batch) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            for model, _ in TABLES:
                rows = batch.rows[model]
                if not rows:
                    continue
                columns = self.columns[model]
                sql = (
                    f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join(['%s'] * len(columns))})"
                )
                adapters = self.adapters[model]
                converted = [
                    tuple(
                        v if a is None or v is None else a(v)
                        for a, v in zip(adapters, _flat(model, row), strict=True)
                    )
                    for row in rows
                ]
                for start in range(0, len(converted), self.CHUNK):
                    cursor.executemany(sql, converted[start : start + self.CHUNK])


# --- the load ---


def taken_cron_slots(plans: list[WorkflowPlan]) -> set[tuple[int, int]]:
    """Cron fires of these versions that already have a run (from an earlier load)."""
    rows = Execution.objects.filter(
        trigger=Trigger.CRON, version_id__in=[p.version_id for p in plans]
    ).values_list("version_id", "scheduled_for")
    return {(version_id, int(when.timestamp())) for version_id, when in rows.iterator() if when}


def generate(options: Options, progress: Callable[[str], None] = print) -> Report:
    """Make the workflows (when missing) and `options.executions` executions of history."""
    plans, user_id = prepare(options)
    postgres = connection.vendor == "postgresql"
    writer: Writer = PostgresWriter() if postgres else RowsWriter()
    bounds = _upper_bounds(plans)
    first = writer.reserve({model: n * options.executions for model, n in bounds.items()})
    generator = HistoryGenerator(
        plans,
        user_id,
        options.executions,
        options.days,
        options.seed,
        timezone.now(),
        taken_cron_slots(plans),
        first,
    )
    chunks = generator.chunks(options.batch_size)
    rebuild = options.executions > Execution.objects.count()
    last = {model: first[model] - 1 for model, _ in TABLES}
    report = Report()
    started = time.monotonic()
    try:
        with writer.loading(rebuild, progress):
            for batch in _prepared(generator, writer, chunks, _cpus() if postgres else 1):
                writer.write(batch)
                last.update(batch.last_ids)
                _tally(report, batch)
                report.seconds = time.monotonic() - started
                progress(
                    f"{report.executions:,}/{options.executions:,} executions, "
                    f"{report.rows['steps']:,} steps, {report.rows['events']:,} events "
                    f"({report.rate:,.0f} executions/s)"
                )
    finally:
        writer.release(last)
    # The load may skip the rollup's marking triggers (PostgreSQL's replica mode): its
    # organizations' days are rolled afresh by the next fold.
    from apps.analytics.rollup import forget_organizations

    forget_organizations(sorted({plan.organization_id for plan in plans}))
    if postgres:
        _analyze(progress)
    report.seconds = time.monotonic() - started
    return report


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


_JOB: tuple[HistoryGenerator, Writer] | None = None  # what the forked workers make rows with


def _prepared(
    generator: HistoryGenerator, writer: Writer, chunks: list[Chunk], workers: int
) -> Iterator[Batch]:
    """The chunks' batches in order, made (and encoded) by `workers` forked processes while
    the database takes in the ones before; at most one waiting per worker."""
    global _JOB
    if workers < 2 or len(chunks) < 2:
        for chunk in chunks:
            with _without_gc():
                batch = writer.prepare(generator.batch(chunk))
            yield batch
        return
    _JOB = (generator, writer)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pending: collections.deque = collections.deque()
            for chunk in chunks:
                pending.append(pool.apply_async(_make, (chunk,)))
                if len(pending) > workers:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    finally:
        _JOB = None


def _make(chunk: Chunk) -> Batch:
    generator, writer = _JOB
    with _without_gc():
        return writer.prepare(generator.batch(chunk))


@contextlib.contextmanager
def _without_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a batch is made: its rows are hundreds of
    thousands of new tuples (no cycles among them), and the passes they set off cost a
    quarter of the time. Reference counting still frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _tally(report: Report, batch: Batch) -> None:
    report.executions += batch.count(Execution)
    names = {
        Execution: "executions",
        Step: "steps",
        ExecutionEvent: "events",
        IncompleteExecution: "incomplete",
        Approval: "approvals",
    }
    for model, name in names.items():
        report.rows[name] = report.rows.get(name, 0) + batch.count(model)


def _analyze(progress: Callable[[str], None]) -> None:
    """Fresh statistics, and a visibility map so that index-only scans skip the heap."""
    with connection.cursor() as cursor:
        for model in (ExecutionEvent, IncompleteExecution, Approval):
            cursor.execute(f"ANALYZE {model._meta.db_table}")
        if connection.in_atomic_block:  # (a test's transaction): VACUUM cannot run in one
            for model in (Execution, Step):
                cursor.execute(f"ANALYZE {model._meta.db_table}")
            return
    with ThreadPoolExecutor(2) as pool:  # both at once, each on its own connection
        for line in pool.map(_vacuum, (Execution, Step)):
            progress(line)


def _vacuum(model: type[models.Model]) -> str:
    began = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM (ANALYZE) {model._meta.db_table}")
    finally:
        connection.close()  # this thread's
    return f"VACUUM (ANALYZE) {model._meta.db_table}: {time.monotonic() - began:.1f} s"
