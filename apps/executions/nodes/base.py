"""The node-type registry. A node type validates its config and runs one attempt.

Plugins add types with `@register`: subclass NodeType, set `name`, `outcomes`, and implement
`check_config` (static problems, reported with paths at definition time) and `run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.conf import settings

from apps.executions.errors import InvalidConfigurationError

Problem = tuple[str, str]  # (path relative to the node's config, message)

# Returned by `run` when the node waits for something outside the engine (a human decision):
# its step stays `running` without holding a worker, and `begin_wait` records what it waits for.
WAIT = object()


@dataclass
class NodeContext:
    """What a running node gets: its rendered config and where it runs."""

    config: dict[str, Any]
    raw_config: dict[str, Any]
    node: dict[str, Any]
    template_context: dict[str, Any]
    timeout: float | None
    execution_id: int
    step_id: int
    extra: dict[str, Any] = field(default_factory=dict)
    # The credentials its config read ({{ secrets.NAME }}), by name: http.request binds them
    # to their hosts.
    credentials: dict[str, Any] = field(default_factory=dict)
    # Who asked the run to stop now ("Cancel now"), or None; a long node asks now and then.
    stop_requested: Callable[[], str | None] = lambda: None


class NodeType:
    name: ClassVar[str] = ""
    # The edge `on` values this node can fire. `always` is added for every type.
    outcomes: ClassVar[frozenset[str]] = frozenset({"success", "error"})
    # Config keys that are not rendered as templates before `run` (the node renders them itself).
    raw_keys: ClassVar[frozenset[str]] = frozenset()

    def mask_input(self, rendered: Any) -> Any:
        """The input as stored and shown (secrets masked); the node itself got `rendered`."""
        return rendered

    def mask_output(self, output: Any) -> Any:
        """The output as stored and shown, and as later nodes' templates see it."""
        return output

    def allowed_queues(self) -> list[str] | None:
        """The only queues this type may run on (the first is its default); None: any."""
        return None

    default_timeout: ClassVar[float | None] = None
    # Whether `fired()` reads the output (the engine then loads it to route the edges).
    fired_uses_output: ClassVar[bool] = False

    def check_config(self, config: dict[str, Any]) -> list[Problem]:
        return []

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        raise NotImplementedError

    def begin_wait(self, execution, step, config: dict[str, Any]) -> None:
        """For a node whose `run` returned WAIT: start waiting (under the execution's row lock)."""
        raise NotImplementedError

    def cancel_wait(self, execution, step) -> None:
        """The execution is cancelled while this node waits (under the execution's row lock)."""
        raise NotImplementedError

    def fired(self, output: dict[str, Any]) -> set[str]:
        """Edge outcomes fired on success besides `success` and `always` (e.g. a condition's)."""
        return set()


REGISTRY: dict[str, NodeType] = {}


def waiting_types() -> list[str]:
    """Node types that wait for something outside the engine (they override `begin_wait`):
    their step stays `running` without an agent working on it."""
    return [
        name for name, kind in REGISTRY.items() if type(kind).begin_wait is not NodeType.begin_wait
    ]


def register(cls: type[NodeType]) -> type[NodeType]:
    REGISTRY[cls.name] = cls()
    return cls


def get_node_type(name: str) -> NodeType:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidConfigurationError(f"Unknown node type: {name}") from None


def cap_text(value: str | bytes, cap: int | None = None) -> tuple[str, bool]:
    """Decode and cap an output field at the configured size; report whether it was cut."""
    cap = cap or settings.OPSFLOW_OUTPUT_CAP_BYTES
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
    truncated = len(raw) > cap
    if truncated:
        raw = raw[:cap]
    return raw.decode("utf-8", "replace"), truncated
