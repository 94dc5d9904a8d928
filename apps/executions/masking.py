"""What is never stored or shown in clear (issue 9 item 5): credentials and sensitive headers.

Every value a step read from `secrets` is replaced by MASK in what the step stores: its input,
output (stdout, stderr, HTTP responses), error message, and so the log, incomplete-execution
bundles, exports and emails made from them.

A header named here has its value replaced by MASK in a step's stored input and output, even
when the workflow types it in literally: a viewer reads step input and output, and so do exports
and incomplete-execution bundles. The node still sends the real value; a retry whose edited
input still holds MASK sends the value rendered from the workflow again.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

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


def _forms(secret: str) -> set[str]:
    """The ways a value shows up in text: as is, escaped inside JSON, encoded in a URL."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret),
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    }


def mask_values(value: Any, secrets: list[str]) -> Any:
    """A copy of `value` (JSON-like, or a string) with every occurrence of each secret replaced
    by MASK, in keys and strings at any depth."""
    forms = sorted({f for s in secrets if s for f in _forms(s)}, key=len, reverse=True)
    if not forms:
        return value
    pattern = re.compile("|".join(re.escape(f) for f in forms))

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return pattern.sub(MASK, item)
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value)


def restore_masked(edited: Any, masked: Any, fresh: Any) -> Any:
    """An operator's edit of a masked input, with every part they left as it was shown
    (`masked`) taken from `fresh`, the same input rendered again in clear: retrying an input
    that still shows *** sends the real value, and whatever was changed is sent as changed."""
    if isinstance(edited, dict) and isinstance(masked, dict) and isinstance(fresh, dict):
        return {
            k: restore_masked(v, masked[k], fresh[k]) if k in masked and k in fresh else v
            for k, v in edited.items()
        }
    if (
        isinstance(edited, list)
        and isinstance(masked, list)
        and isinstance(fresh, list)
        and len(masked) == len(fresh)
    ):
        return [
            restore_masked(v, masked[i], fresh[i]) if i < len(masked) else v
            for i, v in enumerate(edited)
        ]
    if isinstance(edited, str) and edited == masked and MASK in edited:
        return fresh
    return edited
