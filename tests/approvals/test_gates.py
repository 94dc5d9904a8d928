"""Approval gates (DESIGN §7): pausing, deciding, routing, timeouts, quorum, self-approval,
cancel, escalation, notifications and the emailed confirm link.

Every engine test runs real RQ workers in-process (see `workers` in conftest); time is driven
through the `now` arguments of the scheduler's services, never by sleeping.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import mail, signing
from django.utils import timezone
from rq.registry import StartedJobRegistry

from apps.accounts.choices import Role
from apps.approvals.models import Approval
from apps.approvals.notifications import base_url, make_token, read_token
from apps.approvals.services import (
    AlreadyDecided,
    NotAllowed,
    check_may_respond,
    decide,
    escalate_due_approvals,
    expire_due_approvals,
    waiting_on,
)
from apps.executions.choices import EventKind, ExecutionStatus, StepStatus
from apps.executions.models import Execution, Step
from apps.executions.services import cancel_execution, trigger_workflow
from apps.workflows.definition import DefinitionError, validate_definition
from tests.factories import make_user, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = "Deploy {{ vars.version }} for {{ nodes.start.output.ticket }}?"
RENDERED = "Deploy 1.2.3 for CHG-42?"
LINK = re.compile(r"^(Approve|Reject):\s+(\S+/approvals/respond/([^/\s]+)/)\s*$", re.MULTILINE)


# --- helpers ---


def gate_definition(slug: str = "deploy-gate", **gate_config: Any) -> dict[str, Any]:
    """start → gate (approval) → on_yes (approved) / on_no (rejected)."""
    return {
        "slug": slug,
        "name": "Deploy Gate",
        "variables": {"version": {"type": "string", "default": "1.2.3"}},
        "nodes": [
            {"id": "start", "type": "noop", "config": {"output": {"ticket": "CHG-42"}}},
            {"id": "gate", "type": "approval", "config": {"message": MESSAGE, **gate_config}},
            {
                "id": "on_yes",
                "type": "noop",
                "config": {
                    "output": {
                        "who": "{{ nodes.gate.output.respondedBy }}",
                        "note": "{{ nodes.gate.output.responseNote }}",
                    }
                },
            },
            {"id": "on_no", "type": "noop", "config": {"output": {"rejected": True}}},
        ],
        "edges": [
            {"from": "start", "to": "gate"},
            {"from": "gate", "to": "on_yes", "on": "approved"},
            {"from": "gate", "to": "on_no", "on": "rejected"},
        ],
    }


def run_to_gate(
    workers, org, user=None, slug: str = "deploy-gate", **gate_config: Any
) -> tuple[Execution, Approval]:
    """Trigger a gated workflow and work the queues until nothing is left: the gate waits."""
    workflow = make_workflow(org, gate_definition(slug, **gate_config))
    execution = trigger_workflow(workflow, user=user)
    workers.drain()
    execution.refresh_from_db()
    return execution, Approval.objects.get(execution=execution)


def step_of(execution: Execution, node_id: str) -> Step:
    return execution.steps.get(node_id=node_id)


def statuses(execution: Execution) -> dict[str, str]:
    return {s.node_id: s.status for s in execution.steps.all()}


def reload(approval: Approval) -> Approval:
    return Approval.objects.get(pk=approval.pk)


def approver(username: str, org, role: str = Role.OPERATOR, email: bool = True):
    extra = {"email": f"{username}@example.com"} if email else {}
    return make_user(username, org, role, **extra)


def links_in(message) -> dict[str, str]:
    """{"Approve": url, "Reject": url} from an approval email's body."""
    return {label: url for label, url, _token in LINK.findall(message.body)}


def tokens_in(message) -> dict[str, str]:
    """{"Approve": token, "Reject": token} from an approval email's body."""
    return {label: token for label, _url, token in LINK.findall(message.body)}


def path_of(url: str) -> str:
    return url.removeprefix(base_url())


def approval_user(username: str):
    return get_user_model().objects.get(username=username)


def emails_to(address: str) -> list:
    return [m for m in mail.outbox if m.to == [address]]


# --- pausing ---


def test_an_approval_node_pauses_the_run_without_holding_a_worker(workers, org):
    workflow = make_workflow(org, gate_definition(approvers=["alice"]))
    approver("alice", org)
    execution = trigger_workflow(workflow)

    assert workers.worker().work(burst=True, with_scheduler=True) is True
    # The burst worker returned with the gate still open, and nothing is in progress or queued.
    assert workers.worker().work(burst=True, with_scheduler=True) is False
    for queue in workers.queues:
        assert StartedJobRegistry(queue, connection=workers.connection).count == 0

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.PAUSED
    assert statuses(execution) == {"start": StepStatus.COMPLETED, "gate": StepStatus.RUNNING}
    approval = Approval.objects.get(execution=execution)
    assert approval.status == "pending"
    assert approval.node_id == "gate"
    assert approval.message == RENDERED
    assert approval.approvers == ["alice"]
    assert approval.expires_at is None  # no timeout: waits indefinitely
    assert approval.responses.count() == 0
    assert execution.events.filter(kind=EventKind.EXECUTION_PAUSED).exists()
    assert execution.events.filter(kind=EventKind.APPROVAL_REQUESTED, node_id="gate").exists()


def test_the_run_stays_paused_while_another_gate_is_pending(workers, org):
    alice = approver("alice", org)
    definition = {
        "slug": "two-gates",
        "name": "Two Gates",
        "nodes": [
            {"id": "g1", "type": "approval", "config": {"message": "one", "approvers": ["alice"]}},
            {"id": "g2", "type": "approval", "config": {"message": "two", "approvers": ["alice"]}},
            {"id": "after1", "type": "noop"},
            {"id": "after2", "type": "noop"},
        ],
        "edges": [
            {"from": "g1", "to": "after1", "on": "approved"},
            {"from": "g2", "to": "after2", "on": "approved"},
        ],
    }
    execution = trigger_workflow(make_workflow(org, definition))
    workers.drain()

    decide(Approval.objects.get(execution=execution, node_id="g1"), alice, "approve")
    workers.drain()
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.PAUSED
    assert statuses(execution) == {
        "g1": StepStatus.COMPLETED,
        "after1": StepStatus.COMPLETED,
        "g2": StepStatus.RUNNING,
    }

    decide(Approval.objects.get(execution=execution, node_id="g2"), alice, "reject")
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution)["after2"] == StepStatus.SKIPPED


# --- deciding and routing ---


def test_approve_follows_the_approved_edge_and_downstream_sees_the_approver(workers, org):
    alice = approver("alice", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice"])

    decide(approval, alice, "approve", note="ship it")
    workers.run_to_end(execution)

    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution) == {
        "start": StepStatus.COMPLETED,
        "gate": StepStatus.COMPLETED,
        "on_yes": StepStatus.COMPLETED,
        "on_no": StepStatus.SKIPPED,
    }
    assert reload(approval).status == "approved"
    assert reload(approval).decided_by == alice
    assert step_of(execution, "on_yes").input == {"output": {"who": "alice", "note": "ship it"}}

    output = step_of(execution, "gate").output
    assert output["decision"] == "approved"
    assert output["respondedBy"] == "alice"
    assert output["responseNote"] == "ship it"
    assert output["respondedVia"] == "web"
    assert datetime.fromisoformat(output["respondedAt"]) <= timezone.now()
    assert [(r["user"], r["decision"], r["note"], r["via"]) for r in output["responses"]] == [
        ("alice", "approve", "ship it", "web")
    ]


def test_reject_follows_the_rejected_edge(workers, org):
    alice = approver("alice", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice"])

    decide(approval, alice, "reject", note="not today", via="api")
    workers.run_to_end(execution)

    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution)["on_no"] == StepStatus.COMPLETED
    assert statuses(execution)["on_yes"] == StepStatus.SKIPPED
    assert reload(approval).status == "rejected"
    output = step_of(execution, "gate").output
    assert output["decision"] == "rejected"
    assert (output["respondedBy"], output["responseNote"], output["respondedVia"]) == (
        "alice",
        "not today",
        "api",
    )


def test_an_unknown_decision_is_refused_and_records_nothing(workers, org):
    alice = approver("alice", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice"])

    with pytest.raises(ValueError, match="approve, reject"):
        decide(approval, alice, "maybe")

    assert reload(approval).status == "pending"
    assert reload(approval).responses.count() == 0


# --- timeout ---


def test_a_timeout_expires_the_gate_and_follows_the_rejected_edge(workers, org):
    execution, approval = run_to_gate(workers, org, timeout=2)
    assert approval.expires_at is not None
    assert timedelta(seconds=1) < approval.expires_at - approval.created_at <= timedelta(seconds=3)

    assert expire_due_approvals(now=timezone.now() + timedelta(seconds=1)) == 0
    assert reload(approval).status == "pending"
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.PAUSED

    assert expire_due_approvals(now=timezone.now() + timedelta(seconds=3)) == 1
    workers.run_to_end(execution)

    approval = reload(approval)
    assert (approval.status, approval.reason) == ("expired", "timeout")
    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution)["on_no"] == StepStatus.COMPLETED
    assert statuses(execution)["on_yes"] == StepStatus.SKIPPED
    output = step_of(execution, "gate").output
    assert (output["decision"], output["status"], output["reason"]) == (
        "rejected",
        "expired",
        "timeout",
    )
    decided = execution.events.get(kind=EventKind.APPROVAL_DECIDED, node_id="gate")
    assert decided.data == {"status": "expired", "reason": "timeout"}
    assert "timeout" in decided.message
    # Expiring again finds nothing: it is decided.
    assert expire_due_approvals(now=timezone.now() + timedelta(seconds=3)) == 0


def test_a_response_after_the_timeout_is_already_decided(workers, org, operator):
    execution, approval = run_to_gate(workers, org, timeout=2)
    expire_due_approvals(now=timezone.now() + timedelta(seconds=3))

    with pytest.raises(AlreadyDecided, match=r"already expired by timeout"):
        decide(approval, operator, "approve")
    assert reload(approval).responses.count() == 0


# --- who may respond ---


def test_only_the_assigned_approvers_may_respond(workers, org):
    alice = approver("alice", org)
    bob = approver("bob", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice"])

    with pytest.raises(NotAllowed, match=r"not an assigned approver.*assigned: alice"):
        check_may_respond(approval, bob)
    with pytest.raises(NotAllowed, match=r"assigned: alice"):
        decide(approval, bob, "approve")
    check_may_respond(approval, alice)  # does not raise

    assert reload(approval).status == "pending"
    assert reload(approval).responses.count() == 0


def test_a_member_of_an_assigned_group_may_respond(workers, org):
    carol = approver("carol", org)
    dave = approver("dave", org)
    carol.groups.add(Group.objects.create(name="sre"))
    dave.groups.add(Group.objects.create(name="dba"))
    execution, approval = run_to_gate(workers, org, approvers=["group:sre"])

    with pytest.raises(NotAllowed, match=r"group:sre"):
        check_may_respond(approval, dave)
    check_may_respond(approval, carol)
    decide(approval, carol, "approve")
    workers.run_to_end(execution)

    assert reload(approval).status == "approved"
    assert step_of(execution, "on_yes").output["who"] == "carol"


def test_with_no_approvers_an_operator_may_respond_and_a_viewer_may_not(
    workers, org, owner, editor, operator, viewer, outsider
):
    execution, approval = run_to_gate(workers, org)

    for allowed in (owner, editor, operator):
        check_may_respond(approval, allowed)
    for refused in (viewer, outsider):
        with pytest.raises(NotAllowed, match=r"operator role"):
            check_may_respond(approval, refused)
    with pytest.raises(NotAllowed, match=r"operator role"):
        decide(approval, viewer, "approve")
    assert reload(approval).status == "pending"

    decide(approval, operator, "approve")
    workers.run_to_end(execution)
    assert step_of(execution, "on_yes").output["who"] == "operator"


def test_waiting_on_lists_what_the_user_may_decide_now(workers, org, other_org, viewer):
    alice = approver("alice", org)
    bob = approver("bob", org)
    zed = approver("zed", other_org, Role.ADMIN)
    execution, assigned = run_to_gate(workers, org, approvers=["alice", "bob"])
    anyone = run_to_gate(workers, org, slug="second-gate")[1]  # any operator of acme

    assert set(waiting_on(alice)) == {assigned, anyone}
    assert set(waiting_on(bob)) == {assigned, anyone}
    assert list(waiting_on(viewer)) == []
    assert list(waiting_on(zed)) == []

    decide(assigned, alice, "approve")
    assert list(waiting_on(alice)) == [anyone]
    assert list(waiting_on(bob)) == [anyone]


# --- quorum ---


def test_a_quorum_needs_distinct_approvers(workers, org):
    alice = approver("alice", org)
    bob = approver("bob", org)
    approver("carol", org)
    execution, approval = run_to_gate(
        workers, org, approvers=["alice", "bob", "carol"], required_approvals=2
    )
    assert approval.required_approvals == 2

    decide(approval, alice, "approve", note="one")
    workers.drain()
    execution.refresh_from_db()
    assert reload(approval).status == "pending"
    assert execution.status == ExecutionStatus.PAUSED
    assert step_of(execution, "gate").status == StepStatus.RUNNING

    with pytest.raises(AlreadyDecided, match=r"You already responded \(approve\)"):
        decide(approval, alice, "approve")
    assert reload(approval).responses.count() == 1

    decide(approval, bob, "approve", note="two")
    workers.run_to_end(execution)

    assert reload(approval).status == "approved"
    assert execution.status == ExecutionStatus.COMPLETED
    assert statuses(execution)["on_yes"] == StepStatus.COMPLETED
    output = step_of(execution, "gate").output
    assert output["respondedBy"] == "bob"
    assert [(r["user"], r["note"]) for r in output["responses"]] == [
        ("alice", "one"),
        ("bob", "two"),
    ]


def test_any_rejection_rejects_a_quorum_at_once(workers, org):
    alice = approver("alice", org)
    bob = approver("bob", org)
    execution, approval = run_to_gate(
        workers, org, approvers=["alice", "bob", "carol"], required_approvals=3
    )

    decide(approval, alice, "approve")
    decide(approval, bob, "reject", note="no")
    workers.run_to_end(execution)

    assert reload(approval).status == "rejected"
    assert reload(approval).decided_by == bob
    assert statuses(execution)["on_no"] == StepStatus.COMPLETED
    assert statuses(execution)["on_yes"] == StepStatus.SKIPPED


# --- self-approval ---


def test_the_triggering_user_may_not_approve_when_self_approval_is_off(workers, org):
    alice = approver("alice", org)
    bob = approver("bob", org)
    execution, approval = run_to_gate(
        workers, org, user=alice, approvers=["alice", "bob"], allow_self_approval=False
    )
    assert execution.triggered_by == alice

    with pytest.raises(NotAllowed, match=r"triggered this run.*self-approval"):
        check_may_respond(approval, alice)
    with pytest.raises(NotAllowed, match=r"self-approval"):
        decide(approval, alice, "approve")
    assert reload(approval).responses.count() == 0

    decide(approval, bob, "approve")
    workers.run_to_end(execution)
    assert reload(approval).status == "approved"
    assert execution.status == ExecutionStatus.COMPLETED


def test_the_triggering_user_may_approve_by_default(workers, org):
    alice = approver("alice", org)
    execution, approval = run_to_gate(workers, org, user=alice, approvers=["alice"])

    decide(approval, alice, "approve")

    assert reload(approval).status == "approved"


# --- first decision wins ---


def test_only_the_first_decision_counts(workers, org):
    alice = approver("alice", org)
    bob = approver("bob", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice", "bob"])

    decide(approval, alice, "approve")
    decided_at = reload(approval).decided_at

    with pytest.raises(AlreadyDecided) as caught:
        decide(approval, bob, "reject")
    assert "already approved by alice" in str(caught.value)
    assert decided_at.isoformat() in str(caught.value)
    assert caught.value.details == {
        "status": "approved",
        "decided_by": "alice",
        "decided_at": decided_at.isoformat(),
    }
    assert list(reload(approval).responses.values_list("user__username", flat=True)) == ["alice"]

    workers.run_to_end(execution)
    assert statuses(execution)["on_yes"] == StepStatus.COMPLETED
    assert statuses(execution)["on_no"] == StepStatus.SKIPPED


# --- cancel ---


def test_cancelling_the_execution_cancels_the_pending_approval(workers, org, operator):
    alice = approver("alice", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice"], timeout=2)

    cancel_execution(execution, user=operator)

    execution.refresh_from_db()
    approval = reload(approval)
    assert execution.status == ExecutionStatus.CANCELLED
    assert (approval.status, approval.reason) == ("cancelled", "cancelled")
    assert step_of(execution, "gate").status == StepStatus.CANCELLED
    assert execution.events.filter(
        kind=EventKind.APPROVAL_DECIDED, data__reason="cancelled"
    ).exists()

    with pytest.raises(AlreadyDecided, match="already cancelled"):
        decide(approval, alice, "approve")
    assert expire_due_approvals(now=timezone.now() + timedelta(seconds=3)) == 0
    workers.drain()
    assert set(statuses(execution)) == {"start", "gate"}  # nothing ran after the gate


# --- escalation ---


def test_escalation_adds_and_notifies_the_escalation_approvers(workers, org):
    approver("alice", org)
    bob = approver("bob", org)
    execution, approval = run_to_gate(
        workers, org, approvers=["alice"], escalate_after=60, escalate_to=["bob"]
    )
    assert emails_to("bob@example.com") == []

    assert escalate_due_approvals(now=timezone.now() + timedelta(seconds=30)) == 0
    assert reload(approval).approvers == ["alice"]
    with pytest.raises(NotAllowed):
        check_may_respond(reload(approval), bob)

    assert escalate_due_approvals(now=timezone.now() + timedelta(seconds=61)) == 1

    approval = reload(approval)
    assert approval.approvers == ["alice", "bob"]
    assert approval.escalated_at is not None
    (email,) = emails_to("bob@example.com")
    assert RENDERED in email.body
    assert set(links_in(email)) == {"Approve", "Reject"}
    assert len(emails_to("alice@example.com")) == 1  # from the pause only, not again
    escalated = execution.events.get(kind=EventKind.APPROVAL_ESCALATED)
    assert "bob" in escalated.message
    # Only once.
    assert escalate_due_approvals(now=timezone.now() + timedelta(seconds=120)) == 0

    decide(approval, bob, "approve")
    workers.run_to_end(execution)
    assert step_of(execution, "on_yes").output["who"] == "bob"


def test_escalation_to_a_group_notifies_its_members(workers, org):
    approver("alice", org)
    lead = approver("lead", org)
    lead.groups.add(Group.objects.create(name="leads"))
    execution, approval = run_to_gate(
        workers, org, approvers=["alice"], escalate_after=60, escalate_to=["group:leads"]
    )

    assert escalate_due_approvals(now=timezone.now() + timedelta(seconds=61)) == 1

    (email,) = emails_to("lead@example.com")
    assert read_token(tokens_in(email)["Approve"])["u"] == lead.pk
    check_may_respond(reload(approval), lead)


def test_escalation_of_an_open_gate_keeps_the_operators(workers, org, operator):
    approver("lead", org, Role.VIEWER)
    execution, approval = run_to_gate(workers, org, escalate_after=60, escalate_to=["lead"])
    check_may_respond(approval, operator)

    assert escalate_due_approvals(now=timezone.now() + timedelta(seconds=61)) == 1

    approval = reload(approval)
    check_may_respond(approval, approval_user("lead"))
    check_may_respond(approval, operator)  # escalation adds responders; it removes none


def test_no_escalation_once_someone_responded(workers, org):
    alice = approver("alice", org)
    approver("bob", org)
    execution, approval = run_to_gate(
        workers,
        org,
        approvers=["alice", "carol"],
        required_approvals=2,
        escalate_after=60,
        escalate_to=["bob"],
    )
    decide(approval, alice, "approve")

    assert escalate_due_approvals(now=timezone.now() + timedelta(seconds=61)) == 0
    assert reload(approval).approvers == ["alice", "carol"]
    assert emails_to("bob@example.com") == []


# --- notifications ---


def test_each_assigned_approver_with_an_email_is_notified_once(workers, org):
    alice = approver("alice", org)
    carol = approver("carol", org)
    approver("erin", org, email=False)
    approver("bob", org)  # not assigned
    carol.groups.add(Group.objects.create(name="sre"))
    execution, approval = run_to_gate(workers, org, approvers=["alice", "erin", "group:sre"])

    assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.com", "carol@example.com"]
    for user in (alice, carol):
        (email,) = emails_to(user.email)
        assert "Deploy Gate" in email.subject
        assert RENDERED in email.body
        assert "Deploy Gate" in email.body
        assert "start: completed" in email.body  # the upstream results so far
        links = links_in(email)
        assert set(links) == {"Approve", "Reject"}
        for label, decision in (("Approve", "approve"), ("Reject", "reject")):
            assert path_of(links[label]).startswith("/approvals/respond/")
            token = tokens_in(email)[label]
            assert read_token(token) == {"a": approval.pk, "u": user.pk, "d": decision}


def test_with_no_approvers_every_operator_or_above_member_is_notified(
    workers, org, owner, editor, operator, viewer, outsider
):
    for user in (owner, editor, operator, viewer, outsider):
        user.email = f"{user.username}@example.com"
        user.save(update_fields=["email"])

    run_to_gate(workers, org)

    assert sorted(m.to[0] for m in mail.outbox) == [
        "editor@example.com",
        "operator@example.com",
        "owner@example.com",
    ]
    for email in mail.outbox:
        assert RENDERED in email.body
        assert set(links_in(email)) == {"Approve", "Reject"}


# --- the emailed link ---


def test_the_emailed_link_confirms_on_get_and_decides_on_post(workers, org, client):
    approver("alice", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice"])
    (email,) = mail.outbox
    approve = path_of(links_in(email)["Approve"])

    page = client.get(approve)
    assert page.status_code == 200
    assert RENDERED in page.content.decode()
    assert reload(approval).status == "pending"
    assert reload(approval).responses.count() == 0
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.PAUSED

    done = client.post(approve, {"note": "from my phone"})
    assert done.status_code == 200
    assert reload(approval).status == "approved"
    workers.run_to_end(execution)
    assert execution.status == ExecutionStatus.COMPLETED
    output = step_of(execution, "gate").output
    assert (output["respondedBy"], output["respondedVia"], output["responseNote"]) == (
        "alice",
        "mobile",
        "from my phone",
    )
    assert step_of(execution, "on_yes").input["output"]["who"] == "alice"

    again = client.post(path_of(links_in(email)["Reject"]))
    assert again.status_code == 409
    assert "already approved by alice" in again.content.decode()
    assert reload(approval).responses.count() == 1


def test_a_tampered_link_is_refused_and_changes_nothing(workers, org, client):
    approver("alice", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice"])
    token = tokens_in(mail.outbox[0])["Approve"]
    middle = len(token) // 2
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]

    for response in (
        client.get(f"/approvals/respond/{tampered}/"),
        client.post(f"/approvals/respond/{tampered}/"),
    ):
        assert response.status_code == 400
        assert "This link is not valid" in response.content.decode()
    assert reload(approval).status == "pending"
    assert reload(approval).responses.count() == 0


def test_an_expired_link_is_refused_with_a_clear_page(workers, org, client, settings):
    alice = approver("alice", org)
    execution, approval = run_to_gate(workers, org, approvers=["alice"])
    settings.OPSFLOW_APPROVAL_LINK_MAX_AGE = 60
    two_minutes_ago = int(time.time()) - 120
    with mock.patch.object(
        signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(two_minutes_ago)
    ):
        old = make_token(approval, alice, "approve")
    fresh = make_token(approval, alice, "approve")

    assert client.get(f"/approvals/respond/{fresh}/").status_code == 200
    for response in (
        client.get(f"/approvals/respond/{old}/"),
        client.post(f"/approvals/respond/{old}/"),
    ):
        assert response.status_code == 410
        assert "This link has expired" in response.content.decode()
    assert reload(approval).status == "pending"
    assert reload(approval).responses.count() == 0


# --- definition validation ---


def validation_problems(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(DefinitionError) as caught:
        validate_definition(doc)
    return {p.path: p.message for p in caught.value.problems}


def test_an_approval_node_needs_a_message():
    doc = gate_definition()
    del doc["nodes"][1]["config"]["message"]

    assert set(validation_problems(doc)) == {"nodes[1].config.message"}


def test_an_approval_node_cannot_fire_success():
    doc = gate_definition()
    doc["edges"][1]["on"] = "success"

    problems = validation_problems(doc)

    assert set(problems) == {"edges[1].on"}
    assert "approved, rejected" in problems["edges[1].on"]


def test_a_valid_gate_definition_passes():
    validate_definition(gate_definition(approvers=["alice", "group:sre"], timeout=2))
