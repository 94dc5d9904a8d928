"""Who may do what: the one table behind docs/permissions.md and the test that checks every
cell of it against the API and the admin (issue 9 item 9). Change a rule here, run
`python manage.py permissions_doc`, and the test tells whether the product agrees.
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.accounts.choices import CAN_EDIT, CAN_EXECUTE, CAN_READ, Role

# The columns: the four roles of a member, a superuser, and an admin of another organization.
ROLES = ("viewer", "operator", "editor", "admin", "superuser", "outsider")
_RANK = {"viewer": 0, "operator": 1, "editor": 2, "admin": 3, "superuser": 4}
SUPERUSER = "superuser"
NOBODY = "nobody"


@dataclass(frozen=True)
class Action:
    key: str
    what: str
    needs: str  # the lowest role that may: a Role, SUPERUSER, or NOBODY
    api: tuple[str, ...] = ()  # "METHOD /api/v1/…/" endpoints that do it
    admin: tuple[str, ...] = ()  # admin views (URL names) and list actions that do it
    other: tuple[str, ...] = ()  # other channels: the webhook, the emailed link, /django-rq/
    note: str = ""
    shared: bool = False  # not one organization's: an outsider's own role counts

    def allows(self, role: str) -> bool:
        if self.needs == NOBODY or (role == "outsider" and not self.shared):
            return False
        if role == "outsider":
            role = "admin"  # the outsider is an admin of their own organization
        return _RANK[role] >= _RANK[self.needs]


ACTIONS: tuple[Action, ...] = (
    Action(
        "workflows.read",
        "Read workflows, their definitions and versions",
        CAN_READ,
        api=(
            "GET /api/v1/workflows/",
            "GET /api/v1/workflows/{slug}/",
            "GET /api/v1/workflows/{slug}/versions/",
        ),
        admin=(
            "workflows_workflow_changelist",
            "workflows_workflow_change",
            "workflows_workflow_diff",
        ),
    ),
    Action(
        "workflows.webhook_url",
        "See the webhook URL (it is the key that triggers the workflow)",
        CAN_EXECUTE,
        other=("`webhook_url` in the workflow API", "the webhook path on the admin page"),
        note="Whoever holds the URL can trigger: it is shown only to those who may trigger.",
    ),
    Action(
        "workflows.trigger",
        "Trigger a run",
        CAN_EXECUTE,
        api=("POST /api/v1/workflows/{slug}/trigger/",),
        admin=("workflows_workflow_run",),
        other=(
            "POST /hooks/{key}/ (anyone holding the URL, signed when a secret is set)",
            "POST /hooks/{key}/incident/ (an incident trigger's alerts: the same key and secret)",
        ),
    ),
    Action(
        "workflows.create",
        "Create a workflow (or import one)",
        CAN_EDIT,
        api=("POST /api/v1/workflows/",),
        admin=("workflows_workflow_add",),
    ),
    Action(
        "workflows.edit",
        "Edit a workflow's draft, name or active flag",
        CAN_EDIT,
        api=("PATCH /api/v1/workflows/{slug}/", "PUT /api/v1/workflows/{slug}/draft/"),
        admin=("workflows_workflow_change (save)",),
    ),
    Action(
        "workflows.publish",
        "Publish the draft as a new version",
        CAN_EDIT,
        api=("POST /api/v1/workflows/{slug}/publish/",),
        admin=("workflows_workflow_publish", "publish_selected"),
    ),
    Action(
        "workflows.delete",
        "Delete a workflow (refused while it has executions)",
        CAN_EDIT,
        api=("DELETE /api/v1/workflows/{slug}/",),
        admin=("workflows_workflow_delete",),
    ),
    Action(
        "workflows.webhook_secret",
        "Set, rotate or remove the webhook secret; rotate the webhook key",
        CAN_EDIT,
        admin=("workflows_workflow_change (webhook secret)", "workflows_workflow_rotate_webhook"),
        note="The secret is write-only: nobody sees it again once saved.",
    ),
    Action(
        "executions.read",
        "Read executions, their steps (secrets masked) and their log",
        CAN_READ,
        api=(
            "GET /api/v1/executions/",
            "GET /api/v1/executions/{pk}/",
            "GET /api/v1/executions/{pk}/events/",
            "GET /api/v1/executions/{pk}/stream/",
        ),
        admin=(
            "executions_execution_changelist",
            "executions_execution_change",
            "executions_execution_step",
            "executions_execution_step_download",
        ),
    ),
    Action(
        "executions.cancel",
        "Cancel a run",
        CAN_EXECUTE,
        api=("POST /api/v1/executions/{pk}/cancel/", "POST /api/v1/executions/bulk-cancel/"),
        admin=("executions_execution_cancel", "cancel_selected"),
    ),
    Action(
        "executions.retrigger",
        "Re-trigger a finished run with its variables",
        CAN_EXECUTE,
        api=(
            "POST /api/v1/executions/{pk}/retrigger/",
            "POST /api/v1/executions/bulk-retrigger/",
        ),
        admin=("executions_execution_retrigger", "retrigger_selected"),
    ),
    Action(
        "executions.mark_succeeded",
        "Mark a failed step succeeded (with an output) and go on",
        CAN_EXECUTE,
        api=("POST /api/v1/executions/{pk}/steps/{step_id}/mark-succeeded/",),
        admin=("executions_execution_mark_succeeded",),
    ),
    Action(
        "executions.delete",
        "Hard-delete an execution or a step",
        NOBODY,
        admin=("executions_execution_delete",),
        note="Retention (`prune_executions`) removes finished runs; nothing else does.",
    ),
    Action(
        "incomplete.read",
        "Read incomplete executions, their bundles and blueprint (secrets masked)",
        CAN_READ,
        api=("GET /api/v1/incomplete-executions/", "GET /api/v1/incomplete-executions/{pk}/"),
        admin=(
            "executions_incompleteexecution_changelist",
            "executions_incompleteexecution_change",
        ),
    ),
    Action(
        "incomplete.retry",
        "Resolve: retry an incomplete execution, as is or edited, one or in bulk",
        CAN_EXECUTE,
        api=(
            "POST /api/v1/incomplete-executions/{pk}/retry/",
            "POST /api/v1/incomplete-executions/bulk-retry/",
        ),
        admin=("executions_incompleteexecution_change (retry)", "retry_selected"),
    ),
    Action(
        "incomplete.discard",
        "Discard an incomplete execution (through the service: the run is failed and logged)",
        CAN_EXECUTE,
        api=(
            "DELETE /api/v1/incomplete-executions/{pk}/",
            "POST /api/v1/incomplete-executions/bulk-discard/",
        ),
        admin=("executions_incompleteexecution_change (discard)", "discard_selected"),
    ),
    Action(
        "incomplete.hard_delete",
        "Hard-delete an incomplete-execution record",
        SUPERUSER,
        admin=("executions_incompleteexecution_delete", "delete_selected"),
    ),
    Action(
        "approvals.read",
        "Read approvals",
        CAN_READ,
        api=("GET /api/v1/approvals/", "GET /api/v1/approvals/{pk}/"),
        admin=(
            "approvals_approval_changelist",
            "approvals_approval_change",
        ),
    ),
    Action(
        "approvals.decide",
        "Approve or reject a gate that names no approvers",
        CAN_EXECUTE,
        api=("POST /api/v1/approvals/{pk}/approve/", "POST /api/v1/approvals/{pk}/reject/"),
        admin=(
            "approvals_approval_inbox (lists the gates you may decide)",
            "approvals_approval_decide (inbox, approval page, execution page)",
        ),
        other=("the emailed link (bound to one approver)",),
        note="A gate that names approvers (users or `group:NAME`) is decided by exactly those "
        "who are members of the workflow's organization, in any role, a viewer included, on "
        "every channel.",
    ),
    Action(
        "credentials.manage",
        "List, create, change (rotate) and delete credentials",
        CAN_EDIT,
        api=(
            "GET /api/v1/credentials/",
            "POST /api/v1/credentials/",
            "GET /api/v1/credentials/{name}/",
            "PATCH /api/v1/credentials/{name}/",
            "DELETE /api/v1/credentials/{name}/",
        ),
        admin=(
            "credentials_credential_changelist",
            "credentials_credential_add",
            "credentials_credential_change",
            "credentials_credential_delete",
            "delete_selected",
        ),
        note="A value is write-only: no answer or page shows it after saving.",
    ),
    Action(
        "incidents.read",
        "Read what the incident triggers of your organizations' workflows received: the run "
        "each alert started, or why it was skipped",
        CAN_READ,
        admin=("workflows_incidentdelivery_changelist", "workflows_incidentdelivery_change"),
    ),
    Action(
        "agents.read",
        "Read the agents (workers) and what they run for your organizations",
        CAN_READ,
        api=("GET /api/v1/agents/", "GET /api/v1/agents/{pk}/"),
        admin=("executions_agent_changelist",),
        shared=True,
        note="Agents serve every organization: each member sees them all, with only the steps "
        "of their own organizations.",
    ),
    Action(
        "analytics.read",
        "Read the analytics of your organizations: the summary, the escalation signals, the "
        "exports",
        CAN_READ,
        api=(
            "GET /api/v1/analytics/summary/",
            "GET /api/v1/analytics/health/",
            "GET /api/v1/analytics/export/",
            "GET /api/v1/analytics/exports/",
            "POST /api/v1/analytics/exports/",
            "GET /api/v1/analytics/exports/{pk}/",
            "GET /api/v1/analytics/exports/{pk}/download/",
        ),
        other=("/analytics/",),
        shared=True,
        note="Each member sees the figures of their own organizations; a background export is "
        "its user's alone.",
    ),
    Action(
        "audit.read",
        "Read the audit log of the organization",
        Role.ADMIN,
        api=("GET /api/v1/audit/", "GET /api/v1/audit/{pk}/"),
        admin=("accounts_auditentry_changelist", "accounts_auditentry_change"),
        note="Failed logins belong to no organization: superusers see them.",
    ),
    Action(
        "auth.token",
        "Exchange one's user name and password for one's API token",
        CAN_READ,
        api=("POST /api/v1/auth/token/",),
        shared=True,
        note="Throttled like the login page: 10 failures for one name from one address lock "
        "that pair out for 15 minutes.",
    ),
    Action(
        "organizations.manage",
        "Manage organizations, members and users",
        SUPERUSER,
        admin=("accounts_organization_changelist",),
    ),
    Action(
        "rq.dashboard",
        "Open RQ's dashboard (/django-rq/, every organization's jobs)",
        SUPERUSER,
        other=("/django-rq/",),
        note="Not on the embedded default (its queues live inside the one process): 404 there.",
    ),
)

BY_KEY = {action.key: action for action in ACTIONS}
_ROLE_NAMES = {r.value for r in Role}


def _needs_text(needs: str) -> str:
    if needs == NOBODY:
        return "nobody"
    if needs == SUPERUSER:
        return "superusers"
    return f"{needs} and up"


def markdown() -> str:
    """docs/permissions.md."""
    header = (
        "# Permissions\n\n"
        "Generated from `apps/accounts/matrix.py` by `python manage.py permissions_doc`; "
        "`tests/accounts/test_permission_matrix.py` checks every cell against the API and "
        "the admin, so this page cannot drift from the product.\n\n"
        "Roles are per organization and each includes the ones before it: viewer, operator, "
        "editor, admin. A superuser may do everything in every organization. *Outsider* is an "
        "admin of another organization: the API answers 404 for the objects of an organization "
        "one is not a member of (lists leave them out), and 403 to a member whose role is too "
        "low.\n\n"
    )
    columns = " | ".join(ROLES)
    lines = [f"| action | needs | {columns} |", "|---" * (len(ROLES) + 2) + "|"]
    for action in ACTIONS:
        cells = " | ".join("✓" if action.allows(role) else "—" for role in ROLES)
        lines.append(f"| {action.what} | {_needs_text(action.needs)} | {cells} |")
    details = ["", "## Where each action is done", ""]
    for action in ACTIONS:
        details.append(f"### {action.what}")
        details.append("")
        details.append(f"Key `{action.key}`; {_needs_text(action.needs)}.")
        details.append("")
        for label, items in (("API", action.api), ("Admin", action.admin), ("Also", action.other)):
            if items:
                details.append(f"- {label}: " + ", ".join(f"`{i}`" for i in items))
        if action.note:
            details.append(f"- {action.note}")
        details.append("")
    return header + "\n".join(lines) + "\n" + "\n".join(details).rstrip() + "\n"


def _check() -> None:
    for action in ACTIONS:
        assert action.needs in _ROLE_NAMES | {SUPERUSER, NOBODY}, action.key


_check()
