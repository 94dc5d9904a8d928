"""DRF permission: each action needs a role in the object's organization."""

from rest_framework.permissions import BasePermission

from apps.accounts.choices import CAN_READ
from apps.accounts.permissions import has_role


class OrganizationRole(BasePermission):
    """Views set `action_roles = {"create": Role.EDITOR, ...}`; other actions need CAN_READ.

    Objects outside the user's organizations never reach this check: querysets are scoped, so they
    answer 404. Inside them, a role that is too low answers 403.
    """

    message = "Your role in this organization does not allow this action."

    def has_object_permission(self, request, view, obj):
        needed = getattr(view, "action_roles", {}).get(view.action, CAN_READ)
        organization = view.organization_of(obj)
        allowed = has_role(request.user, organization, needed)
        if not allowed:
            self.message = f"This needs the {needed} role (or higher) in {organization.slug}."
        return allowed
