"""Engine overhead: a sequential chain of `noop` nodes through Opsflow, against raw RQ.

Run from the repository root:

    .venv/bin/python bench/engine_overhead.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsflow_bench \\
        REDIS_URL=redis://127.0.0.1:6379/3 .venv/bin/python bench/engine_overhead.py

What it measures, each as the median of --runs runs after --warmup warm-up runs:
- the engine with local continuation: `trigger_workflow`, then one `AgentWorker` burst in this
  thread runs the whole chain (the agent context lets a worker run a successor itself);
- the engine with every step through Redis: a plain `SimpleWorker` subclass that sets no agent
  context, so `services.run_step_chain` enqueues every successor;
- raw RQ: a chain of no-op jobs where each job enqueues the next, on the same worker classes,
  the same Redis and the same job options as `dispatch.enqueue_step`.

Stores: DATABASE_URL and REDIS_URL when set (the PostgreSQL database is created when missing);
otherwise the embedded default, SQLite in WAL mode under var/bench/ (so the development database
under var/ is left alone) and the in-process fakeredis server. The benchmark creates its own
organization and workflow with unique slugs, uses a queue name of its own, never flushes Redis,
and deletes only its own Redis keys. With REDIS_URL on database 0, it moves to database 3
(--redis-db chooses another).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
STEPS_GOAL_MS = 10.0  # the brief's bar per step
RAW_RATIO_GOAL = 2.0  # the brief's bar against the raw RQ chain
DESIGN_AIM_MS = 4.0  # DESIGN §6: "Opsflow aims at 4 ms or less per step"
DEFAULT_BENCH_REDIS_DB = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="nodes in the chain (default 40)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per mode (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs per mode (default 1)")
    parser.add_argument(
        "--redis-db",
        type=int,
        default=None,
        help="Redis database number to use with REDIS_URL (default: the URL's, or 3 if it names 0)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the local-continuation runs with pyinstrument (must be importable)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    if args.steps < 2 or args.runs < 1 or args.warmup < 0:
        parser.error("--steps must be at least 2, --runs at least 1, --warmup at least 0")
    return args


# --- environment: done before Django reads its settings ---


def bench_redis_url(url: str, db: int | None) -> str:
    """The REDIS_URL to use: its own database number, never the application's database 0."""
    parts = urlsplit(url)
    named = parts.path.strip("/")
    current = int(named) if named.isdigit() else 0
    chosen = db if db is not None else (current or DEFAULT_BENCH_REDIS_DB)
    return urlunsplit(parts._replace(path=f"/{chosen}"))


def ensure_postgres_database(url: str) -> str:
    """Create the PostgreSQL database named by DATABASE_URL if it does not exist yet."""
    import dj_database_url
    import psycopg
    from psycopg import sql

    config = dj_database_url.parse(url)
    if "postgresql" not in config["ENGINE"]:
        return f"{config['ENGINE'].rsplit('.', 1)[-1]} {config['NAME']}"
    name = config["NAME"]
    params = {
        "host": config.get("HOST"),
        "port": config.get("PORT"),
        "user": config.get("USER"),
        "password": config.get("PASSWORD"),
    }
    params = {k: v for k, v in params.items() if v not in (None, "")}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not found:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created PostgreSQL database {name!r}")
    return f"postgresql {name} @ {params.get('host', 'local socket')}:{params.get('port', 5432)}"


def configure_environment(args: argparse.Namespace) -> tuple[str, str]:
    sys.path.insert(0, str(REPO))
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.base"
    # The settings refuse to start without a key when DATABASE_URL is set; the bench signs nothing.
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_urlsafe(32))
    # Likewise the credentials key (its child processes inherit it); the bench stores none.
    os.environ.setdefault("OPSFLOW_SECRETS_KEYS", base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if os.environ.get("DATABASE_URL"):
        db_label = ensure_postgres_database(os.environ["DATABASE_URL"])
    else:
        os.environ.setdefault("OPSFLOW_VAR_DIR", str(REPO / "var" / "bench"))
        db_label = (
            f"sqlite {Path(os.environ['OPSFLOW_VAR_DIR']) / 'opsflow.sqlite3'} (embedded default)"
        )
    if os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = bench_redis_url(os.environ["REDIS_URL"], args.redis_db)
        redis_label = os.environ["REDIS_URL"]
    else:
        redis_label = "fakeredis, in-process (embedded default)"
    return db_label, redis_label


# --- figures ---


@dataclass
class Series:
    label: str
    worker: str
    steps: int
    walls: list[float] = field(default_factory=list)  # seconds
    jobs: list[int] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.walls) * 1000

    @property
    def per_step_ms(self) -> float:
        return self.median_ms / self.steps if self.steps else 0.0


def main() -> int:
    args = parse_args()
    db_label, redis_label = configure_environment(args)

    import django

    django.setup()

    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    # Imported only now: they need the app registry.
    import rq
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rq import Queue, SimpleWorker
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    from apps.executions import dispatch
    from apps.executions.choices import ExecutionStatus, StepStatus
    from apps.executions.models import Execution
    from apps.executions.services import trigger_workflow
    from apps.executions.worker import AgentWorker
    from bench._rq_jobs import HOP_FUNC
    from tests.factories import chain_definition, make_org, make_workflow

    class CountingMixin:
        """Counts the RQ jobs a burst ran: 1 per chain means local continuation did it all."""

        jobs_run = 0

        def execute_job(self, job, queue):
            self.jobs_run += 1
            return super().execute_job(job, queue)

    class BenchAgentWorker(CountingMixin, AgentWorker):
        """The production agent (non-forking, sets the agent context), plus a job counter."""

    class RedisOnlyWorker(CountingMixin, SimpleWorker):
        """A plain non-forking RQ worker: no agent context, so no local continuation."""

    class BenchFailed(Exception):
        pass

    token = secrets.token_hex(4)
    queue_name = f"bench-{token}"
    conn = dispatch.get_connection()
    conn.ping()

    org = make_org(f"bench-{token}")
    definition = chain_definition(f"bench-chain-{token}", args.steps)
    for node in definition["nodes"]:
        node["queue"] = queue_name  # a queue of its own: no other worker can take these jobs
    workflow = make_workflow(org, definition)

    raw_options = {  # what dispatch.enqueue_step passes for a noop node
        "job_timeout": 120,
        "result_ttl": 0,
        "failure_ttl": dispatch.FAILURE_TTL,
    }

    def failed_jobs() -> str:
        registry = FailedJobRegistry(queue_name, connection=conn)
        lines = []
        for job_id in registry.get_job_ids()[:3]:
            job = Job.fetch(job_id, connection=conn)
            result = job.latest_result()
            lines.append(
                f"  failed job {job_id}: {job.description}\n{result and result.exc_string}"
            )
        return "\n".join(lines)

    def check_execution(execution: Execution) -> None:
        execution.refresh_from_db()
        statuses = Counter(execution.steps.values_list("status", flat=True))
        if execution.status != ExecutionStatus.COMPLETED or statuses != {
            StepStatus.COMPLETED: args.steps
        }:
            raise BenchFailed(
                f"execution #{execution.pk} ended {execution.status!r} with steps {dict(statuses)}; "
                f"expected completed with {args.steps} completed steps. "
                f"Jobs left on the queue: {Queue(queue_name, connection=conn).count}.\n{failed_jobs()}"
            )

    worker_seq = iter(range(1_000_000))

    def new_worker(worker_cls):
        # Named after the queue, so cleanup_redis also removes the worker keys RQ keeps for 60 s.
        return worker_cls([queue_name], connection=conn, name=f"{queue_name}-w{next(worker_seq)}")

    def engine_run(worker_cls) -> tuple[float, int]:
        worker = new_worker(worker_cls)
        start = time.perf_counter()
        execution = trigger_workflow(workflow)
        worker.work(burst=True, logging_level="WARNING")
        wall = time.perf_counter() - start
        check_execution(execution)
        return wall, worker.jobs_run

    def raw_run(worker_cls) -> tuple[float, int]:
        worker = new_worker(worker_cls)
        start = time.perf_counter()
        Queue(queue_name, connection=conn).enqueue(HOP_FUNC, args.steps, raw_options, **raw_options)
        worker.work(burst=True, logging_level="WARNING")
        wall = time.perf_counter() - start
        if worker.jobs_run != args.steps:
            raise BenchFailed(
                f"raw chain ran {worker.jobs_run} jobs, expected {args.steps}\n{failed_jobs()}"
            )
        return wall, worker.jobs_run

    def empty_run(worker_cls) -> tuple[float, int]:
        worker = new_worker(worker_cls)
        start = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING")
        return time.perf_counter() - start, worker.jobs_run

    def measure(modes: list[tuple[Series, Callable[[], tuple[float, int]]]]) -> None:
        """Warm up every mode, then run the modes in rounds, so a burst of load on the machine
        falls on all of them alike and the ratios stay fair."""
        for _ in range(args.warmup):
            for _, run in modes:
                run()
        for _ in range(args.runs):
            for series, run in modes:
                wall, jobs = run()
                series.walls.append(wall)
                series.jobs.append(jobs)

    def sql_per_step(worker_cls) -> tuple[float, Counter]:
        """One extra, untimed run with the queries captured (capturing slows the run down)."""
        with CaptureQueriesContext(connection) as captured:
            engine_run(worker_cls)
        verbs = Counter(q["sql"].split(None, 1)[0].upper() for q in captured.captured_queries)
        return len(captured.captured_queries) / args.steps, verbs

    results: list[Series] = []
    profile_text = ""
    try:
        local = Series("engine, local continuation (default)", "AgentWorker", args.steps)
        via_redis = Series("engine, every step via Redis", "SimpleWorker subclass", args.steps)
        raw_agent = Series("raw RQ chain (job enqueues next)", "AgentWorker", args.steps)
        raw_simple = Series("raw RQ chain (job enqueues next)", "SimpleWorker subclass", args.steps)
        empty = Series("empty burst (worker start/stop only)", "AgentWorker", 0)
        measure(
            [
                (local, lambda: engine_run(BenchAgentWorker)),
                (via_redis, lambda: engine_run(RedisOnlyWorker)),
                (raw_agent, lambda: raw_run(BenchAgentWorker)),
                (raw_simple, lambda: raw_run(RedisOnlyWorker)),
                (empty, lambda: empty_run(BenchAgentWorker)),
            ]
        )
        results = [local, via_redis, raw_agent, raw_simple, empty]
        sql_local = sql_per_step(BenchAgentWorker)
        sql_redis = sql_per_step(RedisOnlyWorker)
        if args.profile:
            profile_text = profile_engine(lambda: engine_run(BenchAgentWorker), args.runs)
    finally:
        cleanup_redis(conn, queue_name)

    # --- report ---
    import django as dj

    print()
    print(
        f"Opsflow engine overhead: {args.steps}-node sequential noop chain, "
        f"median of {args.runs} runs after {args.warmup} warm-up (modes interleaved per round)"
    )
    print(f"  database : {db_label} (vendor {connection.vendor})")
    print(f"  redis    : {redis_label}, queue {queue_name}")
    print(f"  settings : OPSFLOW_LOCAL_CONTINUATION={settings.OPSFLOW_LOCAL_CONTINUATION}")
    print(
        f"  versions : Python {sys.version.split()[0]}, Django {dj.get_version()}, rq {rq.__version__}"
    )
    print()
    header = f"{'mode':<40} {'worker':<22} {'RQ jobs':>7} {'wall ms':>9} {'min':>8} {'max':>8} {'ms/step':>8}"
    print(header)
    print("-" * len(header))
    for s in results:
        per_step = f"{s.per_step_ms:8.2f}" if s.steps else f"{'-':>8}"
        print(
            f"{s.label:<40} {s.worker:<22} {statistics.median(s.jobs):>7.0f} {s.median_ms:9.1f} "
            f"{min(s.walls) * 1000:8.1f} {max(s.walls) * 1000:8.1f} {per_step}"
        )
    print()
    for label, (per_step_sql, verbs) in (
        ("local continuation", sql_local),
        ("via Redis", sql_redis),
    ):
        detail = ", ".join(f"{verb} {n / args.steps:.1f}" for verb, n in verbs.most_common())
        print(f"SQL statements per step, {label:<18}: {per_step_sql:.1f} ({detail})")
    print()

    ratio_local = local.per_step_ms / raw_agent.per_step_ms
    ratio_redis = via_redis.per_step_ms / raw_simple.per_step_ms
    goals = [
        (
            f"<= {STEPS_GOAL_MS:g} ms per step (local continuation)",
            f"{local.per_step_ms:.2f} ms",
            local.per_step_ms <= STEPS_GOAL_MS,
        ),
        (
            f"<= {RAW_RATIO_GOAL:g}x raw RQ chain (local continuation)",
            f"{ratio_local:.2f}x",
            ratio_local <= RAW_RATIO_GOAL,
        ),
        (
            f"<= {STEPS_GOAL_MS:g} ms per step (every step via Redis)",
            f"{via_redis.per_step_ms:.2f} ms",
            via_redis.per_step_ms <= STEPS_GOAL_MS,
        ),
        (
            f"<= {RAW_RATIO_GOAL:g}x raw RQ chain (every step via Redis)",
            f"{ratio_redis:.2f}x",
            ratio_redis <= RAW_RATIO_GOAL,
        ),
    ]
    print("Goals")
    for name, figure, held in goals:
        print(f"  {name:<48} {figure:>9}   {'PASS' if held else 'FAIL'}")
    print(
        f"  {'DESIGN §6 aim: <= 4 ms per step (for reference)':<48} "
        f"{local.per_step_ms:>6.2f} ms   {'met' if local.per_step_ms <= DESIGN_AIM_MS else 'not met'}"
    )
    print()
    local_jobs = statistics.median(local.jobs)
    if local_jobs >= args.steps:
        print(
            f"Local continuation did NOT engage: the AgentWorker ran {local_jobs:.0f} RQ jobs for "
            f"{args.steps} steps, so every step went through Redis in both engine modes."
        )
    else:
        print(
            f"Local continuation engaged: {args.steps} steps in {local_jobs:.0f} RQ job(s) "
            f"on the AgentWorker."
        )
    print(
        "Worker class: AgentWorker (rq SimpleWorker, non-forking) runs jobs in-process in this "
        "thread; a forking rq Worker would add ~10 ms per job (NOTES.md), more than the "
        "per-step budget, so the engine's agent and both baselines use non-forking workers."
    )
    if profile_text:
        print()
        print(profile_text)

    missed = [name for name, _, held in goals if not held]
    return 1 if args.check and missed else 0


def profile_engine(run, runs: int) -> str:
    """Profile a few local-continuation runs with pyinstrument, if it can be imported."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return "--profile: pyinstrument is not importable; install it in a separate venv and add it to PYTHONPATH"
    profiler = Profiler(interval=0.0002)
    profiler.start()
    for _ in range(runs):
        run()
    profiler.stop()
    return profiler.output_text(unicode=False, color=False, show_all=False)


def cleanup_redis(conn, queue_name: str) -> None:
    """Delete this run's queue and registries; every key of ours carries the unique queue name."""
    from rq import Queue

    Queue(queue_name, connection=conn).delete(delete_jobs=True)
    keys = list(conn.scan_iter(match=f"*{queue_name}*", count=1000))
    if keys:
        conn.delete(*keys)


if __name__ == "__main__":
    sys.exit(main())
