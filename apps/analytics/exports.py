"""Report exports (issue 13 items 3 and 4): one row per execution of a scope, as CSV or XLSX.

Both stream with constant memory. On PostgreSQL the rows come from a `COPY … TO STDOUT (FORMAT
csv)` whose SELECT formats every cell (timestamps, duration, escaping): the CSV is PostgreSQL's
bytes passed on, and the XLSX reads them back with the csv module. On SQLite (the embedded
default), and inside a transaction, they are read a chunk at a time through the ORM and
formatted here. Both ways give the same bytes (tests/analytics/test_export_paths.py). The XLSX
is written by openpyxl's write-only mode into a temporary file, sent back in chunks.

Stored values are already masked (secrets never reach a stored field), and every text cell that
a spreadsheet would read as a formula (starting with =, +, -, @, a tab or a carriage return) is
prefixed with an apostrophe.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
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
NUMBER_COLUMNS = frozenset(["id", "version", "duration_ms", "steps_total", "steps_completed"])
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
    """The export's rows in creation order, as cell values (numbers and text): read back from
    the COPY's CSV where there is one, the same values as formatted_rows gives."""
    if not _copies():
        yield from formatted_rows(scope)
        return
    numbers = [name in NUMBER_COLUMNS for name in COLUMNS]
    # The CSV's cells back as _row makes them: text as it is, a number column's empty cell None.
    for fields in csv.reader(str(line, "utf-8") for line in _copied_lines(scope)):
        yield [
            (int(field) if field else None) if number else field
            for number, field in zip(numbers, fields, strict=True)
        ]


def formatted_rows(scope: Scope) -> Iterator[list[Any]]:
    """The export's rows read through the ORM a chunk at a time, and formatted here."""
    for values in _rows_query(scope).iterator(chunk_size=CHUNK_ROWS):
        yield _row(values)


# --- formatted in SQL, on PostgreSQL ---


def _copies() -> bool:
    """Whether the rows come from a COPY: on PostgreSQL, and outside a transaction (the COPY
    runs on a connection of its own, which would not see the transaction's rows)."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def _copied_lines(scope: Scope) -> Iterator[Any]:
    """The rows as PostgreSQL's CSV lines (buffers, each ending in LF) from a COPY on a
    connection of its own: a background export saves its progress on the default connection
    while the COPY runs, and a connection in a COPY takes no other query. Opened with JIT off:
    the planner prices the error type's subquery at every row, which turns JIT on, 0.2–0.3 s of
    compiling that makes no row faster."""
    import psycopg

    statement, params = copy_statement(scope)
    options = connection.get_connection_params()
    options["options"] = f"{options.get('options', '')} -c jit=off".strip()
    with (
        psycopg.connect(**options, autocommit=True) as own,
        own.cursor() as cursor,
        cursor.copy(statement, params) as copy,
    ):
        yield from copy


def copy_statement(scope: Scope) -> tuple[str, tuple]:
    """The COPY of the rows' query (the ORM's), each cell formatted in SQL as _row formats it."""
    query, params = _rows_query(scope).query.sql_with_params()
    cells = [
        "t.id",
        _escaped("t.workflow_slug"),
        "t.version_number",
        "NULLIF(t.status, '')",
        "NULLIF(t.trigger, '')",
        _escaped("t.username"),
        _iso_sql("t.created_at"),
        _iso_sql("t.started_at"),
        _iso_sql("t.finished_at"),
        # timedelta.total_seconds() * 1000 in the same double arithmetic, cut as int() cuts
        "trunc(extract(epoch FROM t.finished_at - t.started_at)::float8 * 1000)::bigint",
        "t.steps_total",
        "t.steps_completed",
        _escaped("t.error_type"),
        _escaped("t.error_message"),
    ]
    select = f"SELECT {', '.join(cells)} FROM ({query}) AS t ORDER BY t.created_at, t.id"
    return f"COPY ({select}) TO STDOUT (FORMAT csv)", params


# FORMULA_STARTS in SQL, as chr() of each, so that the two cannot drift apart.
_FORMULA_STARTS_SQL = ", ".join(f"chr({ord(start)})" for start in FORMULA_STARTS)


def _escaped(column: str) -> str:
    """escape(column or "") in SQL. An empty text becomes NULL: COPY writes NULL as an empty
    cell, where it would quote an empty text ("")."""
    return (
        f"CASE WHEN left({column}, 1) IN ({_FORMULA_STARTS_SQL}) THEN '''' || {column} "
        f"ELSE NULLIF({column}, '') END"
    )


def _iso_sql(column: str) -> str:
    """_iso in SQL: the instant's isoformat() in UTC, without a fraction when it is zero."""
    return (
        f"""replace(to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), """
        "'.000000', '') || '+00:00'"
    )


# --- CSV ---


class _Line:
    """A file-like target for csv.writer that hands back what it was given."""

    def write(self, text: str) -> str:
        return text


def csv_lines(batch: Iterable[list[Any]], *, header: bool) -> str:
    writer = csv.writer(_Line())
    out = [writer.writerow(COLUMNS)] if header else []
    out.extend(writer.writerow(row) for row in batch)
    return "".join(out)


def csv_chunks(scope: Scope, on_progress=None) -> Iterator[bytes]:
    """The CSV: its header, then up to CHUNK_ROWS rows a chunk. `on_progress(rows so far)` is
    called every OPSFLOW_EXPORT_PROGRESS_ROWS rows, once the chunk ending there is taken."""
    for chunk, _rows in _csv_batches(scope, on_progress):
        yield chunk


def _csv_batches(scope: Scope, on_progress) -> Iterator[tuple[bytes, int]]:
    """csv_chunks, each chunk with its number of rows."""
    yield csv_lines([], header=True).encode(), 0
    if _copies():
        lines, join = _copied_lines(scope), _crlf_lines
    else:
        lines, join = formatted_rows(scope), _csv_bytes
    every = settings.OPSFLOW_EXPORT_PROGRESS_ROWS
    batch: list = []
    for count, line in enumerate(lines, start=1):
        batch.append(line)
        due = on_progress is not None and count % every == 0
        if due or len(batch) == CHUNK_ROWS:
            yield join(batch), len(batch)
            batch = []
        if due:
            on_progress(count)
    if batch:
        yield join(batch), len(batch)


def _crlf_lines(batch: list) -> bytes:
    """PostgreSQL's CSV lines, which end in LF, ended as the csv module ends them: CRLF."""
    joined = b"".join(batch)
    if joined.count(b"\n") == len(batch):  # no line break inside a cell: all are line ends
        return joined.replace(b"\n", b"\r\n")
    return b"\r\n".join([line[:-1] for line in batch]) + b"\r\n"


def _csv_bytes(batch: list[list[Any]]) -> bytes:
    return csv_lines(batch, header=False).encode()


async def csv_stream(scope: Scope) -> AsyncIterator[bytes]:
    """The CSV, a chunk at a time: an async iterator (under ASGI a sync one is read whole
    before the first byte is sent) that takes each chunk on Django's sync thread."""
    chunks = csv_chunks(scope)  # a generator: the query runs at the first chunk, on that thread
    take = sync_to_async(lambda: next(chunks, None))
    try:
        while (chunk := await take()) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close)()  # a client gone: its cursor or COPY ends now


# --- XLSX ---


def write_xlsx(scope: Scope, target, on_progress=None) -> int:
    """The workbook, written to `target` (a path or a binary file) by openpyxl's write-only
    mode: an Executions sheet of the rows and a Summary sheet of the metrics and the daily
    table. Returns the row count; `on_progress(rows)` is called every
    OPSFLOW_EXPORT_PROGRESS_ROWS rows."""
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("Executions")
    sheet.append(COLUMNS)
    written = 0
    for row in _reporting(rows(scope), on_progress):
        sheet.append(row)
        written += 1
    summary_sheet = book.create_sheet("Summary")
    for row in _summary_rows(scope):
        summary_sheet.append(row)
    book.save(target)
    return written


def _summary_rows(scope: Scope) -> Iterator[list[Any]]:
    """The Summary sheet; its figures are asked for when the writer comes to it, after the
    rows."""
    figures = summary(scope)
    yield ["From", _iso(figures["from"])]
    yield ["To", _iso(figures["to"])]
    yield ["Time zone", figures["time_zone"]]
    yield ["Executions", figures["total"]]
    for status, n in figures["by_status"].items():
        yield [f"  {status}", n]
    yield ["Success rate (%)", figures["success_rate"]]
    yield ["Average duration (ms)", figures["avg_duration_ms"]]
    yield ["p50 duration (ms)", figures["p50_duration_ms"]]
    yield ["p95 duration (ms)", figures["p95_duration_ms"]]
    yield ["Active workflows", figures["active_workflows"]]
    yield []
    yield ["Date", "completed", "failed", "incomplete", "cancelled"]
    for day in figures["daily"]:
        yield [
            day["date"].isoformat(),
            day["completed"],
            day["failed"],
            day["incomplete"],
            day["cancelled"],
        ]
    yield []
    yield ["Top workflows", "executions", "success rate (%)"]
    for workflow in figures["top_workflows"]:
        yield [escape(workflow["slug"]), workflow["executions"], workflow["success_rate"]]


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
    count = 0
    for chunk, rows_in_chunk in _csv_batches(scope, on_progress):
        out.write(chunk)
        count += rows_in_chunk
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
