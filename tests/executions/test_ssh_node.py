"""`ssh.command` (issue 14 item 2) against Debian's real `sshd` on 127.0.0.1.

The fixture starts `/usr/sbin/sshd -D -e -f CONFIG` on a free loopback port with its own
config, a generated ed25519 host key and a generated ed25519 user key, for the user running the
tests (root in CI: `PermitRootLogin prohibit-password`, keys only). sshd runs on this machine, so
the test can look at the processes and files the remote command left (or did not). Every run
goes through the engine on real RQ workers (see `workers` in conftest), with the key in a real
credential bound to the host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_ssh_private_key,
)
from django.db import connection
from django.utils import timezone

from apps.credentials.services import create_credential
from apps.executions import services
from apps.executions.choices import (
    EXECUTION_TERMINAL,
    ExecutionStatus,
    IncompleteStatus,
    StepStatus,
)
from apps.executions.masking import MASK
from apps.executions.models import Execution, Step
from apps.executions.services import run_due_incomplete_retries, trigger_workflow
from apps.executions.worker import ThreadAgentWorker
from apps.workflows.definition import DefinitionError, validate_definition
from tests.executions.test_cancel_now import running
from tests.factories import make_workflow

SSHD = shutil.which("sshd") or next(
    (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
)
if SSHD is None:
    pytest.skip(
        "sshd not found: install Debian's openssh-server (.ci/run does) to run the ssh.command "
        "tests against a real server",
        allow_module_level=True,
    )

pytestmark = pytest.mark.django_db(transaction=True)

USER = pwd.getpwuid(os.getuid()).pw_name
STOPPED = EXECUTION_TERMINAL | {ExecutionStatus.INCOMPLETE}


# --- a real sshd ------------------------------------------------------------------------------


def ed25519_pair() -> tuple[str, str]:
    """(private key in OpenSSH format, public key line `ssh-ed25519 AAAA…`)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return private.strip(), public


def fingerprint(public_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line, computed here independently."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sshd_version() -> tuple[int, int]:
    shown = subprocess.run([SSHD, "-V"], capture_output=True, text=True).stderr
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", shown)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class Sshd:
    """Debian's sshd on 127.0.0.1:`port`, with its own config, keys and log in `directory`."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.user = USER
        self.host_private, self.host_public = ed25519_pair()
        self.user_private, self.user_public = ed25519_pair()
        self.log_path = directory / "sshd.log"
        self.process: subprocess.Popen | None = None

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public}"

    @property
    def host_fingerprint(self) -> str:
        return fingerprint(self.host_public)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> Sshd:
        host_key = self.directory / "ssh_host_ed25519_key"
        host_key.write_text(self.host_private + "\n")
        host_key.chmod(0o600)
        (self.directory / "authorized_keys").write_text(self.user_public + "\n")
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {self.directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",  # so that a wrong password is refused by the server
            "KbdInteractiveAuthentication no",
            "LogLevel VERBOSE",
            "MaxStartups 50",
        ]
        if sshd_version() >= (9, 8):  # loopback clients that failed a login are not penalized
            lines.append("PerSourcePenalties no")
        config = self.directory / "sshd_config"
        config.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"sshd exited with {self.process.returncode}:\n{self.log()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            assert time.monotonic() < deadline, f"sshd did not listen:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def processes_matching(text: str) -> list[int]:
    """The pids whose command line holds `text` (what `pgrep -f` finds), zombies excluded."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- workflows --------------------------------------------------------------------------------


def ssh_node(sshd: Sshd, node_id: str = "remote", node: dict | None = None, **config) -> dict:
    base = {
        "host": "127.0.0.1",
        "port": sshd.port,
        "username": sshd.user,
        "private_key": "{{ secrets.SSH_KEY }}",
        "known_hosts": sshd.known_hosts,
    }
    return {"id": node_id, "type": "ssh.command", "config": {**base, **config}, **(node or {})}


def one_node(slug: str, node: dict, **settings) -> dict:
    return {
        "slug": slug,
        "name": slug,
        "variables": {"x": {"type": "string", "required": False}},
        "settings": settings,
        "nodes": [node],
        "edges": [],
    }


def key_credential(org, sshd: Sshd, value: str | None = None, hosts: list[str] | None = None):
    return create_credential(
        org,
        None,
        name="SSH_KEY",
        value=value or sshd.user_private,
        allowed_hosts=[f"127.0.0.1:{sshd.port}"] if hosts is None else hosts,
    )


def run_one(org, workers, slug: str, node: dict, variables: dict | None = None) -> Step:
    workflow = make_workflow(org, one_node(slug, node))
    execution = workers.run_to_end(trigger_workflow(workflow, variables=variables or {}))
    return execution.steps.get(node_id=node["id"])


# --- running commands -------------------------------------------------------------------------


def test_it_runs_an_argv_command_on_the_host_and_returns_stdout_and_exit_code(org, sshd, workers):
    key_credential(org, sshd)
    words = ["echo", "hello", "it's $HOME; `id` * \\"]  # one argument each, nothing expanded

    step = run_one(org, workers, "argv", ssh_node(sshd, command=words))

    assert step.status == StepStatus.COMPLETED, step.error_message
    assert step.output == {"stdout": "hello it's $HOME; `id` * \\\n", "stderr": "", "exit_code": 0}
    assert step.input["private_key"] == "{{ secrets.SSH_KEY }}"  # the reference, not the key
    assert step.execution.status == ExecutionStatus.COMPLETED


def test_a_non_zero_exit_fails_the_step_as_shell_command_does(org, sshd, workers):
    key_credential(org, sshd)
    node = ssh_node(sshd, script="echo out; echo err >&2; exit 3")

    step = run_one(org, workers, "exit-3", node)

    assert step.status == StepStatus.FAILED
    assert (step.error_type, step.error_message) == (
        "UnexpectedError",
        "Command exited with status 3",
    )
    assert step.output == {"stdout": "out\n", "stderr": "err\n", "exit_code": 3}


def test_a_hostile_value_reaches_the_script_through_env_as_text_never_as_code(
    org, sshd, workers, tmp_path
):
    key_credential(org, sshd)
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}) `touch {marker}`; touch {marker} 'quoted' \"double\"\nline two"
    node = ssh_node(sshd, script='printf "got: %s\\n" "$X"', env={"X": "{{ vars.x }}"})

    step = run_one(org, workers, "hostile", node, variables={"x": hostile})

    assert step.status == StepStatus.COMPLETED, step.error_message
    assert step.output["stdout"] == f"got: {hostile}\n"
    assert not marker.exists()
    assert step.input["env"] == {"X": hostile}
    assert step.input["script"] == 'printf "got: %s\\n" "$X"'


def test_a_command_in_the_script_reading_stdin_does_not_eat_the_rest_of_the_script(
    org, sshd, workers
):
    key_credential(org, sshd)

    step = run_one(org, workers, "stdin", ssh_node(sshd, script="cat\necho after cat"))

    assert step.status == StepStatus.COMPLETED, step.error_message
    assert step.output["stdout"] == "after cat\n"


def test_output_is_capped_like_the_shell_nodes(org, sshd, workers, settings):
    settings.OPSFLOW_OUTPUT_CAP_BYTES = 1024
    key_credential(org, sshd)
    node = ssh_node(sshd, script="head -c 5000 /dev/zero | tr '\\0' a; echo oops >&2")

    step = run_one(org, workers, "capped", node)

    assert step.status == StepStatus.COMPLETED, step.error_message
    assert step.output == {
        "stdout": "a" * 1024,
        "stderr": "oops\n",
        "exit_code": 0,
        "truncated": True,
    }


# --- timeouts and Cancel now: the remote command ends --------------------------------------


def test_a_timeout_kills_the_remote_command_and_its_children(org, sshd, workers, tmp_path):
    key_credential(org, sshd)
    mark = f"{300 + int(uuid.uuid4().int % 10**6) / 10**6:.6f}"  # `sleep 300.123456`: unique
    pid_file = tmp_path / "pid"
    script = f"echo $$ > {pid_file}; echo started; sleep {mark}; echo never"
    node = ssh_node(sshd, node={"timeout": 2}, script=script)

    began = time.monotonic()
    step = run_one(org, workers, "timeout", node)

    assert time.monotonic() - began < 20
    assert step.status == StepStatus.TIMEOUT
    assert step.error_type == "ModuleTimeoutError"
    assert step.error_message == (
        f"Command timed out after 2s on 127.0.0.1:{sshd.port}; "
        "the remote command was killed (KILL to its process group)"
    )
    assert step.output["stdout"] == "started\n"
    assert step.output["signal"] == "KILL"
    shell_pid = int(pid_file.read_text())  # the remote shell did start…
    assert wait_until(lambda: not processes_matching(f"sleep {mark}"))  # …its child is gone
    assert wait_until(lambda: not Path(f"/proc/{shell_pid}").exists())  # and so is the shell


def test_a_server_that_never_answers_is_a_connect_timeout(org, workers):
    create_credential(
        org, None, name="SSH_KEY", value=ed25519_pair()[0], allowed_hosts=["127.0.0.1"]
    )
    with socket.socket() as silent:  # accepts TCP (the kernel does), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        node = {
            "id": "remote",
            "type": "ssh.command",
            "config": {
                "host": "127.0.0.1",
                "port": port,
                "username": USER,
                "private_key": "{{ secrets.SSH_KEY }}",
                "known_hosts": f"[127.0.0.1]:{port} {ed25519_pair()[1]}",
                "command": ["true"],
                "connect_timeout": 1,
            },
        }
        began = time.monotonic()
        step = run_one(org, workers, "silent", node)

    assert time.monotonic() - began < 15
    assert step.status == StepStatus.TIMEOUT
    assert (step.error_type, step.error_message) == (
        "ModuleTimeoutError",
        f"Could not connect to 127.0.0.1:{port} over SSH within 1s",
    )


def test_cancel_now_stops_the_remote_command_with_sigterm(
    org, operator, sshd, redis_conn, tmp_path
):
    key_credential(org, sshd)
    mark = f"{400 + int(uuid.uuid4().int % 10**6) / 10**6:.6f}"
    started = tmp_path / "started"
    script = f"touch {started}; echo started; sleep {mark}; echo never"
    execution = trigger_workflow(
        make_workflow(org, one_node("cancel", ssh_node(sshd, script=script)))
    )
    worker = ThreadAgentWorker(["default"], connection=redis_conn)

    def work() -> None:
        try:
            worker.work(burst=True)
        finally:
            connection.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    step = running(execution)
    assert wait_until(lambda: started.exists() and processes_matching(f"sleep {mark}"))

    services.cancel_execution(execution, operator, now=True)
    thread.join(timeout=15)

    assert not thread.is_alive()
    step.refresh_from_db()
    assert step.status == StepStatus.CANCELLED
    assert step.error_message == (
        "Cancelled now by operator: the remote command was stopped (SIGTERM)"
    )
    assert step.output["stdout"] == "started\n"
    assert wait_until(lambda: not processes_matching(f"sleep {mark}"))


# --- who may log in, and to what --------------------------------------------------------------


def test_a_key_the_server_does_not_accept_is_an_invalid_access_token(org, sshd, workers):
    key_credential(org, sshd, value=ed25519_pair()[0])  # a fresh key: not in authorized_keys

    step = run_one(org, workers, "wrong-key", ssh_node(sshd, command=["true"]))

    assert step.status == StepStatus.FAILED
    assert step.error_type == "InvalidAccessTokenError"
    assert step.error_message.startswith(
        f"SSH login as {USER!r} on 127.0.0.1:{sshd.port} was refused (key)"
    )


def test_a_wrong_password_is_an_invalid_access_token(org, sshd, workers):
    create_credential(
        org, None, name="SSH_PASSWORD", value="not-the-password", allowed_hosts=["127.0.0.1"]
    )
    config = {"password": "{{ secrets.SSH_PASSWORD }}", "command": ["true"]}
    node = ssh_node(sshd, **config)
    del node["config"]["private_key"]

    step = run_one(org, workers, "wrong-password", node)

    assert step.error_type == "InvalidAccessTokenError"
    assert "was refused (password)" in step.error_message
    assert "not-the-password" not in json.dumps([step.input, step.output, step.error_message])


def test_a_key_pasted_into_the_admins_one_line_field_still_works(org, sshd, workers):
    """The admin's value field is a password input: a browser drops the newlines pasted into
    it, so the key file arrives as one line."""
    key_credential(org, sshd, value=sshd.user_private.replace("\n", ""))

    step = run_one(org, workers, "one-line-key", ssh_node(sshd, command=["echo", "in"]))

    assert step.status == StepStatus.COMPLETED, step.error_message
    assert step.output["stdout"] == "in\n"


def passphrase_node(org, sshd: Sshd, passphrase: str) -> dict:
    """The user's key encrypted (OpenSSH format, as `ssh-keygen -N` writes it) in SSH_KEY, and
    `passphrase` in SSH_PASSPHRASE."""
    key = load_ssh_private_key(sshd.user_private.encode(), None)
    locked = key.private_bytes(
        Encoding.PEM, PrivateFormat.OpenSSH, BestAvailableEncryption(b"correct horse battery")
    )
    key_credential(org, sshd, value=locked.decode().strip())
    create_credential(
        org, None, name="SSH_PASSPHRASE", value=passphrase, allowed_hosts=["127.0.0.1"]
    )
    return ssh_node(sshd, passphrase="{{ secrets.SSH_PASSPHRASE }}", command=["echo", "in"])


def test_a_passphrase_protected_key_is_opened_with_its_passphrase(org, sshd, workers):
    node = passphrase_node(org, sshd, "correct horse battery")

    step = run_one(org, workers, "passphrase", node)

    assert step.status == StepStatus.COMPLETED, step.error_message
    assert step.output["stdout"] == "in\n"
    assert step.input["passphrase"] == "{{ secrets.SSH_PASSPHRASE }}"


def test_a_wrong_passphrase_is_an_invalid_access_token(org, sshd, workers):
    node = passphrase_node(org, sshd, "wrong horse")

    step = run_one(org, workers, "bad-passphrase", node)

    assert (step.error_type, step.error_message) == (
        "InvalidAccessTokenError",
        "private_key: the passphrase does not decrypt the key",
    )


def test_an_unknown_host_key_is_refused_naming_the_host_and_the_fingerprint(org, sshd, workers):
    key_credential(org, sshd)
    elsewhere = f"other.example.com {ed25519_pair()[1]}"  # known_hosts lists no key for the host
    before = sshd.log().count("Accepted publickey")

    step = run_one(org, workers, "unknown", ssh_node(sshd, known_hosts=elsewhere, command=["true"]))

    assert step.status == StepStatus.FAILED
    assert step.error_type == "InvalidConfigurationError"
    assert step.error_message.startswith(
        f"Host key of 127.0.0.1:{sshd.port} is unknown: the server offered "
        f"ssh-ed25519 {sshd.host_fingerprint}, and known_hosts has no key for this host."
    )
    assert sshd.log().count("Accepted publickey") == before  # never logged in


def test_a_changed_host_key_is_refused_naming_both_fingerprints(org, sshd, workers):
    key_credential(org, sshd)
    other = ed25519_pair()[1]
    known = f"[127.0.0.1]:{sshd.port} {other}"
    before = sshd.log().count("Accepted publickey")

    step = run_one(org, workers, "changed", ssh_node(sshd, known_hosts=known, command=["true"]))

    assert step.error_type == "InvalidConfigurationError"
    assert step.error_message.startswith(
        f"Host key of 127.0.0.1:{sshd.port} does not match known_hosts: the server offered "
        f"ssh-ed25519 {sshd.host_fingerprint}, known_hosts lists {fingerprint(other)} for it."
    )
    assert sshd.log().count("Accepted publickey") == before


def test_a_known_hosts_line_from_a_credential_is_trusted_and_masked(org, sshd, workers):
    key_credential(org, sshd)
    create_credential(
        org, None, name="HOST_KEYS", value=sshd.known_hosts, allowed_hosts=["127.0.0.1"]
    )
    node = ssh_node(sshd, known_hosts="{{ secrets.HOST_KEYS }}", command=["echo", "ok"])

    step = run_one(org, workers, "kh-credential", node)

    assert step.status == StepStatus.COMPLETED, step.error_message
    assert step.input["known_hosts"] == MASK


@pytest.mark.parametrize("secret_in", ["private_key", "env"])
def test_a_credential_not_bound_to_the_host_is_refused_before_connecting(
    org, sshd, workers, secret_in
):
    if secret_in == "private_key":
        key_credential(org, sshd, hosts=["*.example.com"])
        node, name = ssh_node(sshd, command=["true"]), "SSH_KEY"
    else:
        key_credential(org, sshd)
        create_credential(org, None, name="TOKEN", value="t0ken-value", allowed_hosts=["db.lan"])
        node = ssh_node(sshd, script="true", env={"TOKEN": "{{ secrets.TOKEN }}"})
        name = "TOKEN"
    connections_before = sshd.log().count("Connection from")

    step = run_one(org, workers, f"unbound-{secret_in.replace('_', '-')}", node)

    assert step.status == StepStatus.FAILED
    assert (step.error_type, step.error_message) == (
        "InvalidConfigurationError",
        f"credential {name!r} is not allowed for host '127.0.0.1:{sshd.port}'",
    )
    assert sshd.log().count("Connection from") == connections_before  # nothing connected


def test_every_secret_is_masked_in_the_stored_step(org, sshd, workers):
    key_credential(org, sshd)
    token = "s3cret-token-value"
    create_credential(
        org, None, name="TOKEN", value=token, allowed_hosts=[f"127.0.0.1:{sshd.port}"]
    )
    node = ssh_node(
        sshd,
        script='echo "token=$TOKEN"; echo "again $TOKEN" >&2; exit 1',
        env={"TOKEN": "{{ secrets.TOKEN }}"},
    )

    step = run_one(org, workers, "masked", node)

    assert step.error_message == "Command exited with status 1"
    assert step.input["env"] == {"TOKEN": MASK}
    assert step.input["private_key"] == "{{ secrets.SSH_KEY }}"
    assert step.output["stdout"] == f"token={MASK}\n"
    assert step.output["stderr"] == f"again {MASK}\n"
    stored = json.dumps([step.input, step.output, step.error_message])
    key_body = sshd.user_private.splitlines()[1]
    assert token not in stored and key_body not in stored


# --- connection errors: incomplete executions with auto-retry ---------------------------------


def settle(workers, execution: Execution) -> Execution:
    def reached() -> bool:
        execution.refresh_from_db()
        return execution.status in STOPPED

    workers.drain(until=reached)
    return execution


def test_a_refused_connection_stores_an_incomplete_execution_that_auto_retry_completes(
    org, workers, settings, tmp_path
):
    settings.OPSFLOW_IE_RETRY_SCHEDULE = [60]
    later = Sshd(tmp_path / "later")  # its port is free: nothing listens there yet
    key_credential(org, later)
    definition = {
        "slug": "refused",
        "name": "refused",
        "settings": {"store_incomplete_executions": True},
        "nodes": [
            {"id": "start", "type": "noop"},
            ssh_node(later, command=["echo", "reached"]),
        ],
        "edges": [{"from": "start", "to": "remote"}],
    }
    execution = settle(workers, trigger_workflow(make_workflow(org, definition)))

    assert execution.status == ExecutionStatus.INCOMPLETE
    step = execution.steps.get(node_id="remote")
    assert step.error_type == "ConnectionError"
    assert step.error_message.startswith(f"Could not connect to 127.0.0.1:{later.port} over SSH:")
    record = execution.incomplete_records.get()
    assert (record.status, record.error_type, record.auto_retry) == (
        IncompleteStatus.SCHEDULED,
        "ConnectionError",
        True,
    )

    later.start()  # the host is back
    try:
        assert run_due_incomplete_retries(now=timezone.now() + timedelta(seconds=61)) == 1
        settle(workers, execution)
    finally:
        later.stop()

    assert execution.status == ExecutionStatus.COMPLETED
    record.refresh_from_db()
    assert record.status == IncompleteStatus.RESOLVED
    retried = execution.steps.filter(node_id="remote").order_by("-attempt").first()
    assert retried.output["stdout"] == "reached\n"


def test_a_name_that_does_not_resolve_is_a_connection_error(org, sshd, workers, monkeypatch):
    """The resolver answers "no such name" here: a test sends no DNS query off this machine."""
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host == "db9.example.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    key_credential(org, sshd, hosts=["db9.example.invalid"])
    node = ssh_node(sshd, host="db9.example.invalid", command=["true"])

    step = run_one(org, workers, "dns", node)

    assert (step.error_type, step.error_message) == (
        "ConnectionError",
        f"Could not connect to db9.example.invalid:{sshd.port} over SSH: "
        "[Errno -2] Name or service not known",
    )


# --- what a definition may say ----------------------------------------------------------------


def problems_of(config: dict) -> dict[str, str]:
    node = {"id": "remote", "type": "ssh.command", "config": config}
    with pytest.raises(DefinitionError) as caught:
        validate_definition({"slug": "s", "name": "s", "nodes": [node], "edges": []})
    return {p.path.removeprefix("nodes[0].config."): p.message for p in caught.value.problems}


VALID = {
    "host": "db1.example.com",
    "username": "deploy",
    "private_key": "{{ secrets.SSH_KEY }}",
    "known_hosts": f"db1.example.com {ed25519_pair()[1]}",
    "command": ["uptime"],
}


def test_a_complete_config_is_accepted_with_templates_where_values_go():
    validate_definition(
        {
            "slug": "ok",
            "name": "ok",
            "nodes": [
                {
                    "id": "remote",
                    "type": "ssh.command",
                    "config": {
                        **VALID,
                        "host": "{{ vars.host }}",
                        "port": "{{ vars.port }}",
                        "known_hosts": "{{ secrets.KNOWN_HOSTS }}",
                        "command": ["systemctl", "restart", "{{ vars.unit }}"],
                        "env": {"REF": "{{ vars.ref }}"},
                    },
                }
            ],
            "edges": [],
        }
    )


def test_a_missing_host_user_key_and_known_hosts_are_each_named():
    problems = problems_of({"command": ["true"]})

    assert problems["host"] == "required (a host name or address)"
    assert problems["username"] == "required (the remote user to log in as)"
    assert problems["private_key"].startswith("required: the credential holding the private key")
    assert problems["known_hosts"].startswith("required: the host's public keys as known_hosts")


def test_command_and_script_together_are_refused():
    problems = problems_of({**VALID, "script": "uptime"})

    assert problems == {"script": "give either command or script, not both"}


@pytest.mark.parametrize(
    "config, path",
    [
        ({"script": "echo {{ vars.x }}"}, "script"),
        ({"command": ["bash", "-c", "echo {{ vars.x }}"]}, "command[2]"),
    ],
)
def test_a_template_in_shell_code_is_refused_as_for_shell_command(config, path):
    base = {k: v for k, v in VALID.items() if k != "command"}

    problems = problems_of({**base, **config})

    assert list(problems) == [path]
    assert "templates are not allowed" in problems[path] and '"$NAME"' in problems[path]


@pytest.mark.parametrize("key", ["private_key", "password"])
def test_a_key_or_password_typed_into_the_definition_is_refused(key):
    base = {k: v for k, v in VALID.items() if k != "private_key"}

    problems = problems_of({**base, key: "-----BEGIN OPENSSH PRIVATE KEY----- hunter2"})

    assert problems[key].startswith("must be a credential, written {{ secrets.NAME }}")


def test_other_config_mistakes_are_named():
    problems = problems_of(
        {
            **VALID,
            "port": 70000,
            "password": "{{ secrets.PW }}",
            "known_hosts": f"# a comment\n{VALID['known_hosts']}\njust-a-name",
            "env": {"1BAD": "x"},
            "connect_timeout": 0,
        }
    )

    assert problems == {
        "port": "must be a port number between 1 and 65535",
        "password": "give either private_key or password, not both",
        "known_hosts": "line 3 is not a known_hosts entry (`host key-type base64-key`, as "
        "ssh-keyscan prints them)",
        "env.1BAD": "must be a variable name (letters, digits, _; not first a digit)",
        "connect_timeout": "must be a number of seconds above 0, at most 300",
    }


def test_it_may_run_on_any_queue():
    definition = validate_definition(
        {
            "slug": "q",
            "name": "q",
            "nodes": [{"id": "remote", "type": "ssh.command", "queue": "ops", "config": VALID}],
            "edges": [],
        }
    )

    assert definition["nodes"][0]["queue"] == "ops"
