"""Approval orchestration: open a gate, decide it, expire and escalate it, cancel it (DESIGN §7).

Every decision happens under the execution's row lock and then the approval's: two approvers,
twenty concurrent requests or a timeout racing a click never produce two decisions.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Prefetch, Q
from django.utils import timezone

from apps.accounts import audit
from apps.accounts.choices import CAN_EXECUTE
from apps.accounts.models import Membership
from apps.accounts.permissions import has_role
from apps.approvals.choices import ApprovalStatus, Decision
from apps.approvals.models import Approval, ApprovalResponse
from apps.executions import engine
from apps.executions.choices import EXECUTION_ADVANCING, EventKind, StepStatus
from apps.executions.models import Execution


class NotAllowed(Exception):
    """This user may not respond to this approval; the message says why (HTTP 403)."""


class AlreadyDecided(Exception):
    """A later response to a decided approval, or a second one by the same user (HTTP 409)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.details = details or {}


def open_approval(execution: Execution, step, config: dict[str, Any]) -> Approval:
    """Called by the approval node under the execution's lock: record the gate and notify."""
    now = timezone.now()
    timeout = int(config.get("timeout") or 0)
    escalate_after = int(config.get("escalate_after") or 0)
    approval = Approval.objects.create(
        execution=execution,
        step=step,
        node_id=step.node_id,
        message=str(config.get("message", "")),
        approvers=list(config.get("approvers") or []),
        open_to_members=not config.get("approvers"),
        required_approvals=int(config.get("required_approvals") or 1),
        allow_self_approval=bool(config.get("allow_self_approval", True)),
        expires_at=now + timedelta(seconds=timeout) if timeout else None,
        escalate_at=now + timedelta(seconds=escalate_after)
        if escalate_after and config.get("escalate_to")
        else None,
        escalate_to=list(config.get("escalate_to") or []),
        created_at=now,
    )
    who = ", ".join(approval.approvers) or "any operator of the organization"
    execution.log(
        EventKind.APPROVAL_REQUESTED,
        f"{step.node_id}: waiting for {who}: {approval.message}",
        node_id=step.node_id,
        step=step,
        data={"approval": approval.pk},
    )
    execution.pause(f"Paused: {step.node_id} waits for an approval")
    from apps.approvals.notifications import notify

    transaction.on_commit(lambda: notify(approval.pk))
    return approval


def permitted_users(approval: Approval):
    """Who may respond: the assigned approvers, or every operator-or-above member when none."""
    users = get_user_model().objects.filter(is_active=True)
    organization = approval.execution.workflow.organization
    members = Membership.objects.filter(organization=organization)
    in_organization = Q(pk__in=members.values("user_id")) | Q(is_superuser=True)
    allowed = Q(username__in=approval.usernames) | Q(groups__name__in=approval.group_names)
    allowed &= in_organization  # a group is global: only this organization's members of it
    if approval.open_to_members:
        allowed |= Q(pk__in=members.at_least(CAN_EXECUTE).values("user_id"))
    return users.filter(allowed).distinct()


def check_may_respond(approval: Approval, user) -> None:
    """Raise NotAllowed with the reason when `user` may not respond."""
    organization = approval.execution.organization
    member_may = approval.open_to_members and has_role(user, organization, CAN_EXECUTE)
    if not member_may and not approval.is_assigned(user):
        if approval.open_to_members:
            raise NotAllowed(
                "Deciding needs the operator role (execute automation) in this organization."
            )
        raise NotAllowed(
            f"You are not an assigned approver of this gate (assigned: {', '.join(approval.approvers)})."
        )
    if not approval.allow_self_approval and approval.execution.triggered_by_id == user.pk:
        raise NotAllowed("You triggered this run, and this gate does not allow self-approval.")


def can_respond(approval: Approval, user) -> bool:
    if approval.status != ApprovalStatus.PENDING:
        return False
    try:
        check_may_respond(approval, user)
    except NotAllowed:
        return False
    # Over the (often prefetched) responses: a gate has a handful, and lists ask per row.
    return all(response.user_id != user.pk for response in approval.responses.all())


def waiting_on(user):
    """Pending approvals this user may decide now, across all workflows (the inbox).

    Every portal page shows its count, so the database first narrows the gates to those the
    user might decide (open to the operators of an organization where the user is one, or
    naming approvers; not answered yet); can_respond then decides each, as everywhere."""
    from apps.accounts.permissions import organization_ids_for, scope_to_user

    might = Q(
        open_to_members=True,
        execution__organization_id__in=organization_ids_for(user, CAN_EXECUTE),
    ) | ~Q(approvers=[])
    pending = scope_to_user(
        Approval.objects.pending()
        .filter(might)
        .exclude(responses__user=user)
        .select_related("execution__organization")
        .only(
            "status",
            "approvers",
            "open_to_members",
            "allow_self_approval",
            "execution__triggered_by_id",
            "execution__organization__id",
        )
        .prefetch_related(
            Prefetch("responses", queryset=ApprovalResponse.objects.only("approval_id", "user_id"))
        ),
        user,
        field="execution__organization",
    )
    ids = [a.pk for a in pending if can_respond(a, user)]
    return Approval.objects.filter(pk__in=ids)


def _decided_message(approval: Approval) -> AlreadyDecided:
    who = approval.decided_by.username if approval.decided_by else (approval.reason or "the system")
    when = approval.decided_at.isoformat() if approval.decided_at else "?"
    return AlreadyDecided(
        f"Approval #{approval.pk} was already {approval.status} by {who} at {when}.",
        {"status": approval.status, "decided_by": who, "decided_at": when},
    )


def decide(approval: Approval, user, decision: str, note: str = "", via: str = "web") -> Approval:
    """Record one response; when it settles the gate, route the run. First decision wins."""
    if decision not in Decision.values:
        raise ValueError(f"decision must be one of {', '.join(Decision.values)}")
    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update()
            .select_related("version", "workflow")
            .get(pk=approval.execution_id)
        )
        approval = (
            Approval.objects.select_for_update(of=("self",))
            .select_related("execution__workflow__organization", "decided_by", "step")
            .get(pk=approval.pk)
        )
        if approval.status != ApprovalStatus.PENDING:
            raise _decided_message(approval)
        check_may_respond(approval, user)
        earlier = approval.responses.filter(user=user).first()
        if earlier is not None:
            raise AlreadyDecided(
                f"You already responded ({earlier.decision}) at {earlier.at.isoformat()}; "
                f"approval #{approval.pk} needs {approval.required_approvals} distinct approvers.",
                {
                    "status": approval.status,
                    "decided_by": user.username,
                    "decided_at": earlier.at.isoformat(),
                },
            )
        with execution.batched_log():
            response = ApprovalResponse.objects.create(
                approval=approval, user=user, decision=decision, note=note[:10_000], via=via
            )
            execution.log(
                EventKind.APPROVAL_RESPONSE,
                f"{approval.node_id}: {user.username} chose {decision} via {via}"
                + (f": {note}" if note else ""),
                node_id=approval.node_id,
            )
            approvals = approval.responses.filter(decision=Decision.APPROVE).count()
            if decision == Decision.REJECT:
                _settle(execution, approval, ApprovalStatus.REJECTED, response)
            elif approvals >= approval.required_approvals:
                _settle(execution, approval, ApprovalStatus.APPROVED, response)
    audit.record(
        f"approval.{decision}",
        approval,
        user=user,
        changes={"decision": [None, decision], "note": [None, note], "via": [None, via]},
    )
    return approval


def _settle(
    execution: Execution,
    approval: Approval,
    status: str,
    last: ApprovalResponse | None,
    reason: str = "",
) -> None:
    """Decide the gate, finish its step with the decision as output, and move the run on."""
    approval.decide(status, last.user if last else None, reason)
    responses = [r.as_dict() for r in approval.responses.select_related("user")]
    output = {
        "decision": ApprovalStatus.APPROVED.value
        if status == ApprovalStatus.APPROVED
        else ApprovalStatus.REJECTED.value,
        "status": status,
        "respondedBy": last.user.username if last else None,
        "responseNote": last.note if last else "",
        "respondedVia": last.via if last else None,
        "respondedAt": last.at.isoformat() if last else approval.decided_at.isoformat(),
        "responses": responses,
        "reason": reason,
    }
    step = approval.step
    step.execution = execution
    step.finish(StepStatus.COMPLETED, input=step.input, output=output)
    by = f" by {last.user.username}" if last else ""
    execution.log(
        EventKind.APPROVAL_DECIDED,
        f"{approval.node_id}: {status}{by}" + (f" (reason: {reason})" if reason else ""),
        node_id=approval.node_id,
        step=step,
        data={"status": status, "reason": reason},
    )
    if execution.status not in EXECUTION_ADVANCING:
        return  # the run stopped meanwhile (incomplete): a resume decides the successors
    if not execution.approvals.pending().exists():
        execution.unpause()
    engine.advance(execution, engine.graph_for(execution.version), [step.node_id], finished=step)


def expire_due_approvals(now=None) -> int:
    """The scheduler's timeout: a pending gate past `expires_at` follows `rejected`, reason timeout."""
    now = now or timezone.now()
    count = 0
    for approval_id in (
        Approval.objects.pending().filter(expires_at__lte=now).values_list("id", flat=True)[:200]
    ):
        with transaction.atomic():
            approval = Approval.objects.get(pk=approval_id)
            execution = (
                Execution.objects.select_for_update()
                .select_related("version")
                .get(pk=approval.execution_id)
            )
            approval = (
                Approval.objects.select_for_update(of=("self",))
                .select_related("step")
                .get(pk=approval_id)
            )
            if approval.status != ApprovalStatus.PENDING:
                continue  # decided meanwhile: first decision wins
            with execution.batched_log():
                _settle(execution, approval, ApprovalStatus.EXPIRED, None, reason="timeout")
            count += 1
    return count


def escalate_due_approvals(now=None) -> int:
    """Nobody answered in time: add the escalation approvers, notify them, log it."""
    from apps.approvals.notifications import notify

    now = now or timezone.now()
    due = Approval.objects.pending().filter(escalate_at__lte=now, escalated_at__isnull=True)
    count = 0
    for approval_id in due.values_list("id", flat=True)[:200]:
        with transaction.atomic():
            # Lock in decide()'s order, execution then approval, so a click and an escalation
            # never wait on each other in a cycle.
            execution_id = Approval.objects.values_list("execution_id", flat=True).get(
                pk=approval_id
            )
            Execution.objects.select_for_update().only("id").get(pk=execution_id)
            approval = (
                Approval.objects.select_for_update(of=("self",))
                .select_related("execution")
                .get(pk=approval_id)
            )
            if (
                approval.status != ApprovalStatus.PENDING
                or approval.escalated_at
                or approval.responses.exists()
            ):
                continue
            added = [a for a in approval.escalate_to if a not in approval.approvers]
            approval.escalate()
            approval.execution.log(
                EventKind.APPROVAL_ESCALATED,
                f"{approval.node_id}: no response in time; escalated to {', '.join(approval.escalate_to)}",
                node_id=approval.node_id,
            )
            transaction.on_commit(lambda a=approval.pk, names=added: notify(a, only=names))
            count += 1
    return count


def cancel_approval(execution: Execution, step) -> None:
    """The execution was cancelled (its row is locked): pending gates become cancelled."""
    approval = Approval.objects.select_for_update(of=("self",)).filter(step=step).first()
    if approval is not None and approval.status == ApprovalStatus.PENDING:
        approval.decide(ApprovalStatus.CANCELLED, reason="cancelled")
        execution.log(
            EventKind.APPROVAL_DECIDED,
            f"{approval.node_id}: cancelled (reason: cancelled)",
            node_id=approval.node_id,
            step=step,
            data={"status": "cancelled", "reason": "cancelled"},
        )
    step.cancel_waiting()
