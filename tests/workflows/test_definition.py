"""The workflow definition document (DESIGN §3): parsing, complete validation, variables."""

from __future__ import annotations

import copy
import json

import pytest

from apps.workflows.definition import (
    DEFAULT_SETTINGS,
    DefinitionError,
    parse_document,
    resolve_variables,
    validate_definition,
)


def valid_document() -> dict:
    return {
        "slug": "restart-web",
        "name": "Restart web tier",
        "variables": {
            "host": {"type": "string", "required": True},
            "port": {"type": "integer", "default": 8080},
        },
        "nodes": [
            {
                "id": "check",
                "type": "http.request",
                "config": {
                    "url": "http://{{ vars.host }}:{{ vars.port }}/health",
                    "expect_status": [200],
                },
            },
            {
                "id": "decide",
                "type": "condition",
                "config": {"expression": "nodes.check.output.status_code == 200"},
            },
            {
                "id": "restart",
                "type": "shell.command",
                "queue": "shell",
                "timeout": 30,
                "config": {"command": ["systemctl", "restart", "web"]},
                "retry": {"max_retries": 2, "delay": 5, "backoff": "exponential"},
            },
        ],
        "edges": [
            {"from": "check", "to": "decide"},
            {"from": "decide", "to": "restart", "on": "true"},
        ],
    }


def problems_of(doc) -> dict[str, str]:
    """Validate a document that must be rejected; return its problems as {path: message}."""
    with pytest.raises(DefinitionError) as caught:
        validate_definition(doc)
    problems = caught.value.problems
    assert problems, "a DefinitionError must list at least one problem"
    return {p.path: p.message for p in problems}


def single_node(node_type: str, config: dict, **extra) -> dict:
    return {
        "slug": "one",
        "name": "One",
        "nodes": [{"id": "a", "type": node_type, "config": config, **extra}],
    }


# --- a valid document ------------------------------------------------------------------------


def test_it_normalizes_a_valid_document_with_defaults():
    normalized = validate_definition(valid_document())

    assert normalized["settings"] == {
        "store_incomplete_executions": False,
        "sequential_processing": False,
        "allow_data_loss": False,
        "max_concurrent_executions": 0,
        "concurrency_policy": "queue",
        "retention_days": None,
    }
    assert normalized["trigger"] == {"type": "manual"}
    check, decide, restart = normalized["nodes"]
    assert check["queue"] == "default"
    assert check["retry"] == {"max_retries": 0, "delay": 0, "backoff": "fixed", "max_delay": 3600}
    assert check["timeout"] is None
    assert check["on_error"] == "fail"
    assert check["critical"] is True
    assert restart["queue"] == "shell"
    assert restart["timeout"] == 30
    assert restart["retry"] == {
        "max_retries": 2,
        "delay": 5,
        "backoff": "exponential",
        "max_delay": 3600,
    }
    assert normalized["edges"] == [
        {"from": "check", "to": "decide", "on": "success"},
        {"from": "decide", "to": "restart", "on": "true"},
    ]
    assert normalized["variables"] == {
        "host": {"type": "string", "required": True, "default": None},
        "port": {"type": "integer", "required": False, "default": 8080},
    }


def test_it_does_not_modify_the_document_it_validates():
    doc = valid_document()
    before = copy.deepcopy(doc)

    validate_definition(doc)

    assert doc == before


def test_it_keeps_given_settings_and_fills_the_rest():
    doc = valid_document()
    doc["settings"] = {"store_incomplete_executions": True, "max_concurrent_executions": 3}

    settings = validate_definition(doc)["settings"]

    assert settings == {
        **DEFAULT_SETTINGS,
        "store_incomplete_executions": True,
        "max_concurrent_executions": 3,
        "concurrency_policy": "queue",
        "retention_days": None,
    }


def test_it_fills_cron_trigger_defaults():
    doc = valid_document()
    doc["trigger"] = {"type": "cron", "schedule": "*/15 * * * *"}

    trigger = validate_definition(doc)["trigger"]

    assert trigger == {
        "type": "cron",
        "schedule": "*/15 * * * *",
        "timezone": "UTC",
        "catchup": "latest",
        "max_lateness": 3600,
    }


def test_it_accepts_a_json_document_and_bytes():
    doc = valid_document()

    assert parse_document(json.dumps(doc)) == doc
    assert parse_document(json.dumps(doc).encode()) == doc


# --- every problem, with its path --------------------------------------------------------------


def test_it_reports_every_mistake_with_its_path():
    doc = {
        "slug": "three-mistakes",
        "name": "Three mistakes",
        "nodes": [
            {"id": "check", "type": "http.request", "config": {"url": "http://web/health"}},
            {"id": "page", "type": "http.request", "config": {"method": "POST"}},
            {"id": "later", "type": "http.reqest", "config": {}},
        ],
        "edges": [{"from": "check", "to": "nowhere"}],
    }

    problems = problems_of(doc)

    assert set(problems) == {"nodes[1].config.url", "nodes[2].type", "edges[0].to"}
    assert problems["nodes[1].config.url"] == "required"
    assert "unknown node type 'http.reqest'" in problems["nodes[2].type"]
    assert problems["edges[0].to"] == "no node with id 'nowhere'"


def test_the_error_message_lists_every_problem():
    doc = single_node("http.request", {})
    doc["edges"] = [{"from": "a", "to": "b"}]

    with pytest.raises(DefinitionError) as caught:
        validate_definition(doc)

    assert str(caught.value) == "nodes[0].config.url: required; edges[0].to: no node with id 'b'"
    assert [p.as_dict() for p in caught.value.problems] == [
        {"path": "nodes[0].config.url", "message": "required"},
        {"path": "edges[0].to", "message": "no node with id 'b'"},
    ]


def test_it_requires_slug_name_and_nodes():
    assert problems_of({}) == {
        "slug": "required",
        "name": "required",
        "nodes": "required (a list of at least one node)",
    }


def test_it_rejects_a_document_that_is_not_a_mapping():
    assert list(problems_of(["not", "a", "mapping"])) == [""]


def test_it_rejects_unknown_fields():
    doc = valid_document()
    doc["colour"] = "blue"
    doc["nodes"][0]["colour"] = "red"
    doc["edges"][0]["when"] = "now"

    problems = problems_of(doc)

    assert problems == {
        "colour": "unknown field",
        "nodes[0].colour": "unknown field",
        "edges[0].when": "unknown field",
    }


def test_it_rejects_duplicate_node_ids():
    doc = valid_document()
    doc["nodes"][2]["id"] = "check"

    problems = problems_of(doc)

    assert problems["nodes[2].id"] == "duplicate id 'check' (also nodes[0])"


def test_it_rejects_a_cycle():
    doc = single_node("noop", {})
    doc["nodes"] += [{"id": "b", "type": "noop"}, {"id": "c", "type": "noop"}]
    doc["edges"] = [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "c", "to": "a"}]

    problems = problems_of(doc)

    assert problems == {"edges": "the graph has a cycle: a -> b -> c -> a"}


def test_it_rejects_an_edge_from_a_node_to_itself():
    doc = single_node("noop", {})
    doc["edges"] = [{"from": "a", "to": "a"}]

    assert problems_of(doc) == {"edges[0]": "an edge from 'a' to itself makes a cycle"}


def test_it_accepts_a_diamond_that_is_not_a_cycle():
    doc = single_node("noop", {})
    doc["nodes"] += [{"id": b, "type": "noop"} for b in ("b", "c", "d")]
    doc["edges"] = [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c"},
        {"from": "b", "to": "d"},
        {"from": "c", "to": "d"},
    ]

    assert len(validate_definition(doc)["edges"]) == 4


def test_it_rejects_a_duplicate_edge():
    doc = single_node("noop", {})
    doc["nodes"].append({"id": "b", "type": "noop"})
    doc["edges"] = [{"from": "a", "to": "b"}, {"from": "a", "to": "b", "on": "success"}]

    assert problems_of(doc) == {"edges[1]": "duplicate edge"}


@pytest.mark.parametrize("schedule", ["61 * * * *", "*/15 * * *", "every five minutes"])
def test_it_rejects_a_malformed_cron_expression(schedule):
    doc = valid_document()
    doc["trigger"] = {"type": "cron", "schedule": schedule}

    problems = problems_of(doc)

    assert problems == {"trigger.schedule": f"not a valid cron expression: {schedule!r}"}


def test_it_requires_a_schedule_for_a_cron_trigger():
    doc = valid_document()
    doc["trigger"] = {"type": "cron"}

    assert problems_of(doc) == {"trigger.schedule": "required for a cron trigger"}


def test_it_rejects_an_unknown_time_zone_and_trigger_options():
    doc = valid_document()
    doc["trigger"] = {
        "type": "cron",
        "schedule": "0 * * * *",
        "timezone": "Mars/Olympus_Mons",
        "catchup": "sometimes",
        "max_lateness": -1,
    }

    assert set(problems_of(doc)) == {"trigger.timezone", "trigger.catchup", "trigger.max_lateness"}


def test_it_rejects_an_unknown_trigger_type():
    doc = valid_document()
    doc["trigger"] = {"type": "telepathy"}

    assert set(problems_of(doc)) == {"trigger.type"}


def test_it_rejects_an_on_value_the_source_node_cannot_produce():
    doc = single_node("noop", {})
    doc["nodes"] += [
        {"id": "b", "type": "noop"},
        {"id": "c", "type": "condition", "config": {"expression": "1"}},
    ]
    doc["edges"] = [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c", "on": "true"},
    ]

    problems = problems_of(doc)

    assert set(problems) == {"edges[1].on"}
    assert "node 'a' (noop) cannot produce 'true'" in problems["edges[1].on"]


def test_it_rejects_an_approval_outcome_from_a_condition():
    doc = single_node("condition", {"expression": "vars.x"})
    doc["nodes"].append({"id": "b", "type": "noop"})
    doc["edges"] = [{"from": "a", "to": "b", "on": "approved"}]

    assert set(problems_of(doc)) == {"edges[0].on"}


def test_it_rejects_an_on_value_outside_the_vocabulary():
    doc = single_node("noop", {})
    doc["nodes"].append({"id": "b", "type": "noop"})
    doc["edges"] = [{"from": "a", "to": "b", "on": "maybe"}]

    problems = problems_of(doc)

    assert problems["edges[0].on"].startswith("must be one of success, error, approved")


def test_it_accepts_always_and_error_from_any_node():
    doc = single_node("noop", {})
    doc["nodes"] += [{"id": "b", "type": "noop"}, {"id": "c", "type": "noop"}]
    doc["edges"] = [
        {"from": "a", "to": "b", "on": "always"},
        {"from": "a", "to": "c", "on": "error"},
    ]

    assert [e["on"] for e in validate_definition(doc)["edges"]] == ["always", "error"]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"url": "http://{{ vars.host /health"}, "nodes[0].config.url"),
        (
            {"url": "http://x", "json": {"text": "{{ nodes.check.error.message }"}},
            "nodes[0].config.json.text",
        ),
        ({"url": "http://x", "headers": {"X-Id": "{% if %}"}}, "nodes[0].config.headers.X-Id"),
    ],
)
def test_it_rejects_a_template_that_does_not_parse(config, path):
    problems = problems_of(single_node("http.request", config))

    assert set(problems) == {path}
    assert problems[path].startswith("template does not parse:")


def test_it_reports_a_template_inside_a_list_with_its_index():
    problems = problems_of(single_node("shell.command", {"command": ["echo", "{{ vars.x + }}"]}))

    assert set(problems) == {"nodes[0].config.command[1]"}


def test_it_rejects_a_condition_expression_that_does_not_parse():
    problems = problems_of(single_node("condition", {"expression": "vars.x =="}))

    assert set(problems) == {"nodes[0].config.expression"}
    assert problems["nodes[0].config.expression"].startswith("expression does not parse:")


def test_it_rejects_a_template_with_an_unknown_filter():
    problems = problems_of(
        single_node("http.request", {"url": "http://{{ vars.host | nosuchfilter }}/"})
    )

    assert set(problems) == {"nodes[0].config.url"}


def test_it_rejects_bad_node_fields():
    doc = single_node(
        "noop",
        {},
        queue="no spaces allowed",
        timeout=0,
        on_error="explode",
        critical="yes",
        retry={"max_retries": 99, "delay": -1, "backoff": "random", "jitter": True},
    )
    doc["nodes"][0]["id"] = "1-bad"

    assert set(problems_of(doc)) == {
        "nodes[0].id",
        "nodes[0].queue",
        "nodes[0].timeout",
        "nodes[0].on_error",
        "nodes[0].critical",
        "nodes[0].retry.max_retries",
        "nodes[0].retry.delay",
        "nodes[0].retry.backoff",
        "nodes[0].retry.jitter",
    }


def test_it_rejects_bad_settings():
    doc = valid_document()
    doc["settings"] = {"allow_data_loss": "no", "max_concurrent_executions": -1, "turbo": True}

    assert set(problems_of(doc)) == {
        "settings.allow_data_loss",
        "settings.max_concurrent_executions",
        "settings.turbo",
    }


def test_it_rejects_bad_variable_specs():
    doc = valid_document()
    doc["variables"] = {
        "port": {"type": "integer", "default": "eighty"},
        "mode": {"type": "colour"},
        "flag": {"required": "sometimes"},
    }

    assert problems_of(doc) == {
        "variables.port.default": "must be of type integer",
        "variables.mode.type": "must be one of string, number, integer, boolean, object, array, any",
        "variables.flag.required": "must be true or false",
    }


def test_it_reports_a_node_type_that_is_not_a_string_instead_of_crashing():
    doc = single_node("noop", {})
    doc["nodes"][0]["type"] = ["noop"]

    assert set(problems_of(doc)) == {"nodes[0].type"}


def test_it_reports_an_edge_endpoint_that_is_not_a_string_instead_of_crashing():
    doc = single_node("noop", {})
    doc["edges"] = [{"from": ["a"], "to": "a"}]

    assert set(problems_of(doc)) == {"edges[0].from"}


def test_it_reports_unknown_keys_of_mixed_types_instead_of_crashing():
    doc = parse_document("slug: one\nname: One\nnodes: [{id: a, type: noop}]\n1: x\nextra: y\n")

    assert set(problems_of(doc)) == {"1", "extra"}


# --- YAML ------------------------------------------------------------------------------------


def test_it_raises_a_definition_error_for_invalid_yaml():
    with pytest.raises(DefinitionError) as caught:
        parse_document("slug: restart-web\nnodes: [unclosed\n")

    (problem,) = caught.value.problems
    assert problem.path == ""
    assert problem.message.startswith("not valid YAML or JSON (line ")


def test_it_parses_and_validates_a_yaml_document():
    text = """
slug: nightly
name: Nightly check
trigger: {type: cron, schedule: "0 3 * * *", timezone: Europe/Paris}
nodes:
  - id: check
    type: http.request
    config: {url: "http://{{ vars.host }}/health"}
  - id: done
    type: noop
edges:
  - {from: check, to: done}
"""
    normalized = validate_definition(parse_document(text))

    assert normalized["trigger"]["timezone"] == "Europe/Paris"
    assert normalized["edges"] == [{"from": "check", "to": "done", "on": "success"}]


def test_it_reads_the_on_key_of_a_yaml_edge():
    text = """
slug: paging
name: Paging
nodes:
  - {id: check, type: http.request, config: {url: "http://web/health"}}
  - {id: page, type: noop}
edges:
  - {from: check, to: page, on: error}
"""
    normalized = validate_definition(parse_document(text))

    assert normalized["edges"] == [{"from": "check", "to": "page", "on": "error"}]


def test_it_reads_unquoted_true_and_false_edges_of_a_condition():
    text = """
slug: branch
name: Branch
nodes:
  - {id: decide, type: condition, config: {expression: "vars.x > 1"}}
  - {id: big, type: noop}
  - {id: small, type: noop}
edges:
  - {from: decide, to: big, on: true}
  - {from: decide, to: small, on: false}
"""
    normalized = validate_definition(parse_document(text))

    assert [e["on"] for e in normalized["edges"]] == ["true", "false"]


# --- variables -------------------------------------------------------------------------------


def test_it_reports_a_missing_required_variable():
    definition = validate_definition(valid_document())

    with pytest.raises(DefinitionError) as caught:
        resolve_variables(definition, {})

    assert [p.as_dict() for p in caught.value.problems] == [
        {"path": "variables.host", "message": "required"}
    ]


def test_it_reports_a_variable_of_the_wrong_type():
    definition = validate_definition(valid_document())

    with pytest.raises(DefinitionError) as caught:
        resolve_variables(definition, {"host": 42, "port": "80"})

    assert {p.path: p.message for p in caught.value.problems} == {
        "variables.host": "must be of type string",
        "variables.port": "must be of type integer",
    }


def test_it_does_not_take_a_boolean_for_an_integer_variable():
    definition = validate_definition(valid_document())

    with pytest.raises(DefinitionError) as caught:
        resolve_variables(definition, {"host": "web", "port": True})

    assert [p.path for p in caught.value.problems] == ["variables.port"]


def test_it_fills_defaults_for_variables_not_supplied():
    doc = valid_document()
    doc["variables"]["note"] = {"type": "string"}
    definition = validate_definition(doc)

    values = resolve_variables(definition, {"host": "web-1"})

    assert values == {"host": "web-1", "port": 8080, "note": None}


def test_a_supplied_value_wins_over_the_default():
    definition = validate_definition(valid_document())

    assert resolve_variables(definition, {"host": "web-1", "port": 9000})["port"] == 9000


def test_it_rejects_variables_that_are_not_a_mapping():
    definition = validate_definition(valid_document())

    with pytest.raises(DefinitionError) as caught:
        resolve_variables(definition, ["web-1"])

    assert [p.path for p in caught.value.problems] == ["variables"]
