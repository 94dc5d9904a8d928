"""A workflow's graph laid out for drawing (server-rendered SVG: no script, nothing from a CDN,
and the Content-Security-Policy holds). Nodes go left to right in layers by their longest
path from an entry node, in definition order within a layer; edges are curves labelled with
their `on:` when it is not the default `success`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NODE_W, NODE_H = 168, 46
GAP_X, GAP_Y = 64, 26
MARGIN = 16


@dataclass
class DrawnNode:
    id: str
    type: str
    x: int
    y: int
    colour: str = ""  # a STATUS_COLOURS name when the drawing is of an execution
    status: str = ""
    highlight: bool = False
    url: str = ""


@dataclass
class DrawnEdge:
    path: str  # SVG path data
    label: str
    label_x: int
    label_y: int


@dataclass
class Drawing:
    nodes: list[DrawnNode]
    edges: list[DrawnEdge]
    width: int
    height: int


def _layers(ids: list[str], edges: list[dict[str, Any]]) -> dict[str, int]:
    """Longest path from an entry, by Kahn's order (definitions are acyclic: validated)."""
    incoming = {i: 0 for i in ids}
    outgoing: dict[str, list[str]] = {i: [] for i in ids}
    for edge in edges:
        if edge.get("from") in outgoing and edge.get("to") in incoming:
            outgoing[edge["from"]].append(edge["to"])
            incoming[edge["to"]] += 1
    layer = {i: 0 for i in ids}
    ready = [i for i in ids if incoming[i] == 0]
    while ready:
        node = ready.pop(0)
        for target in outgoing[node]:
            layer[target] = max(layer[target], layer[node] + 1)
            incoming[target] -= 1
            if incoming[target] == 0:
                ready.append(target)
    return layer


def draw(
    definition: dict[str, Any],
    statuses: dict[str, tuple[str, str]] | None = None,
    highlight: str = "",
    urls: dict[str, str] | None = None,
) -> Drawing:
    """`statuses`: node id → (status, colour) of its last attempt; `highlight`: a node to ring
    (the failed node of an incomplete execution); `urls`: node id → a link (its step page)."""
    given_nodes, given_edges = definition.get("nodes"), definition.get("edges")
    nodes = [
        n
        for n in (given_nodes if isinstance(given_nodes, list) else [])
        if isinstance(n, dict) and n.get("id")
    ]
    ids = [str(n["id"]) for n in nodes]
    edges = [
        e for e in (given_edges if isinstance(given_edges, list) else []) if isinstance(e, dict)
    ]
    layer = _layers(ids, edges)
    rows: dict[int, int] = {}
    placed: dict[str, DrawnNode] = {}
    for node in nodes:
        node_id = str(node["id"])
        column = layer[node_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        status, colour = (statuses or {}).get(node_id, ("", ""))
        placed[node_id] = DrawnNode(
            id=node_id,
            type=str(node.get("type", "")),
            x=MARGIN + column * (NODE_W + GAP_X),
            y=MARGIN + row * (NODE_H + GAP_Y),
            colour=colour,
            status=status,
            highlight=node_id == highlight,
            url=(urls or {}).get(node_id, ""),
        )
    drawn_edges = []
    for edge in edges:
        source, target = placed.get(edge.get("from")), placed.get(edge.get("to"))
        if source is None or target is None:
            continue
        x1, y1 = source.x + NODE_W, source.y + NODE_H // 2
        x2, y2 = target.x, target.y + NODE_H // 2
        bend = max((x2 - x1) // 2, 24)
        path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
        on = str(edge.get("on", "success"))
        label = "" if on == "success" else f"on: {on}"
        drawn_edges.append(DrawnEdge(path, label, (x1 + x2) // 2, (y1 + y2) // 2 - 4))
    columns = max(layer.values(), default=0) + 1
    tallest = max(rows.values(), default=1)
    return Drawing(
        nodes=list(placed.values()),
        edges=drawn_edges,
        width=2 * MARGIN + columns * NODE_W + (columns - 1) * GAP_X,
        height=2 * MARGIN + tallest * NODE_H + (tallest - 1) * GAP_Y,
    )
