"""Report exports (issue 13 item 3): one row per execution of a scope, as CSV or XLSX.

Both stream with constant memory: the CSV is written a chunk of rows at a time from a
server-side cursor (stdlib `csv`); the XLSX through openpyxl's write-only workbook, which
spools its sheets to a temporary file, sent back in chunks. Stored values are already masked
(secrets never reach a stored field), and every text cell that a spreadsheet would read as a
formula (starting with =, +, -, @, a tab or a carriage return) is prefixed with an apostrophe.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Case, CharField, F, OuterRef, Subquery, Value, When

from apps.analytics import services
from apps.analytics.services import Scope, summary
from apps.executions.choices import STEP_FAILED, ExecutionStatus
from apps.executions.models import Step

COLUMNS = [
    "id",
    "workflow",
    "version",
    "status",
    "trigger",
    "triggered_by",
    "created_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "steps_total",
    "steps_completed",
    "error_type",
    "error_message",
]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK_ROWS = 2000
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def escape(value: Any) -> Any:
    """A text cell that would be read as a formula, made text (OWASP's CSV injection advice)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _rows_query(scope: Scope):
    # The error's type is the last failed attempt's, looked up only for runs that failed.
    failed_step = Subquery(
        Step.objects.filter(execution=OuterRef("pk"), status__in=STEP_FAILED)
        .order_by("-attempt", "-id")
        .values("error_type")[:1]
    )
    return (
        scope.executions()
        .order_by("created_at", "id")
        .annotate(
            error_type=Case(
                When(
                    status__in=[ExecutionStatus.FAILED, ExecutionStatus.INCOMPLETE],
                    then=failed_step,
                ),
                default=Value(""),
                output_field=CharField(),
            ),
            workflow_slug=F("workflow__slug"),
            version_number=F("version__number"),
            username=F("triggered_by__username"),
        )
        .values_list(
            "id",
            "workflow_slug",
            "version_number",
            "status",
            "trigger",
            "username",
            "created_at",
            "started_at",
            "finished_at",
            "steps_total",
            "steps_completed",
            "error_type",
            "error_message",
        )
    )


def _row(values: tuple) -> list[Any]:
    (pk, workflow, version, status, trigger, user, created, started, finished, total, done) = (
        values[:11]
    )
    error_type, error_message = values[11], values[12]
    duration = int((finished - started).total_seconds() * 1000) if started and finished else None
    return [
        pk,
        escape(workflow),
        version,
        status,
        trigger,
        escape(user or ""),
        _iso(created),
        _iso(started),
        _iso(finished),
        duration,
        total,
        done,
        escape(error_type or ""),
        escape(error_message or ""),
    ]


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat() if moment else ""


def rows(scope: Scope) -> Iterator[list[Any]]:
    """The export's rows in creation order, read a chunk at a time."""
    for values in _rows_query(scope).iterator(chunk_size=CHUNK_ROWS):
        yield _row(values)


class _Line:
    """A file-like target for csv.writer that hands back what it was given."""

    def write(self, text: str) -> str:
        return text


def csv_lines(batch: Iterable[list[Any]], *, header: bool) -> str:
    writer = csv.writer(_Line())
    out = [writer.writerow(COLUMNS)] if header else []
    out.extend(writer.writerow(row) for row in batch)
    return "".join(out)


async def csv_stream(scope: Scope) -> AsyncIterator[bytes]:
    """The CSV, a chunk of rows at a time: an async iterator (under ASGI a sync one is read
    whole before the first byte is sent) that takes each chunk from the cursor on Django's
    sync thread."""
    yield csv_lines([], header=True).encode()
    source = rows(scope)  # a generator: the query runs at the first chunk, on that thread
    take = sync_to_async(lambda: list(islice(source, CHUNK_ROWS)))
    while batch := await take():
        yield csv_lines(batch, header=False).encode()


def write_xlsx(scope: Scope, target, on_progress=None) -> int:
    """The workbook, written to `target` (a path or a binary file): an Executions sheet of
    the rows and a Summary sheet of the metrics and the daily table. Returns the row count;
    `on_progress(rows)` is called every OPSFLOW_EXPORT_PROGRESS_ROWS rows."""
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("Executions")
    sheet.append(COLUMNS)
    count = 0
    for row in _reporting(rows(scope), on_progress):
        sheet.append(row)
        count += 1
    _summary_sheet(book.create_sheet("Summary"), summary(scope))
    book.save(target)
    return count


def _summary_sheet(sheet, figures: dict[str, Any]) -> None:
    sheet.append(["From", _iso(figures["from"])])
    sheet.append(["To", _iso(figures["to"])])
    sheet.append(["Time zone", figures["time_zone"]])
    sheet.append(["Executions", figures["total"]])
    for status, n in figures["by_status"].items():
        sheet.append([f"  {status}", n])
    sheet.append(["Success rate (%)", figures["success_rate"]])
    sheet.append(["Average duration (ms)", figures["avg_duration_ms"]])
    sheet.append(["p50 duration (ms)", figures["p50_duration_ms"]])
    sheet.append(["p95 duration (ms)", figures["p95_duration_ms"]])
    sheet.append(["Active workflows", figures["active_workflows"]])
    sheet.append([])
    sheet.append(["Date", "completed", "failed", "incomplete", "cancelled"])
    for day in figures["daily"]:
        sheet.append(
            [
                day["date"].isoformat(),
                day["completed"],
                day["failed"],
                day["incomplete"],
                day["cancelled"],
            ]
        )
    sheet.append([])
    sheet.append(["Top workflows", "executions", "success rate (%)"])
    for workflow in figures["top_workflows"]:
        sheet.append([escape(workflow["slug"]), workflow["executions"], workflow["success_rate"]])


async def xlsx_stream(scope: Scope) -> AsyncIterator[bytes]:
    """The workbook, built in a temporary file on a worker thread, then sent in chunks."""
    with tempfile.TemporaryFile() as spool:
        await sync_to_async(write_xlsx)(scope, spool)  # the ORM: on Django's sync thread
        await sync_to_async(spool.seek, thread_sensitive=False)(0)
        while chunk := await sync_to_async(spool.read, thread_sensitive=False)(1 << 16):
            yield chunk


# --- in the background ---


def start_export(user, params, fmt: str):
    """Queue an export of the range the parameters name (checked now: BadRange). The range is
    kept as the instants it meant when asked, so "the last 7 days" does not move."""
    from django.db import transaction

    from apps.analytics.models import Export
    from apps.executions.dispatch import get_queue

    scope = services.scope_for(user, params)
    export = Export.objects.create(
        user=user, format=fmt, params=scope.params(), rows_total=scope.executions().count()
    )
    transaction.on_commit(
        lambda: get_queue("default").enqueue(
            "apps.analytics.jobs.run_export",
            export.pk,
            job_timeout=3600,
            result_ttl=0,
            description=f"run_export({export.pk})",
        )
    )
    return export


def run_export(export_id: int) -> None:
    """Write the export's file under OPSFLOW_EXPORT_DIR, saving its progress as it goes."""
    from apps.analytics.models import Export

    export = Export.objects.select_related("user").filter(pk=export_id).first()
    if export is None or not export.start():
        return  # gone, or another worker has it
    directory = settings.OPSFLOW_EXPORT_DIR
    name = f"export-{export.pk}.{export.format}"
    partial = directory / f".{name}.part"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        scope = services.scope_for(export.user, export.params)
        with open(partial, "wb") as out:
            if export.format == "csv":
                count = _write_csv(scope, out, export.progress)
            else:
                count = write_xlsx(scope, out, export.progress)
        partial.rename(directory / name)
        Export.objects.filter(pk=export.pk).update(file_name=name)
        export.file_name = name
        export.finish(count, (directory / name).stat().st_size)
    except Exception as exc:  # recorded on the export, for the user to see
        partial.unlink(missing_ok=True)
        export.fail(f"{type(exc).__name__}: {exc}")
        raise


def _write_csv(scope: Scope, out, on_progress) -> int:
    out.write(csv_lines([], header=True).encode())
    count = 0
    source = _reporting(rows(scope), on_progress)
    while batch := list(islice(source, CHUNK_ROWS)):
        out.write(csv_lines(batch, header=False).encode())
        count += len(batch)
    return count


def _reporting(source: Iterator[list[Any]], on_progress) -> Iterator[list[Any]]:
    """The rows, calling `on_progress(rows so far)` every OPSFLOW_EXPORT_PROGRESS_ROWS rows."""
    every = settings.OPSFLOW_EXPORT_PROGRESS_ROWS
    for count, row in enumerate(source, start=1):
        yield row
        if on_progress and count % every == 0:
            on_progress(count)


def expire_exports(now=None) -> int:
    """Done exports past their time: their files are deleted and they say expired."""
    from django.utils import timezone

    from apps.analytics.choices import ExportStatus
    from apps.analytics.models import Export

    now = now or timezone.now()
    expired = 0
    for export in Export.objects.filter(status=ExportStatus.DONE, expires_at__lte=now):
        if export.expire():
            if export.file_name:
                export.path().unlink(missing_ok=True)
            expired += 1
    return expired
