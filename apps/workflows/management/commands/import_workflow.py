from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.workflows.definition import DefinitionError, parse_document
from apps.workflows.management.commands._organization import (
    organization_option,
    resolve_organization,
)
from apps.workflows.services import import_workflow


class Command(BaseCommand):
    help = "Create or update (by slug) a workflow from a YAML or JSON definition file."

    def add_arguments(self, parser):
        parser.add_argument("file", help="Definition file (YAML or JSON); - reads standard input.")
        parser.add_argument(
            "--publish", action="store_true", help="Publish the draft as a new version."
        )
        organization_option(parser)

    def handle(self, *args, file, publish, organization, **options):
        if file == "-":
            import sys

            text = sys.stdin.read()
        else:
            path = Path(file)
            if not path.is_file():
                raise CommandError(f"No such file: {file}")
            text = path.read_text()
        try:
            document = parse_document(text)
            if isinstance(document, dict) and not organization:
                organization = document.get("organization")
            org = resolve_organization(organization, create_default=True)
            workflow, created = import_workflow(org, document, publish=publish)
        except DefinitionError as exc:
            raise CommandError(
                "Invalid definition:\n" + "\n".join(f"  {p}" for p in exc.problems)
            ) from None
        verb = "Created" if created else "Updated"
        published = f", published version {workflow.current_version.number}" if publish else ""
        self.stdout.write(self.style.SUCCESS(f"{verb} {workflow.slug} in {org.slug}{published}."))
