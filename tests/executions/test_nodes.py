"""Node types called directly (DESIGN §5): output, the error mapping, timeouts and the size cap.

`http.request` talks to a real HTTP server on 127.0.0.1, and `shell.command` runs real processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from apps.executions import errors
from apps.executions.nodes import REGISTRY, NodeContext
from apps.executions.templating import build_context

# --- helpers ---------------------------------------------------------------------------------


def run_node(
    type_name: str, config: dict, timeout: float | None = None, variables: dict | None = None
):
    """Run one attempt of a node type, the way the engine does, with an already rendered config."""
    ctx = NodeContext(
        config=config,
        raw_config=config,
        node={"id": "n", "type": type_name, "config": config},
        template_context=build_context(
            variables or {}, {"type": "manual", "data": {}}, {}, {"id": 1, "started_at": None}
        ),
        timeout=timeout,
        execution_id=1,
        step_id=1,
    )
    return REGISTRY[type_name].run(ctx)


class _Handler(BaseHTTPRequestHandler):
    """The path chooses the response: /json, /status/<code>, /retry-after?value=, /slow?seconds=,
    /trickle?bytes=&interval=, /echo, /big?bytes=, /redirect, /not-json."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def do_PUT(self):
        self._route()

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        headers: dict | None = None,
    ):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _route(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        first, _, rest = url.path.strip("/").partition("/")
        if first == "json":
            payload = {"ok": True, "items": [1, 2, 3]}
            self._send(
                200, json.dumps(payload).encode(), "application/json", {"X-Opsflow-Test": "yes"}
            )
        elif first == "status":
            self._send(int(rest), f"status {rest}".encode())
        elif first == "retry-after":
            self._send(429, b"slow down", headers={"Retry-After": query["value"]})
        elif first == "slow":
            self.server.stopping.wait(float(query["seconds"]))
            self._send(200, b"finally")
        elif first == "trickle":
            self._trickle(int(query["bytes"]), float(query["interval"]))
        elif first == "echo":
            echoed = {
                "method": self.command,
                "query": query,
                "body": body.decode(),
                "content_type": self.headers.get("Content-Type"),
                "token": self.headers.get("X-Token"),
            }
            self._send(200, json.dumps(echoed).encode(), "application/json")
        elif first == "big":
            self._send(200, json.dumps("x" * int(query["bytes"])).encode(), "application/json")
        elif first == "redirect":
            self._send(302, b"", headers={"Location": "/json"})
        elif first == "not-json":
            self._send(200, b"<html>oops</html>", "application/json")
        else:
            self._send(404, b"no route")

    def _trickle(self, size: int, interval: float):
        """Send the body one byte at a time, each well within a read timeout."""
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for _ in range(size):
                if self.server.stopping.wait(interval):
                    return
                self.wfile.write(b"x")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stopping: threading.Event


@pytest.fixture(scope="module")
def http_base_url():
    server = _Server(("127.0.0.1", 0), _Handler)
    server.stopping = threading.Event()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.stopping.set()  # releases slow handlers at once
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def base_url(http_base_url, monkeypatch):
    """The local server's URL, with any proxy from the environment out of the way."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    return http_base_url


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_gone(pid: int) -> bool:
    """True once the process no longer runs (it does not exist, or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_until_gone(pid: int, deadline: float = 5.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if is_gone(pid):
            return True
        time.sleep(0.02)
    return is_gone(pid)


# --- the registry ----------------------------------------------------------------------------


def test_the_registry_holds_the_built_in_types():
    assert {"http.request", "shell.command", "condition", "noop", "set", "delay"} <= set(REGISTRY)


def test_only_a_condition_can_fire_true_and_false():
    assert {"true", "false"} <= REGISTRY["condition"].outcomes
    assert not {"true", "false"} & REGISTRY["http.request"].outcomes
    assert not {"true", "false"} & REGISTRY["noop"].outcomes


# --- http.request ----------------------------------------------------------------------------


def test_it_returns_status_headers_body_json_and_elapsed_time(base_url):
    output = run_node("http.request", {"url": f"{base_url}/json"})

    assert output["status_code"] == 200
    assert output["headers"]["content-type"] == "application/json"
    assert output["headers"]["x-opsflow-test"] == "yes"
    assert json.loads(output["body"]) == {"ok": True, "items": [1, 2, 3]}
    assert output["json"] == {"ok": True, "items": [1, 2, 3]}
    assert isinstance(output["elapsed_ms"], int)
    assert output["elapsed_ms"] >= 0
    assert "truncated" not in output


def test_elapsed_ms_measures_the_request(base_url):
    output = run_node("http.request", {"url": f"{base_url}/slow?seconds=0.2"}, timeout=5)

    assert output["body"] == "finally"
    assert output["elapsed_ms"] >= 200


def test_it_sends_method_params_headers_and_json(base_url):
    output = run_node(
        "http.request",
        {
            "method": "post",
            "url": f"{base_url}/echo",
            "params": {"page": 2},
            "headers": {"X-Token": "t0k"},
            "json": {"text": "restart", "count": 3},
        },
    )

    echoed = output["json"]
    assert echoed["method"] == "POST"
    assert echoed["query"] == {"page": "2"}
    assert echoed["token"] == "t0k"
    assert echoed["content_type"] == "application/json"
    assert json.loads(echoed["body"]) == {"text": "restart", "count": 3}


def test_it_sends_a_raw_body(base_url):
    output = run_node(
        "http.request", {"method": "PUT", "url": f"{base_url}/echo", "body": "plain text"}
    )

    assert output["json"]["method"] == "PUT"
    assert output["json"]["body"] == "plain text"


def test_a_body_that_is_not_json_leaves_json_empty(base_url):
    output = run_node("http.request", {"url": f"{base_url}/not-json"})

    assert output["body"] == "<html>oops</html>"
    assert output["json"] is None


def test_it_follows_redirects_unless_told_not_to(base_url):
    assert run_node("http.request", {"url": f"{base_url}/redirect"})["json"] == {
        "ok": True,
        "items": [1, 2, 3],
    }

    output = run_node("http.request", {"url": f"{base_url}/redirect", "follow_redirects": False})
    assert output["status_code"] == 302


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (502, errors.ConnectionError),
        (503, errors.ConnectionError),
        (504, errors.ConnectionError),
        (401, errors.InvalidAccessTokenError),
        (403, errors.InvalidAccessTokenError),
        (413, errors.MaxFileSizeExceededError),
        (507, errors.OutOfSpaceError),
        (400, errors.DataError),
        (404, errors.DataError),
        (422, errors.DataError),
        (500, errors.UnexpectedError),
        (501, errors.UnexpectedError),
    ],
)
def test_it_maps_an_error_status_to_its_error_type(base_url, status, error_class):
    with pytest.raises(errors.NodeError) as caught:
        run_node("http.request", {"url": f"{base_url}/status/{status}"})

    assert type(caught.value) is error_class
    assert caught.value.message == f"HTTP {status} from GET {base_url}/status/{status}"
    assert caught.value.output["status_code"] == status
    assert caught.value.output["body"] == f"status {status}"


def test_it_maps_503_to_connection_error(base_url):
    with pytest.raises(errors.ConnectionError) as caught:
        run_node("http.request", {"url": f"{base_url}/status/503"})

    assert caught.value.auto_retry is True
    assert caught.value.retry_after is None


def test_it_maps_429_to_rate_limit_error_with_retry_after(base_url):
    with pytest.raises(errors.RateLimitError) as caught:
        run_node("http.request", {"url": f"{base_url}/retry-after?value=7"})

    assert caught.value.retry_after == 7.0
    assert caught.value.output["status_code"] == 429
    assert caught.value.output["headers"]["retry-after"] == "7"


def test_a_429_with_an_unreadable_retry_after_has_no_minimum_delay(base_url):
    with pytest.raises(errors.RateLimitError) as caught:
        run_node("http.request", {"url": f"{base_url}/retry-after?value=soon"})

    assert caught.value.retry_after is None


def test_it_honours_a_retry_after_given_as_an_http_date(base_url):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)

    with pytest.raises(errors.RateLimitError) as caught:
        run_node("http.request", {"url": f"{base_url}/retry-after?value={quote(when)}"})

    assert caught.value.retry_after is not None
    assert 100 <= caught.value.retry_after <= 121


def test_it_raises_module_timeout_error_when_the_server_is_too_slow(base_url):
    started = time.monotonic()

    with pytest.raises(errors.ModuleTimeoutError):
        run_node("http.request", {"url": f"{base_url}/slow?seconds=10"}, timeout=0.3)

    assert time.monotonic() - started < 3


def test_the_timeout_bounds_the_whole_request(base_url):
    started = time.monotonic()

    with pytest.raises(errors.ModuleTimeoutError):
        run_node("http.request", {"url": f"{base_url}/trickle?bytes=15&interval=0.1"}, timeout=0.5)

    assert time.monotonic() - started < 1.2


def test_a_closed_port_raises_connection_error():
    with pytest.raises(errors.ConnectionError, match="^Could not connect to"):
        run_node("http.request", {"url": f"http://127.0.0.1:{closed_port()}/health"}, timeout=5)


def test_expect_status_accepts_a_listed_error_status(base_url):
    output = run_node(
        "http.request", {"url": f"{base_url}/status/404", "expect_status": [200, 404]}
    )

    assert output["status_code"] == 404
    assert output["body"] == "status 404"


def test_expect_status_rejects_an_unlisted_success_status(base_url):
    with pytest.raises(errors.DataError) as caught:
        run_node("http.request", {"url": f"{base_url}/json", "expect_status": [201]})

    assert caught.value.output["status_code"] == 200


def test_expect_status_still_maps_an_unlisted_error_status(base_url):
    with pytest.raises(errors.ConnectionError):
        run_node("http.request", {"url": f"{base_url}/status/503", "expect_status": [200]})


def test_a_body_over_the_cap_is_truncated(base_url, settings):
    settings.OPSFLOW_OUTPUT_CAP_BYTES = 1024

    output = run_node("http.request", {"url": f"{base_url}/big?bytes=5000"})

    assert output["truncated"] is True
    assert len(output["body"]) == 1024
    assert output["json"] is None


@pytest.mark.parametrize("url", ["ftp://files.local/x", "not a url", None])
def test_a_url_that_is_not_http_is_an_invalid_configuration(url):
    with pytest.raises(errors.InvalidConfigurationError):
        run_node("http.request", {"url": url})


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        ({"url": "http://x"}, []),
        ({}, [("url", "required")]),
        ({"url": "  "}, [("url", "required")]),
        (
            {"url": "http://x", "method": "FETCH"},
            [("method", "must be one of DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT")],
        ),
        ({"url": "http://x", "headers": ["X-A: 1"]}, [("headers", "must be a mapping")]),
        ({"url": "http://x", "params": "a=1"}, [("params", "must be a mapping")]),
        (
            {"url": "http://x", "json": {}, "body": "x"},
            [("body", "give either json or body, not both")],
        ),
        ({"url": "http://x", "body": 12}, [("body", "must be a string")]),
        (
            {"url": "http://x", "expect_status": 200},
            [("expect_status", "must be a list of HTTP status codes")],
        ),
        (
            {"url": "http://x", "expect_status": [200, 99]},
            [("expect_status", "must be a list of HTTP status codes")],
        ),
        (
            {"url": "http://x", "expect_status": [True]},
            [("expect_status", "must be a list of HTTP status codes")],
        ),
    ],
)
def test_http_request_checks_its_config(config, problems):
    assert REGISTRY["http.request"].check_config(config) == problems


# --- shell.command ---------------------------------------------------------------------------


def test_it_captures_stdout_stderr_and_exit_code():
    output = run_node(
        "shell.command", {"command": ["bash", "-c", "echo out; echo err >&2"]}, timeout=10
    )

    assert output == {"stdout": "out\n", "stderr": "err\n", "exit_code": 0}


def test_a_script_runs_with_bash_in_the_given_env_and_cwd(tmp_path):
    output = run_node(
        "shell.command",
        {
            "script": 'echo "$GREETING from $(pwd -P)"',
            "env": {"GREETING": "hello"},
            "cwd": str(tmp_path),
        },
        timeout=10,
    )

    assert output["stdout"] == f"hello from {os.path.realpath(tmp_path)}\n"


def test_a_non_zero_exit_is_an_unexpected_error_that_keeps_the_output():
    with pytest.raises(errors.UnexpectedError) as caught:
        run_node("shell.command", {"script": "echo partial; echo boom >&2; exit 3"}, timeout=10)

    assert caught.value.message == "Command exited with status 3"
    assert caught.value.output == {"stdout": "partial\n", "stderr": "boom\n", "exit_code": 3}


def test_a_program_that_does_not_exist_is_an_invalid_configuration():
    with pytest.raises(errors.InvalidConfigurationError):
        run_node("shell.command", {"command": ["/nonexistent/opsflow-tool"]}, timeout=10)


def test_a_timeout_kills_the_whole_process_group_even_if_it_ignores_sigterm():
    script = "trap '' TERM; sleep 30 & echo $$ $!; sleep 30"
    started = time.monotonic()

    with pytest.raises(errors.ModuleTimeoutError) as caught:
        run_node("shell.command", {"script": script}, timeout=0.5)

    assert time.monotonic() - started < 5
    assert caught.value.output["exit_code"] is None
    shell_pid, child_pid = (int(pid) for pid in caught.value.output["stdout"].split())
    assert wait_until_gone(child_pid), f"the background child {child_pid} still runs"
    assert wait_until_gone(shell_pid), f"the shell {shell_pid} still runs"


def test_output_over_the_cap_is_truncated(settings):
    settings.OPSFLOW_OUTPUT_CAP_BYTES = 1024

    output = run_node(
        "shell.command",
        {"script": "head -c 5000 /dev/zero | tr '\\0' x; echo small >&2"},
        timeout=10,
    )

    assert output["truncated"] is True
    assert output["stdout"] == "x" * 1024
    assert output["stderr"] == "small\n"
    assert output["exit_code"] == 0


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        ({"command": ["ls", "-l"]}, []),
        ({"script": "ls -l"}, []),
        ({}, [("command", "required (an argv list), or give script")]),
        (
            {"command": ["ls"], "script": "ls"},
            [("script", "give either command or script, not both")],
        ),
        ({"command": "ls -l"}, [("command", "must be a non-empty list of strings")]),
        ({"command": []}, [("command", "must be a non-empty list of strings")]),
        ({"command": ["sleep", 5]}, [("command", "must be a non-empty list of strings")]),
        ({"script": "   "}, [("script", "must be a non-empty string")]),
        (
            {"command": ["ls"], "env": ["A=1"], "cwd": 7},
            [("env", "must be a mapping"), ("cwd", "must be a string")],
        ),
    ],
)
def test_shell_command_checks_its_config(config, problems):
    assert REGISTRY["shell.command"].check_config(config) == problems


# --- condition and the small built-ins -------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "result", "fired"),
    [
        ("vars.x > 3", True, {"true"}),
        ("{{ vars.x > 10 }}", False, {"false"}),
        ("vars.name", False, {"false"}),
        ("vars.tags | length", True, {"true"}),
    ],
)
def test_a_condition_gives_its_result_and_fires_true_or_false(expression, result, fired):
    node = REGISTRY["condition"]

    output = run_node(
        "condition", {"expression": expression}, variables={"x": 5, "name": "", "tags": [1]}
    )

    assert output == {"result": result}
    assert node.fired(output) == fired


def test_a_condition_on_a_missing_variable_is_a_data_error():
    with pytest.raises(errors.DataError, match=r"^Missing variable: vars\.y$"):
        run_node("condition", {"expression": "vars.y > 1"}, variables={"x": 5})


def test_a_condition_that_cannot_be_evaluated_is_a_data_error():
    with pytest.raises(errors.DataError, match="^Condition could not be evaluated"):
        run_node("condition", {"expression": "vars.x + 'a'"}, variables={"x": 5})


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        ({"expression": "vars.x > 1"}, []),
        ({}, [("expression", "required")]),
        ({"expression": " "}, [("expression", "required")]),
    ],
)
def test_condition_checks_its_config(config, problems):
    assert REGISTRY["condition"].check_config(config) == problems


def test_condition_reports_an_expression_that_does_not_parse():
    ((key, message),) = REGISTRY["condition"].check_config({"expression": "vars.x =="})

    assert key == "expression"
    assert message.startswith("expression does not parse:")


def test_noop_returns_its_configured_output():
    assert run_node("noop", {"output": {"a": 1}}) == {"a": 1}
    assert run_node("noop", {}) == {}


def test_set_returns_its_values():
    assert run_node("set", {"values": {"host": "web-2", "count": 3}}) == {
        "host": "web-2",
        "count": 3,
    }


def test_delay_reports_the_seconds_it_waited():
    assert run_node("delay", {"seconds": 5}) == {"waited_seconds": 5}


@pytest.mark.parametrize(
    ("type_name", "config", "problems"),
    [
        ("noop", {}, []),
        ("noop", {"output": [1]}, [("output", "must be a mapping")]),
        ("set", {"values": {"a": 1}}, []),
        ("set", {}, [("values", "required (a mapping of names to values or templates)")]),
        (
            "set",
            {"values": {}},
            [("values", "required (a mapping of names to values or templates)")],
        ),
        ("delay", {"seconds": 2.5}, []),
        ("delay", {}, [("seconds", "required (a number of seconds)")]),
        ("delay", {"seconds": True}, [("seconds", "required (a number of seconds)")]),
        ("delay", {"seconds": -1}, [("seconds", "must be between 0 and 2678400")]),
    ],
)
def test_the_small_built_ins_check_their_config(type_name, config, problems):
    assert REGISTRY[type_name].check_config(config) == problems


def test_only_a_condition_fires_extra_outcomes():
    assert REGISTRY["noop"].fired({"result": True}) == set()
    assert REGISTRY["http.request"].fired({"status_code": 200}) == set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_a_shell_command_dies_with_the_agent_that_runs_it(tmp_path):
    """kill -9 of the agent must not leave the command running next to the new attempt."""
    pid_file = tmp_path / "pid"
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import django; django.setup();"
            "from apps.executions.nodes import REGISTRY, NodeContext;"
            "REGISTRY['shell.command'].run(NodeContext(config={'script': "
            f"'echo $$ > {pid_file}; exec sleep 60'}}, raw_config={{}}, node={{}},"
            " template_context={}, timeout=120, execution_id=1, step_id=1))",
        ],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"},
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline and runner.poll() is None, "command never started"
            time.sleep(0.05)
        command_pid = int(pid_file.read_text())
        os.kill(command_pid, 0)  # it runs
    finally:
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + 5
    while _alive(command_pid):
        assert time.monotonic() < deadline, f"command {command_pid} outlived its agent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False
