"""/metrics at volume: what one Prometheus scrape costs, over real HTTP and query by query.

Run from the repository root, against the database you want to measure (PostgreSQL with
`generate_history` for the production figure; it is not generated here):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsflow_bench_portal \\
    REDIS_URL=redis://127.0.0.1:6379/5 \\
        .venv/bin/python bench/metrics_scrape.py [--requests 50] [--port 0]

What it does:
1. Prints the rows the gauges read: executions, open steps, open incomplete executions,
   pending approvals, agents; and the counters' fields in Redis.
2. In this process, times each part of the collector (the Redis counters, the queue, agent,
   overdue, incomplete-execution and approval gauges), the median of 20 after a warm-up.
3. Starts one uvicorn process (`config.asgi`, as the Procfile's web line) on --port (a free
   one by default) with OPSFLOW_METRICS_TOKEN set, checks that a scrape without the token is
   refused, and times --requests scrapes one after the other: p50, p95, max, and the size and
   series count of the answer.

Isolation: it writes nothing to the database or to Redis (REDIS_URL on database 0 moves to
database 5, as the other benchmarks do), and stops the process it started on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    Children,
    child_env,
    free_port,
    percentile,
    raise_on_termination,
    setup_django,
    wait_for_http,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="timed scrapes (default 50)")
    parser.add_argument("--port", type=int, default=0, help="web port (default: a free one)")
    parser.add_argument("--redis-db", type=int, default=None, help="Redis database (default 5)")
    return parser.parse_args()


def volume() -> list[tuple[str, int]]:
    from apps.analytics import metrics_counters
    from apps.approvals.models import Approval
    from apps.executions.choices import STEP_OPEN
    from apps.executions.dispatch import get_connection
    from apps.executions.models import Agent, Execution, IncompleteExecution, Step

    conn = get_connection()
    return [
        ("executions", Execution.objects.count()),
        ("steps", Step.objects.count()),
        (
            "open steps (pending, dispatched, running)",
            Step.objects.filter(status__in=STEP_OPEN).count(),
        ),
        ("open incomplete executions", IncompleteExecution.objects.open().count()),
        ("pending approvals", Approval.objects.pending().count()),
        ("agents", Agent.objects.count()),
        ("counter fields in Redis", sum(conn.hlen(key) for key in metrics_counters.KEYS)),
    ]


def time_parts() -> list[tuple[str, float]]:
    """Each part of the collector on its own: median ms of 20 after one warm-up."""
    from apps.analytics.metrics import OpsflowCollector

    def counters(c):
        return list(c._counters())

    parts = {
        "Redis counters (+ workflow labels)": counters,
        "queues (open steps, live agents)": lambda c: list(c._queues()),
        "agents by state": lambda c: c._agents(),
        "overdue": lambda c: c._overdue(),
        "incomplete executions and bytes": lambda c: list(c._incomplete()),
        "approvals pending": lambda c: c._approvals(),
        "everything (collect)": lambda c: list(c.collect()),
    }
    results = []
    for label, part in parts.items():
        part(OpsflowCollector())
        samples = []
        for _ in range(20):
            collector = OpsflowCollector()
            started = time.perf_counter()
            part(collector)
            samples.append((time.perf_counter() - started) * 1000)
        results.append((label, statistics.median(samples)))
    return results


def main() -> int:
    args = parse_args()
    raise_on_termination()
    db_label, redis_label = setup_django(args.redis_db)
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    print(f"database: {db_label}\nredis   : {redis_label}\n")
    for label, count in volume():
        print(f"  {label:<45} {count:>12,}")
    print("\nin-process, median of 20 (ms):")
    for label, ms in time_parts():
        print(f"  {label:<45} {ms:>8.1f}")

    token = secrets.token_urlsafe(24)
    port = args.port or free_port()
    env = child_env("metrics-bench")
    env["OPSFLOW_METRICS_TOKEN"] = token
    base = f"http://127.0.0.1:{port}"
    with Children(secrets.token_hex(4)) as children:
        argv = [sys.executable, "-m", "uvicorn", "config.asgi:application"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        argv += ["--log-level", "warning"]
        children.start("web", argv, env)
        wait_for_http(f"{base}/healthz", children)
        with httpx.Client(base_url=base, timeout=30) as client:
            refused = client.get("/metrics").status_code
            headers = {"Authorization": f"Bearer {token}"}
            client.get("/metrics", headers=headers)  # warm-up
            walls, body = [], ""
            for _ in range(args.requests):
                started = time.perf_counter()
                response = client.get("/metrics", headers=headers)
                walls.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                body = response.text
    series = sum(len(f.samples) for f in text_string_to_metric_families(body))
    print(f"\nover HTTP (uvicorn, 1 process), {args.requests} scrapes one at a time:")
    print(f"  without the token: {refused}")
    print(
        f"  p50 {percentile(walls, 50):.1f} ms, p95 {percentile(walls, 95):.1f} ms, "
        f"max {max(walls):.1f} ms; {len(body.encode()):,} bytes, {series} samples"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
