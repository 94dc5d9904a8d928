from django.db import models


class Role(models.TextChoices):
    """A member's role in an organization; each role includes the ones before it."""

    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    EDITOR = "editor", "Editor"
    ADMIN = "admin", "Admin"


ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.EDITOR: 2, Role.ADMIN: 3}

# What each capability needs at least.
CAN_READ = Role.VIEWER
CAN_EXECUTE = Role.OPERATOR  # "execute automation": trigger, cancel, approve
CAN_EDIT = Role.EDITOR  # edit drafts, publish, import
