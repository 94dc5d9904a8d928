"""The `approval` node type: pauses the run until people decide (DESIGN §7)."""

from __future__ import annotations

from typing import Any

from apps.executions.nodes.base import WAIT, NodeContext, NodeType, Problem, register


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(a, str) and a.strip() for a in value)


@register
class ApprovalNode(NodeType):
    name = "approval"
    outcomes = frozenset({"approved", "rejected"})
    fired_uses_output = True

    def check_config(self, config) -> list[Problem]:
        problems: list[Problem] = []
        if not isinstance(config.get("message"), str) or not config["message"].strip():
            problems.append(("message", "required (what the approvers are asked)"))
        if "approvers" in config and not _names(config["approvers"]):
            problems.append(("approvers", "must be a list of usernames and group:<name>"))
        for key, minimum in (("timeout", 0), ("required_approvals", 1), ("escalate_after", 1)):
            if key in config and (not _is_int(config[key]) or config[key] < minimum):
                problems.append((key, f"must be a whole number, {minimum} or more"))
        if "allow_self_approval" in config and not isinstance(config["allow_self_approval"], bool):
            problems.append(("allow_self_approval", "must be true or false"))
        if "escalate_to" in config:
            if not _names(config["escalate_to"]):
                problems.append(("escalate_to", "must be a list of usernames and group:<name>"))
            elif "escalate_after" not in config:
                problems.append(("escalate_after", "required with escalate_to"))
        return problems

    def run(self, ctx: NodeContext):
        return WAIT

    def begin_wait(self, execution, step, config: dict[str, Any]) -> None:
        from apps.approvals.services import open_approval

        open_approval(execution, step, config)

    def cancel_wait(self, execution, step) -> None:
        from apps.approvals.services import cancel_approval

        cancel_approval(execution, step)

    def fired(self, output: dict[str, Any]) -> set[str]:
        return {"approved"} if output.get("decision") == "approved" else {"rejected"}
