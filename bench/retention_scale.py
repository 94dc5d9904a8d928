"""Retention at volume (issue 11): prune 500,000 executions with their steps and events.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsflow_bench_prune \\
        .venv/bin/python bench/retention_scale.py [--executions 600000] [--prune 500000]

It fills the database with `manage.py generate_history` (a year of history) when it holds fewer
than --executions, picks the retention that makes about --prune finished executions prunable,
and runs `prune_executions` on it while a probe, like the engine, writes a recent execution's
row every 50 ms. It prints the time, the rate, the longest batch (the longest any transaction
held its locks) and the probe's worst wait. The pruned rows are gone afterwards: run it on a
database of its own.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile, run_main, setup_django  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=600_000)
    parser.add_argument("--prune", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        parser.error("set DATABASE_URL to a PostgreSQL database of its own (rows are deleted)")
    return args


def main() -> int:
    args = parse_args()
    db_label, _ = setup_django(None)
    from django.core.management import call_command
    from django.db import connection, connections
    from django.utils import timezone

    from apps.executions.choices import EXECUTION_TERMINAL
    from apps.executions.models import Execution, ExecutionEvent, Step
    from apps.executions.retention import prune_executions

    have = Execution.objects.count()
    if have < args.executions:
        call_command("generate_history", executions=args.executions - have, seed=args.seed + have)
    finished = Execution.objects.filter(status__in=EXECUTION_TERMINAL, finished_at__isnull=False)
    oldest = finished.order_by("finished_at").values_list("finished_at", flat=True)
    nth = oldest[args.prune - 1 : args.prune].first()
    if nth is None:
        print(f"fewer than {args.prune} finished executions", file=sys.stderr)
        return 2
    days = max(1, math.floor((timezone.now() - nth).total_seconds() / 86400))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reltuples::bigint FROM pg_class WHERE relname IN "
            "('executions_execution', 'executions_step', 'executions_executionevent')"
        )
        before = dict(cursor.fetchall())

    probe_waits: list[float] = []
    stop = threading.Event()
    target = Execution.objects.order_by("-pk").values_list("pk", flat=True).first()

    def probe():
        try:
            while not stop.is_set():
                started = time.perf_counter()
                Execution.objects.filter(pk=target).update(error_message="")
                probe_waits.append((time.perf_counter() - started) * 1000)
                time.sleep(0.05)
        finally:
            connections.close_all()

    batch_times: list[float] = []
    last = [time.perf_counter()]

    def progress(workflow: str, deleted: int) -> None:
        now = time.perf_counter()
        batch_times.append((now - last[0]) * 1000)
        last[0] = now

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.perf_counter()
    last[0] = started
    # generate_history's workflows keep their runs forever (retention_days: 0, so the portal
    # benchmark's history stays): here every workflow keeps `days` instead.
    from apps.executions import retention

    retention.retention_days = lambda workflow: days
    counts = prune_executions(progress=progress)
    elapsed = time.perf_counter() - started
    stop.set()
    prober.join()
    deleted = sum(counts.values())
    remaining_steps = Step.objects.count()
    remaining_events = ExecutionEvent.objects.count()

    from django.conf import settings

    print()
    print(f"Opsflow retention at volume: prune_executions with retention {days} days")
    print(f"  database : {db_label}")
    print(
        f"  before   : ~{before.get('executions_execution', 0):,} executions, "
        f"~{before.get('executions_step', 0):,} steps, "
        f"~{before.get('executions_executionevent', 0):,} events (planner estimates)"
    )
    print(f"  batches  : {settings.OPSFLOW_PRUNE_BATCH} executions a transaction")
    print()
    print(f"deleted {deleted:,} executions in {elapsed:.1f} s: {deleted / elapsed:,.0f} per second")
    print(
        f"longest batch (a transaction's lock time): {max(batch_times):.0f} ms; "
        f"p50 {percentile(batch_times, 50):.0f} ms over {len(batch_times)} batches"
    )
    print(
        f"engine-like writes meanwhile: {len(probe_waits)} updates, "
        f"p50 {percentile(probe_waits, 50):.1f} ms, worst {max(probe_waits):.1f} ms"
    )
    print(
        f"left: {Execution.objects.count():,} executions, {remaining_steps:,} steps, "
        f"{remaining_events:,} events"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
