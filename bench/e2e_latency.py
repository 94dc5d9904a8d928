"""End-to-end latency: a three-step `noop` chain, from trigger to execution completed.

Run from the repository root:

    .venv/bin/python bench/e2e_latency.py                      # the embedded default
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsflow_bench2 \\
    REDIS_URL=redis://127.0.0.1:6379/5 \\
        .venv/bin/python bench/e2e_latency.py [--runs 200] [--warmup 20] [--steps 3]

The trigger is `services.trigger_workflow`, called in this process: the same function the webhook
view calls, without the HTTP server in between (webhook_throughput.py measures that part). It
commits the execution and its first step, then enqueues the step's RQ job on commit. Executions
run one after another: the next is triggered once the previous one is seen completed.

The worker:
- with REDIS_URL set: one real worker process, the Procfile's
  `manage.py rqworker --worker-class apps.executions.worker.AgentWorker --with-scheduler <queue>`
  (in its own process group, stopped on exit, Ctrl-C, SIGTERM or error; its log is under
  var/bench/logs/);
- without REDIS_URL (the embedded default, SQLite in WAL mode under var/bench/ and the in-process
  fakeredis): one `ThreadAgentWorker` thread in this process, as `manage.py standalone` runs them.
--worker thread|process overrides the choice (a process needs a Redis shared between processes).

Per execution it records, all from this machine's clock:
- Execution.finished_at - Execution.created_at (the database's view; the goal is on its p50);
- the wall clock observed: trigger_workflow called -> this process sees the row completed (it polls
  the row every --poll-ms, so this includes up to one poll interval);
- trigger_workflow called -> finished_at, and the trigger_workflow call itself;
- created_at -> first Step.started_at (the pick-up through Redis).
It prints p50/p90/p99/min/max of each over --runs executions, after --warmup not counted.

Isolation as in engine_overhead.py: PostgreSQL database of DATABASE_URL (created when missing), its
own organization and workflow (unique slugs), its own queue name, Redis database 5 when REDIS_URL
names database 0 (--redis-db chooses another); it never flushes Redis and deletes only its own
keys.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    Children,
    bench_workflow,
    child_env,
    cleanup_redis,
    percentile,
    raise_on_termination,
    rq_worker_argv,
    run_main,
    setup_django,
    wait_for_workers,
)

GOAL_P50_MS = 30.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="measured executions (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up executions (default 20)")
    parser.add_argument("--steps", type=int, default=3, help="nodes in the chain (default 3)")
    parser.add_argument(
        "--poll-ms", type=float, default=1.0, help="how often to look at the row (default 1 ms)"
    )
    parser.add_argument(
        "--worker",
        choices=["auto", "process", "thread"],
        default="auto",
        help="process with REDIS_URL, thread without (default auto)",
    )
    parser.add_argument("--redis-db", type=int, default=None, help="Redis database (default 5)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0 or args.steps < 1 or args.poll_ms <= 0:
        parser.error("--runs and --steps must be at least 1, --warmup at least 0, --poll-ms > 0")
    if args.worker == "auto":
        args.worker = "process" if os.environ.get("REDIS_URL") else "thread"
    if args.worker == "process" and not os.environ.get("REDIS_URL"):
        parser.error("--worker process needs REDIS_URL: fakeredis lives inside one process")
    return args


class WorkerThread:
    """The embedded default's worker: a ThreadAgentWorker looping in a daemon thread.

    Each work() returns after a second idle, so stop() takes at most about a second."""

    def __init__(self, queue_name: str, connection):
        self.queue_name, self.connection = queue_name, connection
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bench-worker", daemon=True)

    def _run(self) -> None:
        from django.db import connection

        from apps.executions.worker import ThreadAgentWorker

        try:
            while not self.stopping.is_set():
                name = f"{self.queue_name}-t{secrets.token_hex(2)}"
                worker = ThreadAgentWorker([self.queue_name], connection=self.connection, name=name)
                worker.work(burst=False, max_idle_time=1, logging_level="WARNING")
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            connection.close()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


def main() -> int:
    args = parse_args()
    raise_on_termination()
    db_label, redis_label = setup_django(args.redis_db)

    import django
    import rq

    from apps.executions.choices import EXECUTION_TERMINAL, ExecutionStatus, StepStatus
    from apps.executions.models import Execution, Step
    from apps.executions.services import trigger_workflow

    workflow, token, queue_name, conn = bench_workflow("e2e", args.steps)
    poll_s = args.poll_ms / 1000

    samples: dict[str, list[float]] = {
        "finished_at - created_at": [],
        "wall: trigger called -> seen completed": [],
        "trigger called -> finished_at": [],
        "trigger_workflow call": [],
        "created_at -> first step started": [],
    }
    workers_seen: Counter = Counter()

    def one_execution(record: bool, alive) -> None:
        called = time.time()
        execution = trigger_workflow(workflow)
        returned = time.time()
        deadline = time.monotonic() + 30
        rows = Execution.objects.filter(pk=execution.pk)
        while (status := rows.values_list("status", flat=True).get()) not in EXECUTION_TERMINAL:
            if time.monotonic() > deadline:
                alive()
                raise RuntimeError(f"execution #{execution.pk} still {status} after 30 s")
            time.sleep(poll_s)
        seen = time.time()
        created, finished = rows.values_list("created_at", "finished_at").get()
        steps = list(
            Step.objects.filter(execution=execution).values_list("status", "started_at", "worker")
        )
        if (
            status != ExecutionStatus.COMPLETED
            or [s for s, _, _ in steps] != [StepStatus.COMPLETED] * args.steps
        ):
            raise RuntimeError(
                f"execution #{execution.pk} ended {status} with steps {[s for s, _, _ in steps]}"
            )
        if not record:
            return
        first_start = min(started for _, started, _ in steps)
        samples["finished_at - created_at"].append((finished - created).total_seconds() * 1000)
        samples["wall: trigger called -> seen completed"].append((seen - called) * 1000)
        samples["trigger called -> finished_at"].append((finished.timestamp() - called) * 1000)
        samples["trigger_workflow call"].append((returned - called) * 1000)
        samples["created_at -> first step started"].append(
            (first_start - created).total_seconds() * 1000
        )
        workers_seen.update(worker for _, _, worker in steps)

    children = Children(token)
    worker_thread: WorkerThread | None = None
    try:
        if args.worker == "process":
            children.start(
                "worker", rq_worker_argv(queue_name, f"{queue_name}-w0"), child_env(queue_name)
            )
            wait_for_workers(conn, queue_name, 1, children)
            alive = children.check_alive
        else:
            worker_thread = WorkerThread(queue_name, conn)
            worker_thread.start()

            def alive() -> None:
                if worker_thread.error or not worker_thread.thread.is_alive():
                    raise RuntimeError(f"the worker thread stopped: {worker_thread.error!r}")

        for _ in range(args.warmup):
            one_execution(False, alive)
        for _ in range(args.runs):
            one_execution(True, alive)
    finally:
        if worker_thread:
            worker_thread.stop()
        children.stop()
        cleanup_redis(conn, queue_name)

    goal_figure = statistics.median(samples["finished_at - created_at"])
    held = goal_figure <= GOAL_P50_MS
    worker_label = (
        "1 rqworker process (AgentWorker, --with-scheduler)"
        if args.worker == "process"
        else "1 ThreadAgentWorker thread in this process"
    )
    print()
    print(
        f"Opsflow end-to-end latency: {args.steps}-node sequential noop chain, {args.runs} "
        f"executions one after another, after {args.warmup} warm-up"
    )
    print(f"  database : {db_label}")
    print(f"  redis    : {redis_label}, queue {queue_name}")
    print(f"  worker   : {worker_label}; trigger: services.trigger_workflow in this process")
    print(
        f"  machine  : {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, "
        f"Django {django.get_version()}, rq {rq.__version__}; poll every {args.poll_ms:g} ms"
    )
    print()
    header = f"{'ms':<42}{'p50':>8}{'p90':>8}{'p99':>8}{'min':>8}{'max':>8}{'mean':>8}"
    print(header)
    print("-" * len(header))
    for label, values in samples.items():
        cells = [percentile(values, q) for q in (50, 90, 99)]
        cells += [min(values), max(values), statistics.fmean(values)]
        print(f"{label:<42}" + "".join(f"{v:8.1f}" for v in cells))
    print()
    steps_by = len(workers_seen)
    print(f"Steps were started by {steps_by} worker name(s): {', '.join(sorted(workers_seen))}")
    print(
        f"Goal: p50 of finished_at - created_at <= {GOAL_P50_MS:g} ms: {goal_figure:.1f} ms   "
        f"{'PASS' if held else 'FAIL'}"
    )
    return 1 if args.check and not held else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
