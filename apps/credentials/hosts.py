"""Host binding (issue 9 item 4): the hosts a credential may be sent to.

A pattern is a host name or address (`api.example.com`, `10.0.0.5`, `[::1]`), optionally with a
port (`api.example.com:8443`), or a wildcard for the sub-domains of one domain
(`*.example.com`: `a.example.com` and `a.b.example.com`, not `example.com` itself). Without a
port, any port of the host matches. Names compare without case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*"
_PATTERN = re.compile(rf"^(?P<host>{_NAME}|\[[0-9a-f:.]+\])(?::(?P<port>\d{{1,5}}))?$")

HOST_HELP = "a host name, host:port or *.domain (for example api.example.com:443)"


def pattern_problem(pattern: object) -> str | None:
    """Why `pattern` is not a host pattern, or None."""
    if not isinstance(pattern, str):
        return f"must be a string: {HOST_HELP}"
    match = _PATTERN.match(pattern.strip().lower())
    if not match:
        return f"{pattern!r} is not {HOST_HELP}"
    if match.group("port") and not 0 < int(match.group("port")) < 65536:
        return f"{pattern!r}: the port must be between 1 and 65535"
    return None


def normalized(patterns: list[str]) -> list[str]:
    return list(dict.fromkeys(p.strip().lower() for p in patterns))


def host_allowed(patterns: Iterable[str], host: str, port: int) -> bool:
    """Whether a request to host:port (the port already defaulted from the scheme) may carry
    a credential bound to `patterns`."""
    host = host.lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # httpx gives IPv6 hosts bare; patterns write them in brackets
    for pattern in patterns:
        match = _PATTERN.match(pattern)
        if not match:
            continue
        want_host, want_port = match.group("host"), match.group("port")
        if want_port and int(want_port) != port:
            continue
        if want_host.startswith("*."):
            if host.endswith(want_host[1:]) and len(host) > len(want_host) - 1:
                return True
        elif host == want_host:
            return True
    return False
