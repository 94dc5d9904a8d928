"""Config templates (DESIGN §4): sandboxed Jinja2, native values, `Missing variable: <path>`."""

from __future__ import annotations

import pytest

from apps.executions.errors import DataError
from apps.executions.templating import build_context, evaluate_expression, render_value


@pytest.fixture
def context():
    return build_context(
        variables={"host": "web-1", "port": 8080, "tags": ["a", "b"], "path": "/srv/app"},
        trigger={"type": "webhook", "data": {"ref": "main", "commits": 3}},
        nodes={
            "check": {
                "output": {
                    "status_code": 200,
                    "json": {"healthy": True, "items": [1, 2, 3], "rows": [4, 5]},
                },
                "status": "completed",
                "error": None,
            },
            "fetch": {
                "output": {},
                "status": "failed",
                "error": {"type": "ConnectionError", "message": "refused"},
            },
        },
        execution={"id": 42, "started_at": "2026-01-01T00:00:00Z"},
    )


# --- native values and text --------------------------------------------------------------------


def test_a_whole_expression_keeps_a_mapping(context):
    value = render_value("{{ nodes.check.output.json }}", context)

    assert value == {"healthy": True, "items": [1, 2, 3], "rows": [4, 5]}
    assert type(value) is dict
    assert type(value["rows"]) is list


def test_a_whole_expression_keeps_a_list(context):
    value = render_value("{{ vars.tags }}", context)

    assert value == ["a", "b"]
    assert type(value) is list


def test_a_whole_expression_keeps_numbers_and_booleans(context):
    assert render_value("{{ vars.port }}", context) == 8080
    assert render_value("{{ vars.port + 1 }}", context) == 8081
    assert render_value("{{ nodes.check.output.json.healthy }}", context) is True


def test_a_whole_expression_may_have_surrounding_whitespace(context):
    assert render_value("  {{ trigger.data.commits }}\n", context) == 3


def test_a_mixed_string_renders_to_text(context):
    assert (
        render_value("http://{{ vars.host }}:{{ vars.port }}/health", context)
        == "http://web-1:8080/health"
    )


def test_two_expressions_side_by_side_render_to_text(context):
    assert render_value("{{ vars.host }}{{ vars.port }}", context) == "web-18080"


def test_a_string_without_markup_is_returned_unchanged(context):
    assert render_value("plain {text}", context) == "plain {text}"


def test_it_renders_inside_mappings_and_lists_and_leaves_other_values(context):
    config = {
        "url": "http://{{ vars.host }}/",
        "json": {"ref": "{{ trigger.data.ref }}", "count": "{{ trigger.data.commits }}", "n": 5},
        "command": ["echo", "{{ execution.id }}", None, True],
    }

    assert render_value(config, context) == {
        "url": "http://web-1/",
        "json": {"ref": "main", "count": 3, "n": 5},
        "command": ["echo", 42, None, True],
    }


def test_it_exposes_node_status_and_error(context):
    assert (
        render_value("{{ nodes.fetch.status }}: {{ nodes.fetch.error.message }}", context)
        == "failed: refused"
    )
    assert render_value("{{ nodes.fetch.error }}", context) == {
        "type": "ConnectionError",
        "message": "refused",
    }


def test_it_renders_filters_and_statements(context):
    assert render_value("{{ vars.host | upper }}", context) == "WEB-1"
    assert render_value("{% for t in vars.tags %}[{{ t }}]{% endfor %}", context) == "[a][b]"


@pytest.mark.parametrize(
    ("template", "expected"),
    [("{{ vars.path }}", "/srv/app"), ("{{ nodes.check.output.json.items }}", [1, 2, 3])],
)
def test_a_field_named_like_a_dict_attribute_renders_its_value(context, template, expected):
    assert render_value(template, context) == expected


# --- missing paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "missing"),
    [
        ("{{ nodes.check.output.body }}", "nodes.check.output.body"),
        ("{{ vars.hostname }}", "vars.hostname"),
        ("http://{{ vars.hostname }}/", "vars.hostname"),
        ("{{ nodes.check.output.json.rows[7] }}", "nodes.check.output.json.rows[7]"),
        ("{{ nodes.check.output.json['missing'] }}", "nodes.check.output.json.missing"),
        ("{{ nodes.deploy.output.body }}", "nodes.deploy"),
        ("{{ secrets.token }}", "secrets"),
    ],
)
def test_a_missing_path_raises_a_data_error_naming_it(context, template, missing):
    with pytest.raises(DataError) as caught:
        render_value(template, context)

    assert str(caught.value) == f"Missing variable: {missing}"
    assert caught.value.message == f"Missing variable: {missing}"


@pytest.mark.parametrize(
    ("template", "missing"),
    [
        ("{{ trigger.data.ref.sha }}", "trigger.data.ref.sha"),
        ("{{ nodes.check.output.status_code.text }}", "nodes.check.output.status_code.text"),
    ],
)
def test_a_missing_path_below_a_scalar_names_the_whole_path(context, template, missing):
    with pytest.raises(DataError) as caught:
        render_value(template, context)

    assert str(caught.value) == f"Missing variable: {missing}"


def test_a_missing_variable_in_an_empty_context_names_the_path():
    context = build_context({}, {"type": "manual", "data": {}}, {}, {"id": 1, "started_at": None})

    with pytest.raises(DataError, match=r"^Missing variable: vars\.host$"):
        render_value({"url": "http://{{ vars.host }}/health"}, context)


def test_a_missing_variable_in_a_statement_raises_a_data_error(context):
    with pytest.raises(DataError, match=r"^Missing variable: vars\.hosts$"):
        render_value("{% for h in vars.hosts %}{{ h }}{% endfor %}", context)


def test_a_template_that_does_not_parse_raises_a_data_error(context):
    with pytest.raises(DataError, match="^Template does not parse"):
        render_value("x {{ vars.port + }}", context)


@pytest.mark.parametrize("template", ["{{ vars.port + }}", "{{ vars.host | nosuchfilter }}"])
def test_a_whole_expression_that_does_not_compile_raises_a_data_error(context, template):
    with pytest.raises(DataError):
        render_value(template, context)


# --- expressions -------------------------------------------------------------------------------


def test_an_expression_evaluates_with_or_without_braces(context):
    assert evaluate_expression("nodes.check.output.status_code == 200", context) is True
    assert evaluate_expression("{{ vars.port > 9000 }}", context) is False
    assert evaluate_expression("vars.tags | length", context) == 2


def test_an_expression_returns_plain_values(context):
    value = evaluate_expression("nodes.check.output", context)

    assert value == {
        "status_code": 200,
        "json": {"healthy": True, "items": [1, 2, 3], "rows": [4, 5]},
    }
    assert type(value) is dict
    assert type(value["json"]) is dict


def test_an_expression_with_a_missing_path_raises_a_data_error(context):
    with pytest.raises(DataError, match=r"^Missing variable: nodes\.check\.output\.body$"):
        evaluate_expression("nodes.check.output.body == 'ok'", context)


# --- the sandbox -------------------------------------------------------------------------------

UNSAFE = [
    "{{ vars.__class__.__mro__ }}",
    "{{ ().__class__.__subclasses__() }}",
    "{{ vars.tags.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ '{0.__class__}'.format(vars) }}",
]


@pytest.mark.parametrize("template", UNSAFE)
def test_the_sandbox_refuses_unsafe_attribute_access(context, template):
    """Whatever the error type, nothing from Python's internals comes back."""
    with pytest.raises(DataError):
        render_value(template, context)


@pytest.mark.parametrize("template", UNSAFE)
def test_the_sandbox_refuses_unsafe_attribute_access_in_a_mixed_string(context, template):
    with pytest.raises(DataError):
        render_value(f"x {template}", context)


@pytest.mark.parametrize("template", UNSAFE[:2])
def test_the_sandbox_refusal_is_reported_as_an_unsafe_template(context, template):
    with pytest.raises(DataError) as caught:
        render_value(template, context)
    assert caught.value.message.startswith("Unsafe template: ")
    assert "unsafe" in caught.value.message
