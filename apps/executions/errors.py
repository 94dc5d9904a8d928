"""The error taxonomy of DESIGN §5/§6: every node failure is one of these types.

The class names are the product vocabulary and are stored on steps as `error_type`.
`ConnectionError` deliberately shadows the builtin inside this module only; import it as
`errors.ConnectionError`.
"""

from __future__ import annotations

from typing import Any


class NodeError(Exception):
    """Base class: a node attempt failed. `output` keeps whatever the node produced."""

    auto_retry: bool | None = None  # None = not an incomplete-execution class

    def __init__(
        self, message: str, output: dict[str, Any] | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.message = message
        self.output = output or {}
        self.retry_after = retry_after

    @property
    def type_name(self) -> str:
        return type(self).__name__


class ConnectionError(NodeError):  # noqa: A001 - product vocabulary
    auto_retry = True


class RateLimitError(NodeError):
    auto_retry = True


class OutOfSpaceError(NodeError):
    auto_retry = True


class ModuleTimeoutError(NodeError):
    auto_retry = True


class DataError(NodeError):
    auto_retry = False


class InvalidConfigurationError(NodeError):
    auto_retry = False


class InvalidAccessTokenError(NodeError):
    auto_retry = False


class UnexpectedError(NodeError):
    auto_retry = False


class WorkerLostError(NodeError):
    """The node's agent died while running it, again and again (3 interruptions): an operator
    should look (a step that runs its worker out of memory dies the same way every time)."""

    auto_retry = False


class MaxFileSizeExceededError(NodeError):
    auto_retry = False


class MaxResultsExceededError(NodeError):
    auto_retry = False


_INCOMPLETE_POLICY = {
    cls.__name__: cls.auto_retry
    for cls in (
        ConnectionError,
        RateLimitError,
        OutOfSpaceError,
        ModuleTimeoutError,
        DataError,
        InvalidConfigurationError,
        InvalidAccessTokenError,
        UnexpectedError,
        WorkerLostError,
        MaxFileSizeExceededError,
        MaxResultsExceededError,
    )
}


# The error types an incomplete execution can be stored for (a filter's choices, no query).
INCOMPLETE_ERROR_TYPES = tuple(sorted(_INCOMPLETE_POLICY))


def incomplete_policy(error_type: str) -> bool | None:
    """DESIGN §6 rule 5: True stores with auto-retry, False without, None fails the run."""
    return _INCOMPLETE_POLICY.get(error_type)
