from __future__ import annotations

from django.contrib import admin, messages
from unfold.admin import ModelAdmin

from apps.accounts.admin_mixins import FormWithUser, OrganizationScopedAdmin
from apps.accounts.choices import CAN_EDIT
from apps.accounts.permissions import has_role, holds_role_anywhere, organizations_for
from apps.credentials.forms import CredentialForm
from apps.credentials.models import Credential
from apps.credentials.services import (
    CredentialInvalid,
    create_credential,
    delete_credential,
    update_credential,
)


@admin.register(Credential)
class CredentialAdmin(FormWithUser, OrganizationScopedAdmin, ModelAdmin):
    """Editors and admins only, even to read: the names and hosts tell where production is."""

    form = CredentialForm
    list_display = ["name", "organization", "hosts", "description", "updated_at", "updated_by"]
    list_filter = [("organization", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at", "created_by", "updated_at", "updated_by"]
    actions = ["delete_selected"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .filter(organization__in=organizations_for(request.user, CAN_EDIT))
        )

    def has_module_permission(self, request):
        return holds_role_anywhere(request.user, CAN_EDIT)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return self.has_module_permission(request)
        return has_role(request.user, obj.organization, CAN_EDIT)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return self.readonly_fields
        return ["name", *self.readonly_fields]  # templates refer to it

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["organization", "name", "value", "hosts", "description"]
        return ["name", "value", "hosts", "description", *self.readonly_fields]

    @admin.display(description="Allowed hosts")
    def hosts(self, obj):
        return ", ".join(obj.allowed_hosts) or "none"

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        fields = {"allowed_hosts": data["hosts"], "description": data.get("description", "")}
        try:
            if change:
                if data["value"]:
                    fields["value"] = data["value"]
                update_credential(obj, request.user, **fields)
            else:
                created = create_credential(
                    data["organization"],
                    request.user,
                    name=data["name"],
                    value=data["value"],
                    **fields,
                )
                obj.pk = created.pk
        except CredentialInvalid as exc:  # a race past the form's checks (a duplicate name)
            messages.error(request, str(exc))

    def delete_model(self, request, obj):
        delete_credential(obj, request.user)

    def delete_queryset(self, request, queryset):
        for credential in queryset:
            delete_credential(credential, request.user)
