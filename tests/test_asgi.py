"""The ASGI entry point answers the liveness probe itself and hands everything else to Django."""

import asyncio
import json

import pytest

from config import asgi


def call(path: str, method: str = "GET") -> list[dict]:
    sent: list[dict] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asgi.application(scope, receive, send))
    return sent


def test_the_liveness_probe_is_answered_without_django(monkeypatch):
    async def no_django(scope, receive, send):
        raise AssertionError("healthz went through Django")

    monkeypatch.setattr(asgi, "django_application", no_django)

    start, body = call("/healthz")

    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert b"default-src 'none'" in headers[b"content-security-policy"]
    assert json.loads(body["body"]) == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_everything_else_goes_to_django():
    start = call("/healthz", method="POST")[
        0
    ]  # Django's CSRF check refuses it; the probe would not
    assert start["status"] == 403
    assert call("/api/v1/nope/")[0]["status"] == 404
