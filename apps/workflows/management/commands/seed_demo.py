from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.accounts.models import Organization
from apps.workflows.definition import parse_document
from apps.workflows.services import import_workflow

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"


class Command(BaseCommand):
    help = "Create the demo organization and publish the demo workflows (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--base-url",
            default=settings.OPSFLOW_BASE_URL or settings.DEFAULT_BASE_URL,
            help="The portal's own URL, used by the health-check demo.",
        )

    def handle(self, *args, base_url, **options):
        org, _ = Organization.objects.get_or_create(slug="demo", defaults={"name": "Demo"})
        for path in sorted(DEMO_DIR.glob("*.yaml")):
            document = parse_document(path.read_text())
            if "base_url" in (document.get("variables") or {}):
                document["variables"]["base_url"]["default"] = base_url.rstrip("/")
            workflow, created = import_workflow(org, document, publish=True)
            verb = "created" if created else "updated"
            self.stdout.write(
                f"Demo workflow {workflow.slug} {verb} (version {workflow.current_version.number})."
            )
