"""Shared by the workflow commands: pick the organization from --organization or the only one."""

from django.core.management.base import CommandError

from apps.accounts.models import Organization


def organization_option(parser) -> None:
    parser.add_argument("--organization", help="Organization slug (needed when there are several).")


def resolve_organization(slug: str | None, create_default: bool = False) -> Organization:
    if slug:
        try:
            return Organization.objects.get(slug=slug)
        except Organization.DoesNotExist:
            raise CommandError(f"No organization with slug {slug!r}.") from None
    organizations = list(Organization.objects.all()[:2])
    if not organizations and create_default:
        return Organization.objects.create(slug="default", name="Default")
    if len(organizations) != 1:
        raise CommandError("Several (or no) organizations exist; pass --organization <slug>.")
    return organizations[0]
