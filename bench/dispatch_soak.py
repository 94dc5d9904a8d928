"""Dispatch durability soak: rq workers killed with SIGKILL again and again while runs are
dispatched to them; every run must still complete, each node exactly once.

Run from the repository root, against PostgreSQL and Redis (both are required: the web server,
the workers and the scheduler are separate processes, and fakeredis cannot be shared by them):

    .venv/bin/python bench/dispatch_soak.py [--phase idle|busy|both] [--rounds 20] [--runs 200]
        [--freeze] [--kill-every 3] [--kills 3] [--spread 9] [--concurrency 12]
        [--round-deadline 120] [--redis-db 6]

DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/opsflow_soak (created when
missing) and REDIS_URL to redis://127.0.0.1:6379; Redis database 6 is used unless REDIS_URL
names another non-zero one or --redis-db chooses one.

What it starts, like the Procfile, each in its own process group, stopped on exit, Ctrl-C,
SIGTERM and errors (logs under var/bench/logs/): one web server (`uvicorn config.asgi:application`
on a free port of 127.0.0.1), one `manage.py run_scheduler`, and two workers,
`manage.py rqworker --with-scheduler --worker-class apps.executions.worker.AgentWorker <queue>
<second-queue>`. Two queues on purpose: with more than one queue RQ dequeues with BLPOP (with
one, it moves the job into an intermediate list with BLMOVE). The thresholds are short, through
the children's environment: heartbeat 1 s, an agent is lost after 4 s, a dispatched step without
an RQ job that will run it is re-enqueued after 3 s, the scheduler leader lock lives 3 s.

The workflow is a published two-node `noop` chain, both nodes on the bench's queue. Runs are
triggered through `POST /api/v1/workflows/{slug}/trigger/` with the token of an editor of the
bench's organization, --concurrency requests in flight (httpx.AsyncClient); each must answer 201.

- Phase idle (--rounds rounds of --runs runs): once both workers are registered as running agents
  and blocked in BLPOP, both process groups get SIGKILL and the round's runs are triggered at once
  (the HTTP connections are opened first), then two new workers start. The round ends when every
  run is terminal. Drain time: the restart of the workers → the last run's finished_at.
  A killed worker's connections close with it, and Redis drops them within a few milliseconds
  (3-5 ms measured here), while the first run commits 15-70 ms after the kill: so this rarely
  hands a job to a dead BLPOP. With --freeze the workers get SIGSTOP instead, the runs are
  triggered, and only then SIGKILL: their connections stay open meanwhile, as when a worker's
  machine vanishes (no FIN), so Redis hands each frozen BLPOP the first job pushed, every round.
- Phase busy (--rounds rounds): the round's --runs runs are triggered evenly over --spread seconds
  (default --kill-every x --kills), and every --kill-every seconds one worker gets SIGKILL (one
  running a step when the database shows one, else either) and a replacement starts at once,
  --kills times. The round ends when every run is terminal. Drain time: the last restart → the
  last run's finished_at.
A round that has not drained --round-deadline seconds after its (last) restart lists its runs
left waiting, with each step's status, RQ job id and what Redis holds of that job, and the soak
goes on with the next round.

What it prints: a line per round (kills, for idle the kill → first run created, the new agents
registered, re-enqueues, interruptions, drain time or the runs left waiting), then per phase: rounds, runs, re-enqueues (execution log
entries "re-enqueued" of the phase's runs), interruptions (steps `interrupted`), worst and median
drain time, and runs left waiting at their round's deadline; then the checks: every run
completed, each node exactly once (exactly one `completed` step per run and node; interrupted
attempts are allowed, and counted above; any other attempt is reported), no run left waiting.
Exit status 1 when a check fails, 2 when the soak was aborted (a child died, a wait timed out).

Isolation: its own organization, workflow, user and queue names; it never flushes Redis and
deletes only its own keys. Executions stay in the database; runs still open at the end are
cancelled (after the report), so that a later scheduler on the same database does not re-enqueue
them onto a queue no worker serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    Child,
    Children,
    bench_workflow,
    child_env,
    cleanup_redis,
    free_port,
    raise_on_termination,
    redis_db_choice,
    run_main,
    setup_django,
)
from bench.webhook_throughput import wait_for_http  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/opsflow_soak"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
SOAK_REDIS_DB = 6
FAST_ENV = {
    "OPSFLOW_HEARTBEAT_SECONDS": "1",
    "OPSFLOW_AGENT_TIMEOUT": "4",  # at least twice the heartbeat
    "OPSFLOW_LOST_DISPATCH_AFTER": "3",
    "OPSFLOW_SCHEDULER_LEADER_TTL": "3",
}
RE_ENQUEUED = "re-enqueued"  # in the log entry of a lost dispatch sent again
NODES = ("n0", "n1")  # the chain's node ids (tests.factories.chain_definition)
WORKERS = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["idle", "busy", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per phase (default 20)")
    parser.add_argument("--runs", type=int, default=200, help="runs per round (default 200)")
    parser.add_argument(
        "--kill-every", type=float, default=3.0, help="busy: seconds between kills (default 3)"
    )
    parser.add_argument("--kills", type=int, default=3, help="busy: kills per round (default 3)")
    parser.add_argument(
        "--spread",
        type=float,
        default=None,
        help="busy: seconds over which a round's runs are triggered (default kill-every x kills)",
    )
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="idle: SIGSTOP the workers, trigger, then SIGKILL them (their connections stay "
        "open meanwhile, as when a machine vanishes); default: SIGKILL, then trigger at once",
    )
    parser.add_argument(
        "--concurrency", type=int, default=12, help="trigger requests in flight (default 12)"
    )
    parser.add_argument(
        "--round-deadline",
        type=float,
        default=120.0,
        help="seconds after the (last) restart for a round to drain (default 120)",
    )
    parser.add_argument(
        "--redis-db", type=int, default=None, help=f"Redis database (default {SOAK_REDIS_DB})"
    )
    args = parser.parse_args()
    if min(args.rounds, args.runs, args.concurrency, args.kills) < 1:
        parser.error("--rounds, --runs, --concurrency and --kills must be at least 1")
    if args.kill_every <= 0 or args.round_deadline <= 0 or (args.spread or 0) < 0:
        parser.error("--kill-every and --round-deadline must be above 0, --spread not below")
    if args.spread is None:
        args.spread = args.kill_every * args.kills
    database_url = os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    if not database_url.startswith("postgres"):
        parser.error(
            "the soak needs PostgreSQL: DATABASE_URL must be postgres://... (or unset for "
            f"{DEFAULT_DATABASE_URL}); the web server, workers and scheduler are separate processes"
        )
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    args.redis_db = redis_db_choice(args.redis_db, default=SOAK_REDIS_DB)
    if args.redis_db is None:  # REDIS_URL names no database: database 0, never ours
        args.redis_db = SOAK_REDIS_DB
    return args


def require_services() -> str | None:
    """Why PostgreSQL (the server of DATABASE_URL) or Redis cannot be used, or None."""
    import dj_database_url
    import psycopg
    import redis

    config = dj_database_url.parse(os.environ["DATABASE_URL"])
    params = {
        "host": config.get("HOST") or None,
        "port": config.get("PORT") or None,
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
    }
    try:
        psycopg.connect(
            dbname="postgres", connect_timeout=5, **{k: v for k, v in params.items() if v}
        ).close()
    except psycopg.Error as exc:
        return f"PostgreSQL of DATABASE_URL does not answer: {str(exc).strip()}"
    try:
        redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        return f"Redis of REDIS_URL ({os.environ['REDIS_URL']}) does not answer: {exc}"
    return None


# --- the processes and the bench's workflow ---


@dataclass
class Round:
    """One round's runs and what was seen of them."""

    phase: str
    number: int
    ids: list[int] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)  # answers other than 201
    restarted_at: float = 0.0  # time.time() of the (last) worker restart
    agents_up_s: float | None = None  # restart → the new agents registered
    drain_s: float | None = None  # restart → the last run's finished_at; None: deadline passed
    first_run_ms: float | None = None  # idle: the kill (or freeze) → the first run created
    kills: int = 0
    busy_kills: int = 0  # kills of a worker the database showed running a step
    re_enqueues: int = 0
    interruptions: int = 0
    waiting: list[str] = field(default_factory=list)  # runs left waiting at the deadline


@dataclass
class Worker:
    """A worker process and its RQ worker name (its agent is `<hostname>/<name>`)."""

    child: Child
    name: str

    @property
    def pid(self) -> int:
        return self.child.process.pid

    @property
    def agent_name(self) -> str:
        return f"{socket.gethostname()}/{self.name}"


@dataclass
class Soak:
    """One web server, one scheduler and two workers on the bench's two queues, and the bench's
    workflow and API token. `env` is the children's environment (stores, settings, queues)."""

    children: Children
    env: dict[str, str]
    queues: tuple[str, str]
    workflow_id: int
    slug: str
    api_token: str
    conn: Any  # redis.Redis
    base_url: str = ""
    workers: list[Worker] = field(default_factory=list)
    round_deadline: float = 120.0
    concurrency: int = 12
    _names: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def prepare(cls, children: Children | None = None, env: dict[str, str] | None = None) -> Soak:
        """The bench's organization, workflow (two `noop` nodes on its queue), an editor and its
        token, in the current database; `env` defaults to child_env() plus the short thresholds."""
        from rest_framework.authtoken.models import Token

        from apps.accounts.choices import Role
        from tests.factories import make_user

        workflow, token, queue_name, conn = bench_workflow("soak", len(NODES))
        queues = (queue_name, f"{queue_name}-second")
        user = make_user(f"soak-{token}", workflow.organization, Role.EDITOR)
        env = dict(env if env is not None else child_env(queue_name))
        env.update(FAST_ENV)
        env["OPSFLOW_QUEUES"] = ",".join(queues)  # rqworker serves only queues django-rq knows
        return cls(
            children=children or Children(token),
            env=env,
            queues=queues,
            workflow_id=workflow.pk,
            slug=workflow.slug,
            api_token=Token.objects.create(user=user).key,
            conn=conn,
        )

    # --- children ---

    def start(self) -> None:
        """The web server, the scheduler and two workers; returns once all answer."""
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        web_argv = [sys.executable, "-m", "uvicorn", "config.asgi:application"]
        self.children.start(
            "web", [*web_argv, "--host", "127.0.0.1", "--port", str(port)], self.env
        )
        self.children.start("scheduler", [sys.executable, "manage.py", "run_scheduler"], self.env)
        started = [self.start_worker() for _ in range(WORKERS)]
        wait_for_http(self.base_url + "/healthz", self.children)
        self.wait_for_agents(started)

    def stop(self) -> None:
        """Stop the children, then delete the soak's Redis keys (and only those)."""
        self.children.stop()
        self.workers.clear()
        cleanup_job_leftovers(self.conn, self.queues)
        for queue in self.queues:
            cleanup_redis(self.conn, queue)

    def start_worker(self) -> Worker:
        """The Procfile's worker line on the bench's two queues, with a name of its own."""
        name = f"{self.queues[0]}-w{next(self._names)}"
        argv = [
            sys.executable,
            "manage.py",
            "rqworker",
            "--with-scheduler",
            "--worker-class",
            "apps.executions.worker.AgentWorker",
            "--name",
            name,
            *self.queues,
        ]
        worker = Worker(
            self.children.start(name.removeprefix(f"{self.queues[0]}-"), argv, self.env), name
        )
        self.workers.append(worker)
        return worker

    def kill(self, workers: list[Worker], sig: int = signal.SIGKILL) -> None:
        """SIGKILL (or `sig`) each worker's process group: the worker and its RQ scheduler."""
        for worker in workers:
            os.killpg(worker.pid, sig)

    def reap(self, workers: list[Worker]) -> None:
        """Collect killed workers: they are no longer children that must stay alive."""
        for worker in workers:
            worker.child.process.wait(timeout=10)
            self.children.started.remove(worker.child)
            self.workers.remove(worker)

    def wait_for_agents(self, workers: list[Worker], timeout: float = 60.0) -> None:
        """Until each worker is registered as a running agent with its pid."""
        from apps.executions.choices import AgentState
        from apps.executions.models import Agent

        wanted = {w.agent_name: w.pid for w in workers}
        deadline = time.monotonic() + timeout
        while True:
            rows = dict(
                Agent.objects.filter(name__in=wanted, state=AgentState.RUNNING).values_list(
                    "name", "pid"
                )
            )
            if rows == wanted:
                return
            self.children.check_alive()
            if time.monotonic() > deadline:
                missing = sorted(set(wanted) - set(rows))
                raise RuntimeError(
                    f"workers not registered as agents after {timeout:.0f} s: {missing}"
                )
            time.sleep(0.05)

    def blocked_in_blpop(self) -> set[str]:
        """Names of the bench's workers that have a Redis connection blocked in BLPOP now."""
        blocked = {
            client["addr"]
            for client in self.conn.client_list()
            if client.get("cmd") == "blpop" and "b" in client.get("flags", "")
        }
        return {w.name for w in self.workers if blocked & local_addresses(w.pid)}

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until both workers are running agents and blocked in BLPOP, waiting for a job."""
        self.wait_for_agents(self.workers, timeout)
        deadline = time.monotonic() + timeout
        while len(self.blocked_in_blpop()) < len(self.workers):
            self.children.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the workers were not all blocked in BLPOP after {timeout:.0f} s"
                )
            time.sleep(0.02)

    # --- runs ---

    def trigger(self, n: int, spread: float = 0.0, before=None) -> tuple[list[int], Counter]:
        """POST the trigger n times, --concurrency in flight (request i not before i x spread / n
        seconds); `before()` runs once the connections are open, just before the first trigger.
        Returns the ids of the runs created (201) and a count of the other answers."""
        return asyncio.run(self._trigger(n, spread, before))

    async def _trigger(self, n: int, spread: float, before) -> tuple[list[int], Counter]:
        import httpx

        ids: list[int] = []
        refused: Counter = Counter()
        lanes = min(self.concurrency, n)
        limits = httpx.Limits(max_connections=lanes, max_keepalive_connections=lanes)
        path = f"/api/v1/workflows/{self.slug}/trigger/"
        headers = {"Authorization": f"Token {self.api_token}"}
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=headers, limits=limits, timeout=30
        ) as client:
            # One keep-alive connection per lane, so the first triggers go out at once.
            await asyncio.gather(*(client.get("/healthz") for _ in range(lanes)))
            if before is not None:
                before()
            counter = itertools.count()
            start = time.monotonic()

            async def lane() -> None:
                while (i := next(counter)) < n:
                    if spread and (wait := start + i * spread / n - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                    try:
                        answer = await client.post(path, json={"variables": {}})
                    except httpx.HTTPError as exc:
                        refused[f"no answer: {exc!r}"[:160]] += 1
                        continue
                    if answer.status_code == 201:
                        ids.append(answer.json()["id"])
                    else:
                        refused[f"{answer.status_code} {answer.text[:120]}"] += 1

            await asyncio.gather(*(lane() for _ in range(lanes)))
        return ids, refused

    def wait_terminal(self, ids: list[int], deadline: float) -> set[int]:
        """Until every run is terminal or time.monotonic() passes `deadline`; the runs left."""
        from apps.executions.choices import EXECUTION_TERMINAL
        from apps.executions.models import Execution

        pending = set(ids)
        while pending:
            done = Execution.objects.filter(pk__in=pending, status__in=EXECUTION_TERMINAL)
            pending -= set(done.values_list("pk", flat=True))
            if not pending or time.monotonic() > deadline:
                break
            self.children.check_alive()
            time.sleep(0.1)
        return pending

    def describe_waiting(self, ids: set[int]) -> list[str]:
        """Each run left waiting: its status, then each step with its RQ job and what Redis
        holds of it (the job's status, whether a queue list or a registry has it)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job
        from rq.registry import ScheduledJobRegistry, StartedJobRegistry

        from apps.executions.models import Execution, Step

        listed = {
            job_id.decode()
            for queue in self.queues
            for job_id in self.conn.lrange(f"rq:queue:{queue}", 0, -1)
        }
        started = {
            j
            for q in self.queues
            for j in StartedJobRegistry(q, connection=self.conn).get_job_ids(cleanup=False)
        }
        scheduled = {
            j
            for q in self.queues
            for j in ScheduledJobRegistry(q, connection=self.conn).get_job_ids(cleanup=False)
        }
        status = dict(Execution.objects.filter(pk__in=ids).values_list("pk", "status"))
        steps: dict[int, list[str]] = {pk: [] for pk in ids}
        for step in Step.objects.filter(execution_id__in=ids).order_by("execution_id", "id"):
            try:
                job = Job.fetch(step.rq_job_id, connection=self.conn) if step.rq_job_id else None
                rq_state = job.get_status(refresh=False) if job else "no job id"
                rq_state = getattr(rq_state, "value", rq_state)  # a JobStatus
            except NoSuchJobError:
                rq_state = "no such job"
            where = [
                label
                for label, found in (
                    ("in the queue list", listed),
                    ("in the started registry", started),
                    ("in the scheduled registry", scheduled),
                )
                if step.rq_job_id in found
            ] or ["in no queue list or registry"]
            steps[step.execution_id].append(
                f"{step.node_id}#{step.attempt} {step.status} job {step.rq_job_id or '-'} "
                f"(rq: {rq_state}, {', '.join(where)})"
            )
        return [f"run #{pk} {status.get(pk)}: " + "; ".join(steps[pk]) for pk in sorted(ids)]

    def finish_round(self, result: Round) -> Round:
        """Wait for the round's runs; its drain time, or the runs left waiting at the deadline."""
        from django.db.models import Max

        from apps.executions.choices import StepStatus
        from apps.executions.models import Execution, ExecutionEvent, Step

        pending = self.wait_terminal(result.ids, time.monotonic() + self.round_deadline)
        if pending:
            result.waiting = self.describe_waiting(pending)
        elif result.ids:
            last = Execution.objects.filter(pk__in=result.ids).aggregate(last=Max("finished_at"))
            # 0 when the last run ended before the (last) restart: a busy round's last kill
            # can come as its last runs finish.
            result.drain_s = max(0.0, last["last"].timestamp() - result.restarted_at)
        else:
            result.drain_s = 0.0
        result.re_enqueues = ExecutionEvent.objects.filter(
            execution_id__in=result.ids, message__contains=RE_ENQUEUED
        ).count()
        result.interruptions = Step.objects.filter(
            execution_id__in=result.ids, status=StepStatus.INTERRUPTED
        ).count()
        return result

    def agents_up_after(self, since: float) -> float:
        """Waits until every worker is registered; the seconds since `since` (a time.time())."""
        self.wait_for_agents(self.workers)
        return time.time() - since

    # --- the two kinds of round ---

    def idle_round(self, number: int, runs: int, freeze: bool = False) -> Round:
        """Both idle workers killed in BLPOP, the runs triggered at once, two new workers.

        With `freeze`, the workers are stopped (SIGSTOP) instead, the runs triggered, and only
        then killed: their connections stay open meanwhile, as when a worker's machine vanishes
        without closing them, so Redis hands each frozen BLPOP the first job pushed."""
        from django.db.models import Min

        from apps.executions.models import Execution

        result = Round("idle", number)
        self.wait_idle()
        victims = list(self.workers)
        hit_at: list[float] = []

        def hit() -> None:
            hit_at.append(time.time())
            self.kill(victims, signal.SIGSTOP if freeze else signal.SIGKILL)

        try:
            result.ids, result.refused = self.trigger(runs, before=hit)
        finally:
            if freeze:
                self.kill(victims)
        result.kills = len(victims)
        self.reap(victims)
        if result.ids:
            first = Execution.objects.filter(pk__in=result.ids).aggregate(first=Min("created_at"))
            result.first_run_ms = (first["first"].timestamp() - hit_at[0]) * 1000
        result.restarted_at = time.time()
        for _ in victims:
            self.start_worker()
        result.agents_up_s = self.agents_up_after(result.restarted_at)
        return self.finish_round(result)

    def busy_round(self, number: int, runs: int, kill_every: float, kills: int, spread: float):
        """Runs triggered over `spread` seconds; one worker killed every `kill_every` seconds
        (one running a step when the database shows one) and replaced at once, `kills` times."""
        result = Round("busy", number)
        self.wait_for_agents(self.workers)
        outcome: dict[str, object] = {}

        def fire() -> None:
            try:
                outcome["ids"], outcome["refused"] = self.trigger(runs, spread)
            except BaseException as exc:  # re-raised in the main thread
                outcome["error"] = exc

        sender = threading.Thread(target=fire, name="soak-trigger", daemon=True)
        sender.start()
        next_kill = time.monotonic() + kill_every
        for _ in range(kills):
            time.sleep(max(0.0, next_kill - time.monotonic()))
            next_kill += kill_every
            victim, busy = self.pick_victim()
            self.kill([victim])
            self.reap([victim])
            result.restarted_at = time.time()
            self.start_worker()
            result.kills += 1
            result.busy_kills += busy
        sender.join(timeout=spread + 120)
        if sender.is_alive():
            raise RuntimeError("the busy round's triggers did not end within 120 s of their spread")
        if "error" in outcome:
            raise RuntimeError(f"triggering failed: {outcome['error']!r}")
        result.ids, result.refused = outcome["ids"], outcome["refused"]  # type: ignore[assignment]
        result.agents_up_s = self.agents_up_after(result.restarted_at)
        return self.finish_round(result)

    def pick_victim(self, timeout: float = 60.0) -> tuple[Worker, bool]:
        """A registered worker the database shows running a step, else any registered worker."""
        from apps.executions.choices import AgentState, StepStatus
        from apps.executions.models import Agent, Step

        deadline = time.monotonic() + timeout
        while True:
            by_name = {w.agent_name: w for w in self.workers}
            registered = set(
                Agent.objects.filter(name__in=by_name, state=AgentState.RUNNING).values_list(
                    "name", flat=True
                )
            )
            if registered:
                break
            self.children.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker registered as an agent within {timeout:.0f} s")
            time.sleep(0.05)
        running = set(
            Step.objects.filter(status=StepStatus.RUNNING, worker__in=registered).values_list(
                "worker", flat=True
            )
        )
        if running:
            return by_name[random.choice(sorted(running))], True
        return by_name[random.choice(sorted(registered))], False


def cleanup_job_leftovers(conn, queues: tuple[str, ...]) -> None:
    """What cleanup_redis cannot find by the queue's name, so done before it: the result streams
    of the jobs in the queues' registries (RQ keeps a failed job's for its failure TTL, 7 days:
    a killed worker's abandoned job, a job discarded while a worker ran it), the execution
    hashes of jobs the soak's workers started, and the killed workers' entries in RQ's set of
    all workers."""
    from rq import registry as rq_registry

    registries = [
        getattr(rq_registry, f"{kind}JobRegistry")
        for kind in ("Canceled", "Deferred", "Failed", "Finished", "Scheduled", "Started")
    ]
    job_ids = {
        job_id.decode().split(":")[0]  # a started entry is "<job id>:<execution id>"
        for queue in queues
        for registry in registries
        for job_id in conn.zrange(registry(queue, connection=conn).key, 0, -1)
    }
    keys = [f"rq:{kind}:{job_id}" for job_id in job_ids for kind in ("results", "executions")]
    executions = list(conn.scan_iter(match="rq:execution:*", count=1000))  # job:execution hashes
    pipe = conn.pipeline(transaction=False)
    for key in executions:
        pipe.hget(key, "worker_name")
    keys += [
        key
        for key, worker in zip(executions, pipe.execute(), strict=True)
        if worker and worker.decode().startswith(f"{queues[0]}-")
    ]
    for start in range(0, len(keys), 500):
        conn.delete(*keys[start : start + 500])
    ours = [
        member
        for member in conn.smembers("rq:workers")
        if member.decode().startswith(f"rq:worker:{queues[0]}-")
    ]
    if ours:
        conn.srem("rq:workers", *ours)


def local_addresses(pid: int) -> set[str]:
    """ "host:port" of the process's IPv4 TCP sockets (Linux /proc): the `addr` Redis lists for
    its connections. RQ names only one connection of a worker (its pub/sub one), not the BLPOP."""
    inodes = set()
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    found = set()
    try:
        with open(f"/proc/{pid}/net/tcp") as table:
            rows = [line.split() for line in itertools.islice(table, 1, None)]
    except OSError:
        return set()
    for fields in rows:
        if fields[9] in inodes:
            ip_hex, port_hex = fields[1].split(":")
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(ip_hex)))
            found.add(f"{ip}:{int(port_hex, 16)}")
    return found


# --- figures and checks ---


@dataclass
class PhaseReport:
    """A phase's figures, from the database once its rounds are over."""

    phase: str
    rounds: list[Round]
    runs: int = 0
    statuses: Counter = field(default_factory=Counter)
    node_problems: list[str] = field(default_factory=list)  # runs with a node not completed once
    other_attempts: Counter = field(default_factory=Counter)  # neither completed nor interrupted
    interruptions: int = 0
    re_enqueues: int = 0
    refused: Counter = field(default_factory=Counter)

    @property
    def drains(self) -> list[float]:
        return [r.drain_s for r in self.rounds if r.drain_s is not None]

    @property
    def left_waiting(self) -> int:
        return sum(len(r.waiting) for r in self.rounds)

    @property
    def timed_out_rounds(self) -> int:
        return sum(r.drain_s is None for r in self.rounds)

    def failures(self) -> list[str]:
        found = []
        if self.refused:
            found.append(
                f"{sum(self.refused.values())} triggers not answered 201: {dict(self.refused)}"
            )
        if self.statuses.get("completed", 0) != self.runs:
            others = {k: v for k, v in self.statuses.items() if k != "completed"}
            found.append(
                f"{self.runs - self.statuses.get('completed', 0)} runs not completed: {others}"
            )
        if self.node_problems:
            shown = "; ".join(self.node_problems[:10])
            more = (
                f" (and {len(self.node_problems) - 10} more)"
                if len(self.node_problems) > 10
                else ""
            )
            found.append(
                f"{len(self.node_problems)} runs with a node not completed exactly once "
                f"(completed steps per node): {shown}{more}"
            )
        if self.other_attempts:
            found.append(f"attempts neither completed nor interrupted: {dict(self.other_attempts)}")
        if self.left_waiting:
            found.append(f"{self.left_waiting} runs left waiting at their round's deadline")
        return [f"{self.phase}: {text}" for text in found]


def summarize(phase: str, rounds: list[Round]) -> PhaseReport:
    from apps.executions.choices import StepStatus
    from apps.executions.models import Execution, ExecutionEvent, Step

    ids = [pk for r in rounds for pk in r.ids]
    report = PhaseReport(phase, rounds, runs=len(ids))
    for r in rounds:
        report.refused.update(r.refused)
    report.statuses = Counter(Execution.objects.filter(pk__in=ids).values_list("status", flat=True))
    steps = Step.objects.filter(execution_id__in=ids)
    completed = Counter(
        steps.filter(status=StepStatus.COMPLETED).values_list("execution_id", "node_id")
    )
    for pk in ids:
        counts = [completed[(pk, node)] for node in NODES]
        if any(count != 1 for count in counts):
            shown = " ".join(f"{node}={count}" for node, count in zip(NODES, counts, strict=True))
            report.node_problems.append(f"run #{pk} {shown}")
    report.interruptions = steps.filter(status=StepStatus.INTERRUPTED).count()
    report.other_attempts = Counter(
        steps.exclude(status__in=[StepStatus.COMPLETED, StepStatus.INTERRUPTED]).values_list(
            "status", flat=True
        )
    )
    report.re_enqueues = ExecutionEvent.objects.filter(
        execution_id__in=ids, message__contains=RE_ENQUEUED
    ).count()
    return report


def round_line(result: Round, rounds: int) -> str:
    head = f"{result.phase} round {result.number}/{rounds}: {len(result.ids)} runs"
    if result.refused:
        head += f" ({sum(result.refused.values())} triggers refused: {dict(result.refused)})"
    parts = [head, f"{result.kills} workers killed"]
    if result.phase == "busy":
        parts[-1] += f" ({result.busy_kills} running a step)"
    if result.first_run_ms is not None:
        parts.append(f"first run created {result.first_run_ms:.0f} ms after")
    parts.append(f"agents up {result.agents_up_s:.1f} s after the restart")
    parts.append(f"{result.re_enqueues} re-enqueued, {result.interruptions} interrupted")
    if result.drain_s is not None:
        return ", ".join([*parts, f"drained {result.drain_s:.1f} s after the restart"])
    parts.append(f"{len(result.waiting)} runs left waiting at the deadline:")
    return "\n".join([", ".join(parts), *(f"    {text}" for text in result.waiting)])


def print_table(reports: list[PhaseReport], deadline: float) -> None:
    header = (
        f"{'phase':<6}{'rounds':>7}{'runs':>7}{'completed':>10}{'re-enqueues':>12}"
        f"{'interruptions':>14}{'drain worst':>13}{'drain median':>14}{'left waiting':>14}"
    )
    print(header)
    for r in reports:
        worst = f"{max(r.drains):.1f} s" if r.drains else "-"
        if r.timed_out_rounds:
            worst = f">{deadline:.0f} s"
        median = f"{statistics.median(r.drains):.1f} s" if r.drains else "-"
        print(
            f"{r.phase:<6}{len(r.rounds):>7}{r.runs:>7}{r.statuses.get('completed', 0):>10}"
            f"{r.re_enqueues:>12}{r.interruptions:>14}{worst:>13}{median:>14}{r.left_waiting:>14}"
        )
    if any(r.timed_out_rounds for r in reports):
        print(
            "(drain median over the rounds that drained; "
            + ", ".join(
                f"{r.phase}: {r.timed_out_rounds} round(s) hit the deadline" for r in reports
            )
            + ")"
        )


def cancel_open_runs(workflow_id: int) -> int:
    """Cancel the bench's runs still open, so that no later scheduler re-enqueues them."""
    from apps.executions.choices import EXECUTION_TERMINAL
    from apps.executions.models import Execution
    from apps.executions.services import WrongState, cancel_execution

    count = 0
    open_runs = Execution.objects.filter(workflow_id=workflow_id).exclude(
        status__in=EXECUTION_TERMINAL
    )
    for execution in open_runs:
        try:
            cancel_execution(execution)
            count += 1
        except WrongState:  # it ended meanwhile
            pass
    return count


def main() -> int:
    args = parse_args()
    raise_on_termination()
    from bench.engine_overhead import bench_redis_url

    os.environ["REDIS_URL"] = bench_redis_url(os.environ["REDIS_URL"], args.redis_db)
    problem = require_services()
    if problem:
        print(
            "dispatch_soak needs PostgreSQL and Redis (fakeredis cannot be shared between "
            f"processes): {problem}",
            file=sys.stderr,
        )
        return 2
    db_label, redis_label = setup_django(args.redis_db)

    import django
    import rq
    from django.db import DatabaseError

    phases = ["idle", "busy"] if args.phase == "both" else [args.phase]
    rounds: dict[str, list[Round]] = {p: [] for p in phases}
    soak = Soak.prepare()
    soak.round_deadline, soak.concurrency = args.round_deadline, args.concurrency
    modes = []
    if "idle" in phases:
        kill = "SIGSTOP, trigger, then SIGKILL" if args.freeze else "SIGKILL, then trigger at once"
        modes.append(f"idle: {kill}")
    if "busy" in phases:
        modes.append(
            f"busy: {args.kills} kills {args.kill_every:g} s apart, the runs spread over "
            f"{args.spread:g} s"
        )
    print(
        f"Opsflow dispatch soak: {args.rounds} rounds of {args.runs} runs per phase; "
        + "; ".join(modes)
    )
    print(f"  database : {db_label}")
    print(f"  redis    : {redis_label}, queues {' '.join(soak.queues)}")
    print(
        f"  processes: uvicorn, run_scheduler, {WORKERS} rqworker AgentWorker --with-scheduler; "
        + " ".join(f"{k}={v}" for k, v in FAST_ENV.items())
    )
    print(
        f"  machine  : {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, "
        f"Django {django.get_version()}, rq {rq.__version__}; "
        f"logs: var/bench/logs/{soak.children.token}-*.log"
    )
    print(flush=True)
    reports: list[PhaseReport] = []
    cancelled = 0
    try:
        soak.start()
        for phase in phases:
            for number in range(1, args.rounds + 1):
                if phase == "idle":
                    result = soak.idle_round(number, args.runs, args.freeze)
                else:
                    result = soak.busy_round(
                        number, args.runs, args.kill_every, args.kills, args.spread
                    )
                rounds[phase].append(result)
                print(round_line(result, args.rounds), flush=True)
        soak.children.stop()
        reports = [summarize(phase, rounds[phase]) for phase in phases]
    finally:
        soak.children.stop()  # first: no process of ours re-enqueues the runs cancelled next
        try:
            cancelled = cancel_open_runs(soak.workflow_id)
        except DatabaseError as exc:
            print(f"could not cancel the runs still open: {exc}", file=sys.stderr)
        soak.stop()

    print()
    print_table(reports, args.round_deadline)
    failures = [text for report in reports for text in report.failures()]
    print()
    if cancelled:
        print(f"({cancelled} runs still open at the end were cancelled, after the figures above)")
    if failures:
        print("FAIL")
        for text in failures:
            print(f"  - {text}")
        return 1
    print("PASS: every run completed, each node exactly once, no run left waiting")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
