"""`notify.chat` and `notify.email` (issue 14 item 3), against real servers on 127.0.0.1.

A webhook server records what each provider's format puts on the wire and answers as told
(200, 429, 5xx, 4xx); a small SMTP server answers as told (accepts, defers, refuses). The chat
URL is a credential bound to its host, and never stored or shown in clear.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler

import pytest
from django.core import mail

from apps.credentials.runtime import UsedCredential
from apps.credentials.services import create_credential
from apps.executions import errors
from apps.executions.choices import ExecutionStatus, IncompleteStatus, StepStatus
from apps.executions.masking import MASK
from apps.executions.models import Execution, ExecutionEvent, IncompleteExecution, Step
from apps.executions.nodes import REGISTRY, NodeContext
from apps.executions.nodes.notify import FROM_A_CREDENTIAL
from apps.executions.services import retry_incomplete, trigger_workflow
from apps.workflows.definition import DefinitionError, validate_definition
from tests.factories import make_workflow
from tests.local_http import reply, serving

run_db = pytest.mark.django_db(transaction=True)

SECRET = "s3cr3t-hook-token-4711"  # the part of the webhook URL that lets anyone post
DENIED = "127.0.0.2"  # a loopback address nothing listens on, denied for the test


@pytest.fixture
def deny_test_address(settings):
    settings.OPSFLOW_HTTP_DENY_NETWORKS = [
        *settings.OPSFLOW_HTTP_DENY_NETWORKS,
        ipaddress.ip_network(f"{DENIED}/32"),
    ]


# --- the webhook server ------------------------------------------------------------------------


class Webhook(BaseHTTPRequestHandler):
    """Records every POST (path, content type, JSON body); answers with the next of `answers`,
    then 200 "ok" as Slack and Mattermost do."""

    received: list[dict] = []
    answers: list[tuple[int, bytes | dict, dict[str, str]]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Webhook.received.append(
            {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "json": json.loads(raw),
            }
        )
        status, body, headers = Webhook.answers.pop(0) if Webhook.answers else (200, b"ok", {})
        reply(self, status, body, headers)

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    """The webhook's URL (with its secret path) on a fresh server."""
    Webhook.received, Webhook.answers = [], []
    with serving(Webhook) as base:
        yield f"{base}/services/T0001/B0002/{SECRET}"


def host_port(url: str) -> str:
    return url.split("/")[2]


def run_node(
    type_name: str,
    config: dict,
    credentials: dict[str, UsedCredential] | None = None,
    timeout: float = 10,
):
    """One attempt of a node, the way the engine runs it, with an already rendered config."""
    node_type = REGISTRY[type_name]
    problems = node_type.check_config(config)
    assert not problems, problems
    return node_type.run(
        NodeContext(
            config=config,
            raw_config=config,
            node={"id": "n", "type": type_name, "config": config},
            template_context={},
            timeout=timeout,
            execution_id=1,
            step_id=1,
            credentials=credentials or {},
        )
    )


def hook_credential(url: str, hosts: list[str] | None = None) -> dict[str, UsedCredential]:
    allowed = tuple(hosts if hosts is not None else [host_port(url)])
    return {"HOOK": UsedCredential("HOOK", url, allowed)}


def chat(webhook: str, timeout: float = 10, **config):
    return run_node("notify.chat", {"url": webhook, **config}, hook_credential(webhook), timeout)


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port that takes connections (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


# --- notify.chat: each provider's format ---------------------------------------------------------

SLACK_BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "web-1 restarted"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "*Host:* web-1\n*By:* alice"}},
]
TEAMS_ELEMENTS = [
    {"type": "TextBlock", "text": "web-1 restarted", "weight": "Bolder", "size": "Medium"},
    {"type": "FactSet", "facts": [{"title": "Host", "value": "web-1"}]},
]
MATTERMOST_ATTACHMENTS = [
    {"fallback": "web-1 restarted", "color": "#2eb886", "title": "web-1", "text": "restarted"}
]


def adaptive_card(body: list[dict]) -> dict:
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                },
            }
        ],
    }


@pytest.mark.parametrize(
    ("config", "sent"),
    [
        ({"provider": "slack", "text": "deployed"}, {"text": "deployed"}),
        (
            {"provider": "slack", "text": "web-1 restarted", "blocks": SLACK_BLOCKS},
            {"text": "web-1 restarted", "blocks": SLACK_BLOCKS},
        ),
        (
            {"provider": "teams", "text": "deployed"},
            adaptive_card([{"type": "TextBlock", "text": "deployed", "wrap": True}]),
        ),
        ({"provider": "teams", "blocks": TEAMS_ELEMENTS}, adaptive_card(TEAMS_ELEMENTS)),
        (
            {"provider": "teams", "text": "Heads up", "blocks": TEAMS_ELEMENTS},
            adaptive_card(
                [{"type": "TextBlock", "text": "Heads up", "wrap": True}, *TEAMS_ELEMENTS]
            ),
        ),
        ({"provider": "mattermost", "text": "deployed"}, {"text": "deployed"}),
        (
            {
                "provider": "mattermost",
                "text": "web-1 restarted",
                "blocks": MATTERMOST_ATTACHMENTS,
                "username": "opsflow",
                "channel": "town-square",
                "icon_url": "https://example.com/opsflow.png",
            },
            {
                "text": "web-1 restarted",
                "attachments": MATTERMOST_ATTACHMENTS,
                "channel": "town-square",
                "icon_url": "https://example.com/opsflow.png",
                "username": "opsflow",
            },
        ),
    ],
    ids=[
        "slack-text",
        "slack-blocks",
        "teams-text",
        "teams-card",
        "teams-text-and-card",
        "mattermost-text",
        "mattermost-attachments",
    ],
)
def test_each_provider_gets_the_json_of_its_incoming_webhook_format(webhook, config, sent):
    output = chat(webhook, **config)

    [received] = Webhook.received
    assert received["path"] == f"/services/T0001/B0002/{SECRET}"
    assert received["content_type"] == "application/json"
    assert received["json"] == sent
    assert output["status_code"] == 200
    assert output["body"] == "ok"
    assert (output["provider"], output["host"]) == (config["provider"], "127.0.0.1")
    assert SECRET not in json.dumps(output)


def test_a_teams_workflow_webhook_answering_202_accepted_is_a_delivery(webhook):
    Webhook.answers = [(202, b"", {})]

    output = chat(webhook, provider="teams", text="deployed")

    assert (output["status_code"], output["body"]) == (202, "")


def test_a_long_answer_is_capped_in_the_output(webhook, settings):
    settings.OPSFLOW_OUTPUT_CAP_BYTES = 64
    Webhook.answers = [(200, b"x" * 1000, {})]

    output = chat(webhook, provider="slack", text="hi")

    assert output["body"] == "x" * 64
    assert output["truncated"] is True


# --- notify.chat: what the answers mean ----------------------------------------------------------


def test_429_is_a_rate_limit_error_that_carries_retry_after(webhook):
    Webhook.answers = [(429, b"rate_limited", {"Retry-After": "7"})]

    with pytest.raises(errors.RateLimitError) as caught:
        chat(webhook, provider="slack", text="hi")

    assert caught.value.retry_after == 7.0
    where = f"the Slack webhook at {host_port(webhook)}"
    assert caught.value.message == f"{where} asks to slow down (HTTP 429: rate_limited)"
    assert caught.value.output["status_code"] == 429


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_a_connection_error(webhook, status):
    Webhook.answers = [(status, b"upstream trouble", {})]

    with pytest.raises(errors.ConnectionError) as caught:
        chat(webhook, provider="mattermost", text="hi")

    assert caught.value.message == (
        f"the Mattermost webhook at {host_port(webhook)} failed (HTTP {status}: upstream trouble)"
    )
    assert caught.value.output["status_code"] == status


@pytest.mark.parametrize(
    ("status", "body", "error", "says"),
    [
        (
            400,
            b"invalid_payload",
            errors.DataError,
            "refused the message (HTTP 400: invalid_payload)",
        ),
        (403, b"action_prohibited", errors.InvalidAccessTokenError, "it was revoked"),
        (404, b"no_service", errors.InvalidConfigurationError, "has no such webhook (HTTP 404"),
        (410, b"channel_is_archived", errors.InvalidConfigurationError, "no such webhook"),
        (302, b"", errors.InvalidConfigurationError, "redirects are not followed"),
    ],
)
def test_other_answers_are_clear_errors_that_are_not_retried(webhook, status, body, error, says):
    Webhook.answers = [(status, body, {"Location": "http://127.0.0.1:9/elsewhere"})]

    with pytest.raises(error) as caught:
        chat(webhook, provider="slack", text="hi")

    assert error.auto_retry is False
    assert says in caught.value.message
    assert SECRET not in caught.value.message
    assert len(Webhook.received) == 1  # the redirect was not followed


def test_a_webhook_nothing_listens_on_is_a_connection_error_without_the_url():
    with socket.socket() as reserved:  # bound, never listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{reserved.getsockname()[1]}/hooks/{SECRET}"
        with pytest.raises(errors.ConnectionError) as caught:
            chat(url, provider="mattermost", text="hi")

    assert caught.value.message.startswith(
        f"Could not connect to the Mattermost webhook at {host_port(url)}: "
    )
    assert SECRET not in caught.value.message


def test_a_webhook_that_never_answers_times_out():
    with silent_listener() as port, pytest.raises(errors.ModuleTimeoutError) as caught:
        chat(f"http://127.0.0.1:{port}/hooks/{SECRET}", timeout=1, provider="slack", text="hi")

    assert caught.value.message == (
        f"the Slack webhook at 127.0.0.1:{port} did not answer within 1s"
    )


# --- notify.chat: the URL is a credential bound to its host --------------------------------------


def test_a_credential_not_bound_to_the_webhooks_host_is_refused_before_sending(webhook):
    config = {"provider": "slack", "url": webhook, "text": "hi"}

    with pytest.raises(errors.InvalidConfigurationError) as caught:
        run_node("notify.chat", config, hook_credential(webhook, ["hooks.slack.com"]))

    assert caught.value.message == (
        f"credential 'HOOK' is not allowed for host '{host_port(webhook)}'"
    )
    assert Webhook.received == []


def test_a_url_typed_into_the_definition_is_refused_before_sending(webhook):
    with pytest.raises(errors.InvalidConfigurationError) as caught:
        run_node("notify.chat", {"provider": "slack", "url": webhook, "text": "hi"})

    assert caught.value.message == FROM_A_CREDENTIAL
    assert Webhook.received == []


def test_the_deny_list_of_http_request_applies(deny_test_address):
    url = f"http://{DENIED}:8080/hooks/{SECRET}"

    with pytest.raises(errors.InvalidConfigurationError) as caught:
        chat(url, provider="slack", text="hi")

    assert caught.value.message.startswith(
        f"Refused the Slack webhook at {DENIED}:8080: host '{DENIED}' resolves to {DENIED}"
    )


def test_the_url_is_masked_in_the_input_as_stored_even_when_typed_in():
    shown = REGISTRY["notify.chat"].mask_input(
        {"provider": "slack", "url": f"https://hooks.slack.com/services/{SECRET}", "text": "hi"}
    )

    assert shown == {"provider": "slack", "url": MASK, "text": "hi"}


# --- check_config: problems with their paths, when the definition is saved -----------------------


def problems_of(node_type: str, config: dict) -> dict[str, str]:
    document = {
        "slug": "one",
        "name": "One",
        "nodes": [{"id": "a", "type": node_type, "config": config}],
        "edges": [],
    }
    with pytest.raises(DefinitionError) as caught:
        validate_definition(document)
    return {p.path: p.message for p in caught.value.problems}


def test_chat_config_problems_are_reported_with_their_paths():
    assert problems_of(
        "notify.chat",
        {
            "provider": "slack",
            "url": "{{ secrets.HOOK }}",
            "blocks": [{"type": "section"}, "text"],
            "channel": "#ops",
            "colour": "red",
        },
    ) == {
        "nodes[0].config.blocks[1]": "must be a mapping with a type (Block Kit blocks)",
        "nodes[0].config.channel": "only for provider mattermost",
        "nodes[0].config.colour": "unknown field",
    }
    assert problems_of("notify.chat", {"provider": "irc", "text": "hi"}) == {
        "nodes[0].config.provider": "required: one of slack, teams, mattermost",
        "nodes[0].config.url": 'required: the webhook URL, "{{ secrets.NAME }}"',
    }
    assert problems_of("notify.chat", {"provider": "teams", "url": "{{ secrets.HOOK }}"}) == {
        "nodes[0].config.text": "give text, blocks or both",
    }


def test_email_addresses_are_checked_with_their_paths():
    assert problems_of(
        "notify.email",
        {
            "to": ["ops@example.com", "not-an-address", "{{ vars.oncall }}"],
            "cc": ["a@example.com, b@example.com", "Lead <lead@example.com>"],
            "from": "opsflow@",
            "subject": "two\nlines",
            "body": "hi",
        },
    ) == {
        "nodes[0].config.to[1]": "'not-an-address' is not a valid email address",
        "nodes[0].config.cc[0]": (
            "'a@example.com, b@example.com' is not one email address "
            "(give each address as its own item)"
        ),
        "nodes[0].config.from": "'opsflow@' is not a valid email address",
        "nodes[0].config.subject": "must be one line",
    }
    assert problems_of("notify.email", {"to": [], "subject": "s"}) == {
        "nodes[0].config.to": "required: at least one email address",
        "nodes[0].config.body": "required (a string)",
    }
    assert problems_of("notify.email", {"cc": "x@example.com", "subject": "s", "body": ""}) == {
        "nodes[0].config.to": "required: a list of email addresses",
    }


# --- notify.email through Django's backend ----------------------------------------------------


def test_the_email_lands_in_the_outbox_with_its_recipients_and_a_message_id(mailoutbox):
    output = run_node(
        "notify.email",
        {
            "to": ["oncall@example.com", "Lead <lead@example.com>"],
            "cc": "audit@example.com",
            "subject": "web-1 restarted",
            "body": "Restarted by the runbook.",
            "from": "Opsflow <ops@example.org>",
        },
    )

    [message] = mailoutbox
    assert message.to == ["oncall@example.com", "Lead <lead@example.com>"]
    assert message.cc == ["audit@example.com"]
    assert (message.subject, message.body) == ("web-1 restarted", "Restarted by the runbook.")
    assert message.from_email == "Opsflow <ops@example.org>"
    assert message.message()["Message-ID"] == output["message_id"]
    assert output["message_id"].endswith("@example.org>")  # in the sender's domain
    assert output["recipients"] == [
        "oncall@example.com",
        "Lead <lead@example.com>",
        "audit@example.com",
    ]
    assert output["backend"] == "django.core.mail.backends.locmem.EmailBackend"


def test_without_from_the_default_sender_is_used(mailoutbox, settings):
    settings.DEFAULT_FROM_EMAIL = "robot@ops.example.net"

    output = run_node("notify.email", {"to": "a@example.com", "subject": "s", "body": "b"})

    assert mailoutbox[0].from_email == "robot@ops.example.net"
    assert output["from"] == "robot@ops.example.net"
    assert output["message_id"].endswith("@ops.example.net>")


# --- notify.email through the SMTP backend, against a real SMTP server --------------------------


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: a reply per command, `script` overriding any of them."""

    server: _SmtpServer

    def say(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        script = self.server.script
        self.say(script.get("greeting", "220 mail.test ESMTP"))
        if not script.get("greeting", "220").startswith("2"):
            return
        envelope: dict = {"rcpt": []}
        while line := self.rfile.readline():
            verb = line.split(b" ", 1)[0].strip().upper().decode()
            if verb == "EHLO":
                self.say("250-mail.test")
                self.say("250-AUTH PLAIN")
                self.say("250 8BITMIME")
            elif verb == "DATA":
                self.say("354 go ahead")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                envelope["data"] = data
                answer = script.get("DATA", "250 2.0.0 queued")
                if answer.startswith("2"):
                    self.server.received.append(envelope)
                self.say(answer)
            elif verb == "QUIT":
                self.say("221 bye")
                return
            else:
                address = line.decode().partition(":")[2].split(" ")[0].strip()
                if verb == "MAIL":
                    envelope["from"] = address
                if verb == "RCPT":
                    envelope["rcpt"].append(address)
                self.say(script.get(verb, "250 ok"))


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: dict[str, str]):
        super().__init__(("127.0.0.1", 0), _Smtp)
        self.script = script
        self.received: list[dict] = []


@contextmanager
def smtp_server(settings, **script: str) -> Iterator[_SmtpServer]:
    server = _SmtpServer(script)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.server_address[1]
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


EMAIL = {"to": ["oncall@example.com"], "cc": ["lead@example.com"], "subject": "s", "body": "b"}


def test_smtp_delivery_sends_the_envelope_and_reports_the_message_id(settings):
    with smtp_server(settings) as server:
        output = run_node("notify.email", {**EMAIL, "from": "ops@example.org"})

    [envelope] = server.received
    assert envelope["from"] == "<ops@example.org>"
    assert envelope["rcpt"] == ["<oncall@example.com>", "<lead@example.com>"]
    sent = message_from_bytes(envelope["data"])
    assert sent["Message-ID"] == output["message_id"]
    assert (sent["To"], sent["Cc"], sent["Subject"]) == (
        "oncall@example.com",
        "lead@example.com",
        "s",
    )
    assert output["backend"] == "django.core.mail.backends.smtp.EmailBackend"


def test_an_smtp_server_that_refuses_the_connection_is_a_connection_error(settings):
    with socket.socket() as reserved:  # bound, never listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", reserved.getsockname()[1]
        with pytest.raises(errors.ConnectionError) as caught:
            run_node("notify.email", EMAIL)

    assert caught.value.message.startswith(
        f"Could not connect to the mail server 127.0.0.1:{settings.EMAIL_PORT}: "
    )
    assert "Connection refused" in caught.value.message


def test_a_mail_server_that_never_answers_times_out(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    with silent_listener() as port, pytest.raises(errors.ModuleTimeoutError) as caught:
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        run_node("notify.email", EMAIL, timeout=1)

    assert caught.value.message.startswith(f"the mail server 127.0.0.1:{port} did not answer")


@pytest.mark.parametrize(
    ("script", "error", "says"),
    [
        ({"greeting": "421 4.3.2 shutting down"}, errors.ConnectionError, "is not taking mail now"),
        ({"RCPT": "451 4.7.1 greylisted, try again"}, errors.RateLimitError, "deferred every"),
        ({"DATA": "452 4.3.1 insufficient storage"}, errors.RateLimitError, "deferred the message"),
        ({"RCPT": "550 5.1.1 no such user"}, errors.DataError, "refused the recipients"),
        ({"DATA": "554 5.7.1 rejected as spam"}, errors.DataError, "refused the message: 554"),
        ({"MAIL": "553 5.7.1 sender not allowed"}, errors.InvalidConfigurationError, "sender"),
        (
            {"AUTH": "535 5.7.8 bad credentials"},
            errors.InvalidAccessTokenError,
            "refused the login",
        ),
    ],
)
def test_smtp_refusals_map_to_retried_or_final_errors(settings, script, error, says):
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "opsflow", "mail-password-77"
    if "AUTH" not in script:
        settings.EMAIL_HOST_USER = ""  # no login unless the case is about it
    with smtp_server(settings, **script) as server, pytest.raises(error) as caught:
        run_node("notify.email", EMAIL)

    assert says in caught.value.message
    assert caught.value.message.startswith(f"the mail server 127.0.0.1:{settings.EMAIL_PORT} ")
    assert "mail-password-77" not in caught.value.message
    assert server.received == []  # nothing was accepted


# --- through the engine: a run per node type, retries, incomplete executions, masking -----------


def stored_text() -> str:
    """Everything runs stored, as text: steps, events, executions and incomplete records."""
    rows: list = list(Step.objects.values("input", "output", "error_message"))
    rows += list(ExecutionEvent.objects.values("message", "data"))
    rows += list(Execution.objects.values("error_message"))
    rows += list(IncompleteExecution.objects.values("bundles", "error_message"))
    return json.dumps(rows, default=str)


def chat_workflow(slug: str, node_extra: dict | None = None, **settings_) -> dict:
    return {
        "slug": slug,
        "name": slug,
        "settings": settings_,
        "variables": {"host": {"type": "string", "default": "web-1"}},
        "nodes": [
            {"id": "start", "type": "noop", "config": {"output": {"by": "alice"}}},
            {
                "id": "tell",
                "type": "notify.chat",
                "config": {
                    "provider": "slack",
                    "url": "{{ secrets.SLACK_HOOK }}",
                    "text": "{{ vars.host }} restarted by {{ nodes.start.output.by }}",
                },
                **(node_extra or {}),
            },
        ],
        "edges": [{"from": "start", "to": "tell"}],
    }


@pytest.fixture
def slack_hook(org, webhook):
    create_credential(
        org, None, name="SLACK_HOOK", value=webhook, allowed_hosts=[host_port(webhook)]
    )
    return webhook


@run_db
def test_a_chat_step_posts_the_rendered_message_and_stores_no_url(
    org, slack_hook, workers, viewer, api_for
):
    execution = workers.run_to_end(trigger_workflow(make_workflow(org, chat_workflow("tell"))))

    assert execution.status == ExecutionStatus.COMPLETED
    assert [r["json"] for r in Webhook.received] == [{"text": "web-1 restarted by alice"}]
    step = execution.steps.get(node_id="tell")
    assert step.input["url"] == MASK
    assert step.output["status_code"] == 200
    shown = api_for(viewer).get(f"/api/v1/executions/{execution.pk}/").content.decode()
    assert SECRET not in shown
    assert SECRET not in stored_text()


@run_db
def test_a_chat_credential_bound_elsewhere_fails_the_step_before_sending(org, webhook, workers):
    create_credential(
        org, None, name="SLACK_HOOK", value=webhook, allowed_hosts=["hooks.slack.com"]
    )

    execution = workers.run_to_end(trigger_workflow(make_workflow(org, chat_workflow("bound"))))

    step = execution.steps.get(node_id="tell")
    assert (step.error_type, step.error_message) == (
        "InvalidConfigurationError",
        f"credential 'SLACK_HOOK' is not allowed for host '{host_port(webhook)}'",
    )
    assert Webhook.received == []
    assert SECRET not in stored_text()


@run_db
def test_a_429_is_retried_after_its_retry_after(org, slack_hook, workers):
    Webhook.answers = [(429, b"rate_limited", {"Retry-After": "1"})]
    definition = chat_workflow("slow", {"retry": {"max_retries": 1, "delay": 0}})

    execution = workers.run_to_end(trigger_workflow(make_workflow(org, definition)))

    assert execution.status == ExecutionStatus.COMPLETED
    first, second = execution.steps.filter(node_id="tell").order_by("attempt")
    assert (first.status, first.error_type) == (StepStatus.FAILED, "RateLimitError")
    assert second.status == StepStatus.COMPLETED
    assert (second.started_at - first.finished_at).total_seconds() >= 1.0
    assert len(Webhook.received) == 2
    assert SECRET not in stored_text()


def settle(workers, execution: Execution) -> Execution:
    def stopped() -> bool:
        execution.refresh_from_db()
        return execution.status in {ExecutionStatus.INCOMPLETE, ExecutionStatus.FAILED}

    workers.drain(until=stopped)
    return execution


@run_db
def test_a_5xx_stores_an_incomplete_execution_with_auto_retry_and_no_url(org, slack_hook, workers):
    Webhook.answers = [(503, b"service unavailable", {})]
    definition = chat_workflow("down", store_incomplete_executions=True)

    execution = settle(workers, trigger_workflow(make_workflow(org, definition)))

    assert execution.status == ExecutionStatus.INCOMPLETE
    [record] = IncompleteExecution.objects.filter(execution=execution)
    assert (record.error_type, record.auto_retry) == ("ConnectionError", True)
    assert record.status == IncompleteStatus.SCHEDULED
    assert record.error_message == (
        f"the Slack webhook at {host_port(slack_hook)} failed (HTTP 503: service unavailable)"
    )
    assert record.bundles["input"]["url"] == MASK
    assert SECRET not in stored_text()


@run_db
def test_a_retry_from_the_input_as_shown_posts_to_the_credentials_url(org, slack_hook, workers):
    Webhook.answers = [(500, b"oops", {})]
    definition = chat_workflow("again", store_incomplete_executions=True)
    execution = settle(workers, trigger_workflow(make_workflow(org, definition)))
    record = execution.incomplete_records.get()
    assert record.bundles["input"]["url"] == MASK  # what the operator sees and sends back

    retry_incomplete(record, input=record.bundles["input"])
    execution = workers.run_to_end(Execution.objects.get(pk=execution.pk))

    assert execution.status == ExecutionStatus.COMPLETED
    assert [r["path"] for r in Webhook.received] == [f"/services/T0001/B0002/{SECRET}"] * 2
    assert SECRET not in stored_text()


def email_workflow(slug: str, to: list[str], **settings_) -> dict:
    return {
        "slug": slug,
        "name": slug,
        "settings": settings_,
        "variables": {
            "host": {"type": "string", "default": "web-1"},
            "oncall": {"type": "string", "default": "oncall@example.com"},
        },
        "nodes": [
            {"id": "start", "type": "noop", "config": {"output": {"by": "alice"}}},
            {
                "id": "mail",
                "type": "notify.email",
                "config": {
                    "to": to,
                    "cc": ["lead@example.com"],
                    "subject": "[{{ vars.host }}] restarted",
                    "body": "{{ vars.host }} was restarted by {{ nodes.start.output.by }}.",
                },
            },
        ],
        "edges": [{"from": "start", "to": "mail"}],
    }


@run_db
def test_an_email_step_sends_the_rendered_message(org, workers):
    workflow = make_workflow(org, email_workflow("mail", ["{{ vars.oncall }}"]))

    execution = workers.run_to_end(trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.COMPLETED
    [message] = mail.outbox
    assert (message.to, message.cc) == (["oncall@example.com"], ["lead@example.com"])
    assert message.subject == "[web-1] restarted"
    assert message.body == "web-1 was restarted by alice."
    step = execution.steps.get(node_id="mail")
    assert step.output["message_id"] == message.message()["Message-ID"]
    assert step.output["recipients"] == ["oncall@example.com", "lead@example.com"]


@run_db
def test_an_address_that_renders_invalid_fails_the_step_with_its_path(org, workers):
    workflow = make_workflow(org, email_workflow("bad", ["{{ vars.oncall }}"]))

    execution = workers.run_to_end(trigger_workflow(workflow, variables={"oncall": "nobody"}))

    step = execution.steps.get(node_id="mail")
    assert (step.error_type, step.error_message) == (
        "InvalidConfigurationError",
        "config.to[0]: 'nobody' is not a valid email address",
    )
    assert mail.outbox == []


@run_db
def test_a_mail_server_that_refuses_connections_stores_an_incomplete_execution(
    org, workers, settings
):
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", reserved.getsockname()[1]
        workflow = make_workflow(
            org, email_workflow("smtp", ["ops@example.com"], store_incomplete_executions=True)
        )
        execution = settle(workers, trigger_workflow(workflow))

    assert execution.status == ExecutionStatus.INCOMPLETE
    [record] = IncompleteExecution.objects.filter(execution=execution)
    assert (record.error_type, record.auto_retry) == ("ConnectionError", True)
    assert record.error_message.startswith("Could not connect to the mail server 127.0.0.1:")
