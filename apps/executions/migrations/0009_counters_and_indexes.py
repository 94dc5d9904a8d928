"""Step counters and the organization on executions, and indexes that match the lists.

Not atomic: existing rows are filled in batches of BATCH ids, each in its own transaction, so
a large history does not hold one long lock. The counting triggers exist before the fill, and
the fill writes absolute counts, so a step finishing meanwhile is not lost.
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models, transaction
from django.db.models import Case, Count, IntegerField, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce

BATCH = 10_000


def install_triggers(apps, schema_editor):
    """On PostgreSQL, before the fill (workers may run during a deploy). SQLite gets them from
    post_migrate (apps.py), after its table rebuilds."""
    from apps.executions import counters

    if schema_editor.connection.vendor == "postgresql":
        counters.install(schema_editor.connection)


def uninstall_triggers(apps, schema_editor):
    from apps.executions import counters

    counters.uninstall(schema_editor.connection)


def fill(apps, schema_editor):
    Execution = apps.get_model("executions", "Execution")
    Step = apps.get_model("executions", "Step")
    Workflow = apps.get_model("workflows", "Workflow")
    WorkflowVersion = apps.get_model("workflows", "WorkflowVersion")
    sizes = {}

    def count(statuses):
        rows = (
            Step.objects.filter(execution_id=OuterRef("pk"), status__in=statuses)
            .order_by()
            .values("execution_id")
            .annotate(n=Count("id"))
            .values("n")
        )
        return Coalesce(Subquery(rows, output_field=IntegerField()), Value(0))

    start = 0
    while True:
        ids = list(
            Execution.objects.filter(pk__gt=start).order_by("pk").values_list("pk", flat=True)[
                BATCH - 1 : BATCH
            ]
        )
        end = ids[0] if ids else None
        batch = Execution.objects.filter(pk__gt=start)
        if end is not None:
            batch = batch.filter(pk__lte=end)
        versions = set(batch.order_by().values_list("version_id", flat=True).distinct())
        for version in WorkflowVersion.objects.filter(pk__in=versions - sizes.keys()):
            sizes[version.pk] = len((version.definition or {}).get("nodes", []))
        with transaction.atomic(using=schema_editor.connection.alias):
            batch.update(
                organization_id=Subquery(
                    Workflow.objects.filter(pk=OuterRef("workflow_id")).values("organization_id")
                ),
                steps_total=Case(
                    *[When(version_id=v, then=Value(sizes[v])) for v in versions],
                    default=Value(0),
                ),
                steps_completed=count(["completed"]),
                steps_failed=count(["failed", "timeout"]),
                steps_skipped=count(["skipped"]),
            )
        if end is None:
            break
        start = end


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("accounts", "0003_audit_entry"),
        ("executions", "0008_step_unsent_since"),
        ("workflows", "0002_triggers"),
    ]

    operations = [
        migrations.AddField(
            model_name="execution",
            name="organization",
            field=models.ForeignKey(
                db_index=False,
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="accounts.organization",
            ),
        ),
        migrations.AddField(
            model_name="execution",
            name="steps_completed",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="execution",
            name="steps_failed",
            field=models.PositiveIntegerField(
                default=0, editable=False, help_text="Attempts that failed or timed out."
            ),
        ),
        migrations.AddField(
            model_name="execution",
            name="steps_skipped",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="execution",
            name="steps_total",
            field=models.PositiveIntegerField(
                default=0,
                editable=False,
                help_text="Nodes in the version: each completes at most once.",
            ),
        ),
        migrations.RunPython(install_triggers, uninstall_triggers),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="execution",
            name="organization",
            field=models.ForeignKey(
                db_index=False,
                editable=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="accounts.organization",
            ),
        ),
        migrations.AlterField(
            model_name="execution",
            name="created_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AlterField(
            model_name="execution",
            name="status",
            field=models.CharField(
                choices=[
                    ("scheduled", "Scheduled"),
                    ("pending", "Pending"),
                    ("running", "Running"),
                    ("paused", "Paused"),
                    ("retrying", "Retrying"),
                    ("interrupted", "Interrupted"),
                    ("incomplete", "Incomplete"),
                    ("completed", "Completed"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                ],
                default="pending",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="execution",
            index=models.Index(
                fields=["-created_at", "-id"], include=["organization"], name="execution_recent"
            ),
        ),
        migrations.AddIndex(
            model_name="execution",
            index=models.Index(
                fields=["organization", "-created_at", "-id"], name="execution_org_recent"
            ),
        ),
        migrations.AddIndex(
            model_name="execution",
            index=models.Index(
                fields=["workflow", "-created_at", "-id"],
                include=["organization"],
                name="execution_wf_recent",
            ),
        ),
        migrations.AddIndex(
            model_name="execution",
            index=models.Index(
                fields=["status", "-created_at", "-id"],
                include=["organization"],
                name="execution_status_recent",
            ),
        ),
    ]
