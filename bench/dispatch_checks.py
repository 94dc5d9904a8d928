"""What reliable dispatch costs (issue 16): RQ's reliable dequeue, and the reconciler's check.

Run from the repository root, against Redis (PostgreSQL is not needed for these figures):

    REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python bench/dispatch_checks.py
        [--jobs 2000] [--runs 5] [--backlog 1000,10000,100000]

1. Dequeue: a raw RQ chain of --jobs no-op jobs (each enqueues the next, with the job options of
   `dispatch.enqueue_step`), run by one SimpleWorker serving one queue, then the same worker
   serving that queue and a second, empty one. With one queue RQ 2.x takes each job with
   (B)LMOVE into `<queue>:intermediate` and removes it from there when the job starts (a
   "reliable queue": a job handed to a worker that dies stays visible); with two or more it
   uses (B)LPOP, and a job handed to a dead worker leaves no trace. Printed: ms per job, median
   of --runs, for both.
2. The reconciler's question "will this job run?" (`dispatch.locate_jobs`) for 500 jobs (the
   most one pass checks) whose queue holds a backlog of N job ids: the time of that one
   MULTI/EXEC, which reads the queue's list once.

Isolation: Redis database 5 unless REDIS_URL names another non-zero one (--redis-db chooses);
its own queue names; it deletes only its own keys.
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per chain (default 2000)")
    parser.add_argument("--runs", type=int, default=5, help="runs per mode (default 5)")
    parser.add_argument(
        "--backlog",
        default="1000,10000,100000",
        help="queue lengths for the reconciler check, comma-separated",
    )
    parser.add_argument("--redis-db", type=int, default=None)
    args = parser.parse_args()
    if args.jobs < 2 or args.runs < 1:
        parser.error("--jobs must be at least 2 and --runs at least 1")
    return args


def main() -> int:
    args = parse_args()
    import os

    if not os.environ.get("REDIS_URL"):
        print("dispatch_checks.py measures a real Redis: set REDIS_URL", file=sys.stderr)
        return 2
    from bench._common import redis_db_choice
    from bench.engine_overhead import cleanup_redis, configure_environment

    configure_environment(argparse.Namespace(redis_db=redis_db_choice(args.redis_db)))
    import django

    django.setup()
    from rq import Queue, SimpleWorker

    from apps.executions import dispatch
    from bench._rq_jobs import HOP_FUNC

    conn = dispatch.get_connection()
    conn.ping()
    token = secrets.token_hex(4)
    main_queue, spare_queue = f"bench-{token}", f"bench-{token}-spare"
    options = {"result_ttl": 0, "failure_ttl": dispatch.FAILURE_TTL, "job_timeout": 120}
    print(f"Redis {os.environ['REDIS_URL']}; {args.jobs} jobs a chain, median of {args.runs}")
    try:
        figures = {}
        for label, names in (
            ("one queue  (LMOVE + intermediate list)", [main_queue]),
            ("two queues (LPOP, no trace)", [main_queue, spare_queue]),
        ):
            walls = []
            for _ in range(args.runs + 1):  # the first is a warm-up
                queue = Queue(main_queue, connection=conn)
                queue.enqueue(HOP_FUNC, args.jobs, options, **options)
                worker = SimpleWorker([Queue(n, connection=conn) for n in names], connection=conn)
                started = time.perf_counter()
                worker.work(burst=True)
                walls.append(time.perf_counter() - started)
            figures[label] = statistics.median(walls[1:]) / args.jobs * 1000
            print(f"  dequeue, {label}: {figures[label]:.3f} ms/job")
        one, two = figures.values()
        print(f"  difference: {one - two:+.3f} ms/job")

        print("reconciler check (dispatch.locate_jobs) of 500 jobs:")
        for backlog in [int(n) for n in args.backlog.split(",") if n.strip()]:
            key = Queue(main_queue, connection=conn).key
            conn.delete(key)
            ids = [secrets.token_hex(16) for _ in range(backlog)]
            for start in range(0, backlog, 10_000):
                conn.rpush(key, *ids[start : start + 10_000])
            asked = {job_id: main_queue for job_id in ids[-500:]}  # the far end of the list
            walls = []
            for _ in range(args.runs):
                started = time.perf_counter()
                places = dispatch.locate_jobs(asked)
                walls.append(time.perf_counter() - started)
            assert all(p.listed for p in places.values())
            print(f"  queue of {backlog:>7} jobs: {statistics.median(walls) * 1000:8.1f} ms a pass")
    finally:
        conn.delete(Queue(main_queue, connection=conn).key)  # the backlog's made-up ids
        cleanup_redis(conn, main_queue)
        cleanup_redis(conn, spare_queue)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
