"""The drawn workflow graph: layers by longest path, edge labels, statuses and the ringed node."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.workflows.graph import GAP_X, MARGIN, NODE_W, draw

FAN = {
    "nodes": [{"id": i, "type": "noop"} for i in ("start", "left", "right", "join", "alert")],
    "edges": [
        {"from": "start", "to": "left", "on": "success"},
        {"from": "start", "to": "right", "on": "success"},
        {"from": "left", "to": "join", "on": "success"},
        {"from": "right", "to": "join", "on": "success"},
        {"from": "start", "to": "alert", "on": "error"},
    ],
}


def column(x: int) -> int:
    return (x - MARGIN) // (NODE_W + GAP_X)


def test_nodes_go_in_layers_by_their_longest_path_and_edges_say_when_they_fire():
    drawing = draw(FAN, statuses={"left": ("failed", "red")}, highlight="left")

    nodes = {n.id: n for n in drawing.nodes}
    assert {k: column(n.x) for k, n in nodes.items()} == {
        "start": 0, "left": 1, "right": 1, "alert": 1, "join": 2,
    }  # fmt: skip
    assert nodes["left"].y != nodes["right"].y  # side by side in their layer
    assert [e.label for e in drawing.edges] == ["", "", "", "", "on: error"]
    assert (nodes["left"].colour, nodes["left"].status, nodes["left"].highlight) == (
        "red",
        "failed",
        True,
    )
    assert drawing.width == 2 * MARGIN + 3 * NODE_W + 2 * GAP_X
    assert all(0 <= n.x <= drawing.width and 0 <= n.y <= drawing.height for n in drawing.nodes)


def test_a_definition_without_nodes_draws_nothing():
    assert draw({}).nodes == [] and draw({"nodes": "x", "edges": 3}).edges == []


@pytest.mark.django_db
def test_the_workflow_and_execution_pages_show_the_graph(org, viewer):
    from apps.executions.services import trigger_workflow
    from tests.factories import chain_definition, make_workflow

    workflow = make_workflow(org, chain_definition("drawn", 3))
    run = trigger_workflow(workflow)
    client = Client()
    client.force_login(viewer)

    page = client.get(f"/workflows/workflow/{workflow.pk}/change/").content.decode()
    assert 'aria-label="Workflow graph"' in page and ">n2</text>" in page

    page = client.get(f"/executions/execution/{run.pk}/change/").content.decode()
    step = run.steps.get()
    assert "opsflow-node opsflow-node-grey" in page  # n0 dispatched
    assert f'href="/executions/execution/{run.pk}/steps/{step.pk}/"' in page
