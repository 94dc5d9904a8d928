"""The permission matrix (issue 9 item 9): every cell of `apps/accounts/matrix.py`, walked over
every API endpoint and admin view or action that does the action, as each role. The same table
writes docs/permissions.md, so the page, the test and the product agree.

A probe does the action on its own fresh object through each channel and reports, per channel,
whether it was allowed (a 2xx, or the effect seen afterwards) or refused (403 or 404, or no
effect). Anything else (a 500, a 400 where a refusal was due) fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from drf_spectacular.generators import EndpointEnumerator
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.matrix import ACTIONS, BY_KEY, ROLES, markdown
from apps.accounts.models import AuditEntry
from apps.approvals.models import Approval
from apps.approvals.notifications import make_token
from apps.credentials.models import Credential
from apps.credentials.services import create_credential
from apps.executions.choices import ExecutionStatus, IncompleteStatus
from apps.executions.models import Execution, IncompleteExecution
from apps.executions.services import cancel_execution, trigger_workflow
from apps.workflows.models import IncidentDelivery, Workflow
from tests.approvals.test_api_and_web import gate_definition
from tests.executions.test_failure_api import check_definition
from tests.factories import make_org, make_user, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

REFUSED = (403, 404)


class World:
    """One organization (acme) with a user per role, an admin of another one, a superuser."""

    def __init__(self, workers, tmp_path):
        self.workers = workers
        self.tmp_path = tmp_path
        self.org = make_org("acme")
        other = make_org("globex")
        self.users = {
            role: make_user(role, self.org, role)
            for role in (Role.VIEWER, Role.OPERATOR, Role.EDITOR, Role.ADMIN)
        }
        self.users["superuser"] = get_user_model().objects.create_superuser("root", password="pw")
        self.users["outsider"] = make_user("outsider", other, Role.ADMIN)
        self.root = self.users["superuser"]
        self._seq = 0

    def slug(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq}"

    def workflow(self, publish: bool = True) -> Workflow:
        slug = self.slug("wf")
        definition = {
            "slug": slug,
            "name": slug,
            "nodes": [{"id": "a", "type": "noop"}],
            "edges": [],
        }
        return make_workflow(self.org, definition, publish=publish)

    def queued(self) -> Execution:
        return trigger_workflow(self.workflow())  # nothing works the queue: it stays open

    def finished(self) -> Execution:
        execution = self.queued()
        cancel_execution(execution, self.root)
        return execution

    def incompletes(self, count: int) -> list[IncompleteExecution]:
        workflow = make_workflow(self.org, check_definition(self.slug("stuck")))
        runs = [
            trigger_workflow(workflow, variables={"flag": str(self.tmp_path / "missing")})
            for _ in range(count)
        ]
        self.workers.drain()
        return [IncompleteExecution.objects.get(execution=run) for run in runs]

    def gates(self, count: int) -> list[Approval]:
        workflow = make_workflow(self.org, gate_definition(self.slug("gate")))
        runs = [trigger_workflow(workflow) for _ in range(count)]
        self.workers.drain()
        return [Approval.objects.get(execution=run) for run in runs]


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def answered(response, ok=(200, 201, 202, 204), refused=REFUSED) -> bool:
    """Allowed or refused; anything else is a defect the test reports."""
    if response.status_code in ok:
        return True
    assert response.status_code in refused, (response.status_code, response.content[:400])
    return False


def page(response) -> bool:
    """An admin page: shown (200), or refused (403; 302 when the admin sends one away, to its
    index or the login page, because the row is outside the user's scope)."""
    return answered(response, ok=(200,), refused=(302, 403, 404))


def listed(response, key: str, value) -> bool:
    if response.status_code in REFUSED:
        return False
    assert response.status_code == 200, response.content[:400]
    return any(item.get(key) == value for item in response.json()["results"])


def read_channels(
    user, api_list: str, key: str, value, api_detail: str, admin_list: str, admin_page: str
):
    """The four ways to read a row: listed by the API, its API detail, listed (linked) on the
    admin's list, its admin page."""
    client, browser = api(user), web(user)
    changelist = browser.get(admin_list)
    return {
        "api list": listed(client.get(api_list), key, value),
        "api detail": answered(client.get(api_detail)),
        "admin list": changelist.status_code == 200 and admin_page in changelist.content.decode(),
        "admin page": page(browser.get(admin_page)),
    }


# --- the probes: one per action key ----------------------------------------------------------


def workflows_read(w: World, user) -> dict[str, bool]:
    workflow = w.workflow()
    return {
        **read_channels(
            user,
            "/api/v1/workflows/",
            "slug",
            workflow.slug,
            f"/api/v1/workflows/{workflow.slug}/",
            "/workflows/workflow/",
            f"/workflows/workflow/{workflow.pk}/change/",
        ),
        "api versions": answered(api(user).get(f"/api/v1/workflows/{workflow.slug}/versions/")),
        "admin diff": page(web(user).get(f"/workflows/workflow/{workflow.pk}/diff/")),
    }


def workflows_webhook_url(w: World, user) -> dict[str, bool]:
    workflow = w.workflow()
    detail = api(user).get(f"/api/v1/workflows/{workflow.slug}/")
    shown = web(user).get(f"/workflows/workflow/{workflow.pk}/change/")
    return {
        "api webhook_url": detail.status_code == 200 and detail.json()["webhook_url"] is not None,
        "admin webhook path": shown.status_code == 200
        and f"/hooks/{workflow.webhook_key}/" in shown.content.decode(),
    }


def workflows_trigger(w: World, user) -> dict[str, bool]:
    workflow = w.workflow()
    by_api = answered(api(user).post(f"/api/v1/workflows/{workflow.slug}/trigger/", {}, "json"))
    before = workflow.executions.count()
    web(user).post(f"/workflows/workflow/{workflow.pk}/run/", {"variables": ""})
    return {"api": by_api, "admin run": workflow.executions.count() > before}


def workflows_create(w: World, user) -> dict[str, bool]:
    slug, other = w.slug("new"), w.slug("new")
    document = {
        "organization": "acme",
        "slug": slug,
        "name": slug,
        "nodes": [{"id": "a", "type": "noop"}],
    }
    by_api = answered(api(user).post("/api/v1/workflows/", document, "json"), refused=(400, 403))
    definition = f"slug: {other}\nname: {other}\nnodes:\n  - {{id: a, type: noop}}\n"
    web(user).post("/workflows/workflow/add/", {"organization": w.org.pk, "definition": definition})
    return {"api": by_api, "admin add": Workflow.objects.filter(slug=other).exists()}


def workflows_edit(w: World, user) -> dict[str, bool]:
    workflow = w.workflow()
    client = api(user)
    patched = answered(client.patch(f"/api/v1/workflows/{workflow.slug}/", {"name": "X"}, "json"))
    document = {"slug": workflow.slug, "name": "Y", "nodes": [{"id": "b", "type": "noop"}]}
    drafted = answered(client.put(f"/api/v1/workflows/{workflow.slug}/draft/", document, "json"))
    form = web(user).get(f"/workflows/workflow/{workflow.pk}/change/")
    return {
        "api patch": patched,
        "api draft": drafted,
        "admin save button": form.status_code == 200 and 'name="_save"' in form.content.decode(),
    }


def workflows_publish(w: World, user) -> dict[str, bool]:
    first, second, third = w.workflow(False), w.workflow(False), w.workflow(False)
    by_api = answered(api(user).post(f"/api/v1/workflows/{first.slug}/publish/"))
    browser = web(user)
    browser.post(f"/workflows/workflow/{second.pk}/publish/")
    browser.post(
        "/workflows/workflow/",
        {"action": "publish_selected", admin.helpers.ACTION_CHECKBOX_NAME: [third.pk]},
    )
    return {
        "api": by_api,
        "admin publish": second.versions.exists(),
        "admin publish_selected": third.versions.exists(),
    }


def workflows_delete(w: World, user) -> dict[str, bool]:
    first, second = w.workflow(), w.workflow()
    by_api = answered(api(user).delete(f"/api/v1/workflows/{first.slug}/"))
    web(user).post(f"/workflows/workflow/{second.pk}/delete/", {"post": "yes"})
    return {"api": by_api, "admin delete": not Workflow.objects.filter(pk=second.pk).exists()}


def workflows_webhook_secret(w: World, user) -> dict[str, bool]:
    workflow = w.workflow()
    browser = web(user)
    shown = browser.get(f"/workflows/workflow/{workflow.pk}/change/")
    key = workflow.webhook_key
    browser.post(f"/workflows/workflow/{workflow.pk}/rotate-webhook/")
    workflow.refresh_from_db()
    return {
        "admin secret field": shown.status_code == 200
        and 'name="webhook_secret"' in shown.content.decode(),
        "admin rotate key": workflow.webhook_key != key,
    }


def executions_read(w: World, user) -> dict[str, bool]:
    execution = w.queued()
    step = execution.steps.first()
    return {
        **read_channels(
            user,
            "/api/v1/executions/",
            "id",
            execution.pk,
            f"/api/v1/executions/{execution.pk}/",
            "/executions/execution/",
            f"/executions/execution/{execution.pk}/change/",
        ),
        "api events": answered(api(user).get(f"/api/v1/executions/{execution.pk}/events/")),
        "admin step page": page(
            web(user).get(f"/executions/execution/{execution.pk}/steps/{step.pk}/")
        ),
        "admin step download": page(
            web(user).get(f"/executions/execution/{execution.pk}/steps/{step.pk}/download/input/")
        ),
    }


def _status(execution: Execution) -> str:
    execution.refresh_from_db()
    return execution.status


def _bulk_done(answer, pk: int) -> bool:
    """A bulk endpoint answers 200 to anyone who sees the rows; it skips those one may not
    act on (and 404s nothing: an outsider's ids are simply not among the rows)."""
    assert answer.status_code == 200, answer.content
    return pk in answer.json()["done"]


def _admin_action(user, changelist: str, action: str, pk: int) -> None:
    web(user).post(
        changelist,
        {"action": action, admin.helpers.ACTION_CHECKBOX_NAME: [pk], "confirmed": "yes"},
    )


def executions_cancel(w: World, user) -> dict[str, bool]:
    first, second, third, fourth = w.queued(), w.queued(), w.queued(), w.queued()
    by_api = answered(api(user).post(f"/api/v1/executions/{first.pk}/cancel/"))
    web(user).post(f"/executions/execution/{second.pk}/cancel/")
    assert (_status(first) == ExecutionStatus.CANCELLED) is by_api
    bulk = _bulk_done(
        api(user).post("/api/v1/executions/bulk-cancel/", {"ids": [third.pk]}, "json"), third.pk
    )
    assert (_status(third) == ExecutionStatus.CANCELLED) is bulk
    _admin_action(user, "/executions/execution/", "cancel_selected", fourth.pk)
    return {
        "api": by_api,
        "admin": _status(second) == ExecutionStatus.CANCELLED,
        "api bulk-cancel": bulk,
        "admin cancel_selected": _status(fourth) == ExecutionStatus.CANCELLED,
    }


def executions_retrigger(w: World, user) -> dict[str, bool]:
    first, second, third, fourth = w.finished(), w.finished(), w.finished(), w.finished()
    by_api = answered(api(user).post(f"/api/v1/executions/{first.pk}/retrigger/"))
    web(user).post(f"/executions/execution/{second.pk}/retrigger/")
    bulk = _bulk_done(
        api(user).post("/api/v1/executions/bulk-retrigger/", {"ids": [third.pk]}, "json"),
        third.pk,
    )
    assert Execution.objects.filter(retriggered_from=third).exists() is bulk
    _admin_action(user, "/executions/execution/", "retrigger_selected", fourth.pk)
    return {
        "api": by_api,
        "admin": Execution.objects.filter(retriggered_from=second).exists(),
        "api bulk-retrigger": bulk,
        "admin retrigger_selected": Execution.objects.filter(retriggered_from=fourth).exists(),
    }


def executions_mark_succeeded(w: World, user) -> dict[str, bool]:
    first, second = w.incompletes(2)
    step = first.execution.steps.get(node_id="check")
    url = f"/api/v1/executions/{first.execution_id}/steps/{step.pk}/mark-succeeded/"
    by_api = answered(api(user).post(url, {"output": {}}, "json"))
    other = second.execution.steps.get(node_id="check")
    web(user).post(
        f"/executions/execution/{second.execution_id}/steps/{other.pk}/mark-succeeded/",
        {"output": "{}"},
    )
    return {"api": by_api, "admin": second.execution.steps.filter(node_id="check").count() > 1}


def executions_delete(w: World, user) -> dict[str, bool]:
    execution = w.finished()
    browser = web(user)
    browser.post(f"/executions/execution/{execution.pk}/delete/", {"post": "yes"})
    return {"admin delete": not Execution.objects.filter(pk=execution.pk).exists()}


def incomplete_read(w: World, user) -> dict[str, bool]:
    (record,) = w.incompletes(1)
    return read_channels(
        user,
        "/api/v1/incomplete-executions/",
        "id",
        record.pk,
        f"/api/v1/incomplete-executions/{record.pk}/",
        "/executions/incompleteexecution/",
        f"/executions/incompleteexecution/{record.pk}/change/",
    )


def _closed(record: IncompleteExecution, status: str | None = None) -> bool:
    """Whether the record left `unresolved` (to `status` when given): a retry that fails again
    keeps the record open but bumps its retry count, so a retry is seen in the count too."""
    before = record.attempts
    record.refresh_from_db()
    if status is not None:
        return record.status == status
    return record.status != IncompleteStatus.UNRESOLVED or record.attempts > before


def incomplete_retry(w: World, user) -> dict[str, bool]:
    one, bulk, action, page_record = w.incompletes(4)
    client, browser = api(user), web(user)
    by_api = answered(client.post(f"/api/v1/incomplete-executions/{one.pk}/retry/", {}, "json"))
    bulk_answer = client.post(
        "/api/v1/incomplete-executions/bulk-retry/", {"ids": [bulk.pk]}, "json"
    )
    assert bulk_answer.status_code == 200, bulk_answer.content
    browser.post(
        "/executions/incompleteexecution/",
        {
            "action": "retry_selected",
            admin.helpers.ACTION_CHECKBOX_NAME: [action.pk],
            "confirmed": "yes",
        },
    )
    browser.post(f"/executions/incompleteexecution/{page_record.pk}/change/", {"action": "retry"})
    return {
        "api retry": by_api and _closed(one),
        "api bulk-retry": bulk.pk in bulk_answer.json()["done"] and _closed(bulk),
        "admin retry_selected": _closed(action),
        "admin page retry": _closed(page_record),
    }


def incomplete_discard(w: World, user) -> dict[str, bool]:
    one, bulk, action, page_record = w.incompletes(4)
    client, browser = api(user), web(user)
    by_api = answered(client.delete(f"/api/v1/incomplete-executions/{one.pk}/"))
    bulk_answer = client.post(
        "/api/v1/incomplete-executions/bulk-discard/", {"ids": [bulk.pk]}, "json"
    )
    assert bulk_answer.status_code == 200, bulk_answer.content
    browser.post(
        "/executions/incompleteexecution/",
        {
            "action": "discard_selected",
            "confirmed": "yes",
            admin.helpers.ACTION_CHECKBOX_NAME: [action.pk],
        },
    )
    browser.post(f"/executions/incompleteexecution/{page_record.pk}/change/", {"action": "discard"})
    discarded = IncompleteStatus.DISCARDED
    return {
        "api delete": by_api and _closed(one, discarded),
        "api bulk-discard": bulk.pk in bulk_answer.json()["done"] and _closed(bulk, discarded),
        "admin discard_selected": _closed(action, discarded),
        "admin page discard": _closed(page_record, discarded),
    }


def incomplete_hard_delete(w: World, user) -> dict[str, bool]:
    first, second = w.incompletes(2)
    browser = web(user)
    browser.post(f"/executions/incompleteexecution/{first.pk}/delete/", {"post": "yes"})
    browser.post(
        "/executions/incompleteexecution/",
        {
            "action": "delete_selected",
            "post": "yes",
            admin.helpers.ACTION_CHECKBOX_NAME: [second.pk],
        },
    )
    gone = IncompleteExecution.objects.filter
    return {
        "admin delete": not gone(pk=first.pk).exists(),
        "admin delete_selected": not gone(pk=second.pk).exists(),
    }


def approvals_read(w: World, user) -> dict[str, bool]:
    (gate,) = w.gates(1)
    return read_channels(
        user,
        "/api/v1/approvals/",
        "id",
        gate.pk,
        f"/api/v1/approvals/{gate.pk}/",
        "/approvals/approval/",
        f"/approvals/approval/{gate.pk}/change/",
    )


def _decided(gate: Approval) -> bool:
    gate.refresh_from_db()
    return gate.status != "pending"


def approvals_decide(w: World, user) -> dict[str, bool]:
    approve, reject, in_admin, by_link = w.gates(4)
    client = api(user)
    approved = answered(client.post(f"/api/v1/approvals/{approve.pk}/approve/", {}, "json"))
    rejected = answered(client.post(f"/api/v1/approvals/{reject.pk}/reject/", {}, "json"))
    browser = web(user)
    inbox = browser.get("/approvals/approval/inbox/")
    assert inbox.status_code == 200
    browser.post(f"/approvals/approval/{in_admin.pk}/decide/", {"decision": "approve"})
    link = Client().post(f"/approvals/respond/{make_token(by_link, user, 'approve')}/")
    assert link.status_code in (200, 403), link.status_code
    return {
        "api approve": approved and _decided(approve),
        "api reject": rejected and _decided(reject),
        "admin inbox lists it": f'id="approval-{in_admin.pk}"' in inbox.content.decode(),
        "admin decide": _decided(in_admin),
        "emailed link": _decided(by_link),
    }


def credentials_manage(w: World, user) -> dict[str, bool]:
    name = w.slug("C").replace("-", "_")
    create_credential(w.org, w.root, name=name, value="value-of-" + name)
    client, browser = api(user), web(user)
    made = client.post(
        "/api/v1/credentials/",
        {"organization": "acme", "name": name + "_new", "value": "fresh-value"},
        "json",
    )
    row = Credential.objects.get(name=name)
    return {
        "api list": listed(client.get("/api/v1/credentials/"), "name", name),
        "api create": answered(made, refused=(400, 403)),
        "api detail": answered(client.get(f"/api/v1/credentials/{name}/")),
        "api patch": answered(
            client.patch(f"/api/v1/credentials/{name}/", {"description": "d"}, "json")
        ),
        "admin list": page(browser.get("/credentials/credential/"))
        and name in browser.get("/credentials/credential/").content.decode(),
        "admin add": _added_in_admin(browser, w, name + "_admin"),
        "admin page": page(browser.get(f"/credentials/credential/{row.pk}/change/")),
        "admin delete page": page(browser.get(f"/credentials/credential/{row.pk}/delete/")),
        "api delete": answered(client.delete(f"/api/v1/credentials/{name}/")),
    }


def _added_in_admin(browser: Client, w: World, name: str) -> bool:
    browser.post(
        "/credentials/credential/add/",
        {"organization": w.org.pk, "name": name, "value": "admin-value", "hosts": ""},
    )
    return Credential.objects.filter(organization=w.org, name=name).exists()


def agents_read(w: World, user) -> dict[str, bool]:
    client = api(user)
    return {
        "api list": answered(client.get("/api/v1/agents/")),
        "admin list": page(web(user).get("/executions/agent/")),
    }


def incidents_read(w: World, user) -> dict[str, bool]:
    row = IncidentDelivery.objects.create(
        workflow=w.workflow(),
        incident_id=w.slug("alert"),
        status="firing",
        source="generic",
        outcome="skipped",
        reason="probe",
    )
    client = web(user)
    listing = client.get("/workflows/incidentdelivery/")
    return {
        "admin list": page(listing) and row.incident_id in listing.content.decode(),
        "admin page": page(client.get(f"/workflows/incidentdelivery/{row.pk}/change/")),
    }


def analytics_read(w: World, user) -> dict[str, bool]:
    client = api(user)
    return {
        "api summary": answered(client.get("/api/v1/analytics/summary/")),
        "api health": answered(client.get("/api/v1/analytics/health/")),
        "api export": answered(client.get("/api/v1/analytics/export/?format=csv")),
        "page": page(web(user).get("/analytics/")),
    }


def audit_read(w: World, user) -> dict[str, bool]:
    entry = AuditEntry.objects.create(organization=w.org, action="probe", actor_name="root")
    return read_channels(
        user,
        "/api/v1/audit/",
        "id",
        entry.pk,
        f"/api/v1/audit/{entry.pk}/",
        "/accounts/auditentry/",
        f"/accounts/auditentry/{entry.pk}/change/",
    )


def auth_token(w: World, user) -> dict[str, bool]:
    password = "pw" if user.is_superuser else f"pw-{user.username}"
    answer = APIClient().post(
        "/api/v1/auth/token/", {"username": user.username, "password": password}, "json"
    )
    return {"api": answered(answer)}


def organizations_manage(w: World, user) -> dict[str, bool]:
    return {"admin": page(web(user).get("/accounts/organization/"))}


def rq_dashboard(w: World, user) -> dict[str, bool]:
    return {"/django-rq/": page(web(user).get("/django-rq/"))}


PROBES: dict[str, Callable[[World, object], dict[str, bool]]] = {
    "workflows.read": workflows_read,
    "workflows.webhook_url": workflows_webhook_url,
    "workflows.trigger": workflows_trigger,
    "workflows.create": workflows_create,
    "workflows.edit": workflows_edit,
    "workflows.publish": workflows_publish,
    "workflows.delete": workflows_delete,
    "workflows.webhook_secret": workflows_webhook_secret,
    "executions.read": executions_read,
    "executions.cancel": executions_cancel,
    "executions.retrigger": executions_retrigger,
    "executions.mark_succeeded": executions_mark_succeeded,
    "executions.delete": executions_delete,
    "incomplete.read": incomplete_read,
    "incomplete.retry": incomplete_retry,
    "incomplete.discard": incomplete_discard,
    "incomplete.hard_delete": incomplete_hard_delete,
    "approvals.read": approvals_read,
    "approvals.decide": approvals_decide,
    "credentials.manage": credentials_manage,
    "agents.read": agents_read,
    "incidents.read": incidents_read,
    "analytics.read": analytics_read,
    "audit.read": audit_read,
    "auth.token": auth_token,
    "organizations.manage": organizations_manage,
    "rq.dashboard": rq_dashboard,
}


@pytest.mark.parametrize("key", [action.key for action in ACTIONS])
def test_each_cell_of_the_matrix_holds(key, workers, tmp_path, settings):
    if key == "rq.dashboard":
        settings.REDIS_URL = settings.REDIS_URL or "redis://127.0.0.1:1/0"
    world = World(workers, tmp_path)
    action = BY_KEY[key]
    wrong = {}
    for role in ROLES:
        seen = PROBES[key](world, world.users[role])
        expected = action.allows(role)
        off = {channel: allowed for channel, allowed in seen.items() if allowed is not expected}
        if off:
            wrong[role] = (f"expected {'allowed' if expected else 'refused'}", off)
    assert wrong == {}


def test_every_action_has_a_probe():
    assert set(PROBES) == set(BY_KEY)


def _endpoints() -> set[str]:
    found = set()
    for path, _regex, method, _view in EndpointEnumerator().get_api_endpoints():
        if path.rstrip("/").rsplit("/", 1)[-1] in ("schema", "docs"):
            continue
        found.add(f"{method} {path}")
    return found


def test_every_api_endpoint_is_in_the_matrix_and_nothing_else():
    named = {endpoint for action in ACTIONS for endpoint in action.api}
    assert named == _endpoints()


def _admin_names() -> set[str]:
    """Every admin view of our apps (changelist, add, change, delete, custom views) and every
    list action that a user can reach."""
    ours = ("accounts", "workflows", "executions", "approvals", "credentials")
    names = set()
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in ours:
            continue
        for url in model_admin.get_urls():
            if url.name and not url.name.endswith(("_history", "_autocomplete")):
                names.add(url.name)
        names.update(a if isinstance(a, str) else a.__name__ for a in model_admin.actions or ())
    return names


def test_every_admin_view_and_action_is_in_the_matrix():
    named = {re.sub(r" \(.*\)$", "", entry) for action in ACTIONS for entry in action.admin}
    missing = _admin_names() - named
    # Views that only show or refuse what the rows above already cover.
    assert missing <= set(UNLISTED_ADMIN_VIEWS), sorted(missing - set(UNLISTED_ADMIN_VIEWS))
    assert named - _admin_names() == set()


# Admin views with no action of their own: forms of an action listed above, or stock views that
# this project turns off for everyone (checked by the cells that name their model's delete).
UNLISTED_ADMIN_VIEWS = {
    "accounts_organization_add": "organizations.manage",
    "accounts_organization_change": "organizations.manage",
    "accounts_organization_delete": "organizations.manage",
    "accounts_auditentry_add": "nobody (written by the services)",
    "accounts_auditentry_delete": "nobody",
    "executions_execution_add": "nobody (runs start by trigger)",
    "executions_incompleteexecution_add": "nobody (failures make them)",
    "executions_agent_add": "nobody (agents register themselves)",
    "executions_agent_change": "agents.read",
    "executions_agent_delete": "nobody",
    "approvals_approval_add": "nobody (gates make them)",
    "approvals_approval_delete": "nobody",
    "workflows_incidentdelivery_add": "nobody (alerts make them)",
    "workflows_incidentdelivery_delete": "nobody",
}


def test_docs_permissions_md_is_the_matrix():
    page = Path(django_settings.BASE_DIR) / "docs" / "permissions.md"
    assert page.read_text() == markdown(), "run: python manage.py permissions_doc"
