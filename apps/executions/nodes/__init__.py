"""Node types. Importing this package registers the built-in ones."""

from apps.executions.nodes import builtin, http, notify, shell, ssh  # noqa: F401
from apps.executions.nodes.base import REGISTRY, NodeContext, NodeType, get_node_type, register

__all__ = ["REGISTRY", "NodeContext", "NodeType", "get_node_type", "register"]
