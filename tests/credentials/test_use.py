"""`{{ secrets.NAME }}` in a run (issue 9 build items 3 to 5): decrypted in the worker only,
sent only to the hosts the credential allows (every redirect hop checked before it connects),
and masked in everything a run stores or shows. Every server here listens on 127.0.0.1."""

from __future__ import annotations

import io
import json
from http.server import BaseHTTPRequestHandler

import pytest
from django.apps import apps as django_apps
from django.core import mail
from django.core.management import call_command
from django.test import Client

from apps.accounts.choices import Role
from apps.approvals.models import Approval
from apps.credentials.hosts import host_allowed
from apps.credentials.services import create_credential
from apps.executions.choices import ExecutionStatus
from apps.executions.masking import MASK
from apps.executions.models import Execution, IncompleteExecution
from apps.executions.services import retry_incomplete, trigger_workflow
from tests.factories import make_user, make_workflow
from tests.local_http import reply, serving

pytestmark = pytest.mark.django_db(transaction=True)

# A quote and spaces: the value also shows up JSON-escaped and URL-encoded.
VALUE = 'V4lue"with odd 9f8e-credential'
FORMS = [VALUE, json.dumps(VALUE)[1:-1], "V4lue%22with%20odd"]


class Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []
    redirect_to = ""

    def do_GET(self):  # noqa: N802 (http.server's name)
        Recorder.seen.append((self.path, self.headers.get("X-Token")))
        if self.path.startswith("/hop"):
            reply(self, 302, headers={"Location": Recorder.redirect_to})
            return
        status = 500 if self.path.startswith("/fail") else 200
        reply(self, status, {"path": self.path, "x-token": self.headers.get("X-Token")})

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Recorder.seen = []
    with serving(Recorder) as url:
        yield url


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def credential(org, server):
    return create_credential(
        org, None, name="API_TOKEN", value=VALUE, allowed_hosts=[f"127.0.0.1:{port_of(server)}"]
    )


def request_node(node_id: str, url: str, **config) -> dict:
    return {
        "id": node_id,
        "type": "http.request",
        "config": {"url": url, "headers": {"X-Token": "{{ secrets.API_TOKEN }}"}, **config},
    }


def one_call(slug: str, url: str) -> dict:
    return {"slug": slug, "name": slug, "nodes": [request_node("call", url)], "edges": []}


def test_the_credential_is_sent_to_an_allowed_host_and_masked_in_what_is_stored(
    org, credential, server, workers
):
    execution = workers.run_to_end(trigger_workflow(make_workflow(org, one_call("ok", server))))

    assert execution.status == ExecutionStatus.COMPLETED
    assert Recorder.seen == [("/", VALUE)]  # the real value went out
    step = execution.steps.get()
    assert step.input["headers"]["X-Token"] == MASK
    assert step.output["json"]["x-token"] == MASK  # the echo came back masked


def test_a_host_outside_allowed_hosts_is_refused_before_connecting(org, server, workers):
    create_credential(org, None, name="API_TOKEN", value=VALUE, allowed_hosts=["*.example.com"])

    execution = workers.run_to_end(trigger_workflow(make_workflow(org, one_call("no", server))))

    step = execution.steps.get()
    assert step.error_type == "InvalidConfigurationError"
    port = port_of(server)
    assert (
        step.error_message == f"credential 'API_TOKEN' is not allowed for host '127.0.0.1:{port}'"
    )
    assert Recorder.seen == []  # nothing was sent


def test_a_credential_without_allowed_hosts_goes_nowhere(org, server, workers):
    create_credential(org, None, name="API_TOKEN", value=VALUE)

    execution = workers.run_to_end(trigger_workflow(make_workflow(org, one_call("none", server))))

    assert "is not allowed for host" in execution.steps.get().error_message
    assert Recorder.seen == []


def test_every_redirect_hop_is_checked_against_the_hosts(org, credential, server, workers):
    with serving(Recorder) as elsewhere:  # another port: not in allowed_hosts
        Recorder.redirect_to = f"{elsewhere}/landed"
        execution = workers.run_to_end(
            trigger_workflow(make_workflow(org, one_call("hop", f"{server}/hop")))
        )

    step = execution.steps.get()
    assert step.error_message == (
        f"credential 'API_TOKEN' is not allowed for host '127.0.0.1:{port_of(elsewhere)}'"
    )
    assert Recorder.seen == [("/hop", VALUE)]  # the first hop only; /landed never got a request


def test_an_unknown_credential_fails_the_step_with_its_name(org, server, workers):
    execution = workers.run_to_end(trigger_workflow(make_workflow(org, one_call("unk", server))))

    step = execution.steps.get()
    assert step.error_type == "DataError"
    assert (
        step.error_message == "Unknown credential: secrets.API_TOKEN (this organization has none)"
    )
    assert Recorder.seen == []


def test_another_organizations_credential_is_not_visible(org, other_org, server, workers):
    create_credential(other_org, None, name="API_TOKEN", value=VALUE, allowed_hosts=["127.0.0.1"])

    execution = workers.run_to_end(trigger_workflow(make_workflow(org, one_call("x", server))))

    assert execution.steps.get().error_message.startswith("Unknown credential: secrets.API_TOKEN")
    assert Recorder.seen == []


@pytest.mark.parametrize(
    ("patterns", "host", "port", "allowed"),
    [
        (["api.example.com"], "api.example.com", 443, True),
        (["api.example.com"], "API.Example.com", 8080, True),
        (["api.example.com:443"], "api.example.com", 8443, False),
        (["*.example.com"], "a.b.example.com", 443, True),
        (["*.example.com"], "example.com", 443, False),
        (["*.example.com"], "evilexample.com", 443, False),
        (["*.example.com:8443"], "x.example.com", 8443, True),
        (["[::1]:8080"], "::1", 8080, True),
        ([], "api.example.com", 443, False),
    ],
)
def test_host_patterns(patterns, host, port, allowed):
    assert host_allowed(patterns, host, port) is allowed


def everything_stored() -> list[tuple[str, str]]:
    """(table, row as text) for every row of every table."""
    rows = []
    for model in django_apps.get_models():
        if not model._meta.managed:  # no table (django-rq's dashboard stand-in)
            continue
        for row in model.objects.values():
            rows.append((model._meta.db_table, json.dumps(row, default=str)))
            rows.append((model._meta.db_table, " ".join(str(v) for v in row.values())))
    return rows


def leaks(text: str) -> list[str]:
    return [form for form in FORMS if form in text]


def test_the_value_is_nowhere_in_the_database_the_api_the_admin_or_an_export(
    org, credential, server, workers, viewer, owner, api_for, tmp_path
):
    definition = {
        "slug": "leaky",
        "name": "leaky",
        "settings": {"store_incomplete_executions": True},
        "nodes": [
            {"id": "start", "type": "noop"},  # an entry node's failure is never stored
            {
                "id": "echo",
                "type": "shell.command",
                "config": {
                    "command": ["sh", "-c", 'echo "out $TOKEN"; echo "err $TOKEN" >&2'],
                    "env": {"TOKEN": "{{ secrets.API_TOKEN }}"},
                },
            },
            request_node("send", f"{server}/echo", params={"t": "{{ secrets.API_TOKEN }}"}),
            request_node("fail", f"{server}/fail/{{{{ secrets.API_TOKEN }}}}"),
        ],
        "edges": [
            {"from": "start", "to": "echo"},
            {"from": "echo", "to": "send"},
            {"from": "send", "to": "fail"},
        ],
    }
    execution = trigger_workflow(make_workflow(org, definition))
    workers.drain()
    execution.refresh_from_db()

    # It really ran with the value: the shell printed it, the server got it twice.
    assert execution.status == ExecutionStatus.INCOMPLETE
    echo = execution.steps.get(node_id="echo")
    assert echo.output["stdout"] == f"out {MASK}\n" and echo.output["stderr"] == f"err {MASK}\n"
    assert [token for _, token in Recorder.seen] == [VALUE, VALUE]
    fail = execution.steps.get(node_id="fail")
    assert fail.error_type == "UnexpectedError" and MASK in fail.error_message  # HTTP 500
    record = IncompleteExecution.objects.get()

    found = [(table, leaks(text)) for table, text in everything_stored() if leaks(text)]
    assert found == []

    shown = []
    for user in (viewer, owner):
        client = api_for(user)
        for url in (
            f"/api/v1/executions/{execution.pk}/",
            f"/api/v1/executions/{execution.pk}/events/",
            "/api/v1/executions/",
            "/api/v1/incomplete-executions/",
            f"/api/v1/incomplete-executions/{record.pk}/",
            "/api/v1/credentials/",
        ):
            answer = client.get(url)
            assert answer.status_code == 200, url
            shown.append((url, answer.content.decode()))
    admin = Client()
    admin.force_login(owner)
    pages = [
        f"/executions/execution/{execution.pk}/change/",
        f"/executions/incompleteexecution/{record.pk}/change/",
        f"/credentials/credential/{credential.pk}/change/",
    ]
    for url in pages:
        answer = admin.get(url)
        assert answer.status_code == 200, url
        shown.append((url, answer.content.decode()))
    exported = io.StringIO()
    call_command("export_workflow", "leaky", "--organization", "acme", stdout=exported)
    shown.append(("export", exported.getvalue()))

    assert [(where, leaks(text)) for where, text in shown if leaks(text)] == []


def test_a_retry_from_the_masked_input_sends_the_real_value(org, credential, server, workers):
    definition = {
        "slug": "again",
        "name": "again",
        "settings": {"store_incomplete_executions": True},
        "nodes": [{"id": "start", "type": "noop"}, request_node("call", f"{server}/fail")],
        "edges": [{"from": "start", "to": "call"}],
    }
    execution = trigger_workflow(make_workflow(org, definition))
    workers.drain()
    record = IncompleteExecution.objects.get()
    edited = {**record.bundles["input"], "url": f"{server}/fixed"}
    assert edited["headers"]["X-Token"] == MASK  # what the operator saw

    retry_incomplete(record, input=edited)
    workers.run_to_end(Execution.objects.get(pk=execution.pk))

    assert Recorder.seen[-1] == ("/fixed", VALUE)
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED


def test_an_approval_email_shows_the_message_with_the_value_masked(org, credential, workers):
    approver = make_user("approver", org, Role.OPERATOR, email="approver@example.com")
    definition = {
        "slug": "gate",
        "name": "gate",
        "nodes": [
            {
                "id": "gate",
                "type": "approval",
                "config": {
                    "message": "Deploy with key {{ secrets.API_TOKEN }}?",
                    "approvers": [approver.username],
                },
            }
        ],
        "edges": [],
    }
    trigger_workflow(make_workflow(org, definition))
    workers.drain(until=lambda: Approval.objects.exists())

    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    assert f"Deploy with key {MASK}?" in body
    assert leaks(body) == []
    assert leaks(Approval.objects.get().message) == []
