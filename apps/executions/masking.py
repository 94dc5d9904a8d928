"""What is never stored or shown in clear (issue 9 item 5): sensitive header values.

A header named here has its value replaced by MASK in a step's stored input and output, even
when the workflow types it in literally: a viewer reads step input and output, and so do exports
and incomplete-execution bundles. The node still sends the real value; a retry whose edited
input still holds MASK sends the value rendered from the workflow again.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

MASK = "***"
ALWAYS_SENSITIVE = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)


def sensitive_headers() -> frozenset[str]:
    """Lower-cased names: the fixed ones and OPSFLOW_SENSITIVE_HEADERS."""
    return ALWAYS_SENSITIVE | {h.lower() for h in settings.OPSFLOW_SENSITIVE_HEADERS}


def mask_headers(headers: Any) -> Any:
    """A copy of a header mapping with every sensitive value masked (other values as given)."""
    if not isinstance(headers, dict):
        return headers
    names = sensitive_headers()
    return {k: (MASK if str(k).lower() in names else v) for k, v in headers.items()}


def restore_headers(edited: Any, fresh: Any) -> Any:
    """An operator's edited headers, with each value still masked taken from `fresh` (the
    workflow's own headers, rendered again), so editing an input never sends MASK itself."""
    if not isinstance(edited, dict) or not isinstance(fresh, dict):
        return edited
    by_name = {str(k).lower(): v for k, v in fresh.items()}
    return {k: (by_name.get(str(k).lower(), v) if v == MASK else v) for k, v in edited.items()}
