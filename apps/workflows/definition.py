"""The workflow definition document (DESIGN §3): parsing and complete validation.

`validate_definition` reports every problem with a path such as `nodes[2].config.url`, and
returns a normalized copy (defaults filled in) only when there are none.
"""

from __future__ import annotations

import copy
import json
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml
from croniter import croniter
from django.conf import settings

from apps.executions.nodes import REGISTRY
from apps.executions.templating import iter_template_strings, template_problem
from apps.workflows.choices import EDGE_ON, VARIABLE_TYPES, Backoff, Catchup, OnError, TriggerType
from config.limits import depth_message, document_problem

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")
NODE_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

TOP_LEVEL_KEYS = {
    "slug",
    "name",
    "description",
    "organization",
    "trigger",
    "settings",
    "variables",
    "nodes",
    "edges",
}
NODE_KEYS = {"id", "type", "name", "config", "queue", "timeout", "retry", "on_error", "critical"}
DEFAULT_SETTINGS: dict[str, Any] = {
    "store_incomplete_executions": False,
    "sequential_processing": False,
    "allow_data_loss": False,
    "max_concurrent_executions": 0,
    "concurrency_policy": "queue",
    "retention_days": None,  # None: the organization's, then OPSFLOW_RETENTION_DAYS; 0: forever
}
CONCURRENCY_POLICIES = ("queue", "skip")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DefinitionError(Exception):
    """The document has problems; `problems` lists every one of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so the edge key `on:` stays a string."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = (
    "tag:yaml.org,2002:timestamp"  # YAML 1.2 has none; a date stays a string (and JSON)
)
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """Load YAML (or JSON) with YAML 1.2 booleans. A text nested past Python's recursion limit
    is a YAMLError like any other (`document_problem` then bounds depth and size)."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError(depth_message()) from None


def parse_document(text: str | bytes) -> Any:
    """Parse YAML or JSON text (JSON is YAML); raise DefinitionError on a syntax error."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError([Problem("", f"not valid YAML or JSON{where}: {problem}")]) from None


def dump_document(definition: dict[str, Any], fmt: str = "yaml") -> str:
    if fmt == "json":
        return json.dumps(definition, indent=2)
    return yaml.safe_dump(definition, sort_keys=False, allow_unicode=True)


def masked_definition(definition: Any) -> Any:
    """A copy of a definition as shown to those who may not edit it (and in incomplete-execution
    blueprints): each node's config as its type masks it when stored, so a sensitive header
    typed in literally (`Authorization: Bearer …`) reads `***`."""
    if not isinstance(definition, dict) or not isinstance(definition.get("nodes"), list):
        return definition
    nodes = []
    for node in definition["nodes"]:
        kind = REGISTRY.get(node.get("type")) if isinstance(node, dict) else None
        if kind is not None and isinstance(node.get("config"), dict):
            node = {**node, "config": kind.mask_input(node["config"])}
        nodes.append(node)
    return {**definition, "nodes": nodes}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Validator:
    def __init__(self, doc: Any):
        self.doc = doc
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def at_most(self, key: str, items: list, limit: int, setting: str) -> None:
        """Too many nodes or edges: one problem, and validation stops there."""
        if len(items) > limit:
            self.add(key, f"at most {setting} ({limit}) {key}; this definition has {len(items)}")
            raise DefinitionError(self.problems)

    def run(self) -> dict[str, Any]:
        doc = self.doc
        if not isinstance(doc, dict):
            self.add("", "the definition must be a mapping with slug, name, nodes and edges")
            raise DefinitionError(self.problems)
        problem = document_problem(doc)  # first: what follows may recurse or copy it all
        if problem:
            self.add(*problem)
            raise DefinitionError(self.problems)
        try:
            json.dumps(doc, allow_nan=False)
        except (TypeError, ValueError) as exc:
            self.add("", f"the definition must hold only JSON values: {exc}")
            raise DefinitionError(self.problems) from None
        out = copy.deepcopy(doc)
        for key in sorted(set(doc) - TOP_LEVEL_KEYS, key=str):
            self.add(str(key), "unknown field")

        slug = doc.get("slug")
        if slug is None:
            self.add("slug", "required")
        elif not isinstance(slug, str) or not SLUG_RE.match(slug):
            self.add("slug", "must be lowercase letters, digits and hyphens (at most 100)")
        name = doc.get("name")
        if name is None:
            self.add("name", "required")
        elif not isinstance(name, str) or not name.strip() or len(name) > 200:
            self.add("name", "must be a non-empty string of at most 200 characters")
        if "organization" in doc and not isinstance(doc["organization"], str):
            self.add("organization", "must be an organization slug")

        out["trigger"] = self.trigger(doc.get("trigger"))
        out["settings"] = self.settings(doc.get("settings"))
        out["variables"] = self.variables(doc.get("variables"))
        nodes = self.nodes(doc.get("nodes"))
        out["nodes"] = nodes
        out["edges"] = self.edges(doc.get("edges"), nodes)
        if self.problems:
            raise DefinitionError(self.problems)
        return out

    def trigger(self, trigger: Any) -> dict[str, Any]:
        if trigger is None:
            return {"type": TriggerType.MANUAL.value}
        if not isinstance(trigger, dict):
            self.add("trigger", "must be a mapping with a type")
            return {}
        kind = trigger.get("type", TriggerType.MANUAL.value)
        out = dict(trigger, type=kind)
        if kind not in TriggerType.values:
            self.add("trigger.type", f"must be one of {', '.join(TriggerType.values)}")
        if kind == TriggerType.CRON:
            schedule = trigger.get("schedule")
            if not isinstance(schedule, str) or not schedule.strip():
                self.add("trigger.schedule", "required for a cron trigger")
            elif not croniter.is_valid(schedule):
                self.add("trigger.schedule", f"not a valid cron expression: {schedule!r}")
            elif (gap := shortest_gap(schedule)) < settings.OPSFLOW_CRON_MIN_INTERVAL:
                self.add(
                    "trigger.schedule",
                    f"{schedule!r} fires {gap:g} s apart at times; the minimum is "
                    f"OPSFLOW_CRON_MIN_INTERVAL ({settings.OPSFLOW_CRON_MIN_INTERVAL} s). Six "
                    "fields put seconds last: every 10 seconds is '* * * * * */10'",
                )
            timezone = trigger.get("timezone", "UTC")
            try:
                zoneinfo.ZoneInfo(str(timezone))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                self.add("trigger.timezone", f"unknown time zone: {timezone!r}")
            out["timezone"] = timezone
            catchup = trigger.get("catchup", Catchup.LATEST.value)
            if catchup not in Catchup.values:
                self.add("trigger.catchup", f"must be one of {', '.join(Catchup.values)}")
            out["catchup"] = catchup
            lateness = trigger.get("max_lateness", 3600)
            if not _is_int(lateness) or lateness < 0:
                self.add("trigger.max_lateness", "must be a whole number of seconds, 0 or more")
            out["max_lateness"] = lateness
        if kind == TriggerType.INCIDENT:
            from apps.workflows.incidents import check_trigger

            out = check_trigger(out, self.add)
        return out

    def settings(self, settings: Any) -> dict[str, Any]:
        if settings is None:
            return dict(DEFAULT_SETTINGS)
        if not isinstance(settings, dict):
            self.add("settings", "must be a mapping")
            return dict(DEFAULT_SETTINGS)
        out = dict(DEFAULT_SETTINGS)
        for key, value in settings.items():
            if key not in DEFAULT_SETTINGS:
                self.add(f"settings.{key}", "unknown setting")
            elif key == "max_concurrent_executions":
                if not _is_int(value) or value < 0:
                    self.add(f"settings.{key}", "must be a whole number, 0 or more (0 = unlimited)")
            elif key == "retention_days":
                if value is not None and (not _is_int(value) or value < 0):
                    self.add(
                        f"settings.{key}",
                        "must be a whole number of days, 0 or more (0 = keep forever)",
                    )
            elif key == "concurrency_policy":
                if value not in CONCURRENCY_POLICIES:
                    self.add(f"settings.{key}", f"must be one of {', '.join(CONCURRENCY_POLICIES)}")
            elif not isinstance(value, bool):
                self.add(f"settings.{key}", "must be true or false")
            out[key] = value
        return out

    def variables(self, variables: Any) -> dict[str, Any]:
        if variables is None:
            return {}
        if not isinstance(variables, dict):
            self.add("variables", "must be a mapping of names to {type, required, default}")
            return {}
        out = {}
        for name, spec in variables.items():
            path = f"variables.{name}"
            if not isinstance(name, str) or not NODE_ID_RE.match(name):
                self.add(path, "a variable name must be letters, digits and underscores")
                continue
            if spec is None:
                spec = {}
            if not isinstance(spec, dict):
                self.add(path, "must be a mapping with type, required and default")
                continue
            vtype = spec.get("type", "any")
            if vtype not in VARIABLE_TYPES:
                self.add(f"{path}.type", f"must be one of {', '.join(VARIABLE_TYPES)}")
            required = spec.get("required", False)
            if not isinstance(required, bool):
                self.add(f"{path}.required", "must be true or false")
            default = spec.get("default")
            if default is not None and vtype in VARIABLE_TYPES and not matches_type(default, vtype):
                self.add(f"{path}.default", f"must be of type {vtype}")
            out[name] = {"type": vtype, "required": required, "default": default}
        return out

    def nodes(self, nodes: Any) -> list[dict[str, Any]]:
        if nodes is None:
            self.add("nodes", "required (a list of at least one node)")
            return []
        if not isinstance(nodes, list) or not nodes:
            self.add("nodes", "must be a list of at least one node")
            return []
        self.at_most("nodes", nodes, settings.OPSFLOW_MAX_NODES, "OPSFLOW_MAX_NODES")
        seen: dict[str, int] = {}
        out = []
        for index, node in enumerate(nodes):
            path = f"nodes[{index}]"
            if not isinstance(node, dict):
                self.add(path, "must be a mapping with id and type")
                continue
            for key in sorted(set(node) - NODE_KEYS, key=str):
                self.add(f"{path}.{key}", "unknown field")
            node_id = node.get("id")
            if node_id is None:
                self.add(f"{path}.id", "required")
            elif not isinstance(node_id, str) or not NODE_ID_RE.match(node_id):
                self.add(
                    f"{path}.id",
                    "must start with a letter or _ and hold only letters, digits and _",
                )
            elif node_id in seen:
                self.add(f"{path}.id", f"duplicate id {node_id!r} (also nodes[{seen[node_id]}])")
            else:
                seen[node_id] = index
            node_type = node.get("type")
            config = node.get("config", {})
            if config is None:
                config = {}
            if node_type is None:
                self.add(f"{path}.type", "required")
            elif not isinstance(node_type, str) or node_type not in REGISTRY:
                self.add(
                    f"{path}.type",
                    f"unknown node type {node_type!r}; known: {', '.join(sorted(REGISTRY))}",
                )
            if not isinstance(config, dict):
                self.add(f"{path}.config", "must be a mapping")
                config = {}
            elif isinstance(node_type, str) and node_type in REGISTRY:
                for key, message in REGISTRY[node_type].check_config(config):
                    self.add(f"{path}.config.{key}", message)
            known_type = isinstance(node_type, str) and node_type in REGISTRY
            allowed = REGISTRY[node_type].allowed_queues() if known_type else None
            raw_keys = REGISTRY[node_type].raw_keys if known_type else frozenset()
            for sub, text in iter_template_strings(
                {k: v for k, v in config.items() if k not in raw_keys}
            ):
                problem = template_problem(text)
                if problem:
                    self.add(f"{path}.config.{sub}", problem)
            normalized = {
                "id": node_id,
                "type": node_type,
                "config": config,
                "queue": node.get("queue", allowed[0] if allowed else "default"),
                "timeout": node.get("timeout"),
                "retry": self.retry(node.get("retry"), f"{path}.retry"),
                "on_error": node.get("on_error", OnError.FAIL.value),
                "critical": node.get("critical", True),
            }
            if "name" in node:
                normalized["name"] = node["name"]
            if not isinstance(normalized["queue"], str) or not QUEUE_RE.match(normalized["queue"]):
                self.add(f"{path}.queue", "must be a queue name (letters, digits, . _ -)")
            elif allowed is not None and normalized["queue"] not in allowed:
                self.add(
                    f"{path}.queue",
                    f"{node_type} runs only on {', '.join(allowed)} (OPSFLOW_SHELL_QUEUES, the "
                    f"agents trusted with commands), not on {normalized['queue']!r}",
                )
            timeout = normalized["timeout"]
            if timeout is not None and (not _is_number(timeout) or timeout <= 0 or timeout > 86400):
                self.add(f"{path}.timeout", "must be a number of seconds between 0 and 86400")
            if normalized["on_error"] not in OnError.values:
                self.add(f"{path}.on_error", f"must be one of {', '.join(OnError.values)}")
            if not isinstance(normalized["critical"], bool):
                self.add(f"{path}.critical", "must be true or false")
            out.append(normalized)
        return out

    def retry(self, retry: Any, path: str) -> dict[str, Any]:
        out = {"max_retries": 0, "delay": 0, "backoff": Backoff.FIXED.value, "max_delay": 3600}
        if retry is None:
            return out
        if not isinstance(retry, dict):
            self.add(path, "must be a mapping with max_retries, delay, backoff, max_delay")
            return out
        for key in sorted(set(retry) - set(out), key=str):
            self.add(f"{path}.{key}", "unknown field")
        out.update({k: v for k, v in retry.items() if k in out})
        if not _is_int(out["max_retries"]) or not 0 <= out["max_retries"] <= 50:
            self.add(f"{path}.max_retries", "must be a whole number from 0 to 50")
        for key in ("delay", "max_delay"):
            if not _is_number(out[key]) or out[key] < 0:
                self.add(f"{path}.{key}", "must be a number of seconds, 0 or more")
        if out["backoff"] not in Backoff.values:
            self.add(f"{path}.backoff", f"must be one of {', '.join(Backoff.values)}")
        return out

    def edges(self, edges: Any, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if edges is None:
            return []
        if not isinstance(edges, list):
            self.add("edges", "must be a list of {from, to, on}")
            return []
        self.at_most("edges", edges, settings.OPSFLOW_MAX_EDGES, "OPSFLOW_MAX_EDGES")
        by_id = {n["id"]: n for n in nodes if isinstance(n.get("id"), str)}
        out = []
        seen = set()
        for index, edge in enumerate(edges):
            path = f"edges[{index}]"
            if not isinstance(edge, dict):
                self.add(path, "must be a mapping with from and to")
                continue
            for key in sorted(set(edge) - {"from", "to", "on"}, key=str):
                self.add(f"{path}.{key}", "unknown field")
            source, target, on = edge.get("from"), edge.get("to"), edge.get("on", "success")
            if isinstance(on, bool):  # `on: true` written unquoted in YAML, or JSON true
                on = "true" if on else "false"
            ok = True
            for key, value in (("from", source), ("to", target)):
                if value is None:
                    self.add(f"{path}.{key}", "required")
                    ok = False
                elif not isinstance(value, str) or value not in by_id:
                    self.add(f"{path}.{key}", f"no node with id {value!r}")
                    ok = False
            if not isinstance(on, str) or on not in EDGE_ON:
                self.add(f"{path}.on", f"must be one of {', '.join(EDGE_ON)}")
                ok = False
            elif (
                ok and isinstance(by_id[source]["type"], str) and by_id[source]["type"] in REGISTRY
            ):
                produces = REGISTRY[by_id[source]["type"]].outcomes | {"always"}
                if on not in produces:
                    self.add(
                        f"{path}.on",
                        f"node {source!r} ({by_id[source]['type']}) cannot produce {on!r}; "
                        f"it produces {', '.join(sorted(produces))}",
                    )
                    ok = False
            if ok and source == target:
                self.add(path, f"an edge from {source!r} to itself makes a cycle")
                ok = False
            if ok and (source, target, on) in seen:
                self.add(path, "duplicate edge")
                ok = False
            if ok:
                seen.add((source, target, on))
                out.append({"from": source, "to": target, "on": on})
        cycle = find_cycle(list(by_id), out)
        if cycle:
            self.add("edges", f"the graph has a cycle: {' -> '.join(cycle)}")
        return out


CRON_SAMPLE = 200  # fires looked at for the shortest gap: every pattern repeats well within


def shortest_gap(schedule: str) -> float:
    """The shortest time between two fires of a (valid) schedule, in seconds, from a fixed
    start so that the answer does not change with the clock."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    fires = croniter(schedule, start)
    previous = fires.get_next(float)
    shortest = float("inf")
    for _ in range(CRON_SAMPLE):
        current = fires.get_next(float)
        shortest = min(shortest, current - previous)
        previous = current
    return shortest


def next_fires(trigger: dict[str, Any], count: int = 5, after: datetime | None = None) -> list[str]:
    """The next `count` fire times of a cron trigger, ISO 8601 in its time zone."""
    zone = zoneinfo.ZoneInfo(trigger.get("timezone") or "UTC")
    fires = croniter(trigger["schedule"], (after or datetime.now(UTC)).astimezone(zone))
    return [fires.get_next(datetime).isoformat() for _ in range(count)]


def find_cycle(node_ids: list[str], edges: list[dict[str, Any]]) -> list[str] | None:
    """A cycle as a path (its first node repeated at the end), or None. Depth-first with an
    explicit stack: a chain of any length cannot exhaust Python's recursion limit."""
    graph: dict[str, list[str]] = defaultdict(list)
    for edge in edges:
        graph[edge["from"]].append(edge["to"])
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in node_ids:
        if start in state:
            continue
        path: list[str] = [start]
        todo: list[Iterator[str]] = [iter(graph[start])]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(graph[nxt]))
    return None


def matches_type(value: Any, vtype: str) -> bool:
    return {
        "string": lambda v: isinstance(v, str),
        "number": _is_number,
        "integer": _is_int,
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "any": lambda v: True,
    }[vtype](value)


def validate_definition(doc: Any) -> dict[str, Any]:
    """Validate a parsed document; return it normalized or raise DefinitionError with every problem."""
    return _Validator(doc).run()


def normalize(document: Any) -> dict[str, Any]:
    """The validated definition with every default filled in, as versions store it (no `organization`)."""
    definition = validate_definition(document)
    definition.pop("organization", None)
    return definition


def as_draft(document: dict[str, Any]) -> dict[str, Any]:
    """The document as its author wrote it, as drafts store it (no `organization`)."""
    return {k: copy.deepcopy(v) for k, v in document.items() if k != "organization"}


def resolve_variables(definition: dict[str, Any], supplied: Any) -> dict[str, Any]:
    """Check supplied variables against the definition; fill defaults. Raises DefinitionError."""
    if supplied is None:
        supplied = {}
    if not isinstance(supplied, dict):
        raise DefinitionError([Problem("variables", "must be a mapping of names to values")])
    problem = document_problem(supplied)
    if problem:
        path, message = problem
        raise DefinitionError([Problem(f"variables.{path}" if path else "variables", message)])
    specs = definition.get("variables") or {}
    problems: list[Problem] = []
    values = dict(supplied)
    for name, spec in specs.items():
        if name not in values or values[name] is None:
            if spec.get("default") is not None:
                values[name] = spec["default"]
            elif spec.get("required"):
                problems.append(Problem(f"variables.{name}", "required"))
                continue
            else:
                values[name] = None
                continue
        if not matches_type(values[name], spec.get("type", "any")):
            problems.append(Problem(f"variables.{name}", f"must be of type {spec['type']}"))
    if problems:
        raise DefinitionError(problems)
    return values


class Graph:
    """Read-only view of a definition's nodes and edges, for the engine."""

    def __init__(self, definition: dict[str, Any]):
        self.nodes: dict[str, dict[str, Any]] = {n["id"]: n for n in definition["nodes"]}
        self.order = [n["id"] for n in definition["nodes"]]
        self.outgoing: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.incoming: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for edge in definition.get("edges", []):
            self.outgoing[edge["from"]].append(edge)
            self.incoming[edge["to"]].append(edge)
        self.entries = [n for n in self.order if not self.incoming[n]]
        self.settings: dict[str, Any] = definition.get("settings") or {}
        # Nodes whose config reads the template context; the others run without loading it.
        self.templated = {
            n["id"]
            for n in definition["nodes"]
            if (n["type"] in REGISTRY and REGISTRY[n["type"]].raw_keys)
            or any(True for _ in iter_template_strings(n.get("config") or {}))
        }

    def has_error_route(self, node_id: str) -> bool:
        return any(e["on"] == "error" for e in self.outgoing[node_id])

    def upstream(self, node_id: str) -> set[str]:
        seen: set[str] = set()
        todo = [e["from"] for e in self.incoming[node_id]]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(e["from"] for e in self.incoming[current])
        return seen
