"""Database triggers that apps install after each migrate (the step counters, the analytics
rollup's marks): the statements for this database, and whether the table they name has the
columns they read yet (a migrate back may have taken them away)."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def execute(connection, statements: dict[str, Callable[[], list[str]]], what: str) -> None:
    """Run this vendor's statements (`statements[connection.vendor]()`)."""
    make = statements.get(connection.vendor)
    if make is None:
        raise NotImplementedError(f"{what} need triggers for {connection.vendor}")
    with connection.cursor() as cursor:
        for sql in make():
            cursor.execute(sql)


def table_has(connection, table: str, columns: Iterable[str], *others: str) -> bool:
    """Whether `table` (and the `others` tables) exist, `table` with all of `columns`."""
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        if table not in tables or any(other not in tables for other in others):
            return False
        present = {c.name for c in connection.introspection.get_table_description(cursor, table)}
    return present.issuperset(columns)
