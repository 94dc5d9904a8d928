"""Deciding approval gates through the REST API and the admin portal (DESIGN §7, §9).

The gates are opened by real runs on real in-process RQ workers; a decision then routes the run,
and the downstream nodes read who decided and how through `{{ nodes.gate.output.* }}`. The race
test sends twenty decisions at once over real HTTP to a live server, one thread and one database
connection per request.
"""

from __future__ import annotations

import io
import threading
from collections import Counter
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.urls import reverse
from rest_framework.authtoken.models import Token

from apps.accounts.choices import Role
from apps.approvals import services as approval_services
from apps.approvals.choices import ApprovalStatus
from apps.approvals.models import Approval, ApprovalResponse
from apps.executions.choices import EventKind, ExecutionStatus, StepStatus
from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from tests.api_errors import detail_paths, error_of
from tests.factories import make_user, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

APPROVALS = "/api/v1/approvals/"
CONTRACT_FIELDS = {
    "id",
    "execution",
    "node_id",
    "status",
    "message",
    "approvers",
    "required_approvals",
    "responses",
    "expires_at",
}
RESPONSE_FIELDS = {"user", "decision", "note", "via", "at"}
HEARD = {
    "by": "{{ nodes.gate.output.respondedBy }}",
    "via": "{{ nodes.gate.output.respondedVia }}",
    "note": "{{ nodes.gate.output.responseNote }}",
}


def gate_definition(
    slug: str = "gated", approvers: list[str] | None = None, **gate: Any
) -> dict[str, Any]:
    """check → gate (approval) → restart on `approved`, skip on `rejected`; both echo the decision."""
    config: dict[str, Any] = {"message": "Restart {{ nodes.check.output.host }}?", **gate}
    if approvers is not None:
        config["approvers"] = approvers
    return {
        "slug": slug,
        "name": slug.replace("-", " ").title(),
        "nodes": [
            {"id": "check", "type": "noop", "config": {"output": {"host": "web1"}}},
            {"id": "gate", "type": "approval", "config": config},
            {"id": "restart", "type": "noop", "config": {"output": HEARD}},
            {"id": "skip", "type": "noop", "config": {"output": HEARD}},
        ],
        "edges": [
            {"from": "check", "to": "gate"},
            {"from": "gate", "to": "restart", "on": "approved"},
            {"from": "gate", "to": "skip", "on": "rejected"},
        ],
    }


@pytest.fixture
def open_gates(org, workers):
    """open_gates(spec, ...) → one paused run per spec, each waiting at its approval gate.

    A spec is `(slug, approvers)`, optionally followed by the gate's extra config and the
    organization (default: `org`).
    """

    def start(*specs) -> list[Approval]:
        executions = []
        for spec in specs:
            slug, approvers, *rest = spec
            gate = rest[0] if rest else {}
            organization = (rest[1] if len(rest) > 1 else None) or org
            workflow = make_workflow(organization, gate_definition(slug, approvers, **gate))
            executions.append(trigger_workflow(workflow))
        workers.drain()
        gates = []
        for execution in executions:
            execution.refresh_from_db()
            assert execution.status == ExecutionStatus.PAUSED, execution.status
            gates.append(Approval.objects.get(execution=execution))
        return gates

    return start


@pytest.fixture
def open_gate(open_gates):
    """open_gate(approvers, **gate config) → the approval of one paused run of `gated`."""

    def start(approvers: list[str] | None = None, **gate: Any) -> Approval:
        (approval,) = open_gates(("gated", approvers, gate, None))
        return approval

    return start


def finished_path(execution: Execution) -> dict[str, str]:
    """node_id → status of every step of the run."""
    return dict(execution.steps.values_list("node_id", "status"))


def decision_url(approval_id: int, decision: str = "approve") -> str:
    return f"{APPROVALS}{approval_id}/{decision}/"


def ids_of(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def assert_untouched(approval: Approval) -> None:
    """Still pending, nobody responded, and the run still waits."""
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING
    assert not approval.responses.exists()
    assert Execution.objects.get(pk=approval.execution_id).status == ExecutionStatus.PAUSED


# --- reading gates ---


def test_the_list_shows_each_gate_with_the_contract_fields_and_whether_you_can_respond(
    operator, viewer, open_gate, api_for
):
    approval = open_gate(["operator"], timeout=3600)

    as_operator = api_for(operator).get(APPROVALS)
    as_viewer = api_for(viewer).get(APPROVALS)

    assert as_operator.status_code == 200, as_operator.content
    body = as_operator.json()
    assert set(body) == {"count", "count_exact", "next", "previous", "results"}
    assert body["count_exact"] is True
    assert body["count"] == 1
    (item,) = body["results"]
    assert CONTRACT_FIELDS | {"can_respond"} <= set(item)
    assert item["id"] == approval.pk
    assert item["execution"] == approval.execution_id
    assert item["node_id"] == "gate"
    assert item["status"] == "pending"
    assert item["message"] == "Restart web1?"
    assert item["approvers"] == ["operator"]
    assert item["required_approvals"] == 1
    assert item["responses"] == []
    assert datetime.fromisoformat(item["expires_at"]) == approval.expires_at
    assert item["can_respond"] is True
    (seen_by_viewer,) = as_viewer.json()["results"]
    assert seen_by_viewer["id"] == approval.pk
    assert seen_by_viewer["can_respond"] is False


def test_mine_lists_exactly_the_gates_waiting_on_the_requesting_user_across_workflows(
    org, other_org, operator, editor, viewer, outsider, open_gates, api_for
):
    Group.objects.create(name="oncall").user_set.add(operator)
    by_name, by_group, unassigned, for_editor, decided, elsewhere = open_gates(
        ("by-name", ["operator"]),
        ("by-group", ["group:oncall"]),
        ("unassigned", []),
        ("for-editor", ["editor"]),
        ("decided", ["operator"]),
        ("elsewhere", ["operator", "outsider"], {}, other_org),
    )
    approval_services.decide(decided, operator, "approve", via="api")
    mine = {"status": "pending", "mine": "true"}

    assert sorted(ids_of(api_for(operator).get(APPROVALS, mine))) == sorted(
        [by_name.pk, by_group.pk, unassigned.pk]
    )
    assert sorted(ids_of(api_for(editor).get(APPROVALS, mine))) == sorted(
        [unassigned.pk, for_editor.pk]
    )
    assert ids_of(api_for(viewer).get(APPROVALS, mine)) == []
    assert ids_of(api_for(outsider).get(APPROVALS, mine)) == [elsewhere.pk]
    every_pending = ids_of(api_for(operator).get(APPROVALS, {"status": "pending"}))
    assert sorted(every_pending) == sorted([by_name.pk, by_group.pk, unassigned.pk, for_editor.pk])


def test_an_unknown_status_filter_answers_400_in_the_error_shape(operator, api_for):
    response = api_for(operator).get(APPROVALS, {"status": "bogus"})

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"status"}


@pytest.mark.parametrize("value", ["perhaps", "yes", "1"])
def test_a_mine_filter_that_is_not_true_or_false_answers_400(operator, api_for, value):
    response = api_for(operator).get(APPROVALS, {"mine": value})

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"mine"}


def test_the_detail_and_the_execution_detail_show_the_gate(operator, open_gate, api_for):
    approval = open_gate(["operator"])
    client = api_for(operator)

    detail = client.get(f"{APPROVALS}{approval.pk}/")
    execution = client.get(f"/api/v1/executions/{approval.execution_id}/")

    assert detail.status_code == 200, detail.content
    assert set(detail.json()) >= CONTRACT_FIELDS
    assert detail.json()["id"] == approval.pk
    assert detail.json()["status"] == "pending"
    assert execution.status_code == 200, execution.content
    assert execution.json()["status"] == ExecutionStatus.PAUSED
    (gate,) = execution.json()["approvals"]
    assert set(gate) >= CONTRACT_FIELDS
    assert gate["id"] == approval.pk
    assert gate["message"] == "Restart web1?"
    assert gate["can_respond"] is True


# --- deciding through the API ---


def test_approve_through_the_api_records_via_api_and_the_run_follows_the_approved_edge(
    operator, open_gate, api_for, workers
):
    approval = open_gate(["operator"])

    response = api_for(operator).post(decision_url(approval.pk), {"note": "ok"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "approved"
    assert body["can_respond"] is False
    (answer,) = body["responses"]
    assert set(answer) == RESPONSE_FIELDS
    assert answer["user"] == "operator"
    assert answer["decision"] == "approve"
    assert answer["note"] == "ok"
    assert answer["via"] == "api"
    assert datetime.fromisoformat(answer["at"]) == ApprovalResponse.objects.get().at
    execution = workers.run_to_end(approval.execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert finished_path(execution) == {
        "check": StepStatus.COMPLETED,
        "gate": StepStatus.COMPLETED,
        "restart": StepStatus.COMPLETED,
        "skip": StepStatus.SKIPPED,
    }
    restart = execution.steps.get(node_id="restart")
    assert restart.output == {"by": "operator", "via": "api", "note": "ok"}


def test_reject_through_the_api_records_via_api_and_the_run_follows_the_rejected_edge(
    operator, open_gate, api_for, workers
):
    approval = open_gate(["operator"])

    response = api_for(operator).post(
        decision_url(approval.pk, "reject"), {"note": "not now"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "rejected"
    assert [(r["user"], r["decision"], r["via"]) for r in response.json()["responses"]] == [
        ("operator", "reject", "api")
    ]
    execution = workers.run_to_end(approval.execution)
    assert execution.status == ExecutionStatus.COMPLETED
    assert finished_path(execution)["restart"] == StepStatus.SKIPPED
    skip = execution.steps.get(node_id="skip")
    assert skip.status == StepStatus.COMPLETED
    assert skip.output == {"by": "operator", "via": "api", "note": "not now"}
    gate = execution.steps.get(node_id="gate")
    assert gate.output["decision"] == "rejected"


def test_a_second_decision_answers_409_naming_who_decided_and_when(
    operator, editor, open_gate, api_for
):
    approval = open_gate(["operator", "editor"])
    first = api_for(operator).post(decision_url(approval.pk), {"note": "go"}, format="json")
    assert first.status_code == 200, first.content
    approval.refresh_from_db()

    for decision in ("reject", "approve"):
        late = api_for(editor).post(decision_url(approval.pk, decision), {}, format="json")

        assert late.status_code == 409, late.content
        error = error_of(late)
        assert error["code"] == "conflict"
        assert error["details"]["decided_by"] == "operator"
        assert datetime.fromisoformat(error["details"]["decided_at"]) == approval.decided_at
        assert "operator" in error["message"]
        assert error["details"]["decided_at"] in error["message"]
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.APPROVED
    assert list(approval.responses.values_list("user__username", "decision")) == [
        ("operator", "approve")
    ]


def test_a_user_who_is_not_assigned_gets_403_with_the_reason(editor, open_gate, api_for):
    approval = open_gate(["operator"])

    response = api_for(editor).post(decision_url(approval.pk), {"note": "me too"}, format="json")

    assert response.status_code == 403, response.content
    error = error_of(response)
    assert "not an assigned approver" in error["message"]
    assert "operator" in error["message"]
    assert_untouched(approval)


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_viewer_gets_403_with_the_reason(viewer, open_gate, api_for, decision):
    approval = open_gate([])  # unassigned: anyone who may execute automation

    response = api_for(viewer).post(decision_url(approval.pk, decision), {}, format="json")

    assert response.status_code == 403, response.content
    assert "operator role" in error_of(response)["message"]
    assert_untouched(approval)


def test_a_member_of_another_organization_gets_404(outsider, open_gate, api_for):
    approval = open_gate([])
    client = api_for(outsider)

    responses = [
        client.get(f"{APPROVALS}{approval.pk}/"),
        client.post(decision_url(approval.pk), {"note": "x"}, format="json"),
        client.post(decision_url(approval.pk, "reject"), {"note": "x"}, format="json"),
    ]

    for response in responses:
        assert response.status_code == 404, response.content
        assert error_of(response)["code"] == "not_found"
    assert_untouched(approval)


def test_an_unknown_approval_answers_404(operator, api_for):
    client = api_for(operator)

    for response in (
        client.get(f"{APPROVALS}999999/"),
        client.post(decision_url(999999), {"note": "x"}, format="json"),
        client.post(decision_url(999999, "reject"), {}, format="json"),
    ):
        assert response.status_code == 404, response.content
        error_of(response)


@pytest.mark.parametrize(
    "note",
    [
        ["a", "list"],
        {"a": "mapping"},
        True,
        None,
        "x" * 10_001,
        pytest.param(
            42,
        ),
    ],
    ids=["list", "mapping", "boolean", "null", "too-long", "number"],
)
def test_a_note_that_is_not_a_string_or_is_too_long_answers_400(operator, open_gate, api_for, note):
    approval = open_gate(["operator"])

    response = api_for(operator).post(decision_url(approval.pk), {"note": note}, format="json")

    assert response.status_code == 400, response.content
    assert detail_paths(response) == {"note"}
    assert_untouched(approval)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("[]", "application/json"), ('{"note": ', "application/json"), ("note=ok", "text/plain")],
    ids=["list-body", "broken-json", "not-json"],
)
def test_a_malformed_body_answers_4xx_in_the_error_shape_and_decides_nothing(
    operator, open_gate, api_for, body, content_type
):
    approval = open_gate(["operator"])

    response = api_for(operator).post(decision_url(approval.pk), body, content_type=content_type)

    assert response.status_code in {400, 415}, response.content
    error_of(response)
    assert_untouched(approval)


def test_twenty_concurrent_decisions_record_exactly_one_and_the_others_get_409(
    org, open_gate, live_server, workers
):
    users = [make_user(f"oncall{i:02d}", org, Role.OPERATOR) for i in range(20)]
    Group.objects.create(name="oncall").user_set.add(*users)
    tokens = {}
    for user in users:
        out = io.StringIO()
        call_command("drf_create_token", user.username, stdout=out)
        tokens[user.username] = Token.objects.get(user=user).key
        assert tokens[user.username] in out.getvalue()
    approval = open_gate(["group:oncall"])
    start = threading.Barrier(len(tokens))
    results: list[tuple[str, str, httpx.Response]] = []
    failures: list[BaseException] = []

    def decide(clients: dict[str, httpx.Client], index: int, name: str) -> None:
        decision = "approve" if index % 2 == 0 else "reject"
        try:
            start.wait(timeout=30)
            response = clients[name].post(
                decision_url(approval.pk, decision), json={"note": f"{decision} by {name}"}
            )
            results.append((name, decision, response))
        except BaseException as exc:  # reported in the test's thread
            start.abort()
            failures.append(exc)

    with ExitStack() as stack:
        clients = {
            name: stack.enter_context(
                httpx.Client(
                    base_url=live_server.url, headers={"Authorization": f"Token {key}"}, timeout=60
                )
            )
            for name, key in tokens.items()
        }
        # Each token works and each user may decide; this also opens every client's connection.
        for client in clients.values():
            seen = client.get(f"{APPROVALS}{approval.pk}/")
            assert seen.status_code == 200, seen.text
            assert seen.json()["can_respond"] is True
        threads = [
            threading.Thread(target=decide, args=(clients, index, name))
            for index, name in enumerate(sorted(clients))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    assert not failures, failures
    assert Counter(response.status_code for _, _, response in results) == {200: 1, 409: 19}, [
        (name, response.status_code, response.text) for name, _, response in results
    ]
    ((winner, decision, won),) = [r for r in results if r[2].status_code == 200]
    expected = ApprovalStatus.APPROVED if decision == "approve" else ApprovalStatus.REJECTED
    assert won.json()["status"] == expected
    for _, _, response in results:
        if response.status_code == 409:
            assert error_of(response)["details"]["decided_by"] == winner
    approval.refresh_from_db()
    assert approval.status == expected
    assert approval.decided_by.username == winner
    assert list(approval.responses.values_list("user__username", "decision")) == [
        (winner, decision)
    ]
    execution = workers.run_to_end(approval.execution)
    assert execution.status == ExecutionStatus.COMPLETED
    kinds = Counter(execution.events.values_list("kind", flat=True))
    assert kinds[EventKind.APPROVAL_RESPONSE] == 1
    assert kinds[EventKind.APPROVAL_DECIDED] == 1
    gate = execution.steps.get(node_id="gate")
    assert gate.output["decision"] == expected
    assert gate.output["respondedBy"] == winner
    assert gate.output["respondedVia"] == "api"
    followed, not_taken = ("restart", "skip") if decision == "approve" else ("skip", "restart")
    path = finished_path(execution)
    assert path[followed] == StepStatus.COMPLETED
    assert path[not_taken] == StepStatus.SKIPPED
    assert execution.steps.get(node_id=followed).output == {
        "by": winner,
        "via": "api",
        "note": f"{decision} by {winner}",
    }


def test_a_quorum_of_two_needs_two_distinct_approvers(
    operator, editor, open_gate, api_for, workers
):
    approval = open_gate(["operator", "editor"], required_approvals=2)
    mine = {"status": "pending", "mine": "true"}

    first = api_for(operator).post(decision_url(approval.pk), {"note": "one"}, format="json")

    assert first.status_code == 200, first.content
    assert first.json()["status"] == "pending"
    assert [r["user"] for r in first.json()["responses"]] == ["operator"]
    (listed,) = api_for(editor).get(f"{APPROVALS}{approval.pk}/").json()["responses"]
    assert set(listed) == RESPONSE_FIELDS
    assert (listed["user"], listed["decision"], listed["note"], listed["via"]) == (
        "operator",
        "approve",
        "one",
        "api",
    )
    workers.drain()
    assert Execution.objects.get(pk=approval.execution_id).status == ExecutionStatus.PAUSED
    assert ids_of(api_for(operator).get(APPROVALS, mine)) == []
    assert ids_of(api_for(editor).get(APPROVALS, mine)) == [approval.pk]

    again = api_for(operator).post(decision_url(approval.pk), {"note": "twice"}, format="json")

    assert again.status_code == 409, again.content
    assert "already responded" in error_of(again)["message"]
    assert approval.responses.count() == 1

    second = api_for(editor).post(decision_url(approval.pk), {"note": "two"}, format="json")

    assert second.status_code == 200, second.content
    assert second.json()["status"] == "approved"
    assert [r["user"] for r in second.json()["responses"]] == ["operator", "editor"]
    execution = workers.run_to_end(approval.execution)
    assert execution.status == ExecutionStatus.COMPLETED
    gate = execution.steps.get(node_id="gate")
    assert [r["user"] for r in gate.output["responses"]] == ["operator", "editor"]
    assert execution.steps.get(node_id="restart").output == {
        "by": "editor",
        "via": "api",
        "note": "two",
    }


# --- the admin portal ---

INBOX = "/approvals/approval/inbox/"


def decide_url(approval: Approval) -> str:
    return f"/approvals/approval/{approval.pk}/decide/"


def execution_page(approval: Approval) -> str:
    return f"/executions/execution/{approval.execution_id}/change/"


def test_the_inbox_lists_what_waits_on_you_with_approve_and_reject_buttons(
    operator, editor, open_gates, client
):
    mine, theirs = open_gates(("mine", ["operator"]), ("theirs", ["editor"]))
    client.force_login(operator)

    response = client.get(INBOX)

    assert response.status_code == 200
    page = response.content.decode()
    assert f'id="approval-{mine.pk}"' in page
    assert f'id="approval-{theirs.pk}"' not in page
    assert f'action="{decide_url(mine)}"' in page
    assert f'action="{decide_url(theirs)}"' not in page
    assert 'name="decision" value="approve"' in page
    assert 'name="decision" value="reject"' in page
    assert 'name="note"' in page
    assert "Restart web1?" in page
    assert 'id="opsflow-inbox">Approvals (1)</a>' in page


def test_approving_from_the_inbox_redirects_and_records_via_web(
    operator, open_gate, client, workers
):
    approval = open_gate(["operator"])
    client.force_login(operator)

    response = client.post(decide_url(approval), {"decision": "approve", "note": "looks fine"})

    assert response.status_code == 302
    assert response.url == reverse("admin:approvals_approval_inbox")
    answer = ApprovalResponse.objects.get(approval=approval)
    assert (answer.user, answer.decision, answer.note, answer.via) == (
        operator,
        "approve",
        "looks fine",
        "web",
    )
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.APPROVED
    after = client.get(response.url).content.decode()
    assert f'id="approval-{approval.pk}"' not in after
    assert 'id="opsflow-inbox">Approvals</a>' in after
    assert f"You approved “gate” of execution #{approval.execution_id}." in after
    execution = workers.run_to_end(approval.execution)
    assert execution.steps.get(node_id="restart").output == {
        "by": "operator",
        "via": "web",
        "note": "looks fine",
    }


def test_a_get_on_the_decide_url_decides_nothing(operator, open_gate, client):
    approval = open_gate(["operator"])
    client.force_login(operator)

    response = client.get(decide_url(approval), {"decision": "approve", "note": "sneaky"})

    assert response.status_code in {403, 405}
    assert_untouched(approval)


def test_the_execution_page_of_a_paused_run_shows_the_gate_with_buttons_for_an_approver(
    operator, open_gate, client, workers
):
    approval = open_gate(["operator"])
    client.force_login(operator)

    response = client.get(execution_page(approval))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="approvals"' in page
    assert "Restart web1?" in page
    assert f'action="{decide_url(approval)}"' in page
    assert 'id="opsflow-inbox">Approvals (1)</a>' in page

    decided = client.post(
        decide_url(approval),
        {"decision": "reject", "note": "not today", "next": execution_page(approval)},
    )

    assert decided.status_code == 302
    assert decided.url == execution_page(approval)
    execution = workers.run_to_end(approval.execution)
    assert execution.steps.get(node_id="skip").output == {
        "by": "operator",
        "via": "web",
        "note": "not today",
    }
    assert finished_path(execution)["restart"] == StepStatus.SKIPPED


def test_the_execution_page_shows_the_gate_without_buttons_to_a_viewer(viewer, open_gate, client):
    approval = open_gate([])
    client.force_login(viewer)

    response = client.get(execution_page(approval))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="approvals"' in page
    assert "Restart web1?" in page
    assert f'action="{decide_url(approval)}"' not in page
    assert 'name="decision"' not in page
    assert 'id="opsflow-inbox">Approvals</a>' in page

    refused = client.post(decide_url(approval), {"decision": "approve"})

    assert refused.status_code == 302
    assert_untouched(approval)


def test_a_gate_cancelled_with_its_run_says_cancelled_once_on_the_execution_page(
    operator, open_gate, client
):
    from apps.executions.services import cancel_execution

    approval = open_gate(["operator"])
    cancel_execution(approval.execution, operator)
    client.force_login(operator)

    page = client.get(approval.execution.get_absolute_url()).content.decode()
    approvals = page[page.index('id="approvals"') :]

    assert "<td>cancelled" in approvals
    assert "cancelled (cancelled)" not in approvals


def test_a_waiting_gate_shows_as_waiting_without_a_worker_not_as_running(
    operator, open_gate, client
):
    approval = open_gate(["operator"])
    gate = approval.execution.steps.get(node_id="gate")
    assert gate.status == StepStatus.RUNNING  # in the engine's terms: it has not finished
    client.force_login(operator)

    page = client.get(approval.execution.get_absolute_url()).content.decode()
    row = page[page.index(f'id="step-{gate.pk}"') :]
    row = row[: row.index("</tr>")]

    assert ">waiting</span>" in row and "no worker held" in row
    assert "opsflow-running" not in row and gate.worker not in row
