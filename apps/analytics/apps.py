from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate


def _drop_marks_on_sqlite(using, **kwargs):
    """SQLite rebuilds a table to alter it, and a trigger naming the table stops the rebuild:
    the rollup's marking triggers are dropped before migrating and installed again after."""
    from apps.analytics import rollup

    connection = connections[using]
    if connection.vendor == "sqlite":
        rollup.uninstall(connection)


def _install_marks(using, **kwargs):
    """Install the marking triggers after each migrate, once both of their tables and the
    columns they watch exist (not after migrating the executions back before them)."""
    from apps.analytics import rollup
    from apps.executions import triggers

    connection = connections[using]
    if triggers.table_has(connection, rollup.EXECUTION_TABLE, rollup.WATCHED, rollup.MARK_TABLE):
        rollup.install(connection)


class AnalyticsConfig(AppConfig):
    name = "apps.analytics"
    label = "analytics"
    verbose_name = "Analytics"

    def ready(self):
        # Executions and steps that end are counted for /metrics from their transitions' saves,
        # in every process (apps/analytics/metrics_counters.py).
        from apps.analytics import metrics_counters

        metrics_counters.connect()
        pre_migrate.connect(_drop_marks_on_sqlite, sender=self)
        post_migrate.connect(_install_marks, sender=self)
