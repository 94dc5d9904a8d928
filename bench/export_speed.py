"""Export speed (issue 13 item 4): the CSV and XLSX exports of a scope, in-process, to nowhere.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsflow_bench \\
        .venv/bin/python bench/export_speed.py [--days 90] [--formats csv,xlsx] [--repeat 1]

The scope is the last --days days (up to now) of the generated `history-*` organizations
(`manage.py generate_history`, as bench/portal_scale.py makes it). Each format runs in a fresh
child process, so that its peak RSS (ru_maxrss) is its own; the child reads the body the way the
web does (the async stream, chunk by chunk) and throws it away. The XLSX's Summary sheet takes
services.summary's figures, computed first and timed on their own, so that the rate is the
rows'. Nothing is written to the database and nothing is migrated: the benchmark database may
be shared.
Goals (the issue's): CSV ≥ 50,000 rows/s, XLSX ≥ 10,000 rows/s, peak RSS ≤ 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOALS = {"csv": 50_000, "xlsx": 10_000}  # rows per second
RSS_GOAL_MB = 200


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--formats", default="csv,xlsx")
    parser.add_argument("--repeat", type=int, default=1, help="child runs per format")
    parser.add_argument("--child", choices=["csv", "xlsx"], help=argparse.SUPPRESS)
    return parser.parse_args()


def setup_django() -> None:
    sys.path.insert(0, str(REPO))
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.base"
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-0123456789abcdef0123456789")
    os.environ.setdefault("OPSFLOW_SECRETS_KEYS", base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def history_scope(days: int):
    import zoneinfo
    from datetime import timedelta

    from django.utils import timezone

    from apps.accounts.models import Organization
    from apps.analytics.services import Scope

    org_ids = tuple(
        Organization.objects.filter(slug__startswith="history-")
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if not org_ids:
        raise SystemExit("no history-* organizations: run manage.py generate_history first")
    end = timezone.now()
    return Scope(
        org_ids=org_ids, start=end - timedelta(days=days), end=end, zone=zoneinfo.ZoneInfo("UTC")
    )


async def drain(stream) -> int:
    size = 0
    with open(os.devnull, "wb") as nowhere:
        async for chunk in stream:
            nowhere.write(chunk)
            size += len(chunk)
    return size


def child(fmt: str, days: int) -> dict:
    setup_django()
    from django.db import connection

    from apps.analytics import exports

    scope = history_scope(days)
    rows = scope.executions().count()
    summary_seconds, summary_error = None, None
    if fmt == "xlsx":
        # The workbook's Summary sheet is services.summary's figures: timed here on their own,
        # then handed to the export, so that the rate is the export's own rows.
        from apps.analytics.services import summary

        begun = time.perf_counter()
        try:
            figures = summary(scope)
            summary_seconds = time.perf_counter() - begun
        except Exception as exc:  # e.g. a table this (unmigrated, shared) database lacks
            summary_error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            figures = placeholder_figures(scope)
        exports.summary = lambda scope: figures
    stream = exports.csv_stream(scope) if fmt == "csv" else exports.xlsx_stream(scope)
    started = time.perf_counter()
    size = asyncio.run(drain(stream))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "format": fmt,
        "vendor": connection.vendor,
        "rows": rows,
        "bytes": size,
        "seconds": seconds,
        "rate": rows / seconds,
        "peak_rss_mb": peak,
        "summary_seconds": summary_seconds,
        "summary_error": summary_error,
    }


def placeholder_figures(scope) -> dict:
    """Summary figures of the right shape, for when services.summary cannot run here."""
    return {
        "from": scope.start,
        "to": scope.end,
        "time_zone": scope.zone.key,
        "total": 0,
        "by_status": {},
        "success_rate": None,
        "avg_duration_ms": None,
        "p50_duration_ms": None,
        "p95_duration_ms": None,
        "active_workflows": 0,
        "daily": [],
        "top_workflows": [],
    }


def main() -> int:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.days)))
        return 0
    if not os.environ.get("DATABASE_URL"):
        print("note: no DATABASE_URL, so the embedded SQLite database is measured", flush=True)
    results = []
    for fmt in args.formats.split(","):
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, __file__, "--child", fmt, "--days", str(args.days)],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                print(f"export {fmt}: the child failed\n{out.stderr[-3000:]}", flush=True)
                return 1
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            verdict = "ok" if result["rate"] >= GOALS[fmt] else "MISSED"
            rss = "ok" if result["peak_rss_mb"] <= RSS_GOAL_MB else "MISSED"
            summary = ""
            if result["summary_seconds"] is not None:
                summary = f" (+ {result['summary_seconds']:.2f} s of summary figures, not counted)"
            elif result["summary_error"]:
                summary = f" (summary figures failed here: {result['summary_error']})"
            print(
                f"export {fmt:<4} ({result['vendor']}, {args.days} days) {result['rows']:>9,} rows, "
                f"{result['bytes'] / 1e6:7.1f} MB in {result['seconds']:6.2f} s: "
                f"{result['rate']:>8,.0f} rows/s (goal ≥ {GOALS[fmt]:,}) {verdict}; "
                f"peak RSS {result['peak_rss_mb']:.0f} MB (goal ≤ {RSS_GOAL_MB}) {rss}{summary}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
