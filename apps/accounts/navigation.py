"""The portal's sidebar (django-unfold's SIDEBAR navigation), built per request: an entry shows
only when the user may open its page, by the same ModelAdmin checks the page itself makes."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import reverse


def _model_admin(model_label: str):
    from django.apps import apps

    return admin.site._registry.get(apps.get_model(model_label))


def _may_view(model_label: str):
    def check(request) -> bool:
        model_admin = _model_admin(model_label)
        return bool(
            model_admin
            and model_admin.has_module_permission(request)
            and model_admin.has_view_permission(request)
        )

    return check


def _item(title: str, icon: str, url_name: str, model_label: str, **extra) -> dict:
    return {
        "title": title,
        "icon": icon,
        "link": reverse(url_name),
        "permission": _may_view(model_label),
        **extra,
    }


def sidebar(request) -> list[dict]:
    """Automation (what operators live in) first, then the administration pages."""
    from apps.approvals.context_processors import inbox_count

    waiting = inbox_count(request)
    automation = [
        {
            "title": "Dashboard",
            "icon": "monitoring",
            "link": reverse("admin:index"),
        },
        _item(
            "Workflows", "account_tree", "admin:workflows_workflow_changelist", "workflows.Workflow"
        ),
        _item(
            "Executions",
            "play_circle",
            "admin:executions_execution_changelist",
            "executions.Execution",
        ),
        _item(
            "Pending approvals",
            "approval_delegation",
            "admin:approvals_approval_inbox",
            "approvals.Approval",
            badge=str(waiting) if waiting else None,
            badge_variant="primary",
        ),
        _item(
            "Incomplete executions",
            "build_circle",
            "admin:executions_incompleteexecution_changelist",
            "executions.IncompleteExecution",
        ),
        _item(
            "Incident deliveries",
            "notification_important",
            "admin:workflows_incidentdelivery_changelist",
            "workflows.IncidentDelivery",
        ),
        _item("Agents", "dns", "admin:executions_agent_changelist", "executions.Agent"),
        # the figures of the executions the user may read
        _item("Analytics", "insights", "admin:analytics", "executions.Execution"),
        _item(
            "Credentials",
            "key",
            "admin:credentials_credential_changelist",
            "credentials.Credential",
        ),
        _item("Audit", "history", "admin:accounts_auditentry_changelist", "accounts.AuditEntry"),
    ]
    administration = [
        _item(
            "All approvals",
            "fact_check",
            "admin:approvals_approval_changelist",
            "approvals.Approval",
        ),
        _item(
            "Organizations",
            "corporate_fare",
            "admin:accounts_organization_changelist",
            "accounts.Organization",
        ),
        _item("Users", "person", "admin:auth_user_changelist", "auth.User"),
        _item("Groups", "group", "admin:auth_group_changelist", "auth.Group"),
    ]
    if settings.REDIS_URL:  # the embedded default's queues live in memory: no RQ dashboard
        administration.append(
            {
                "title": "RQ queues",
                "icon": "stacks",
                "link": reverse("django_rq:home"),
                "permission": lambda request: request.user.is_superuser,
            }
        )
    for entry in (*automation, *administration):
        entry.setdefault("badge", None)
    return [
        {"title": "Automation", "separator": False, "items": automation},
        {
            "title": "Administration",
            "separator": True,
            "collapsible": True,
            "items": administration,
        },
    ]
