"""Helpers shared by the benchmarks that start real processes (webhook_throughput.py,
e2e_latency.py). The store set-up (DATABASE_URL, REDIS_URL, the embedded default) is
engine_overhead.py's, so every benchmark treats the stores alike.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import engine_overhead  # noqa: E402
from bench.engine_overhead import configure_environment  # noqa: E402

BENCH_REDIS_DB = 5  # engine_overhead.py uses 3; these benchmarks keep to 5
LOG_DIR = REPO / "var" / "bench" / "logs"


# --- environment ---


def redis_db_choice(requested: int | None, default: int = BENCH_REDIS_DB) -> int | None:
    """--redis-db when given; else REDIS_URL's own database, unless that is 0; else `default`."""
    url = os.environ.get("REDIS_URL")
    if requested is not None or not url:
        return requested
    named = urlsplit(url).path.strip("/")
    return int(named) if named.isdigit() and int(named) else default


def setup_django(redis_db: int | None) -> tuple[str, str]:
    """Environment, django.setup() and migrate; returns the database and Redis labels."""
    labels = configure_environment(argparse.Namespace(redis_db=redis_db_choice(redis_db)))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return labels


def bench_workflow(kind: str, steps: int):
    """A published `noop` chain of `steps` nodes in an organization of its own, every node on a
    queue of its own. Returns (workflow, run token, queue name, Redis connection)."""
    import secrets

    from apps.executions import dispatch
    from tests.factories import chain_definition, make_org, make_workflow

    token = secrets.token_hex(4)
    queue_name = f"bench-{token}"
    conn = dispatch.get_connection()
    conn.ping()
    org = make_org(f"bench-{kind}-{token}")
    definition = chain_definition(f"bench-{kind}-{token}", steps)
    for node in definition["nodes"]:
        node["queue"] = queue_name
    return make_workflow(org, definition), token, queue_name, conn


def child_env(queue_name: str) -> dict[str, str]:
    """The environment of a web or worker process: the bench's stores, settings and queue."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.base"
    env["OPSFLOW_QUEUES"] = queue_name  # django-rq's rqworker only serves queues in RQ_QUEUES
    env.pop("PYTHONSTARTUP", None)
    return env


def raise_on_termination() -> None:
    """SIGTERM/SIGHUP become SystemExit in the main thread, so `finally` blocks stop the children;
    Ctrl-C raises KeyboardInterrupt even when the shell started us with SIGINT ignored."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def cleanup_redis(conn, queue_name: str) -> None:
    """engine_overhead's cleanup (the queue, its registries, every key naming it), then the job
    hashes whose origin is the queue but that no queue lists any more (a job a stopping worker
    had just popped, for instance)."""
    engine_overhead.cleanup_redis(conn, queue_name)
    keys = list(conn.scan_iter(match="rq:job:*", count=1000))
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        pipe = conn.pipeline(transaction=False)
        for key in batch:
            pipe.hget(key, "origin")
        ours = [
            k
            for k, origin in zip(batch, pipe.execute(), strict=True)
            if origin == queue_name.encode()
        ]
        if ours:
            conn.delete(*ours)


# --- child processes ---


@dataclass
class Child:
    label: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class Children:
    """Processes started by a benchmark, each in its own session (process group), stopped by id:
    SIGTERM to the group (rq workers shut down warm, uvicorn gracefully), SIGKILL after a grace."""

    token: str
    started: list[Child] = field(default_factory=list)

    def start(self, label: str, argv: list[str], env: dict[str, str]) -> Child:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = LOG_DIR / f"{self.token}-{label}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(label, process, log_path)
        self.started.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.started:
            code = child.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{child.label} (pid {child.process.pid}) exited with {code}; "
                    f"last lines of {child.log_path}:\n{tail(child.log_path)}"
                )

    def stop(self, grace: float = 15.0) -> None:
        for child in self.started:
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.started:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait(timeout=5)
        for child in self.started:  # a group member that outlived its leader
            _signal_group(child.process, signal.SIGKILL)
        self.started.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """Signal the child's process group (it leads it: start_new_session), while it has members."""
    if not any(pgrp == process.pid for _, _, pgrp, _ in _processes()):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def rq_worker_argv(queue_name: str, name: str) -> list[str]:
    """The Procfile's worker line, on the bench's queue and with a name the cleanup can find."""
    return [
        sys.executable,
        "manage.py",
        "rqworker",
        "--worker-class",
        "apps.executions.worker.AgentWorker",
        "--with-scheduler",
        "--name",
        name,
        queue_name,
    ]


def wait_for_workers(conn, queue_name: str, count: int, children: Children, timeout=60.0) -> None:
    """Until `count` workers have registered on the queue (they then block on BLPOP)."""
    from rq import Queue, Worker

    deadline = time.monotonic() + timeout
    while len(Worker.all(queue=Queue(queue_name, connection=conn))) < count:
        children.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} workers registered on {queue_name}")
        time.sleep(0.1)


def wait_for_http(url: str, children: Children, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        children.check_alive()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- figures ---


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- CPU accounting from /proc (Linux) ---

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _processes() -> Iterable[tuple[int, str, int, float]]:
    """(pid, comm, process group, CPU seconds) of every process we can read. The CPU seconds are
    its own user+system time plus that of its children it has reaped, so the time of a process
    that exits (a PostgreSQL backend of a closed connection) moves to its parent, not away."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
        ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        yield int(entry.name), comm, int(fields[2]), ticks / CLOCK_TICKS


def _system_ticks() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values)
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


class CpuMeter:
    """CPU seconds spent by categories of processes between start() and stop().

    `categories` maps a label to a predicate over (pid, comm, process group). A process that
    exits counts through its parent (see _processes); `other` is the machine's busy time minus
    every category: other users of the machine and kernel work no process is charged for
    (interrupts, loopback networking)."""

    def __init__(self, categories: dict[str, Callable[[int, str, int], bool]]):
        self.categories = categories
        self.seconds: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        totals = dict.fromkeys(self.categories, 0.0)
        for pid, comm, pgrp, cpu in _processes():
            for label, match in self.categories.items():
                if match(pid, comm, pgrp):
                    totals[label] += cpu
                    break
        busy, total = _system_ticks()
        totals["machine busy"], totals["machine total"] = busy, total
        return totals

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        self.seconds = {k: after[k] - self._before[k] for k in after}
        known = sum(self.seconds[k] for k in self.categories)
        self.seconds["other"] = max(0.0, self.seconds["machine busy"] - known)
        return self.seconds


def service_matcher(*names: str) -> Callable[[int, str, int], bool]:
    return lambda pid, comm, pgrp: comm in names


def group_matcher(pids: Iterable[int]) -> Callable[[int, str, int], bool]:
    groups = set(pids)
    return lambda pid, comm, pgrp: pgrp in groups


def run_main(main: Callable[[], int]) -> int:
    """Run a benchmark's main(): a lost database connection (PostgreSQL restarted under us, say)
    or a child that died ends it with a one-line reason instead of a traceback; the benchmark's
    own `finally` has already stopped its processes."""
    from django.db import OperationalError

    try:
        return main()
    except OperationalError as exc:
        print(f"aborted: the database connection failed ({exc}); the run is void", file=sys.stderr)
        return 2
    except (RuntimeError, ConnectionError) as exc:
        print(f"aborted: {exc}", file=sys.stderr)
        return 2
