"""Indexes that only cost writes go. Steps lose three: the one on `execution_id`
(unique_step_attempt leads with it) and the two on `status` (`status` and its LIKE twin), for
which a partial index on the open statuses comes. Executions lose the one on `workflow_id`
(execution_wf_recent and (workflow, status) lead with it). The foreign keys themselves stay as
they are: Django would drop and re-add them, which checks every row of a large table again."""

import django.db.models.deletion
from django.db import migrations, models

OPEN = models.Q(status="dispatched") | models.Q(status="pending") | models.Q(status="running")


class Migration(migrations.Migration):
    dependencies = [
        ("executions", "0009_counters_and_indexes"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="step",
            index=models.Index(condition=OPEN, fields=["status"], name="step_open"),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="execution",
                    name="workflow",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="executions",
                        to="workflows.workflow",
                    ),
                ),
                migrations.AlterField(
                    model_name="step",
                    name="execution",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="steps",
                        to="executions.execution",
                    ),
                ),
                migrations.AlterField(
                    model_name="step",
                    name="status",
                    field=models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("dispatched", "Dispatched"),
                            ("running", "Running"),
                            ("completed", "Completed"),
                            ("failed", "Failed"),
                            ("timeout", "Timeout"),
                            ("cancelled", "Cancelled"),
                            ("interrupted", "Interrupted"),
                            ("skipped", "Skipped"),
                        ],
                        default="pending",
                        max_length=16,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    [
                        'DROP INDEX IF EXISTS "executions_step_execution_id_0cf30c19"',
                        'DROP INDEX IF EXISTS "executions_step_status_e5ee43cd"',
                        'DROP INDEX IF EXISTS "executions_step_status_e5ee43cd_like"',
                        'DROP INDEX IF EXISTS "executions_execution_workflow_id_0c141a15"',
                    ],
                    # (backwards, the LIKE twin is not made again: nothing ever used it)
                    reverse_sql=[
                        'CREATE INDEX "executions_step_execution_id_0cf30c19" '
                        'ON "executions_step" ("execution_id")',
                        'CREATE INDEX "executions_step_status_e5ee43cd" '
                        'ON "executions_step" ("status")',
                        'CREATE INDEX "executions_execution_workflow_id_0c141a15" '
                        'ON "executions_execution" ("workflow_id")',
                    ],
                ),
            ],
        ),
    ]
