"""Webhook throughput: `POST /hooks/<key>/` → completed executions per second, on real processes.

Run from the repository root, against PostgreSQL and Redis (both are required: the web server
and the workers are separate processes):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsflow_bench2 \\
    REDIS_URL=redis://127.0.0.1:6379/5 \\
        .venv/bin/python bench/webhook_throughput.py [-n 2000] [--runs 3] [--warmup 200]
        [--concurrency 16] [--rate 0] [--workers 2] [--web-workers 1] [--web-interface asgi]
        [--profile]

What it starts, like the Procfile: one web server (`uvicorn config.asgi:application` on a free
port of 127.0.0.1, one process unless --web-workers says more; --web-interface wsgi serves
config.wsgi instead, for comparison) and --workers rq workers
(`manage.py rqworker --worker-class apps.executions.worker.AgentWorker --with-scheduler <queue>`),
each in its own process group, with DATABASE_URL, REDIS_URL, SECRET_KEY and
DJANGO_SETTINGS_MODULE=config.settings.base. They are stopped on exit, on Ctrl-C, on SIGTERM and
on errors; their logs are under var/bench/logs/.

The workflow has one `noop` node. An asyncio + httpx.AsyncClient load generator in this process
keeps --concurrency requests in flight (one keep-alive connection each) until -n webhooks have
been answered (with --rate R, request i is not sent before i/R seconds: an offered load below
saturation, for latency without a backlog), then waits for every execution to end. Per run it
reports, from the database:
- executions completed per second: completed / (last Execution.finished_at - first request sent);
- the accept rate: 202 answers / (last 202 received - first request sent);
- latency from "webhook accepted" to "first step running": Step.started_at minus the moment the
  202 reached the client, and Step.started_at minus Execution.created_at (all clocks are this
  machine's), p50/p90/p99;
- CPU time per execution of each process group (from /proc): web, workers, PostgreSQL,
  Redis, this load generator, and the rest of the machine ("other": anything else running);
- PostgreSQL connections opened and transactions per execution (pg_stat_database).
After the runs it measures GET /healthz the same way: the ceiling of the HTTP stack alone.
Figures are per run and the median over --runs runs, after --warmup webhooks not counted.

--profile then profiles the webhook path in this process (no uvicorn): the view through Django's
test client and the AgentWorker job loop, with SQL statements and Redis round trips per webhook
and per job, and a pyinstrument (or cProfile) profile of each side. pyinstrument is not a
dependency: install it outside the project, e.g. `pip install --target /tmp/pyinst pyinstrument`
and run with PYTHONPATH=/tmp/pyinst.

Isolation: PostgreSQL database of DATABASE_URL (created when missing), its own organization and
workflow (unique slugs), its own queue name, Redis database 5 when REDIS_URL names database 0
(--redis-db chooses another). It never flushes Redis and deletes only its own keys (each one
names the run's queue, or is a job hash whose origin is that queue). Executions stay in the
database, under the bench's organization.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import secrets
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    Children,
    CpuMeter,
    bench_workflow,
    child_env,
    cleanup_redis,
    free_port,
    group_matcher,
    percentile,
    raise_on_termination,
    rq_worker_argv,
    run_main,
    service_matcher,
    setup_django,
    wait_for_http,
    wait_for_workers,
)

GOAL_EXECUTIONS_PER_S = 220.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="webhooks per run (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs (default 3)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up webhooks (default 200)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight (default 16)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="send at most this many webhooks per second (open loop, to measure latency below "
        "saturation); default 0: as fast as --concurrency allows",
    )
    parser.add_argument("--workers", type=int, default=2, help="rqworker processes (default 2)")
    parser.add_argument(
        "--web-workers", type=int, default=1, help="uvicorn worker processes (default 1)"
    )
    parser.add_argument(
        "--web-interface",
        choices=["asgi", "wsgi"],
        default="asgi",
        help="asgi: config.asgi like the Procfile (default); wsgi: config.wsgi under uvicorn's "
        "--interface wsgi (a comparison, not how the Procfile runs)",
    )
    parser.add_argument("--redis-db", type=int, default=None, help="Redis database (default 5)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the GET /healthz ceiling measurement"
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the webhook path in-process afterwards"
    )
    parser.add_argument(
        "--profile-n", type=int, default=300, help="webhooks and jobs profiled (default 300)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args()
    if min(args.n, args.runs, args.concurrency, args.workers, args.web_workers) < 1:
        parser.error("-n, --runs, --concurrency, --workers and --web-workers must be at least 1")
    if not (
        os.environ.get("DATABASE_URL", "").startswith("postgres") and os.environ.get("REDIS_URL")
    ):
        parser.error(
            "set DATABASE_URL (PostgreSQL) and REDIS_URL: the web server and the workers are "
            "separate processes, e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsflow_bench2 "
            "REDIS_URL=redis://127.0.0.1:6379/5"
        )
    return args


# --- the load generator ---


@dataclass
class Answer:
    sent: float  # time.time() when the request was handed to the client
    received: float  # time.time() when the answer was read
    status: int  # 0: no answer (transport error)
    body: bytes


async def _fire(
    base_url: str, method: str, path: str, n: int, concurrency: int, body_for, rate: float
):
    import httpx

    answers: list[Answer | None] = [None] * n
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def lane() -> None:
            while (i := next(counter)) < n:
                if rate and (wait := start + i / rate - time.time()) > 0:
                    await asyncio.sleep(wait)
                sent = time.time()
                try:
                    r = await client.request(method, path, content=body_for(i), headers=headers)
                    answers[i] = Answer(sent, time.time(), r.status_code, r.content)
                except httpx.HTTPError as exc:
                    answers[i] = Answer(sent, time.time(), 0, repr(exc).encode())

        start = time.time()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return start, answers


def fire(base_url: str, method: str, path: str, n: int, concurrency: int, body_for=None, rate=0.0):
    """Keep up to `concurrency` requests in flight (request i not before i/rate s when `rate`)
    until `n` are answered: (start time, answers)."""
    return asyncio.run(
        _fire(base_url, method, path, n, concurrency, body_for or (lambda i: None), rate)
    )


# --- one run's figures ---


@dataclass
class Run:
    n: int
    accepted: int = 0
    refused: Counter = field(default_factory=Counter)
    completed: int = 0
    not_completed: Counter = field(default_factory=Counter)
    fire_s: float = 0.0  # first request sent → last 202 received
    total_s: float = 0.0  # first request sent → last execution finished
    accept_to_start_ms: list[float] = field(default_factory=list)
    created_to_start_ms: list[float] = field(default_factory=list)
    created_to_finish_ms: list[float] = field(default_factory=list)
    request_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    pg_sessions: int = 0  # PostgreSQL connections opened during the run (pg_stat_database)
    pg_transactions: int = 0

    @property
    def executions_per_s(self) -> float:
        return self.completed / self.total_s if self.total_s else 0.0

    @property
    def accepts_per_s(self) -> float:
        return self.accepted / self.fire_s if self.fire_s else 0.0


def main() -> int:
    args = parse_args()
    raise_on_termination()
    db_label, redis_label = setup_django(args.redis_db)

    import rq
    from django.db import connection
    from django.db.models import Min

    from apps.executions.choices import EXECUTION_TERMINAL, ExecutionStatus
    from apps.executions.models import Execution, Step

    workflow, token, queue_name, conn = bench_workflow("webhook", 1)
    hook = f"/hooks/{workflow.webhook_key}/"

    def body_for(i: int) -> bytes:
        return json.dumps({"variables": {}, "seq": i}).encode()

    def wait_finished(ids: list[int], children: Children, timeout: float) -> None:
        pending = set(ids)
        deadline = time.monotonic() + timeout
        while pending:
            done = Execution.objects.filter(pk__in=pending, status__in=EXECUTION_TERMINAL)
            pending -= set(done.values_list("pk", flat=True))
            if not pending:
                return
            children.check_alive()
            if time.monotonic() > deadline:
                statuses = Counter(
                    Execution.objects.filter(pk__in=pending).values_list("status", flat=True)
                )
                raise RuntimeError(
                    f"{len(pending)} executions not finished after {timeout:.0f} s: {dict(statuses)}"
                )
            time.sleep(0.05)

    def pg_counters() -> tuple[int, int]:
        """Connections opened and transactions ended in this database, as PostgreSQL counts them
        (its statistics lag: backends flush them at most once a second, so wait a little)."""
        time.sleep(1.5)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT sessions, xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
            return cursor.fetchone()

    def webhooks(n: int, children: Children, meter: CpuMeter | None = None, rate=0.0) -> Run:
        run = Run(n)
        pg_before = pg_counters()
        if meter:
            meter.start()
        start, answers = fire(base_url, "POST", hook, n, args.concurrency, body_for, rate)
        accepted_at: dict[int, float] = {}
        for a in answers:
            if a.status == 202:
                accepted_at[json.loads(a.body)["execution"]] = a.received
                run.request_ms.append((a.received - a.sent) * 1000)
            else:
                run.refused[f"{a.status} {a.body[:120]!r}"] += 1
        run.accepted = len(accepted_at)
        ids = list(accepted_at)
        wait_finished(ids, children, timeout=60 + n / 10)
        if meter:
            run.cpu = meter.stop()
        run.fire_s = max(accepted_at.values(), default=start) - start
        rows = Execution.objects.filter(pk__in=ids).values_list(
            "pk", "status", "created_at", "finished_at"
        )
        first_start = dict(
            Step.objects.filter(execution_id__in=ids)
            .values("execution_id")
            .annotate(first=Min("started_at"))
            .values_list("execution_id", "first")
        )
        last_finish = start
        for pk, status, created, finished in rows:
            if status != ExecutionStatus.COMPLETED:
                run.not_completed[status] += 1
                continue
            run.completed += 1
            last_finish = max(last_finish, finished.timestamp())
            started = first_start[pk].timestamp()
            run.accept_to_start_ms.append((started - accepted_at[pk]) * 1000)
            run.created_to_start_ms.append((started - created.timestamp()) * 1000)
            run.created_to_finish_ms.append((finished - created).total_seconds() * 1000)
        run.total_s = last_finish - start
        sessions, transactions = pg_counters()
        run.pg_sessions, run.pg_transactions = sessions - pg_before[0], transactions - pg_before[1]
        return run

    runs: list[Run] = []
    baseline: Run | None = None
    profile_report = ""
    children = Children(token)
    try:
        with children:
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            env = child_env(queue_name)
            web_argv = [sys.executable, "-m", "uvicorn", f"config.{args.web_interface}:application"]
            web_argv += ["--host", "127.0.0.1", "--port", str(port)]
            if args.web_interface == "wsgi":
                web_argv += ["--interface", "wsgi"]
            if args.web_workers > 1:
                web_argv += ["--workers", str(args.web_workers)]
            web = children.start("web", web_argv, env)
            workers = [
                children.start(f"worker{i}", rq_worker_argv(queue_name, f"{queue_name}-w{i}"), env)
                for i in range(args.workers)
            ]
            wait_for_http(base_url + "/healthz", children)
            wait_for_workers(conn, queue_name, args.workers, children)
            me = os.getpid()
            meter = CpuMeter(
                {
                    "web (uvicorn)": group_matcher([web.process.pid]),
                    "workers (rqworker)": group_matcher(w.process.pid for w in workers),
                    "PostgreSQL": service_matcher("postgres"),
                    "Redis": service_matcher("redis-server"),
                    "load generator (this)": lambda pid, comm, pgrp: pid == me,
                }
            )
            if args.warmup:
                webhooks(args.warmup, children)
            for i in range(args.runs):
                runs.append(webhooks(args.n, children, meter, args.rate))
                print(
                    f"run {i + 1}/{args.runs}: {runs[-1].executions_per_s:.1f} executions/s, "
                    f"{runs[-1].accepts_per_s:.1f} accepts/s",
                    flush=True,
                )
            if not args.no_baseline:
                baseline = healthz_ceiling(base_url, args, meter)
        if args.profile:
            profile_report = profile_in_process(workflow, queue_name, args, conn)
    finally:
        children.stop()
        cleanup_redis(conn, queue_name)
        cleanup_redis(conn, f"{queue_name}-prof")

    import django

    print()
    print(
        f"Opsflow webhook throughput: one-node noop workflow, {args.n} webhooks per run, "
        f"{args.runs} run(s) after {args.warmup} warm-up webhooks"
    )
    print(f"  database : {db_label}")
    print(f"  redis    : {redis_label}, queue {queue_name}")
    print(
        f"  processes: {args.web_workers} uvicorn process(es) (config.{args.web_interface}, "
        "h11, asyncio), "
        f"{args.workers} rqworker AgentWorker process(es) with --with-scheduler; "
        f"load generator: httpx.AsyncClient, {args.concurrency} requests in flight"
        + (f", at most {args.rate:g} webhooks/s" if args.rate else " (closed loop)")
    )
    print(
        f"  machine  : {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, "
        f"Django {django.get_version()}, rq {rq.__version__}"
    )
    print()
    print_runs(runs)
    if baseline is not None:
        print()
        print(
            f"HTTP ceiling, GET /healthz with the same client and concurrency: "
            f"{baseline.accepts_per_s:.0f} requests/s, request p50 "
            f"{percentile(baseline.request_ms, 50):.1f} ms; CPU ms per request: "
            + ", ".join(
                f"{k} {v * 1000 / baseline.n:.2f}"
                for k, v in baseline.cpu.items()
                if k not in ("machine total",) and v * 1000 / baseline.n >= 0.01
            )
        )
    rate = statistics.median(r.executions_per_s for r in runs)
    held = rate >= GOAL_EXECUTIONS_PER_S
    print()
    verdict = "PASS" if held else "FAIL"
    if args.rate:
        verdict += f" (not a throughput test: --rate {args.rate:g} caps the offered load)"
    print(
        f"Goal: >= {GOAL_EXECUTIONS_PER_S:g} executions/s (median of runs): {rate:.1f}   {verdict}"
    )
    if profile_report:
        print()
        print(profile_report)
    return 1 if args.check and not held else 0


def healthz_ceiling(base_url: str, args: argparse.Namespace, meter: CpuMeter) -> Run:
    run = Run(args.n)
    meter.start()
    start, answers = fire(base_url, "GET", "/healthz", args.n, args.concurrency)
    run.cpu = meter.stop()
    ok = [a for a in answers if a.status == 200]
    run.accepted = len(ok)
    run.fire_s = max((a.received for a in ok), default=start) - start
    run.request_ms = [(a.received - a.sent) * 1000 for a in ok]
    return run


def print_runs(runs: list[Run]) -> None:
    def pct(attr: str, q: float):
        return [percentile(getattr(r, attr), q) for r in runs]

    rows: list[tuple[str, list[float], str]] = [
        ("executions completed / s", [r.executions_per_s for r in runs], "{:.1f}"),
        ("webhooks accepted (202) / s", [r.accepts_per_s for r in runs], "{:.1f}"),
        ("first sent -> last 202, s", [r.fire_s for r in runs], "{:.2f}"),
        ("first sent -> last finished, s", [r.total_s for r in runs], "{:.2f}"),
        ("completed executions", [r.completed for r in runs], "{:.0f}"),
        (
            "refused / not completed",
            [sum(r.refused.values()) + sum(r.not_completed.values()) for r in runs],
            "{:.0f}",
        ),
        ("webhook request p50, ms", pct("request_ms", 50), "{:.1f}"),
        ("webhook request p99, ms", pct("request_ms", 99), "{:.1f}"),
        ("202 received -> step running p50, ms", pct("accept_to_start_ms", 50), "{:.1f}"),
        ("202 received -> step running p90, ms", pct("accept_to_start_ms", 90), "{:.1f}"),
        ("202 received -> step running p99, ms", pct("accept_to_start_ms", 99), "{:.1f}"),
        ("created_at -> step running p50, ms", pct("created_to_start_ms", 50), "{:.1f}"),
        ("created_at -> step running p99, ms", pct("created_to_start_ms", 99), "{:.1f}"),
        ("created_at -> finished_at p50, ms", pct("created_to_finish_ms", 50), "{:.1f}"),
        ("created_at -> finished_at p99, ms", pct("created_to_finish_ms", 99), "{:.1f}"),
    ]
    rows.append(
        (
            "PostgreSQL connections opened / execution",
            [r.pg_sessions / max(r.completed, 1) for r in runs],
            "{:.2f}",
        )
    )
    rows.append(
        (
            "PostgreSQL transactions / execution",
            [r.pg_transactions / max(r.completed, 1) for r in runs],
            "{:.1f}",
        )
    )
    labels = [k for k in runs[0].cpu if k != "machine total"]
    for label in labels:
        rows.append(
            (
                f"CPU ms / execution: {label}",
                [r.cpu.get(label, 0.0) * 1000 / max(r.completed, 1) for r in runs],
                "{:.2f}",
            )
        )
    rows.append(
        (
            "machine CPU busy, % of all cores",
            [100 * r.cpu["machine busy"] / r.cpu["machine total"] for r in runs if r.cpu],
            "{:.0f}",
        )
    )
    width = max(len(name) for name, _, _ in rows) + 2
    header = f"{'figure':<{width}}" + "".join(f"{f'run {i + 1}':>10}" for i in range(len(runs)))
    header += f"{'median':>10}"
    print(header)
    print("-" * len(header))
    for name, values, fmt in rows:
        cells = "".join(f"{fmt.format(v):>10}" for v in values)
        median = fmt.format(statistics.median(values)) if values else "-"
        print(f"{name:<{width}}{cells}{median:>10}")
    for i, r in enumerate(runs, 1):
        for problem, count in list(r.refused.items())[:3] + list(r.not_completed.items()):
            print(f"  run {i}: {count} x {problem}")


# --- --profile: the webhook path in this process ---


class RoundTrips:
    """Counts the PostgreSQL statements and Redis round trips this thread makes.

    PostgreSQL: every statement Django sends, BEGIN, COMMIT and SAVEPOINTs included, plus the
    connection health checks (SELECT 1, CONN_HEALTH_CHECKS) Django does not log. Redis: one per
    packed command sent (a pipeline or MULTI/EXEC block counts once)."""

    def __enter__(self):
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        from redis.connection import AbstractConnection

        self.health_checks = self.redis = 0
        self.statements: list[str] = []
        counter, real_usable = self, connection.is_usable
        real_send = AbstractConnection.send_packed_command

        def usable():
            counter.health_checks += 1
            return real_usable()

        def send(self_, command, check_health=True):
            counter.redis += 1
            return real_send(self_, command, check_health)

        self._real_send = real_send
        connection.is_usable = usable
        AbstractConnection.send_packed_command = send
        self.captured = CaptureQueriesContext(connection)
        self.captured.__enter__()
        return self

    def __exit__(self, *exc):
        from django.db import connection
        from redis.connection import AbstractConnection

        self.captured.__exit__(*exc)
        # a copy: the connection's query log is cleared when the next request starts
        self.statements = [q["sql"] for q in self.captured.captured_queries]
        del connection.is_usable
        AbstractConnection.send_packed_command = self._real_send

    def summary(self, per: int) -> str:
        verbs = Counter(s.split(None, 1)[0].upper() for s in self.statements)
        detail = ", ".join(f"{v} {n / per:g}" for v, n in verbs.most_common())
        total = len(self.statements) + self.health_checks
        return (
            f"PostgreSQL round trips {total / per:g} ({detail}, health-check SELECT 1 "
            f"{self.health_checks / per:g}); Redis round trips {self.redis / per:g}"
        )


class PhaseTimer:
    """Inclusive wall time spent in chosen functions, patched for the duration of a `with`.

    `by_model` labels a call by the model of the queryset or instance it runs on."""

    def __init__(self, targets: list[tuple[object, str, str, bool]]):
        self.targets = targets
        self.seconds: Counter = Counter()
        self.calls: Counter = Counter()

    def __enter__(self):
        self._originals = []
        for owner, attr, label, by_model in self.targets:
            original = owner.__dict__.get(attr) if isinstance(owner, type) else None
            original = original or getattr(owner, attr)
            setattr(owner, attr, self._timed(original, label, by_model))
            self._originals.append((owner, attr, original))
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._originals):
            setattr(owner, attr, original)

    def _timed(self, original, label: str, by_model: bool):
        timer = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            name = label
            if by_model and args:
                model = getattr(args[0], "model", None) or type(args[0])
                name = f"{label} {model.__name__}"
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timer.seconds[name] += time.perf_counter() - start
                timer.calls[name] += 1

        return timed

    def report(self, per: int, order: list[str]) -> list[str]:
        """One line per label (in `order`, then the rest): ms and calls per unit of work."""
        labels = [k for k in order if any(n == k or n.startswith(k + " ") for n in self.seconds)]
        names = []
        for key in labels:
            names += sorted(n for n in self.seconds if n == key or n.startswith(key + " "))
        names += sorted(n for n in self.seconds if n not in names)
        width = max((len(n) for n in names), default=10) + 2
        return [
            f"    {name:<{width}}{self.seconds[name] * 1000 / per:8.2f} ms"
            f"{self.calls[name] / per:7.2f} calls"
            for name in names
        ]


def phase_targets():
    """What the breakdown times, web side and worker side (inclusive times, so they nest)."""
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper
    from django.db.models import Model, QuerySet
    from django.test import Client
    from redis.connection import AbstractConnection
    from rq.worker.base import BaseWorker

    from apps.executions import engine, jobs, services
    from apps.executions.models import Execution, Step
    from apps.executions.worker import AgentWorker
    from apps.workflows import webhooks

    return [
        (Client, "post", "1 request through Django (middleware + view)", False),
        (webhooks, "trigger_workflow", "2 trigger_workflow", False),
        (services, "resolve_variables", "3 resolve_variables", False),
        (engine, "dispatch_nodes", "3 engine.dispatch_nodes", False),
        (services, "_hold_reason", "3 _hold_reason (builds querysets)", False),
        (engine, "enqueue_step", "3 enqueue to Redis (on commit)", False),
        (BaseWorker, "dequeue_job_and_maintain_ttl", "1 RQ dequeue (BLPOP and bookkeeping)", False),
        (AgentWorker, "execute_job", "1 RQ execute_job (whole job)", False),
        (jobs, "run_step", "2 run_step (the engine's part)", False),
        (Step, "start", "3 Step.start (CAS UPDATE)", False),
        (Execution, "mark_running", "3 Execution.mark_running (UPDATE + event INSERT)", False),
        (services, "_run_node", "3 _run_node (render, noop)", False),
        (services, "record_attempt", "3 record_attempt (lock, finish, advance, commit)", False),
        (engine, "advance", "4 engine.advance", False),
        (
            services,
            "release_held_on_commit",
            "4 release_held_on_commit (registers a SELECT)",
            False,
        ),
        (QuerySet, "first", "ORM QuerySet.first", True),
        (QuerySet, "get", "ORM QuerySet.get", True),
        (QuerySet, "create", "ORM QuerySet.create", True),
        (QuerySet, "bulk_create", "ORM QuerySet.bulk_create", True),
        (QuerySet, "update", "ORM QuerySet.update", True),
        (QuerySet, "exists", "ORM QuerySet.exists", True),
        (Model, "save", "ORM Model.save", True),
        (CursorWrapper, "_execute", "SQL: cursor execute (send, server, fetch)", False),
        (BaseDatabaseWrapper, "_commit", "SQL: COMMIT", False),
        (AbstractConnection, "send_packed_command", "Redis: send", False),
        (AbstractConnection, "read_response", "Redis: read reply", False),
    ]


PHASE_ORDER = [
    "1 request through Django (middleware + view)",
    "2 trigger_workflow",
    "3 resolve_variables",
    "3 _hold_reason (builds querysets)",
    "3 engine.dispatch_nodes",
    "3 enqueue to Redis (on commit)",
    "1 RQ dequeue (BLPOP and bookkeeping)",
    "1 RQ execute_job (whole job)",
    "2 run_step (the engine's part)",
    "3 Step.start (CAS UPDATE)",
    "3 Execution.mark_running (UPDATE + event INSERT)",
    "3 _run_node (render, noop)",
    "3 record_attempt (lock, finish, advance, commit)",
    "4 engine.advance",
    "4 release_held_on_commit (registers a SELECT)",
]


def profile_in_process(workflow, queue_name: str, args: argparse.Namespace, conn) -> str:
    """The view through Django's test client (the WSGI handler, the same middleware), then an
    AgentWorker draining the jobs those webhooks queued, in this thread."""
    from django.test import Client

    from apps.executions.worker import AgentWorker
    from tests.factories import chain_definition, make_workflow

    prof_queue = f"{queue_name}-prof"  # no worker process serves it
    definition = chain_definition(f"{workflow.slug}-prof", 1)
    definition["nodes"][0]["queue"] = prof_queue
    target = make_workflow(workflow.organization, definition)
    hook = f"/hooks/{target.webhook_key}/"
    client = Client(HTTP_HOST="127.0.0.1")
    k = args.profile_n
    body = json.dumps({"variables": {}}).encode()

    def post(n: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            response = client.post(hook, body, content_type="application/json")
            if response.status_code != 202:
                raise RuntimeError(f"webhook answered {response.status_code}: {response.content!r}")
        return (time.perf_counter() - start) * 1000 / n, (time.process_time() - cpu) * 1000 / n

    def work(n: int) -> tuple[float, float]:
        name = f"{prof_queue}-{secrets.token_hex(2)}"
        worker = AgentWorker([prof_queue], connection=conn, name=name)
        start, cpu = time.perf_counter(), time.process_time()
        worker.work(burst=True, max_jobs=n, logging_level="WARNING")
        return (time.perf_counter() - start) * 1000 / n, (time.process_time() - cpu) * 1000 / n

    post(20)  # warm-up
    web_ms, web_cpu = post(k)
    with PhaseTimer(phase_targets()) as web_phases:
        post(k)
    with RoundTrips() as web_trips:
        post(20)
    web_tree = profiled(lambda: post(k))
    work(20)  # warm-up
    job_ms, job_cpu = work(k)
    with PhaseTimer(phase_targets()) as job_phases:
        work(k)
    with RoundTrips() as job_trips:
        work(20)
    job_tree = profiled(lambda: work(k))
    return "\n".join(
        [
            "In-process profile of the webhook path (Django test client, no uvicorn/HTTP; "
            "an AgentWorker in this thread)",
            f"  web: {web_ms:.2f} ms per webhook ({web_cpu:.2f} ms CPU), mean of {k}",
            f"       {web_trips.summary(20)}",
            "     inclusive time per webhook (timed run; the wrappers add a little):",
            *web_phases.report(k, PHASE_ORDER),
            f"  job: {job_ms:.2f} ms per job ({job_cpu:.2f} ms CPU), AgentWorker burst, mean of {k}",
            f"       {job_trips.summary(20)}",
            "     inclusive time per job:",
            *job_phases.report(k, PHASE_ORDER),
            "",
            f"--- web side, {k} webhooks ---",
            web_tree,
            f"--- worker side, {k} jobs ---",
            job_tree,
        ]
    )


def profiled(run) -> str:
    """pyinstrument's text tree when it can be imported; otherwise cProfile's top functions."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        import cProfile
        import io
        import pstats

        profile = cProfile.Profile()
        profile.runcall(run)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(40)
        return "(pyinstrument not importable: cProfile, by cumulative time)\n" + out.getvalue()
    profiler = Profiler(interval=0.0002)
    profiler.start()
    run()
    profiler.stop()
    return profiler.output_text(unicode=False, color=False, show_all=False)


if __name__ == "__main__":
    sys.exit(run_main(main))
