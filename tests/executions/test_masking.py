"""Sensitive header values are masked wherever a step is stored or shown (issue 9 finding 4,
the step part; build item 5, headers): typed in literally or rendered, `Authorization`, `Cookie`,
`Set-Cookie`, `X-Api-Key`, `Proxy-Authorization` and OPSFLOW_SENSITIVE_HEADERS are `***` in
the step's input and output, in the API and in incomplete-execution bundles, while the request
itself carries the real value, a retry from an edited (masked) input included."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest

from apps.executions.choices import ExecutionStatus
from apps.executions.masking import MASK
from apps.executions.models import Execution, IncompleteExecution, Step
from apps.executions.services import retry_incomplete, trigger_workflow
from tests.factories import make_workflow
from tests.local_http import reply, serving

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "Bearer literal-token-4711"
CUSTOM = "custom-secret-0815"


class _Handler(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Handler.received.append(
            {
                "authorization": self.headers.get("Authorization"),
                "x-vault": self.headers.get("X-Vault"),
            }
        )
        status = 500 if self.path.startswith("/fail") else 200
        reply(
            self,
            status,
            {"ok": status == 200},
            {"Set-Cookie": "session=cookie-secret-42; HttpOnly"},
        )

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.received = []
    with serving(_Handler) as url:
        yield url


@pytest.fixture(autouse=True)
def custom_sensitive_header(settings):
    settings.OPSFLOW_SENSITIVE_HEADERS = ["X-Vault"]


def call(slug: str, url: str, **settings_) -> dict:
    return {
        "slug": slug,
        "name": slug,
        "settings": settings_,
        "nodes": [
            {"id": "start", "type": "noop"},  # an entry node's failure is never stored
            {
                "id": "call",
                "type": "http.request",
                "config": {
                    "url": url,
                    "headers": {
                        "Authorization": TOKEN,
                        "X-Vault": "{{ nodes.start.status and 'custom-secret-0815' }}",
                        "Accept": "*/*",
                    },
                },
            },
        ],
        "edges": [{"from": "start", "to": "call"}],
    }


def stored_text() -> str:
    """What runs stored: every step and incomplete-execution bundle, as text. (A literal in the
    definition stays in the definition, shown masked to those who may not edit it: values that
    must not be written down at all belong in a credential.)"""
    rows = list(Step.objects.values("input", "output", "error_message"))
    rows += list(IncompleteExecution.objects.values("bundles", "error_message"))
    return json.dumps(rows, default=str)


def test_literal_and_rendered_sensitive_headers_are_masked_in_what_is_stored_and_shown(
    org, workers, server, viewer, api_for
):
    execution = workers.run_to_end(
        trigger_workflow(make_workflow(org, call("masked", f"{server}/ok")))
    )

    assert execution.status == ExecutionStatus.COMPLETED
    assert _Handler.received == [{"authorization": TOKEN, "x-vault": CUSTOM}]  # sent for real
    step = execution.steps.get(node_id="call")
    assert step.input["headers"] == {"Authorization": MASK, "X-Vault": MASK, "Accept": "*/*"}
    assert step.output["headers"]["set-cookie"] == MASK
    shown = api_for(viewer).get(f"/api/v1/executions/{execution.pk}/").content.decode()
    for secret in ("literal-token-4711", CUSTOM, "cookie-secret-42"):
        assert secret not in shown
        assert secret not in stored_text()


def test_a_retry_from_the_masked_input_sends_the_real_values(org, workers, server):
    workflow = make_workflow(org, call("retry", f"{server}/fail", store_incomplete_executions=True))
    execution = trigger_workflow(workflow)
    workers.drain()  # incomplete is no terminal status: drain, then look
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.INCOMPLETE
    record = execution.incomplete_records.get()
    edited = {**record.bundles["input"], "url": f"{server}/ok"}  # what the operator saw: masked
    assert edited["headers"]["Authorization"] == MASK

    retry_incomplete(record, input=edited)
    workers.run_to_end(Execution.objects.get(pk=execution.pk))

    assert _Handler.received[-1] == {"authorization": TOKEN, "x-vault": CUSTOM}
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED
    assert "literal-token-4711" not in stored_text()
