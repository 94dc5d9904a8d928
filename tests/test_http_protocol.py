"""The web server's protocol turns Nagle's algorithm off on every connection (config/http.py)."""

import asyncio
import socket

from uvicorn.config import Config
from uvicorn.server import ServerState

from config.http import NoDelayH11Protocol


async def app(scope, receive, send):  # never called: the test only connects
    raise AssertionError


def nodelay_of_accepted_connection(protocol_class) -> int:
    async def run() -> int:
        # Bound as uvicorn's supervisor binds it for --workers: proto left at 0.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        config = Config(app=app, http=protocol_class, lifespan="off")
        config.load()
        state = ServerState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: protocol_class(config=config, server_state=state, app_state={}),
            sock=listener,
        )
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        for _ in range(100):
            if state.connections:
                break
            await asyncio.sleep(0.01)
        (protocol,) = state.connections
        value = protocol.transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY
        )
        writer.close()
        server.close()
        return value

    return asyncio.run(run())


def test_a_connection_on_a_socket_bound_like_uvicorns_gets_tcp_nodelay():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    assert nodelay_of_accepted_connection(H11Protocol) == 0  # the bug it works around
    assert nodelay_of_accepted_connection(NoDelayH11Protocol) == 1
