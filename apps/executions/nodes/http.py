"""`http.request`: one httpx call, with the status-to-error mapping of DESIGN §5."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from django.conf import settings

from apps.executions import errors
from apps.executions.nodes.base import NodeContext, NodeType, Problem, cap_text, register

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, given as a number or as an HTTP date (RFC 9110 §10.2.3)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _read_capped(response: httpx.Response, deadline: float, cap: int) -> tuple[bytes, bool]:
    """Read the body up to the cap, stopping at the node's deadline for the whole request."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the whole request took longer than the node timeout")
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False


def error_for_status(status: int) -> type[errors.NodeError]:
    """The error type for an HTTP status that the node did not expect."""
    if status in (502, 503, 504):
        return errors.ConnectionError
    if status == 429:
        return errors.RateLimitError
    if status in (401, 403):
        return errors.InvalidAccessTokenError
    if status == 413:
        return errors.MaxFileSizeExceededError
    if status == 507:
        return errors.OutOfSpaceError
    if status == 500:
        return errors.UnexpectedError
    if 400 <= status < 500:
        return errors.DataError
    if status >= 500:
        return errors.UnexpectedError
    return errors.DataError  # a 1xx/2xx/3xx that `expect_status` did not list


@register
class HttpRequestNode(NodeType):
    name = "http.request"
    default_timeout = 30.0

    def check_config(self, config) -> list[Problem]:
        problems: list[Problem] = []
        url = config.get("url")
        if not isinstance(url, str) or not url.strip():
            problems.append(("url", "required"))
        method = config.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            problems.append(("method", f"must be one of {', '.join(sorted(METHODS))}"))
        for key in ("headers", "params"):
            if key in config and not isinstance(config[key], dict):
                problems.append((key, "must be a mapping"))
        if "json" in config and "body" in config:
            problems.append(("body", "give either json or body, not both"))
        if "body" in config and not isinstance(config["body"], str):
            problems.append(("body", "must be a string"))
        expect = config.get("expect_status")
        if expect is not None and (
            not isinstance(expect, list)
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in expect
            )
        ):
            problems.append(("expect_status", "must be a list of HTTP status codes"))
        return problems

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        config = ctx.config
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise errors.InvalidConfigurationError(f"url must be an http(s) URL, got {url!r}")
        headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()}
        request: dict[str, Any] = {
            "method": str(config.get("method", "GET")).upper(),
            "url": url,
            "headers": headers,
            "params": config.get("params") or None,
        }
        if "json" in config:
            request["json"] = config["json"]
        elif "body" in config:
            request["content"] = str(config["body"]).encode()
        timeout = ctx.timeout or self.default_timeout
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        cap = settings.OPSFLOW_OUTPUT_CAP_BYTES
        try:
            with (
                httpx.Client(
                    timeout=timeout, follow_redirects=bool(config.get("follow_redirects", True))
                ) as client,
                client.stream(**request) as response,
            ):
                content, truncated = _read_capped(response, deadline, cap)
        except httpx.TimeoutException as exc:
            raise errors.ModuleTimeoutError(
                f"HTTP request timed out after {timeout:g}s: {exc}"
            ) from exc
        except httpx.InvalidURL as exc:
            raise errors.InvalidConfigurationError(f"Invalid URL {url!r}: {exc}") from exc
        except httpx.TransportError as exc:
            raise errors.ConnectionError(f"Could not connect to {url}: {exc}") from exc
        elapsed_ms = int((time.perf_counter() - started) * 1000)

        body, _ = cap_text(content)
        output: dict[str, Any] = {
            "status_code": response.status_code,
            "headers": dict(response.headers),
            "body": body,
            "json": None,
            "elapsed_ms": elapsed_ms,
        }
        if truncated:
            output["truncated"] = True
        elif "json" in response.headers.get("content-type", ""):
            try:
                output["json"] = json.loads(body)
            except ValueError:
                output["json"] = None

        expected = config.get("expect_status")
        ok = response.status_code in expected if expected else response.status_code < 400
        if not ok:
            error_class = error_for_status(response.status_code)
            raise error_class(
                f"HTTP {response.status_code} from {request['method']} {url}",
                output=output,
                retry_after=_retry_after(response) if response.status_code == 429 else None,
            )
        return output
