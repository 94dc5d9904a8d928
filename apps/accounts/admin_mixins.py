"""Organization scoping and role checks for ModelAdmins, the same rules as the API."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.http import Http404
from django.shortcuts import get_object_or_404

from apps.accounts.choices import CAN_EDIT, CAN_READ
from apps.accounts.pagination import EstimatingPaginator
from apps.accounts.permissions import (
    has_role,
    holds_role_anywhere,
    scope_to_user,
)


def row_or_404(queryset, object_id):
    """The row with this id in `queryset` (the user's scope), or 404: an id that is no number
    (`/executions/execution/abc/change/`) is a missing row, not a server error."""
    if not str(object_id).isdigit():
        raise Http404(f"No row with id {object_id!r}.")
    return get_object_or_404(queryset, pk=object_id)


class MissingIs404:
    """Django's own change, delete and history views answer a missing (or out of scope, or
    malformed) id with a redirect to the admin index; here it is a 404 like everywhere else."""

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404(f"No {opts.verbose_name} with id {object_id!r} in your organizations.")


class OrganizationScopedAdmin(MissingIs404):
    """Rows of the user's organizations only; viewers read, editors change.

    Subclasses set `organization_field` (the lookup to the row's organization) and may set
    `change_role`.
    """

    organization_field = "organization"
    change_role = CAN_EDIT

    def organization_of(self, obj):
        target = obj
        for part in self.organization_field.split("__"):
            target = getattr(target, part)
        return target

    def get_queryset(self, request):
        return scope_to_user(super().get_queryset(request), request.user, self.organization_field)

    def has_module_permission(self, request):
        return holds_role_anywhere(request.user, CAN_READ)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return self.has_module_permission(request)
        return has_role(request.user, self.organization_of(obj), CAN_READ)

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return holds_role_anywhere(request.user, self.change_role)
        return has_role(request.user, self.organization_of(obj), self.change_role)

    def has_add_permission(self, request):
        return holds_role_anywhere(request.user, self.change_role)

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)


class FormWithUser:
    """The admin's form gets `user=request.user` (it limits choices to the user's organizations)."""

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        user = request.user

        class WithUser(form_class):
            def __init__(self, *args, **kw):
                super().__init__(*args, user=user, **kw)

        return WithUser


class ReadOnlyAdmin:
    """Rows that change only through services (transitions), never through an admin form."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class VolumeChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer(*self.model_admin.list_defer)


class VolumeListMixin:
    """A changelist that stays fast over millions of rows: no exact count of the table, no
    facet counts, a paginator that estimates past OPSFLOW_EXACT_COUNT_MAX, and rows that leave
    out the JSON documents a row does not show (`list_defer`)."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatingPaginator
    list_defer: list[str] = []

    def get_changelist(self, request, **kwargs):
        return VolumeChangeList
