"""The web server's HTTP protocol: uvicorn's h11 implementation with TCP_NODELAY on every
connection.

With `--workers N` uvicorn's supervisor binds the listening socket itself, leaving its `proto`
at 0; accepted connections inherit it, and asyncio only turns Nagle's algorithm off for sockets
that say IPPROTO_TCP. Each keep-alive response then waits ~40 ms for the client's delayed ACK
(uvicorn issue #3149, open in 0.54: measured here, a 25 ms API page took 65 ms with two
workers). Setting the option on each connection makes it right however the socket was bound.
The Procfile selects it with `--http config.http:NoDelayH11Protocol`.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
