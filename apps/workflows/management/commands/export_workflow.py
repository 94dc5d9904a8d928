from django.core.management.base import BaseCommand, CommandError

from apps.workflows.definition import dump_document
from apps.workflows.management.commands._organization import (
    organization_option,
    resolve_organization,
)
from apps.workflows.models import Workflow


class Command(BaseCommand):
    help = "Print a workflow's definition (the draft, or a published version) as YAML or JSON."

    def create_parser(self, prog_name, subcommand, **kwargs):
        # Our --version (a workflow version) replaces Django's --version (the Django release).
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--format", choices=["yaml", "json"], default="yaml")
        parser.add_argument(
            "--version", type=int, help="A published version number instead of the draft."
        )
        organization_option(parser)

    def handle(self, *args, slug, format, version, organization, **options):
        org = resolve_organization(organization)
        workflow = Workflow.objects.filter(organization=org, slug=slug).first()
        if workflow is None:
            raise CommandError(f"No workflow {slug!r} in {org.slug}.")
        definition = workflow.draft
        if version is not None:
            found = workflow.versions.filter(number=version).first()
            if found is None:
                raise CommandError(f"{slug} has no version {version}.")
            definition = found.definition
        self.stdout.write(
            dump_document(definition, format), ending="" if format == "yaml" else "\n"
        )
