"""`http.request`: one httpx call, with the status-to-error mapping of DESIGN §5.

Every connection, redirects included, goes through `GuardedBackend`: the host is resolved here,
each address is checked against OPSFLOW_HTTP_DENY (link-local, i.e. cloud metadata, by default),
and the socket is opened to the checked address itself, so a name that resolves differently a
moment later (DNS rebinding) cannot slip past. TLS still verifies the name.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx
from django.conf import settings

from apps.credentials.hosts import host_allowed
from apps.executions import errors
from apps.executions.masking import mask_headers
from apps.executions.nodes.base import NodeContext, NodeType, Problem, cap_text, register
from apps.executions.stopping import Stopped
from config.limits import document_problem, loads_json, problem_text

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

resolve = socket.getaddrinfo  # the one resolver: tests give it a stub


class DeniedAddress(Exception):
    """The host resolves to an address that OPSFLOW_HTTP_DENY refuses; nothing was sent."""


class CredentialNotAllowed(Exception):
    """The request carries a credential that is not bound to its host; nothing was sent."""


def credential_guard(credentials: dict[str, Any]):
    """An httpx request hook: every hop, redirects included, must go to a host that each
    credential the config read allows (issue 9 item 4). It runs before the connection."""

    def check(request: httpx.Request) -> None:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        for name, used in credentials.items():
            if not host_allowed(used.allowed_hosts, url.host, port):
                shown = f"{url.host}:{port}" if url.port else url.host
                raise CredentialNotAllowed(f"credential {name!r} is not allowed for host {shown!r}")

    return check


def denied_network(address: str):
    """The deny-list network that holds `address`, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: the zone is no part
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return next((n for n in settings.OPSFLOW_HTTP_DENY_NETWORKS if ip in n), None)


class GuardedBackend(httpcore.NetworkBackend):
    """Resolve, refuse a denied address, then connect to the very address that was checked."""

    def __init__(self) -> None:
        self._plain = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            found = resolve(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        addresses = list(dict.fromkeys(info[4][0] for info in found))
        for address in addresses:
            network = denied_network(address)
            if network is not None:
                raise DeniedAddress(
                    f"host {host!r} resolves to {address}, in {network}, which OPSFLOW_HTTP_DENY "
                    "refuses (by default link-local, where cloud metadata services answer)"
                )
        last: Exception | None = None
        for address in addresses:
            try:
                return self._plain.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host!r}")

    def sleep(self, seconds: float) -> None:
        self._plain.sleep(seconds)


def guarded_transport() -> httpx.HTTPTransport:
    """httpx's transport with every connection made by GuardedBackend. Environment proxies are
    not used: through a proxy the deny list could only see the proxy's address."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx has no public hook for the network backend; its pool (httpcore) does.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=10,
        network_backend=GuardedBackend(),
    )
    return transport


def retry_after_of(response: httpx.Response) -> float | None:
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


# The exchanges run here while the step's thread waits, so that Cancel now can abandon one:
# the thread finishes (or times out) on its own, and its answer is dropped.
_EXCHANGES = ThreadPoolExecutor(max_workers=32, thread_name_prefix="opsflow-http")
STOP_CHECK_SECONDS = 0.25


def _unless_stopped(exchange, stop_requested):
    future = _EXCHANGES.submit(exchange)
    while True:
        try:
            return future.result(timeout=STOP_CHECK_SECONDS)
        except FutureTimeout:
            who = stop_requested()
            if who is not None:
                future.cancel()
                raise Stopped(f"Cancelled now by {who}: the HTTP request was abandoned") from None


def guarded_exchange(
    request: dict[str, Any],
    *,
    timeout: float,
    credentials: dict[str, Any],
    stop_requested,
    follow_redirects: bool = True,
) -> tuple[httpx.Response, bytes, bool]:
    """One request under http.request's rules, for every node that speaks HTTP: each hop's
    address checked against OPSFLOW_HTTP_DENY, each credential the config read bound to each
    hop's host, no environment proxy, the body read up to OPSFLOW_OUTPUT_CAP_BYTES within
    `timeout`, abandoned on Cancel now. Returns (response, body, truncated); raises
    DeniedAddress, CredentialNotAllowed, httpx's errors or Stopped."""
    deadline = time.monotonic() + timeout
    cap = settings.OPSFLOW_OUTPUT_CAP_BYTES

    def exchange():
        with (
            httpx.Client(
                timeout=timeout,
                follow_redirects=follow_redirects,
                transport=guarded_transport(),
                trust_env=False,
                event_hooks={"request": [credential_guard(credentials)]} if credentials else None,
            ) as client,
            client.stream(**request) as response,
        ):
            content, truncated = _read_capped(response, deadline, cap)
        return response, content, truncated

    return _unless_stopped(exchange, stop_requested)


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

    def mask_input(self, rendered: Any) -> Any:
        if isinstance(rendered, dict) and isinstance(rendered.get("headers"), dict):
            return {**rendered, "headers": mask_headers(rendered["headers"])}
        return rendered

    def mask_output(self, output: Any) -> Any:
        return self.mask_input(output)  # the response headers: Set-Cookie and the like

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
        try:
            response, content, truncated = guarded_exchange(
                request,
                timeout=timeout,
                credentials=ctx.credentials,
                stop_requested=ctx.stop_requested,
                follow_redirects=bool(config.get("follow_redirects", True)),
            )
        except httpx.TimeoutException as exc:
            raise errors.ModuleTimeoutError(
                f"HTTP request timed out after {timeout:g}s: {exc}"
            ) from exc
        except DeniedAddress as exc:
            raise errors.InvalidConfigurationError(f"Refused {url}: {exc}") from None
        except CredentialNotAllowed as exc:
            raise errors.InvalidConfigurationError(str(exc)) from None
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
                parsed = loads_json(body)
            except ValueError:
                parsed = None
            problem = document_problem(parsed)
            if problem:  # kept as text in `body`; the parsed form is what later nodes recurse into
                output["json_problem"] = problem_text(problem, "the body")
                parsed = None
            output["json"] = parsed

        expected = config.get("expect_status")
        ok = response.status_code in expected if expected else response.status_code < 400
        if not ok:
            error_class = error_for_status(response.status_code)
            raise error_class(
                f"HTTP {response.status_code} from {request['method']} {url}",
                output=output,
                retry_after=retry_after_of(response) if response.status_code == 429 else None,
            )
        return output
