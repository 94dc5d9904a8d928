from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import Organization
from apps.analytics import rollup


class Command(BaseCommand):
    help = (
        "Roll up every past day again from the executions (the analytics summary's daily "
        "rollup; the scheduler keeps it up to date every minute)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--organization", action="append", metavar="SLUG", help="Only this organization."
        )

    def handle(self, *args, organization, verbosity, **options):
        organizations = Organization.objects.order_by("pk")
        if organization:
            organizations = organizations.filter(slug__in=organization)
            missing = set(organization) - set(organizations.values_list("slug", flat=True))
            if missing:
                raise CommandError(f"no organization {', '.join(sorted(missing))}")
        ids = list(organizations.values_list("pk", flat=True))
        rollup.forget_organizations(ids)

        def progress(pk: int, day) -> None:
            if verbosity > 1:
                self.stdout.write(f"  organization {pk}: {day} rolled")

        rolled = rollup.fold(organization_ids=ids, progress=progress)
        if rolled is None:
            raise CommandError("another fold is at work: try again when it ends.")
        self.stdout.write(
            self.style.SUCCESS(f"Rolled {rolled} day(s) of {len(ids)} organization(s).")
        )
