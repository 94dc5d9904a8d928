"""The confirm page behind an emailed link: a GET shows the context, only the POST decides."""

from __future__ import annotations

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_login_failed
from django.core import signing
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from apps.accounts.choices import CAN_READ
from apps.accounts.lockout import APPROVAL_LINK_USER, lockout_message
from apps.accounts.permissions import has_role
from apps.approvals.choices import ApprovalStatus
from apps.approvals.models import Approval
from apps.approvals.notifications import read_token
from apps.approvals.services import AlreadyDecided, NotAllowed, decide

TEMPLATE = "approvals/respond.html"


@require_http_methods(["GET", "POST"])
def respond(request, token: str):
    link = {"username": APPROVAL_LINK_USER}
    if request.method == "POST" and AxesProxyHandler.is_locked(request, link):
        return render(request, TEMPLATE, {"problem": lockout_message(None)}, status=429)
    try:
        payload = read_token(token)
    except signing.SignatureExpired:
        return render(
            request,
            TEMPLATE,
            {"problem": "This link has expired. Open the approval in the portal instead."},
            status=410,
        )
    except signing.BadSignature:
        if request.method == "POST":  # a guessed or altered link counts toward the lockout
            user_login_failed.send(sender=__name__, credentials=link, request=request)
        return render(
            request,
            TEMPLATE,
            {"problem": "This link is not valid: it may have been altered or cut short."},
            status=400,
        )
    approval = (
        Approval.objects.select_related(
            "execution__workflow", "execution__triggered_by", "decided_by"
        )
        .filter(pk=payload.get("a"))
        .first()
    )
    user = get_user_model().objects.filter(pk=payload.get("u"), is_active=True).first()
    if approval is None or user is None or payload.get("d") not in ("approve", "reject"):
        return render(request, TEMPLATE, {"problem": "This approval no longer exists."}, status=404)
    context = {
        "approval": approval,
        "execution": approval.execution,
        "approver": user,
        "decision": payload["d"],
        "upstream": approval.execution.steps.filter(status="completed").order_by("finished_at")[
            :20
        ],
        # The link works without a login, and outputs may hold anything: only someone logged
        # in who may read the execution sees them (node names and statuses are shown to all).
        "show_outputs": request.user.is_authenticated
        and has_role(request.user, approval.execution.workflow.organization, CAN_READ),
    }
    if request.method == "POST":
        try:
            approval = decide(
                approval, user, payload["d"], request.POST.get("note", ""), via="mobile"
            )
        except AlreadyDecided as exc:
            return render(request, TEMPLATE, {**context, "problem": str(exc)}, status=409)
        except NotAllowed as exc:
            return render(request, TEMPLATE, {**context, "problem": str(exc)}, status=403)
        return render(request, TEMPLATE, {**context, "approval": approval, "done": True})
    if approval.status != ApprovalStatus.PENDING:
        who = (
            approval.decided_by.get_username()
            if approval.decided_by
            else approval.reason or "the system"
        )
        return render(
            request,
            TEMPLATE,
            {
                **context,
                "problem": f"This approval was already {approval.status} by {who} at {approval.decided_at:%Y-%m-%d %H:%M:%S %Z}.",
            },
            status=409,
        )
    return render(request, TEMPLATE, context)
