"""Who may do what: organization scoping and role checks, shared by admin, API and commands."""

from __future__ import annotations

from contextvars import ContextVar

from django.db.models import QuerySet

from apps.accounts.choices import ROLE_RANK, Role
from apps.accounts.models import Membership, Organization

# The user's roles as read once in this request (RolesMiddleware); None outside a request, where
# every check asks the database.
_roles: ContextVar[dict | None] = ContextVar("opsflow_request_roles", default=None)


class RolesMiddleware:
    """Remember each role looked up while one request is served: an admin page checks the same
    user's roles once per model in the sidebar and once per row (an approval inbox), and
    without this each check is a query."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _roles.set({})
        try:
            return self.get_response(request)
        finally:
            _roles.reset(token)


def _remembered(key, look_up):
    memo = _roles.get()
    if memo is None:
        return look_up()
    if key not in memo:
        memo[key] = look_up()
    return memo[key]


def group_names_of(user) -> frozenset[str]:
    """The names of the user's Django groups (approvers may be named as `group:<name>`)."""
    return _remembered(
        ("groups", user.pk), lambda: frozenset(user.groups.values_list("name", flat=True))
    )


def holds_role_anywhere(user, role: str = Role.VIEWER) -> bool:
    """Whether the user holds at least `role` in some organization (admin module permissions)."""
    return bool(organization_ids_for(user, role))  # the ids the lists scope by, read once


def organizations_for(user, role: str = Role.VIEWER) -> QuerySet[Organization]:
    """Organizations where the user holds at least `role`; superusers get all of them."""
    if not user or not user.is_authenticated:
        return Organization.objects.none()
    if user.is_superuser:
        return Organization.objects.all()
    org_ids = Membership.objects.filter(user=user).at_least(role).values("organization_id")
    return Organization.objects.filter(pk__in=org_ids)


def scope_to_user(queryset: QuerySet, user, field: str = "organization") -> QuerySet:
    """Limit a queryset to rows of the user's organizations (the read scope)."""
    if user.is_superuser:
        return queryset
    return queryset.filter(**{f"{field}__in": organization_ids_for(user)})


def organization_ids_for(user, role: str = Role.VIEWER) -> list[int]:
    """The ids of organizations_for(user, role), read once per request.

    Lists filter on these constants rather than on a subquery: PostgreSQL then estimates the
    rows from the column's statistics and picks the index that serves the order, where a
    subquery over a handful of organizations (a table too small for autovacuum ever to
    analyze) led it to scan and sort whole organizations."""
    if not user or not user.is_authenticated:
        return []
    return _remembered(
        ("ids", user.pk, role),
        lambda: list(organizations_for(user, role).order_by().values_list("pk", flat=True)),
    )


def role_in(user, organization: Organization) -> str | None:
    if user.is_superuser:
        return Role.ADMIN
    return _remembered(
        ("in", user.pk, organization.pk),
        lambda: (
            Membership.objects.filter(user=user, organization=organization)
            .values_list("role", flat=True)
            .order_by("pk")  # not Meta.ordering, which joins the organization for its name
            .first()
        ),
    )


def is_member(user, organization: Organization) -> bool:
    """A member of the organization, in any role (superusers count as members of all)."""
    return role_in(user, organization) is not None


def has_role(user, organization: Organization, role: str) -> bool:
    held = role_in(user, organization)
    return held is not None and ROLE_RANK[Role(held)] >= ROLE_RANK[Role(role)]


def rq_dashboard(view):
    """A view of RQ's dashboard: it shows every organization's jobs, so superusers only (others
    get the login page when anonymous, 403 otherwise). The embedded default has none (404): its
    queues live in the memory of the one process, where the dashboard cannot look."""
    from functools import wraps

    from django.conf import settings
    from django.contrib.auth.views import redirect_to_login
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    @wraps(view)
    def checked(request, *args, **kwargs):
        if not settings.REDIS_URL:
            raise Http404("The RQ dashboard needs REDIS_URL; the embedded default has none.")
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_superuser:
            raise PermissionDenied("The RQ dashboard shows every organization: superusers only.")
        return view(request, *args, **kwargs)

    return checked
