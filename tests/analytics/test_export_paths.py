"""The two ways to an export's rows (issue 13 item 4): on PostgreSQL a COPY whose SELECT formats
every cell, whose CSV bytes are passed on as they come; elsewhere (SQLite, or inside a
transaction) the ORM's rows formatted in Python. They must give the same file, row for row, on
rows that cover every escaping case, missing starts and finishes, a run without a user, and
failed runs with and without an error type."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta

import openpyxl
import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from apps.accounts.choices import Role
from apps.analytics import exports, services
from apps.executions.choices import ExecutionStatus as S
from apps.executions.choices import StepStatus, Trigger
from apps.executions.models import Execution, Step
from apps.workflows.models import Workflow
from tests.factories import chain_definition, make_org, make_user, make_workflow

pytestmark = [
    pytest.mark.django_db(transaction=True),  # the COPY's connection sees committed rows only
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the COPY is PostgreSQL's"),
]

DAY = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
MESSAGES = [
    '=HYPERLINK("http://evil.example","click")',
    "+1-2",
    "-rm",
    "@SUM(A1)",
    "\tindented",
    "\rreturned",
    "'already quoted",
    'a, b; "quoted" and\nmore\r\nlines',
    "  spaces around  ",
    "é ü — 漢字 🚀",
    "back\\slash \\N and \\.",
    "\\.",
    "=",
    "",
]


@pytest.fixture
def analyst():
    return make_user("analyst", make_org("acme"), Role.VIEWER)


@pytest.fixture
def mixed(analyst):
    """Executions of one day, each cell kind of the export at least once."""
    org = analyst.memberships.get().organization
    plain = make_workflow(org, chain_definition("nightly", 1))
    formula = make_workflow(org, chain_definition("report", 1))
    Workflow.objects.filter(pk=formula.pk).update(slug="=cmd|' /C calc'!A0")
    formula.refresh_from_db()
    user = make_user("@ops", org, Role.OPERATOR)
    people = [
        None,
        user,
        make_user("-dash", org, Role.OPERATOR),
        make_user("ann", org, Role.VIEWER),
    ]

    def run(n, status, started=None, finished=None, message="", by=None, workflow=plain):
        created = DAY + timedelta(minutes=n)
        return Execution.objects.create(
            workflow=workflow,
            organization=org,
            version=workflow.current_version,
            status=status,
            trigger=Trigger.WEBHOOK if n % 2 else Trigger.MANUAL,
            triggered_by=by,
            created_at=created,
            started_at=created + started if started is not None else None,
            finished_at=created + finished if finished is not None else None,
            error_message=message,
        )

    runs = [
        run(i, S.FAILED, timedelta(0), timedelta(seconds=i), message, people[i % 4])
        for i, message in enumerate(MESSAGES)
    ]
    runs += [
        run(20, S.SCHEDULED),  # neither started nor finished
        run(21, S.RUNNING, started=timedelta(microseconds=1)),  # started, not finished
        run(22, S.CANCELLED, finished=timedelta(seconds=3)),  # finished without a start
        run(23, S.COMPLETED, timedelta(0), timedelta(seconds=1.005)),  # 1004.999… ms: 1004
        run(24, S.COMPLETED, timedelta(seconds=2), timedelta(seconds=0.9995)),  # negative
        run(25, S.COMPLETED, timedelta(0), timedelta(days=3, microseconds=999)),
        run(26, S.COMPLETED, timedelta(microseconds=123_456), timedelta(0), workflow=formula),
        run(27, S.COMPLETED, timedelta(0), timedelta(seconds=2), by=user, workflow=formula),
    ]
    # Failed runs' error types: the last failed attempt's, escaped like any text.
    failed = [
        run(30, S.FAILED, timedelta(0), timedelta(seconds=1), "boom"),
        run(31, S.INCOMPLETE, timedelta(0), timedelta(seconds=1), "lost"),
        run(32, S.FAILED, timedelta(0), timedelta(seconds=1), "no failed step"),
        run(33, S.COMPLETED, timedelta(0), timedelta(seconds=1)),  # a failed retry, then success
    ]
    attempts = {
        failed[0]: [(1, StepStatus.FAILED, "ConnectionError"), (2, StepStatus.TIMEOUT, "+Timeout")],
        failed[1]: [(1, StepStatus.FAILED, "=DataError")],
        failed[2]: [(1, StepStatus.COMPLETED, "")],
        failed[3]: [(1, StepStatus.FAILED, "Flaky"), (2, StepStatus.COMPLETED, "")],
    }
    for execution, tries in attempts.items():
        for attempt, status, error_type in tries:
            Step.objects.create(
                execution=execution,
                node_id="n0",
                node_type="noop",
                attempt=attempt,
                status=status,
                error_type=error_type,
            )
    return runs + failed


def formatted_in_python(monkeypatch):
    monkeypatch.setattr(exports, "_copies", lambda: False)


def scope_of(analyst):
    return services.scope_for(analyst, {"from": "2026-01-10", "to": "2026-01-10"})


def test_the_copy_gives_the_same_csv_as_python_byte_for_byte(mixed, analyst, monkeypatch):
    scope = scope_of(analyst)
    assert exports._copies()  # PostgreSQL, outside a transaction: the COPY
    copied = b"".join(exports.csv_chunks(scope))
    with monkeypatch.context() as patch:
        formatted_in_python(patch)
        formatted = b"".join(exports.csv_chunks(scope))

    assert copied.splitlines(keepends=True) == formatted.splitlines(keepends=True)
    header, *rows = list(csv.reader(io.StringIO(copied.decode(), newline="")))
    assert header == exports.COLUMNS and len(rows) == len(mixed)
    assert [int(row[0]) for row in rows] == [e.pk for e in mixed]  # (created_at, id) order


def test_the_rows_read_back_from_the_copy_are_pythons_rows(mixed, analyst, monkeypatch):
    scope = scope_of(analyst)
    copied = list(exports.rows(scope))
    with monkeypatch.context() as patch:
        formatted_in_python(patch)
        formatted = list(exports.rows(scope))

    assert copied == formatted
    by_id = {row[0]: row for row in copied}
    messages = [by_id[e.pk][13] for e in mixed[: len(MESSAGES)]]
    assert messages[:7] == ["'" + m for m in MESSAGES[:6]] + ["'already quoted"]
    assert by_id[mixed[0].pk][5] == "" and by_id[mixed[1].pk][5] == "'@ops"  # no user; escaped
    scheduled, running, cancelled, rounded, negative, days, formula, formula_by = mixed[14:22]
    assert by_id[scheduled.pk][7:10] == ["", "", None]
    assert by_id[running.pk][7].endswith(".000001+00:00") and by_id[running.pk][9] is None
    assert by_id[cancelled.pk][7] == "" and by_id[cancelled.pk][9] is None
    assert by_id[rounded.pk][6] == "2026-01-10T08:23:00+00:00"  # no fraction when it is zero
    assert by_id[rounded.pk][9] == 1004  # int(1.005 * 1000), in double arithmetic
    assert by_id[negative.pk][9] == -1000  # cut towards zero, as int() cuts
    assert by_id[days.pk][9] == 259_200_000
    assert by_id[formula.pk][1] == "'=cmd|' /C calc'!A0"
    assert by_id[formula_by.pk][5] == "'@ops"
    boom, lost, no_step, retried = (by_id[e.pk][12] for e in mixed[22:])
    assert (boom, lost, no_step, retried) == ("'+Timeout", "'=DataError", "", "")


def test_the_xlsx_has_the_same_cells_either_way(mixed, analyst, monkeypatch):
    scope = scope_of(analyst)
    copied, formatted = io.BytesIO(), io.BytesIO()
    assert exports.write_xlsx(scope, copied) == len(mixed)
    with monkeypatch.context() as patch:
        formatted_in_python(patch)
        python_rows = list(exports.rows(scope))
        assert exports.write_xlsx(scope, formatted) == len(mixed)

    def cells(book: io.BytesIO) -> list[tuple]:
        sheet = openpyxl.load_workbook(book)["Executions"]
        return list(sheet.iter_rows(values_only=True))

    assert cells(copied) == cells(formatted)
    expected = [tuple(v if v != "" else None for v in row) for row in python_rows]
    assert cells(copied) == [tuple(exports.COLUMNS), *expected]


def test_a_background_csv_export_saves_its_progress_while_the_copy_runs(
    mixed, analyst, settings, tmp_path, monkeypatch
):
    """The COPY has a connection of its own: the progress is saved on the default one."""
    from apps.analytics.models import Export

    settings.OPSFLOW_EXPORT_DIR = tmp_path
    settings.OPSFLOW_EXPORT_PROGRESS_ROWS = 5
    export = Export.objects.create(
        user=analyst, format="csv", params=scope_of(analyst).params(), rows_total=len(mixed)
    )
    seen: list[int] = []
    original = Export.progress
    monkeypatch.setattr(Export, "progress", lambda self, n: (seen.append(n), original(self, n)))

    exports.run_export(export.pk)

    export.refresh_from_db()
    assert (export.status, export.rows_done) == ("done", len(mixed))
    assert seen == list(range(5, len(mixed) + 1, 5))
    written = (tmp_path / export.file_name).read_bytes()
    assert written == b"".join(exports.csv_chunks(scope_of(analyst)))


def test_a_download_left_half_way_ends_its_copy(mixed, analyst, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 5)
    scope = scope_of(analyst)

    async def first_chunks() -> list[bytes]:
        stream = exports.csv_stream(scope)
        taken = [await anext(stream), await anext(stream)]  # the header, five rows
        await stream.aclose()  # as the ASGI server does when the client goes
        return taken

    header, rows = async_to_sync(first_chunks)()

    assert header.startswith(b"id,workflow,") and rows.count(b"\r\n") >= 5
    # Its connection is closed; the server's end of it goes a moment later.
    deadline = time.monotonic() + 10
    while copies_here():
        assert time.monotonic() < deadline, "the COPY's connection is still open"
        time.sleep(0.05)


def copies_here() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query LIKE 'COPY (SELECT%%'"
        )
        return cursor.fetchone()[0]
