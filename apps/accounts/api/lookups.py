"""Finding one row of the user's organizations by a name that is unique per organization, and
the organization a new row goes to: the same answers for every endpoint."""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError

from apps.accounts.models import Organization
from apps.accounts.permissions import organizations_for


def one_of_organizations(request, queryset: QuerySet, field: str, value: str, what: str):
    """The row whose `field` is `value`, narrowed by ?organization=<slug> when the user's
    organizations have several (400 then names the parameter); 404 when there is none."""
    matches = queryset.filter(**{field: value})
    organization = request.query_params.get("organization")
    if organization:
        matches = matches.filter(organization__slug=organization)
    found = list(matches[:2])
    if not found:
        raise NotFound(f"No {what} {value!r} in your organizations.")
    if len(found) > 1:
        raise ValidationError(
            {
                "organization": f"several of your organizations have this {field}; "
                "add ?organization=<slug>"
            }
        )
    return found[0]


def organization_for_create(user, slug: object, role: str) -> Organization:
    """Where a new row goes: the organization named by `slug`, or the user's only one. 403 when
    the user's role there is below `role`, 400 when it cannot be told."""
    allowed = organizations_for(user, role)
    if slug is not None:
        if not isinstance(slug, str):
            raise ValidationError({"organization": "must be an organization slug"})
        organization = allowed.filter(slug=slug).first()
        if organization is None:
            if organizations_for(user).filter(slug=slug).exists():
                raise PermissionDenied(f"This needs the {role} role (or higher) in {slug}.")
            raise ValidationError(
                {"organization": f"you are not a member of an organization {slug!r}"}
            )
        return organization
    options = list(organizations_for(user)[:2])
    if not options:
        raise ValidationError({"organization": "you are not a member of any organization"})
    if len(options) > 1:
        raise ValidationError({"organization": "required: you belong to several organizations"})
    if not allowed.filter(pk=options[0].pk).exists():
        raise PermissionDenied(f"This needs the {role} role (or higher) in {options[0].slug}.")
    return options[0]
