"""http.request refuses denied addresses before it connects (issue 9, finding 3; build item 4).

The denied target is 127.0.0.2, a loopback address nothing listens on, put on the deny list for
the test: no test sends anything outside loopback, not even to prove a refusal. Names resolve
through a stub, so "a name that resolves to a denied address" needs no DNS.
"""

from __future__ import annotations

import ipaddress
import socket
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest

from apps.executions import errors
from apps.executions.nodes import http as http_node
from tests.executions.test_nodes import run_node
from tests.local_http import serving

DENIED = "127.0.0.2"


@pytest.fixture
def deny_test_address(settings):
    settings.OPSFLOW_HTTP_DENY_NETWORKS = [
        *settings.OPSFLOW_HTTP_DENY_NETWORKS,
        ipaddress.ip_network(f"{DENIED}/32"),
    ]


@pytest.fixture
def resolver(monkeypatch):
    """Names of the test resolve as given here; every lookup is recorded."""
    names: dict[str, str] = {}
    asked: list[str] = []
    real = socket.getaddrinfo

    def stub(host, port, *args, **kwargs):
        asked.append(host)
        if host in names:
            return real(names[host], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(http_node, "resolve", stub)
    return names, asked


class _Redirect(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        target = parse_qs(urlsplit(self.path).query).get("to", ["/"])[0]
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def redirector():
    with serving(_Redirect) as url:
        yield url


def test_a_denied_address_is_refused_before_any_connection(deny_test_address, monkeypatch):
    connects = []
    real = http_node.httpcore.SyncBackend.connect_tcp
    monkeypatch.setattr(
        http_node.httpcore.SyncBackend,
        "connect_tcp",
        lambda self, *a, **kw: connects.append(a) or real(self, *a, **kw),
    )

    with pytest.raises(errors.InvalidConfigurationError, match=f"resolves to {DENIED}"):
        run_node("http.request", {"url": f"http://{DENIED}:9/latest/meta-data/"}, timeout=5)
    assert connects == []


def test_a_name_that_resolves_to_a_denied_address_is_refused(deny_test_address, resolver):
    names, asked = resolver
    names["metadata.internal.test"] = DENIED

    with pytest.raises(errors.InvalidConfigurationError) as caught:
        run_node("http.request", {"url": "http://metadata.internal.test:9/"}, timeout=5)

    assert "'metadata.internal.test' resolves to 127.0.0.2" in str(caught.value)
    assert "OPSFLOW_HTTP_DENY" in str(caught.value)
    assert asked == ["metadata.internal.test"]


def test_a_redirect_to_a_denied_address_is_refused_at_that_hop(deny_test_address, redirector):
    with pytest.raises(errors.InvalidConfigurationError, match=f"resolves to {DENIED}"):
        run_node("http.request", {"url": f"{redirector}/go?to=http://{DENIED}:9/secret"}, timeout=5)


def test_link_local_is_denied_by_default_and_ipv4_mapped_forms_do_not_pass():
    assert http_node.denied_network("169.254.169.254") is not None
    assert http_node.denied_network("::ffff:169.254.169.254") is not None
    assert http_node.denied_network("fe80::1%eth0") is not None
    assert http_node.denied_network("127.0.0.1") is None  # loopback only with DENY_PRIVATE


def test_deny_private_adds_loopback_and_the_private_ranges(settings):
    settings.OPSFLOW_HTTP_DENY_NETWORKS = [
        ipaddress.ip_network(n) for n in settings.PRIVATE_NETWORKS
    ]

    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.20.0.1", "::1"):
        assert http_node.denied_network(address) is not None, address
    assert http_node.denied_network("93.184.216.34") is None  # never contacted: only compared


def test_an_allowed_address_is_still_reached(redirector):
    output = run_node(
        "http.request",
        {"url": f"{redirector}/go?to=/", "follow_redirects": False, "expect_status": [302]},
        timeout=5,
    )

    assert output["status_code"] == 302
