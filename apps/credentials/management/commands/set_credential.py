import sys

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import Organization
from apps.credentials.models import Credential
from apps.credentials.services import CredentialInvalid, create_credential, update_credential


class Command(BaseCommand):
    help = (
        "Create or change a credential from standard input (never an argument: a process "
        "list would show it), e.g. `manage.py set_credential --organization demo KEY "
        "--allowed-host 10.0.0.5:22 < ~/.ssh/id_ed25519`."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--organization", required=True, metavar="SLUG")
        parser.add_argument(
            "--allowed-host",
            action="append",
            default=None,
            metavar="HOST[:PORT]",
            help="Where it may be sent (repeat for several); kept as it was when left out.",
        )
        parser.add_argument("--description", default=None)

    def handle(self, *args, name, organization, allowed_host, description, **options):
        org = Organization.objects.filter(slug=organization).first()
        if org is None:
            raise CommandError(f"no organization {organization!r}")
        value = sys.stdin.read().strip("\r\n")
        if not value:
            raise CommandError("the value comes on standard input, and it was empty")
        fields = {"value": value}
        if allowed_host is not None:
            fields["allowed_hosts"] = allowed_host
        if description is not None:
            fields["description"] = description
        existing = Credential.objects.filter(organization=org, name=name).first()
        try:
            if existing is None:
                create_credential(org, None, name=name, **fields)
                verb = "Created"
            else:
                update_credential(existing, None, **fields)
                verb = "Changed"
        except CredentialInvalid as exc:
            problems = "; ".join(f"{k}: {v}" for k, v in exc.problems.items())
            raise CommandError(problems) from None
        self.stdout.write(self.style.SUCCESS(f"{verb} credential {name} of {organization}."))
