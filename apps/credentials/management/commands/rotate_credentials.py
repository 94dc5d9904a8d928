from django.core.management.base import BaseCommand, CommandError

from apps.credentials.services import rotate_credentials


class Command(BaseCommand):
    help = (
        "Encrypt every credential again with the first key of OPSFLOW_SECRETS_KEYS. Put the new "
        "key first, keep the old ones after it, run this, then remove the old keys."
    )

    def handle(self, *args, **options):
        rotated, unreadable = rotate_credentials()
        self.stdout.write(f"{rotated} credential(s) now encrypted with the first key.")
        if unreadable:
            raise CommandError(
                "No key in OPSFLOW_SECRETS_KEYS opens: "
                + ", ".join(unreadable)
                + ". Add the key they were saved with, or set these values again."
            )
