"""Portal and API latency at production volume (issue 11), through real HTTP.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsflow_bench \\
        .venv/bin/python bench/portal_scale.py [--executions 1000000] [--steps-per-execution 5]
        [--requests 20] [--web-workers N] [--flood 100] [--flood-seconds 20]

What it does:
1. Makes sure the database holds at least --executions generated executions (`manage.py
   generate_history`; an existing history is reused, and topped up when short), and folds the
   analytics rollup (the scheduler's job: a first fold rolls every past day).
2. Starts the Procfile's web line (`uvicorn … --workers ${WEB_CONCURRENCY:-$(nproc)}`; --web-workers
   sets WEB_CONCURRENCY) on a free port, with `config.settings.base`.
3. As a staff member of the generated organizations (a viewer, so every query is scoped), asks
   each page of the table below --requests times, one after another after two warm-ups, and
   prints p50 and p95 against the goal.
4. Floods the list with --flood concurrent requests for --flood-seconds while asking `/healthz`
   every 50 ms, and prints the health check's p50/p99 (a web tier that serializes requests
   answers it only after the queue ahead of it).
5. Prints the peak RSS (VmHWM) of each web process.
6. (issue 13) Times the analytics summary of 90 days, its page and the escalation signals in
   the table, and downloads the CSV and XLSX exports of the last --export-days days once each
   (the direct-download limit raised for it), printing rows per second against the goals and
   the web processes' peak RSS after them.
PostgreSQL only: the goals are about its plans, and SQLite is the embedded default's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    REPO,
    Children,
    free_port,
    percentile,
    raise_on_termination,
    run_main,
    setup_django,
    tail,
    wait_for_http,
)

USERNAME = "bench-portal"


@dataclass
class Page:
    label: str
    path: str
    goal_ms: float
    admin: bool = False
    ms: list[float] = field(default_factory=list)
    statuses: set[int] = field(default_factory=set)

    @property
    def p50(self) -> float:
        return percentile(self.ms, 50)

    @property
    def p95(self) -> float:
        return percentile(self.ms, 95)

    @property
    def met(self) -> bool:
        return self.p95 <= self.goal_ms and self.statuses == {200}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--steps-per-execution", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument(
        "--web-workers", type=int, default=None, help="WEB_CONCURRENCY (default: the core count)"
    )
    parser.add_argument("--flood", type=int, default=100, help="concurrent list requests")
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--export-days", type=int, default=30, help="the range of the timed exports, in days"
    )
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        parser.error("set DATABASE_URL to a PostgreSQL database (it may be empty)")
    return args


def ensure_history(args: argparse.Namespace) -> int:
    from django.core.management import call_command

    from apps.executions.models import Execution

    have = Execution.objects.filter(organization__slug__startswith="history-").count()
    if have < args.executions:
        print(f"generating {args.executions - have} executions (have {have}) …", flush=True)
        call_command(
            "generate_history",
            executions=args.executions - have,
            steps_per_execution=args.steps_per_execution,
            seed=args.seed + have,
        )
    return Execution.objects.filter(organization__slug__startswith="history-").count()


def roll_up() -> None:
    """The analytics rollup, as the scheduler keeps it (all of it at once here)."""
    from apps.analytics import rollup

    began = time.monotonic()
    days = rollup.fold()
    print(f"rolled up {days} day(s) in {time.monotonic() - began:.1f} s", flush=True)


def bench_user():
    """A staff viewer in every generated organization: lists are scoped as for any member."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from apps.accounts.choices import Role
    from apps.accounts.models import Membership, Organization

    user, _ = get_user_model().objects.get_or_create(username=USERNAME, defaults={"is_staff": True})
    for organization in Organization.objects.filter(slug__startswith="history-"):
        Membership.objects.get_or_create(
            user=user, organization=organization, defaults={"role": Role.VIEWER}
        )
    token, _ = Token.objects.get_or_create(user=user)
    return user, token.key


def session_cookie(user) -> str:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def pages() -> list[Page]:
    from apps.executions.models import Execution, Step

    history = Execution.objects.filter(organization__slug__startswith="history-")
    workflow = history.values_list("workflow__slug", flat=True).first()
    recent = history.values_list("pk", flat=True).first()
    recent_step = Step.objects.filter(execution_id=recent).values_list("pk", flat=True).first()
    days90 = (date.today() - timedelta(days=89)).isoformat()
    return [
        Page("API executions", "/api/v1/executions/", 100),
        Page("API executions ?status=failed", "/api/v1/executions/?status=failed", 100),
        Page("API executions ?workflow=<slug>", f"/api/v1/executions/?workflow={workflow}", 100),
        Page("API executions ?page=1000", "/api/v1/executions/?page=1000", 300),
        Page("API executions ?cursor=", "/api/v1/executions/?cursor=", 100),
        Page("API execution detail", f"/api/v1/executions/{recent}/", 100),
        Page("API approvals", "/api/v1/approvals/", 100),
        Page("API incomplete executions", "/api/v1/incomplete-executions/", 100),
        Page("admin executions", "/executions/execution/", 150, admin=True),
        Page(
            "admin executions ?status=failed",
            "/executions/execution/?status__exact=failed",
            150,
            admin=True,
        ),
        Page("admin executions page 2", "/executions/execution/?p=2", 150, admin=True),
        Page(
            "admin execution detail",
            f"/executions/execution/{recent}/change/",
            100,
            admin=True,
        ),
        Page("admin approvals", "/approvals/approval/", 150, admin=True),
        Page(
            "admin incomplete executions",
            "/executions/incompleteexecution/",
            150,
            admin=True,
        ),
        # issue 12: the dashboard (the admin index) and the step page, at the same volume
        Page("admin dashboard", "/", 150, admin=True),
        Page(
            "admin step page",
            f"/executions/execution/{recent}/steps/{recent_step}/",
            100,
            admin=True,
        ),
        # issue 13: the analytics summary over 90 days, its page, the escalation signals
        Page("API analytics summary 90 days", f"/api/v1/analytics/summary/?from={days90}", 300),
        Page("admin analytics 90 days", f"/analytics/?from={days90}", 300, admin=True),
        Page("API analytics health", "/api/v1/analytics/health/", 150),
    ]


def measure(base_url: str, table: list[Page], requests: int, token: str, cookie: str) -> None:
    import httpx

    api = {"Authorization": f"Token {token}"}
    admin = {"Cookie": cookie}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for page in table:
            headers = admin if page.admin else api
            for i in range(requests + 2):
                started = time.perf_counter()
                response = client.get(page.path, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
                if i >= 2:  # two warm-ups
                    page.ms.append(elapsed)
                    page.statuses.add(response.status_code)
            print(f"  {page.label}: p95 {page.p95:.1f} ms", flush=True)


@dataclass
class Export:
    fmt: str
    rows: int = 0
    seconds: float = 0.0
    status: int = 0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


EXPORT_GOALS = {"csv": 50_000, "xlsx": 10_000}  # rows per second


def measure_exports(base_url: str, token: str, days: int) -> list[Export]:
    """Download each export of the last `days` days once, through the streaming response, and
    count its rows (the CSV's lines; the XLSX opened read-only)."""
    import io

    import httpx
    import openpyxl

    since = (date.today() - timedelta(days=days - 1)).isoformat()
    results = []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for fmt in ("csv", "xlsx"):
            export = Export(fmt)
            started = time.perf_counter()
            body = io.BytesIO()
            with client.stream(
                "GET",
                f"/api/v1/analytics/export/?format={fmt}&from={since}",
                headers={"Authorization": f"Token {token}"},
            ) as response:
                export.status = response.status_code
                for chunk in response.iter_bytes():
                    body.write(chunk)
            export.seconds = time.perf_counter() - started
            if fmt == "csv":
                export.rows = body.getvalue().count(b"\n") - 1
            elif export.status == 200:
                book = openpyxl.load_workbook(body, read_only=True)
                export.rows = sum(1 for _ in book["Executions"].iter_rows(values_only=True)) - 1
            print(f"  export {fmt}: {export.rows:,} rows in {export.seconds:.1f} s", flush=True)
            results.append(export)
    return results


def probe_health(base_url: str, seconds: float, results) -> None:
    """In a process of its own, so the load generator's event loop does not delay it: GET
    /healthz every 50 ms, the milliseconds each took put on `results`."""
    import httpx

    stop = time.monotonic() + seconds
    timings = []
    with httpx.Client(base_url=base_url, timeout=300) as client:
        while time.monotonic() < stop:
            started = time.perf_counter()
            client.get("/healthz")
            timings.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
    results.put(timings)


async def flood(base_url: str, concurrency: int, seconds: float, token: str) -> tuple[list, int]:
    """`concurrency` clients asking list pages in a closed loop while another process times
    `/healthz`."""
    import multiprocessing

    import httpx

    api = {"Authorization": f"Token {token}"}
    limits = httpx.Limits(max_connections=concurrency + 5)
    stop = time.monotonic() + seconds
    done = 0
    rng = random.Random(0)
    results = multiprocessing.get_context("spawn").Queue()
    prober = multiprocessing.get_context("spawn").Process(
        target=probe_health, args=(base_url, seconds - 2.0, results)
    )

    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:

        async def lister():
            nonlocal done
            while time.monotonic() < stop:
                page = rng.choice(["", "?status=failed", "?page=3", "?status=completed"])
                await client.get(f"/api/v1/executions/{page}", headers=api)
                done += 1

        async def start_prober():
            await asyncio.sleep(1.0)  # let the queue build
            prober.start()

        await asyncio.gather(start_prober(), *(lister() for _ in range(concurrency)))
    health = results.get(timeout=60)
    prober.join(timeout=10)
    return health, done


def peak_rss_mib(root_pid: int) -> dict[int, float]:
    """VmHWM of the web process group's members (the uvicorn supervisor and its workers)."""
    peaks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != root_pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[int(entry.name)] = int(line.split()[1]) / 1024
        except (OSError, ProcessLookupError):
            continue
    return peaks


def web_command() -> str:
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("the Procfile has no web line")


def main() -> int:
    args = parse_args()
    raise_on_termination()
    db_label, _ = setup_django(None)
    total = ensure_history(args)
    roll_up()
    user, token = bench_user()
    cookie = session_cookie(user)
    table = pages()

    import django
    from django.db import connection

    from apps.executions.models import Step

    steps = Step.objects.count() if total < 2_000_000 else None
    with connection.cursor() as cursor:  # the planner's figure: an exact count takes seconds
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'executions_step'")
        step_estimate = cursor.fetchone()[0]
    workers = args.web_workers or os.cpu_count() or 1
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.base",
        WEB_CONCURRENCY=str(workers),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        LOG_LEVEL="WARNING",
        OPSFLOW_EXPORT_SYNC_MAX_ROWS="10000000",  # the bench times big exports directly
    )
    children = Children(f"portal-{os.getpid()}")
    try:
        with children:
            port = free_port()
            env["PORT"] = str(port)
            web = children.start("web", ["bash", "-c", web_command()], env)
            base_url = f"http://127.0.0.1:{port}"
            wait_for_http(base_url + "/healthz", children)
            time.sleep(2)  # every worker process up
            print(f"timing {len(table)} pages, {args.requests} requests each …", flush=True)
            measure(base_url, table, args.requests, token, cookie)
            print(f"downloading the exports of {args.export_days} days …", flush=True)
            exports = measure_exports(base_url, token, args.export_days)
            export_peaks = peak_rss_mib(web.process.pid)
            print(f"flooding with {args.flood} concurrent list requests …", flush=True)
            health, listed = asyncio.run(flood(base_url, args.flood, args.flood_seconds, token))
            peaks = peak_rss_mib(web.process.pid)
    finally:
        children.stop()
    if any(p.statuses != {200} for p in table):
        print(tail(web.log_path), file=sys.stderr)

    print()
    print(f"Opsflow portal at volume: {total:,} executions, ~{step_estimate:,} steps", end="")
    print(f" ({steps:,} counted)" if steps is not None else "")
    print(f"  database : {db_label}")
    print(
        f"  web      : the Procfile's line, {workers} uvicorn worker process(es); "
        f"client: httpx, one request at a time, {args.requests} timed after 2 warm-ups"
    )
    print(f"  machine  : {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, ", end="")
    print(f"Django {django.get_version()}")
    print()
    print(f"{'page':<40} {'p50 ms':>8} {'p95 ms':>8} {'goal':>7}  result")
    for page in table:
        verdict = "ok" if page.met else "MISSED"
        if page.statuses != {200}:
            verdict += f" (HTTP {sorted(page.statuses)})"
        print(f"{page.label:<40} {page.p50:>8.1f} {page.p95:>8.1f} {page.goal_ms:>6.0f}  {verdict}")
    print()
    print(
        f"/healthz under {args.flood} concurrent list requests ({listed} lists in "
        f"{args.flood_seconds:.0f} s): p50 {percentile(health, 50):.1f} ms, "
        f"p99 {percentile(health, 99):.1f} ms over {len(health)} probes (goal p99 ≤ 100 ms)"
    )
    print()
    for export in exports:
        goal = EXPORT_GOALS[export.fmt]
        verdict = "ok" if export.status == 200 and export.rate >= goal else "MISSED"
        print(
            f"export {export.fmt:<5} {export.rows:>9,} rows in {export.seconds:6.1f} s: "
            f"{export.rate:>9,.0f} rows/s (goal ≥ {goal:,}) {verdict}"
        )
    print(
        "peak RSS of the web processes after the exports: "
        + ", ".join(f"pid {pid} {mib:.0f} MiB" for pid, mib in sorted(export_peaks.items()))
        + " (goal ≤ 200 MiB)"
    )
    print(
        "peak RSS of the web processes: "
        + ", ".join(f"pid {pid} {mib:.0f} MiB" for pid, mib in sorted(peaks.items()))
    )
    return 0 if all(p.met for p in table) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
