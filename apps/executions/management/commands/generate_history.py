from django.core.management.base import BaseCommand, CommandError

from apps.executions.history import ORG_PREFIX, Options, foreign_executions, generate


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Fill the database with realistic execution history for benchmarks: organizations "
        f"{ORG_PREFIX}1…K, workflows, and executions with steps, events, incomplete records and "
        "approvals (COPY on PostgreSQL). See apps/executions/history.py."
    )

    def add_arguments(self, parser):
        parser.add_argument("--executions", type=positive, required=True)
        parser.add_argument(
            "--steps-per-execution",
            type=positive,
            default=5,
            help="Nodes in each new workflow's chain (existing workflows keep theirs).",
        )
        parser.add_argument("--workflows", type=positive, default=10)
        parser.add_argument("--organizations", type=positive, default=2)
        parser.add_argument("--days", type=positive, default=365, help="History ends now.")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--batch-size", type=positive, default=10_000)
        parser.add_argument(
            "--force",
            action="store_true",
            help="Run even though the database holds executions this command did not make.",
        )

    def handle(self, *args, force, **options):
        foreign = foreign_executions()
        if foreign and not force:
            raise CommandError(
                f"The database holds {foreign} execution(s) outside the {ORG_PREFIX}* "
                "organizations, which generate_history did not make. Use a benchmark database, "
                "or pass --force to add history next to them."
            )
        report = generate(
            Options(
                executions=options["executions"],
                steps_per_execution=options["steps_per_execution"],
                workflows=options["workflows"],
                organizations=options["organizations"],
                days=options["days"],
                seed=options["seed"],
                batch_size=options["batch_size"],
            ),
            progress=self.stdout.write,
        )
        rows = ", ".join(f"{count:,} {name}" for name, count in report.rows.items())
        self.stdout.write(
            self.style.SUCCESS(
                f"Generated {rows} in {report.seconds:.1f} s ({report.rate:,.0f} executions/s)."
            )
        )
