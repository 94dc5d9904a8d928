from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.matrix import markdown


class Command(BaseCommand):
    help = "Write docs/permissions.md from apps/accounts/matrix.py (--check: only compare)."

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="Fail if the page is stale.")

    def handle(self, *args, check, **options):
        page = Path(settings.BASE_DIR) / "docs" / "permissions.md"
        text = markdown()
        if check:
            if not page.exists() or page.read_text() != text:
                raise CommandError(f"{page} is stale: run python manage.py permissions_doc")
            self.stdout.write(f"{page} is up to date.")
            return
        page.write_text(text)
        self.stdout.write(f"Wrote {page}.")
