"""Hostile input gets a clear 4xx and changes nothing (issue 10 items 1 and 2): nesting past
OPSFLOW_MAX_DEPTH, YAML alias bombs, too many nodes, templates that would make huge values or
run forever, and malformed ids in URLs. Each of these was a 500 (or unbounded work) before."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from apps.executions.choices import ExecutionStatus
from apps.executions.models import Execution
from apps.executions.services import trigger_workflow
from apps.workflows.definition import DefinitionError, find_cycle, normalize
from apps.workflows.models import Workflow
from tests.factories import make_workflow

NESTED = "[" * 200_000  # 200 KB of nested brackets: past Python's recursion limit
DEPTH_MESSAGE = "nested deeper than OPSFLOW_MAX_DEPTH (64 levels)"


def browser(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def deep(levels: int):
    value: object = "leaf"
    for _ in range(levels):
        value = {"x": value}
    return value


def noop_definition(slug: str, **config) -> dict:
    return {"slug": slug, "name": slug, "nodes": [{"id": "a", "type": "noop", "config": config}]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/workflows/",
        "/api/v1/credentials/",
        "/api/v1/incomplete-executions/bulk-retry/",
    ],
)
def test_deeply_nested_json_is_400_in_the_error_shape(org, editor, url):
    answer = browser(editor).post(url, NESTED, content_type="application/json")

    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == f"JSON parse error - {DEPTH_MESSAGE}"
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_a_body_past_the_depth_limit_names_the_path(org, editor):
    document = noop_definition("deep", output=deep(70))

    answer = browser(editor).post("/api/v1/workflows/", document, content_type="application/json")

    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert message.startswith("The body is not accepted: nodes[0].config.output.x.x")
    assert message.endswith(f"{DEPTH_MESSAGE}.")
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_a_definition_nested_900_levels_is_refused_with_its_path(org):
    with pytest.raises(DefinitionError) as caught:
        normalize(noop_definition("deep", output=deep(900)))

    (problem,) = caught.value.problems
    assert problem.path.startswith("nodes[0].config.output.x")
    assert problem.message == DEPTH_MESSAGE


@pytest.mark.django_db(transaction=True)
def test_a_webhook_body_nested_too_deep_is_400(org, redis_conn):
    workflow = make_workflow(org, {**noop_definition("hooked"), "trigger": {"type": "webhook"}})
    client = Client(raise_request_exception=False)

    nested = client.post(f"/hooks/{workflow.webhook_key}/", NESTED, content_type="application/json")
    deep_body = client.post(
        f"/hooks/{workflow.webhook_key}/",
        json.dumps({"variables": deep(80)}),
        content_type="application/json",
    )

    assert nested.status_code == 400 and DEPTH_MESSAGE in nested.json()["error"]["message"]
    assert deep_body.status_code == 400
    assert deep_body.json()["error"]["details"][0]["message"] == DEPTH_MESSAGE
    assert not Execution.objects.exists()


@pytest.mark.django_db
def test_too_many_nodes_is_one_clear_problem(org, editor):
    nodes = [{"id": f"n{i}", "type": "noop"} for i in range(1300)]
    edges = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(1299)]
    document = {"slug": "chain", "name": "chain", "nodes": nodes, "edges": edges}

    answer = browser(editor).post("/api/v1/workflows/", document, content_type="application/json")

    assert answer.status_code == 400
    assert answer.json()["error"]["details"] == [
        {
            "path": "nodes",
            "message": "at most OPSFLOW_MAX_NODES (500) nodes; this definition has 1300",
        }
    ]


@pytest.mark.django_db
def test_a_long_chain_under_a_raised_limit_validates_without_recursion(org, settings):
    settings.OPSFLOW_MAX_NODES, settings.OPSFLOW_MAX_EDGES = 5000, 5000
    nodes = [{"id": f"n{i}", "type": "noop"} for i in range(3000)]
    edges = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(2999)]

    normalized = normalize({"slug": "chain", "name": "chain", "nodes": nodes, "edges": edges})
    assert len(normalized["nodes"]) == 3000

    looped = edges + [{"from": "n2999", "to": "n1500"}]
    with pytest.raises(DefinitionError, match=r"the graph has a cycle: n1500 -> n1501"):
        normalize({"slug": "chain", "name": "chain", "nodes": nodes, "edges": looped})


@given(
    st.dictionaries(
        st.sampled_from("abcdefgh"), st.lists(st.sampled_from("abcdefgh"), max_size=4), max_size=8
    )
)
def test_find_cycle_agrees_with_a_plain_search(graph):
    """The iterative search finds a cycle exactly when there is one, and what it returns is one."""
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    edges = [{"from": s, "to": t} for s, targets in graph.items() for t in targets]

    def reaches(start, goal, seen=()):
        return any(
            t == goal or (t not in seen and reaches(t, goal, (*seen, t)))
            for t in graph.get(start, [])
        )

    cycle = find_cycle(nodes, edges)
    assert (cycle is not None) == any(reaches(n, n) for n in nodes)
    if cycle:
        assert cycle[0] == cycle[-1]
        assert all({"from": a, "to": b} in edges for a, b in zip(cycle, cycle[1:], strict=False))


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(min_value=0, max_value=1500), width=st.integers(min_value=1, max_value=40))
def test_the_validator_never_raises_anything_but_definition_error(depth, width):
    """Deep and wide documents: a clean verdict or DefinitionError, never a crash."""
    document = noop_definition("x", output=deep(depth))
    document["nodes"] += [
        {"id": f"w{i}", "type": "noop", "config": {"k": [[]] * width}} for i in range(width)
    ]
    try:
        normalize(document)
    except DefinitionError as exc:
        assert exc.problems
        if depth + 4 > 64:
            assert any(p.message == DEPTH_MESSAGE for p in exc.problems)


BOMB = """a: &a ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


@pytest.mark.django_db
def test_a_yaml_alias_bomb_in_run_now_is_refused_and_starts_nothing(org, operator):
    workflow = make_workflow(org, noop_definition("run-me"))

    answer = browser(operator).post(f"/workflows/workflow/{workflow.pk}/run/", {"variables": BOMB})

    assert answer.status_code == 200
    assert "larger than OPSFLOW_MAX_BODY_BYTES" in answer.content.decode()
    assert not Execution.objects.exists()


@pytest.mark.django_db
def test_admin_yaml_nested_600_levels_is_a_form_error(org, editor):
    text = "slug: deep\nname: deep\nnodes:\n  - id: a\n    type: noop\n    config: " + "[" * 600
    text += "]" * 600 + "\n"

    answer = browser(editor).post(
        "/workflows/workflow/add/", {"organization": org.pk, "definition": text}
    )

    assert answer.status_code == 200
    assert DEPTH_MESSAGE in answer.content.decode()
    assert not Workflow.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_template_that_would_make_100_mb_fails_the_step_with_the_limit(org, workers):
    workflow = make_workflow(org, noop_definition("big", output={"v": "{{ 'a' * 100000000 }}"}))

    execution = workers.run_to_end(trigger_workflow(workflow))

    step = execution.steps.get()
    assert execution.status == ExecutionStatus.FAILED
    assert step.error_type == "DataError"
    assert step.error_message == (
        "A template would make a value of 100000000 characters; the limit is "
        "OPSFLOW_TEMPLATE_MAX_BYTES (1048576)"
    )
    assert step.output is None


@pytest.mark.django_db(transaction=True)
def test_a_template_that_renders_forever_stops_at_the_render_clock(org, workers, settings):
    settings.OPSFLOW_TEMPLATE_SECONDS = 1
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    workflow = make_workflow(org, noop_definition("slow", output={"v": loop}))

    execution = workers.run_to_end(trigger_workflow(workflow), timeout=20)

    step = execution.steps.get()
    assert step.error_type == "DataError"
    assert (
        step.error_message
        == "Rendering the templates took longer than OPSFLOW_TEMPLATE_SECONDS (1 s)"
    )
    assert step.duration_ms < 5000


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/executions/execution/abc/change/",
        "/approvals/approval/abc/change/",
        "/executions/incompleteexecution/abc/change/",
        "/workflows/workflow/abc/change/",
        "/executions/execution/999999/change/",
        "/executions/agent/abc/change/",
        "/credentials/credential/abc/change/",
    ],
)
def test_a_malformed_or_unknown_id_in_the_admin_is_404(org, owner, url):
    assert browser(owner).get(url).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/v1/nope/", "/api/v1/executions/abc/", "/api/v1/x/y/z"])
def test_unknown_api_paths_answer_the_json_error_shape(owner, url):
    answer = browser(owner).get(url)

    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_unknown_api_paths_are_404_for_anonymous_callers_too(db):
    answer = Client().post("/api/v1/nope/", {})

    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


@pytest.mark.django_db(transaction=True)
def test_a_response_nested_past_the_limit_is_kept_as_text_only(org, workers):
    from http.server import BaseHTTPRequestHandler

    from tests.local_http import reply, serving

    class Deep(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            reply(self, 200, ("[" * 500 + "]" * 500).encode(), {"Content-Type": "application/json"})

        def log_message(self, *args):
            pass

    with serving(Deep) as url:
        definition = {
            "slug": "deep",
            "name": "deep",
            "nodes": [{"id": "get", "type": "http.request", "config": {"url": url}}],
        }
        execution = workers.run_to_end(trigger_workflow(make_workflow(org, definition)))

    output = execution.steps.get().output
    assert execution.status == ExecutionStatus.COMPLETED
    assert output["json"] is None and output["body"].startswith("[[[")
    assert output["json_problem"].endswith(DEPTH_MESSAGE)
