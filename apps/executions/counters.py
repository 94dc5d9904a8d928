"""The step counters on an execution (steps_completed, steps_failed, steps_skipped).

Database triggers keep them: the statement that inserts a step row, or moves its status, also
adds to its execution's counters, in the same transaction and with no extra round trip from
the engine. The engine holds the execution's row lock whenever it writes a counted status, so
the trigger's update of that row never waits. Only statuses that count fire the triggers: a
step dispatched or started costs nothing.

Lists and exports read the counters and never touch the steps table (docs/performance.md).
`install` is idempotent; migration 0009 calls it on PostgreSQL, and every `migrate` calls it
at the end (post_migrate). SQLite cannot rebuild a table that a trigger names, so there the
triggers are dropped before migrating and installed after (apps.py).
"""

from __future__ import annotations

from apps.executions import triggers
from apps.executions.choices import STEP_FAILED, StepStatus

COMPLETED = (StepStatus.COMPLETED.value,)
FAILED = tuple(sorted(s.value for s in STEP_FAILED))
SKIPPED = (StepStatus.SKIPPED.value,)
COUNTED = COMPLETED + FAILED + SKIPPED
COUNTERS = {"steps_completed": COMPLETED, "steps_failed": FAILED, "steps_skipped": SKIPPED}

STEP_TABLE = "executions_step"
EXECUTION_TABLE = "executions_execution"
INSERT_TRIGGER = "executions_step_counted_insert"
UPDATE_TRIGGER = "executions_step_counted_update"


def _in(column: str, statuses: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in statuses)})"


def _postgresql() -> list[str]:
    sets = ",\n        ".join(
        f"{name} = {name} + ({_in('NEW.status', statuses)})::int"
        f" - COALESCE({_in('was', statuses)}, false)::int"
        for name, statuses in COUNTERS.items()
    )
    return [
        f"""
CREATE OR REPLACE FUNCTION executions_count_step() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was text;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        was := OLD.status;
    END IF;
    UPDATE {EXECUTION_TABLE} SET
        {sets}
    WHERE id = NEW.execution_id;
    RETURN NULL;
END
$$""",
        f"DROP TRIGGER IF EXISTS {INSERT_TRIGGER} ON {STEP_TABLE}",
        f"""CREATE TRIGGER {INSERT_TRIGGER} AFTER INSERT ON {STEP_TABLE} FOR EACH ROW
WHEN ({_in("NEW.status", COUNTED)}) EXECUTE FUNCTION executions_count_step()""",
        f"DROP TRIGGER IF EXISTS {UPDATE_TRIGGER} ON {STEP_TABLE}",
        f"""CREATE TRIGGER {UPDATE_TRIGGER} AFTER UPDATE OF status ON {STEP_TABLE} FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status
      AND ({_in("OLD.status", COUNTED)} OR {_in("NEW.status", COUNTED)}))
EXECUTE FUNCTION executions_count_step()""",
    ]


def _sqlite() -> list[str]:
    inserted = ", ".join(
        f"{name} = {name} + ({_in('NEW.status', statuses)})" for name, statuses in COUNTERS.items()
    )
    moved = ", ".join(
        f"{name} = {name} + ({_in('NEW.status', statuses)}) - ({_in('OLD.status', statuses)})"
        for name, statuses in COUNTERS.items()
    )
    return [
        f"""CREATE TRIGGER IF NOT EXISTS {INSERT_TRIGGER} AFTER INSERT ON {STEP_TABLE}
FOR EACH ROW WHEN {_in("NEW.status", COUNTED)}
BEGIN UPDATE {EXECUTION_TABLE} SET {inserted} WHERE id = NEW.execution_id; END""",
        f"""CREATE TRIGGER IF NOT EXISTS {UPDATE_TRIGGER} AFTER UPDATE OF status ON {STEP_TABLE}
FOR EACH ROW WHEN OLD.status <> NEW.status
BEGIN UPDATE {EXECUTION_TABLE} SET {moved} WHERE id = NEW.execution_id; END""",
    ]


def install(connection) -> None:
    """Create (or replace) the counting triggers on this database."""
    triggers.execute(connection, {"postgresql": _postgresql, "sqlite": _sqlite}, "step counters")


def uninstall(connection) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP TRIGGER IF EXISTS {INSERT_TRIGGER} ON {STEP_TABLE}")
            cursor.execute(f"DROP TRIGGER IF EXISTS {UPDATE_TRIGGER} ON {STEP_TABLE}")
            cursor.execute("DROP FUNCTION IF EXISTS executions_count_step()")
        else:
            cursor.execute(f"DROP TRIGGER IF EXISTS {INSERT_TRIGGER}")
            cursor.execute(f"DROP TRIGGER IF EXISTS {UPDATE_TRIGGER}")
