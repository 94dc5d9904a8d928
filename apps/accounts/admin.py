from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from unfold.admin import ModelAdmin, TabularInline
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

from apps.accounts.admin_mixins import MissingIs404, ReadOnlyAdmin
from apps.accounts.choices import Role
from apps.accounts.models import AuditEntry, Membership, Organization
from apps.accounts.permissions import has_role, holds_role_anywhere, organizations_for


class MembershipInline(TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(MissingIs404, ModelAdmin):
    list_display = ["name", "slug", "time_zone", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]

    def has_module_permission(self, request):
        return request.user.is_superuser


@admin.register(AuditEntry)
class AuditEntryAdmin(MissingIs404, ReadOnlyAdmin, ModelAdmin):
    """Read-only. Admins of an organization see its entries; superusers see all, logins too."""

    list_display = ["created_at", "actor_name", "action", "object_repr", "organization", "address"]
    list_filter = [
        "action",
        "actor_name",
        "object_type",
        ("organization", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    search_fields = ["actor_name", "object_repr", "object_id", "action"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def get_queryset(self, request):
        queryset = super().get_queryset(request).select_related("organization", "actor")
        if request.user.is_superuser:
            return queryset
        return queryset.filter(organization__in=organizations_for(request.user, Role.ADMIN))

    def has_module_permission(self, request):
        return holds_role_anywhere(request.user, Role.ADMIN)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return self.has_module_permission(request)
        return request.user.is_superuser or (
            obj.organization is not None and has_role(request.user, obj.organization, Role.ADMIN)
        )


# Django's user and group pages, in the portal's look (unfold's forms and widgets).
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(BaseUserAdmin, ModelAdmin):
    filter_horizontal = ()  # Django's two-box widget overflows unfold's form: plain multi-selects
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin, ModelAdmin):
    filter_horizontal = ()
