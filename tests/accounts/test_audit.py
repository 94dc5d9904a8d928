"""The audit log (issue 10 item 7): every state-changing action by a person is recorded with
who, when, from where, what and the before/after of what changed, secrets masked; admins read
it in the admin and at /api/v1/audit/, scoped to their organizations."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.models import AuditEntry, Membership
from apps.approvals.models import Approval
from apps.executions.models import IncompleteExecution
from apps.executions.services import cancel_execution, trigger_workflow
from apps.workflows.models import Workflow
from tests.approvals.test_api_and_web import gate_definition
from tests.executions.test_failure_api import check_definition
from tests.factories import make_user, make_workflow
from tests.workflows.test_admin import resubmitted

pytestmark = pytest.mark.django_db(transaction=True)

ADDRESS = "203.0.113.9"
LITERAL = "Bearer audit-literal-5150"


def api(user) -> APIClient:
    client = APIClient(REMOTE_ADDR=ADDRESS)
    client.force_authenticate(user)
    return client


def browser(user) -> Client:
    client = Client(REMOTE_ADDR=ADDRESS)
    client.force_login(user)
    return client


def last(action: str) -> AuditEntry:
    entries = AuditEntry.objects.filter(action=action)
    assert entries.exists(), (
        f"no {action} entry; have {list(AuditEntry.objects.values_list('action', flat=True))}"
    )
    return entries.order_by("-id").first()


def assert_entry(action: str, user, obj=None, **changes) -> AuditEntry:
    entry = last(action)
    assert entry.actor == user and entry.actor_name == user.username
    assert entry.address == ADDRESS
    if obj is not None:
        assert (entry.object_type, entry.object_id) == (obj._meta.label_lower, str(obj.pk))
    for field, before_after in changes.items():
        assert entry.changes[field] == before_after, (field, entry.changes)
    return entry


def definition(slug: str = "audited", header: str = LITERAL) -> dict:
    return {
        "slug": slug,
        "name": slug,
        "nodes": [
            {
                "id": "call",
                "type": "http.request",
                "config": {"url": "http://127.0.0.1:9/", "headers": {"Authorization": header}},
            }
        ],
    }


def test_workflow_create_edit_publish_delete_are_recorded_with_masked_definitions(
    org, editor, redis_conn
):
    client = api(editor)
    assert client.post("/api/v1/workflows/", definition(), format="json").status_code == 201
    workflow = Workflow.objects.get(slug="audited")
    assert_entry("workflow.create", editor, workflow)

    edited = definition(header="Bearer audit-literal-6160")
    edited["name"] = "Audited twice"
    assert client.put("/api/v1/workflows/audited/draft/", edited, format="json").status_code == 200
    entry = assert_entry("workflow.edit", editor, workflow, name=["audited", "Audited twice"])
    assert "audit-literal" not in json.dumps(entry.changes)  # the header is *** on both sides
    assert (
        client.patch("/api/v1/workflows/audited/", {"is_active": False}, format="json").status_code
        == 200
    )
    assert_entry("workflow.edit", editor, workflow, is_active=[True, False])
    assert client.post("/api/v1/workflows/audited/publish/").status_code == 201
    assert_entry("workflow.publish", editor, workflow, version=[None, 1])

    assert client.delete("/api/v1/workflows/audited/").status_code == 204
    gone = assert_entry("workflow.delete", editor)
    assert (gone.object_id, gone.object_repr) == (str(workflow.pk), "Audited twice")
    assert gone.organization == org


def test_the_webhook_key_rotation_and_secret_are_recorded_without_their_values(org, editor):
    workflow = make_workflow(org, definition())
    client = browser(editor)

    client.post(f"/workflows/workflow/{workflow.pk}/rotate-webhook/")
    assert_entry("workflow.rotate_webhook_key", editor, workflow)
    page = client.get(f"/workflows/workflow/{workflow.pk}/change/")
    client.post(
        f"/workflows/workflow/{workflow.pk}/change/",
        resubmitted(page, webhook_secret="s3cr3t-hook"),
    )
    entry = assert_entry("workflow.webhook_secret", editor, workflow)
    assert entry.changes == {"webhook_secret": ["(none)", "(changed)"]}
    assert "s3cr3t-hook" not in json.dumps(list(AuditEntry.objects.values()), default=str)


def test_trigger_cancel_retrigger_are_recorded(org, operator, redis_conn):
    workflow = make_workflow(
        org, {"slug": "w", "name": "w", "nodes": [{"id": "a", "type": "noop"}]}
    )
    client = api(operator)

    created = client.post("/api/v1/workflows/w/trigger/", {"variables": {}}, format="json").json()
    run = workflow.executions.get(pk=created["id"])
    assert_entry("execution.trigger", operator, run, variables=[None, {}])
    assert client.post(f"/api/v1/executions/{run.pk}/cancel/").status_code == 200
    assert_entry("execution.cancel", operator, run)
    retriggered = client.post(f"/api/v1/executions/{run.pk}/retrigger/").json()
    assert_entry("execution.retrigger", operator, run, retriggered_as=[None, retriggered["id"]])


def test_nothing_is_recorded_for_runs_no_person_started(org, redis_conn):
    workflow = make_workflow(
        org, {"slug": "w", "name": "w", "nodes": [{"id": "a", "type": "noop"}]}
    )
    run = trigger_workflow(workflow)  # as cron or a webhook would
    cancel_execution(run)

    assert not AuditEntry.objects.filter(action__startswith="execution.").exists()


def test_mark_succeeded_retry_and_discard_single_and_bulk_are_recorded(
    org, operator, workers, tmp_path
):
    workflow = make_workflow(org, check_definition("stuck"))
    runs = [
        trigger_workflow(workflow, variables={"flag": str(tmp_path / "missing")}) for _ in range(5)
    ]
    workers.drain()
    marked, retried, discarded, bulk_retried, bulk_discarded = [
        IncompleteExecution.objects.get(execution=run) for run in runs
    ]
    client = api(operator)

    step = marked.execution.steps.get(node_id="check")
    url = f"/api/v1/executions/{marked.execution_id}/steps/{step.pk}/mark-succeeded/"
    assert client.post(url, {"output": {"ok": True}}, format="json").status_code == 201
    assert_entry("step.mark_succeeded", operator, output=[None, {"ok": True}])
    assert (
        client.post(
            f"/api/v1/incomplete-executions/{retried.pk}/retry/", {}, format="json"
        ).status_code
        == 200
    )
    assert_entry("incomplete.retry", operator, retried, edited=[None, []])
    assert client.delete(f"/api/v1/incomplete-executions/{discarded.pk}/").status_code == 204
    assert_entry("incomplete.discard", operator, discarded)
    client.post(
        "/api/v1/incomplete-executions/bulk-retry/", {"ids": [bulk_retried.pk]}, format="json"
    )
    assert_entry("incomplete.retry", operator, bulk_retried)
    client.post(
        "/api/v1/incomplete-executions/bulk-discard/", {"ids": [bulk_discarded.pk]}, format="json"
    )
    assert_entry("incomplete.discard", operator, bulk_discarded)


def test_approve_and_reject_are_recorded_with_the_note(org, operator, workers):
    workflow = make_workflow(org, gate_definition("gate"))
    trigger_workflow(workflow)
    trigger_workflow(workflow)
    workers.drain()
    first, second = Approval.objects.order_by("pk")
    client = api(operator)

    client.post(f"/api/v1/approvals/{first.pk}/approve/", {"note": "looks fine"}, format="json")
    assert_entry("approval.approve", operator, first, note=[None, "looks fine"], via=[None, "api"])
    client.post(f"/api/v1/approvals/{second.pk}/reject/", {}, format="json")
    assert_entry("approval.reject", operator, second, decision=[None, "reject"])


def test_credential_changes_are_recorded_and_the_value_never(org, editor):
    client = api(editor)
    value = "audit-credential-value-77"
    client.post(
        "/api/v1/credentials/",
        {"name": "KEY", "value": value, "allowed_hosts": ["a.example"]},
        format="json",
    )
    assert_entry(
        "credential.create", editor, allowed_hosts=[None, ["a.example"]], value=[None, "(changed)"]
    )
    client.patch(
        "/api/v1/credentials/KEY/",
        {"value": value + "-2", "allowed_hosts": ["b.example"]},
        format="json",
    )
    assert_entry(
        "credential.change",
        editor,
        value=["(changed)", "(changed)"],
        allowed_hosts=[["a.example"], ["b.example"]],
    )
    client.delete("/api/v1/credentials/KEY/")
    assert last("credential.delete").object_repr == "KEY"
    assert value not in json.dumps(list(AuditEntry.objects.values()), default=str)


def test_membership_changes_from_the_organization_page_are_recorded(org, superuser_client):
    client, root = superuser_client
    member = make_user("newbie")
    url = f"/accounts/organization/{org.pk}/change/"

    def save(**rows):
        data = resubmitted(client.get(url), **rows)
        answer = client.post(url, data)
        assert answer.status_code == 302, answer.content.decode()[-1500:]

    save(**{"memberships-0-user": member.pk, "memberships-0-role": Role.VIEWER})
    added = assert_entry("membership.add", root, role=[None, "viewer"])
    assert added.organization == org
    save(**{"memberships-0-role": Role.EDITOR})
    assert_entry("membership.change", root, role=["viewer", "editor"])
    save(**{"memberships-0-DELETE": "on"})
    assert_entry("membership.remove", root, role=["editor", None])
    assert not Membership.objects.filter(user=member).exists()


def test_failed_logins_and_the_lockout_are_recorded_with_the_address(org):
    make_user("victim", org, Role.VIEWER)
    client = Client(REMOTE_ADDR=ADDRESS)
    for _ in range(10):
        client.post("/login/", {"username": "victim", "password": "wrong"})

    failed = last("login.failed")
    assert (failed.actor_name, failed.address, failed.actor) == ("victim", ADDRESS, None)
    assert AuditEntry.objects.filter(action="login.failed").count() >= 10
    assert last("login.locked_out").actor_name == "victim"


def test_admins_read_their_organizations_entries_and_no_one_else_does(
    org, other_org, owner, viewer, outsider
):
    AuditEntry.objects.create(organization=org, action="workflow.edit", actor_name="x")
    AuditEntry.objects.create(organization=other_org, action="workflow.edit", actor_name="y")
    AuditEntry.objects.create(action="login.failed", actor_name="z")

    mine = api(owner).get("/api/v1/audit/?action=workflow.edit").json()["results"]
    assert [e["user"] for e in mine] == ["x"] and mine[0]["organization"] == "acme"
    assert api(viewer).get("/api/v1/audit/").status_code == 403
    assert [e["user"] for e in api(outsider).get("/api/v1/audit/").json()["results"]] == ["y"]
    assert browser(viewer).get("/accounts/auditentry/").status_code == 403
    page = browser(owner).get("/accounts/auditentry/").content.decode()
    assert "workflow.edit" in page and "login.failed" not in page


@pytest.fixture
def superuser_client(db):
    from django.contrib.auth import get_user_model

    root = get_user_model().objects.create_superuser("root", password="pw-root")
    return browser(root), root
