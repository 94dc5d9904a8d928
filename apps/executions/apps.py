from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate


def _drop_counters_on_sqlite(using, **kwargs):
    """SQLite rebuilds a table to alter it, and a trigger naming the table stops the rebuild:
    the counting triggers are dropped before migrating and installed again after."""
    from apps.executions import counters

    connection = connections[using]
    if connection.vendor == "sqlite":
        counters.uninstall(connection)


def _install_counters(using, **kwargs):
    """Install the counting triggers after each migrate, once the counter columns exist (not
    after migrating back before 0009)."""
    from apps.executions import counters, triggers

    connection = connections[using]
    if triggers.table_has(
        connection, counters.EXECUTION_TABLE, ["steps_completed"], counters.STEP_TABLE
    ):
        counters.install(connection)


class ExecutionsConfig(AppConfig):
    name = "apps.executions"
    label = "executions"
    verbose_name = "Executions"

    def ready(self):
        pre_migrate.connect(_drop_counters_on_sqlite, sender=self)
        post_migrate.connect(_install_counters, sender=self)
