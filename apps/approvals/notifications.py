"""Approval emails with signed, expiring links bound to one approver and one approval."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core import signing
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from apps.approvals.models import Approval

logger = logging.getLogger(__name__)
SALT = "opsflow.approval-link"


def make_token(approval: Approval, user, decision: str) -> str:
    return signing.dumps({"a": approval.pk, "u": user.pk, "d": decision}, salt=SALT, compress=True)


def read_token(token: str) -> dict:
    """The link's payload; raises signing.BadSignature (tampered) or SignatureExpired (too old)."""
    return signing.loads(token, salt=SALT, max_age=settings.OPSFLOW_APPROVAL_LINK_MAX_AGE)


def base_url() -> str:
    """Where the portal answers: OPSFLOW_BASE_URL, or what `standalone` serves, or the default."""
    return (settings.OPSFLOW_BASE_URL or settings.DEFAULT_BASE_URL).rstrip("/")


def link(approval: Approval, user, decision: str) -> str:
    path = reverse("approvals:respond", args=[make_token(approval, user, decision)])
    return base_url() + path


def notify(approval_id: int, only: list[str] | None = None) -> int:
    """Email the approvers (or, with none assigned, every permitted member). `only` limits it to
    the names just added by an escalation. Returns how many were sent."""
    from apps.approvals.services import permitted_users

    approval = Approval.objects.select_related(
        "execution__workflow", "execution__triggered_by"
    ).get(pk=approval_id)
    users = permitted_users(approval)
    if only is not None:
        names = [n for n in only if not n.startswith("group:")]
        groups = [n.removeprefix("group:") for n in only if n.startswith("group:")]
        users = users.filter(username__in=names) | users.filter(groups__name__in=groups)
    sent = 0
    execution = approval.execution
    upstream = [
        {"node": s.node_id, "status": s.status, "output": s.output}
        for s in execution.steps.filter(status="completed").order_by("finished_at")[:20]
    ]
    for user in users.distinct():
        if not user.email:
            continue
        context = {
            "approval": approval,
            "execution": execution,
            "user": user,
            "upstream": upstream,
            "approve_url": link(approval, user, "approve"),
            "reject_url": link(approval, user, "reject"),
            "portal_url": base_url() + execution.get_absolute_url(),
        }
        body = render_to_string("approvals/email.txt", context)
        try:
            send_mail(
                f"[Opsflow] Approval needed: {execution.workflow.name} — {approval.node_id}",
                body,
                settings.DEFAULT_FROM_EMAIL,
                [user.email],
            )
            sent += 1
        except Exception:  # a mail server outage must not break the run; the inbox still shows it
            logger.exception("could not email approval %s to %s", approval.pk, user.username)
    return sent
