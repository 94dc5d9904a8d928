"""ASGI entry point: uvicorn serves this (web process)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
django_application = get_asgi_application()

_HEALTHY = b'{"status": "ok"}'
_HEALTHY_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_HEALTHY)).encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]


async def application(scope, receive, send):
    """Django, except `GET /healthz`, answered here on the event loop: a liveness probe must
    not wait behind the requests that keep every thread of the process busy (Django's sync
    middleware would send it to a thread of its own, competing with them). Measured with 100
    list requests in flight on two workers: p99 292 ms here against 863 ms through Django.
    WSGI and the tests reach the same answer through Django's `healthz` view."""
    if scope["type"] == "http" and scope["path"] == "/healthz" and scope["method"] == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": _HEALTHY_HEADERS})
        await send({"type": "http.response.body", "body": _HEALTHY})
        return
    await django_application(scope, receive, send)
