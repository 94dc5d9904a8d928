from django.core.management.base import BaseCommand

from apps.executions.retention import prune_executions


class Command(BaseCommand):
    help = "Delete finished executions older than their workflow's retention (the scheduler runs this daily)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def handle(self, *args, dry_run, verbosity, **options):
        self.verbosity = verbosity

        def progress(workflow: str, deleted: int) -> None:
            if self.verbosity > 1:
                self.stdout.write(f"  {workflow}: {deleted} deleted so far")

        counts = prune_executions(dry_run=dry_run, progress=progress)
        verb = "Would delete" if dry_run else "Deleted"
        for workflow, count in sorted(counts.items()):
            self.stdout.write(f"{verb} {count} execution(s) of {workflow}")
        self.stdout.write(self.style.SUCCESS(f"{verb} {sum(counts.values())} execution(s) in all."))
