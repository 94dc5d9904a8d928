"""The audit log (issue 10 item 7): `record` writes one AuditEntry for a state-changing action by
a person. Services call it; the person and their address come from the request being served
(`AuditMiddleware`), or from the `user` a service was given (commands, workers).

Values are masked before they are written: definitions as `masked_definition` shows them,
credential values and webhook secrets never (only that they changed).
"""

from __future__ import annotations

import contextvars
from typing import Any

from axes.helpers import get_client_ip_address

_request: contextvars.ContextVar = contextvars.ContextVar("opsflow_audit_request", default=None)
CHANGED = "(changed)"  # what a secret's before/after reads


class AuditMiddleware:
    """Makes the request's user and address known to `record` while the request is served."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def _person(user):
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def record(
    action: str,
    obj: Any = None,
    *,
    user: Any = None,
    organization: Any = None,
    changes: dict[str, Any] | None = None,
    actor_name: str = "",
    target: tuple[str, str, str] | None = None,
) -> None:
    """Write one entry about `obj` (or `target`: type, id and name of a row that is gone).
    Without a person (a webhook, cron, the system) nothing is written, unless `actor_name`
    names who tried (a failed login)."""
    from apps.accounts.models import AuditEntry

    request = _request.get()
    person = _person(user) or _person(getattr(request, "user", None) if request else None)
    if person is None and not actor_name:
        return
    if organization is None and obj is not None:
        organization = _organization_of(obj)
    if obj is not None:
        target = (obj._meta.label_lower, str(obj.pk), str(obj)[:200])
    object_type, object_id, object_repr = target or ("", "", "")
    AuditEntry.objects.create(
        actor=person,
        actor_name=(person.get_username() if person else actor_name)[:150],
        address=get_client_ip_address(request) if request is not None else None,
        action=action,
        organization=organization,
        object_type=object_type,
        object_id=object_id,
        object_repr=object_repr[:200],
        changes=changes or {},
    )


def _organization_of(obj):
    for path in ("organization", "workflow.organization", "execution.workflow.organization"):
        target = obj
        for part in path.split("."):
            target = getattr(target, part, None)
        if target is not None:
            return target
    return None


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """{field: [before, after]} for the fields whose value changed."""
    return {
        k: [before.get(k), after.get(k)]
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    }
