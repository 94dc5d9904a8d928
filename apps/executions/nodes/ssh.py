"""`ssh.command` (issue 14 item 2): an argv list (or a bash `script`) run on a remote host over SSH.

The library is asyncssh, not paramiko. The hard part is ending a timed-out or cancelled command
on the remote host: closing the channel does not (without a terminal, sshd leaves the command
running). The node sends the signal to the command's process group as `kill -s SIG -- -PGID`
over a second session of the same connection, which works for any user on any server, and falls
back to the SSH "signal" request (RFC 4254 §6.9), which OpenSSH refuses for root logins (their
sessions run without privilege separation). asyncssh has a public method for that request
(paramiko has none: its pull request has been open since 2019), and with asyncio one loop holds
the second session, the reading of stdout and stderr, the deadline and the Cancel-now checks,
where paramiko would need a thread per stream. asyncssh also reads known_hosts lines given as
text, bounds the TCP connect, the handshake and the login with one timeout, and raises distinct
exceptions for a refused login and an untrusted host key. The worker is synchronous, so each
attempt runs its own event loop (`asyncio.run`), entered only after every template and
credential was read (no ORM inside it).

What reaches the remote host, and how:
- The SSH exec request carries a fixed command, `exec sh -s` (for `command`) or `exec bash -s`
  (for `script`): no value of the step is ever on the remote command line, where `ps` shows it.
- The code goes on stdin. Its first line prints the shell's pid on stderr after a random marker
  (the node takes that line out of stderr): sshd made that shell a session leader, so the pid is
  the process group to signal. Then `export NAME='value'` for each `env` entry, and
  `exec 'argv0' 'arg'…` (each item quoted with shlex.quote, for the POSIX `sh` that reads it,
  whatever the user's login shell) or the script as written (never rendered: a template in it is
  refused at save), all in one `{ …; } </dev/null` group, so the shell parses the whole of it
  before running any of it and the commands read an empty stdin, never the rest of the script.
- The key or password comes only from a credential, `{{ secrets.NAME }}` exactly (these keys are
  rendered here, not by the engine, so the stored input shows the reference, never the value),
  and every credential the config read must be bound to the host (allowed_hosts), as for
  http.request: otherwise nothing connects.
- The host key is always checked against `known_hosts` (OpenSSH's format: `host key-type key`,
  `[host]:port …`, hashed names, `@cert-authority`): an unknown or changed key fails with
  InvalidConfigurationError naming the host and the fingerprint the server offered.
- Nothing of the agent's own SSH setup is used: no ~/.ssh/config, known_hosts, keys or agent.

Failures: a refused connection, an unreachable host, a DNS failure or a broken session are
ConnectionError (auto-retried as incomplete executions); the connect and command timeouts are
ModuleTimeoutError, the remote command killed; a refused login or a wrong passphrase is
InvalidAccessTokenError; a non-zero exit is UnexpectedError, as for shell.command.

Queues: any. Unlike shell.command (OPSFLOW_SHELL_QUEUES), this node runs no code on the agent;
what it may reach is bounded by the credentials' allowed_hosts, as for http.request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
from django.conf import settings

from apps.credentials.hosts import host_allowed
from apps.executions import errors
from apps.executions.nodes.base import NodeContext, NodeType, Problem, cap_text, register
from apps.executions.nodes.shell import ShellCommandNode
from apps.executions.stopping import Stopped
from apps.executions.templating import has_template, render_value

SECRET_REFERENCE = re.compile(r"^\s*\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}\s*$")
CREDENTIAL_KEYS = {"private_key": "private key", "password": "password", "passphrase": "passphrase"}
CONNECT_TIMEOUT = 10.0
STOP_CHECK_SECONDS = 0.25
# After the KILL signal, how long the server has to report that the command ended.
KILL_CONFIRM_SECONDS = 5.0
READ_CHUNK = 64 * 1024
CLOSE_SECONDS = 5.0

KNOWN_HOSTS_HELP = (
    "required: the host's public keys as known_hosts lines (`ssh-keyscan -p PORT HOST`, checked "
    "against the fingerprint the host shows with `ssh-keygen -lf`), typed in or from a credential "
    "or variable; an unknown host key is never trusted"
)


def _port_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and 0 < value < 65536:
        return value
    return None


def _known_hosts_problem(text: str) -> str | None:
    """Which line is not a known_hosts entry. The line itself is not quoted: it may come from
    a credential, and only a credential's whole value is masked."""
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            asyncssh.import_known_hosts(line)
        except ValueError:
            return (
                f"line {number} is not a known_hosts entry "
                "(`host key-type base64-key`, as ssh-keyscan prints them)"
            )
    return None


@register
class SshCommandNode(NodeType):
    name = "ssh.command"
    default_timeout = 300.0
    # script: sent as written. The credential keys: rendered by `run`, so that the stored input
    # keeps the `{{ secrets.NAME }}` reference and check_config sees it at save and at run.
    raw_keys = frozenset({"script", *CREDENTIAL_KEYS})

    def check_config(self, config) -> list[Problem]:
        problems: list[Problem] = []
        host = config.get("host")
        if not isinstance(host, str) or not host.strip():
            problems.append(("host", "required (a host name or address)"))
        port = config.get("port", 22)
        if not (isinstance(port, str) and has_template(port)) and _port_number(port) is None:
            problems.append(("port", "must be a port number between 1 and 65535"))
        username = config.get("username")
        if not isinstance(username, str) or not username.strip():
            problems.append(("username", "required (the remote user to log in as)"))
        problems += self._credential_problems(config)
        known_hosts = config.get("known_hosts")
        if not isinstance(known_hosts, str) or not known_hosts.strip():
            problems.append(("known_hosts", KNOWN_HOSTS_HELP))
        elif not has_template(known_hosts) and (problem := _known_hosts_problem(known_hosts)):
            problems.append(("known_hosts", problem))
        # command, script and env follow shell.command's rules and messages (no cwd here).
        problems += ShellCommandNode().check_config(
            {k: config[k] for k in ("command", "script", "env") if k in config}
        )
        limit = config.get("connect_timeout", CONNECT_TIMEOUT)
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 300:
            problems.append(("connect_timeout", "must be a number of seconds above 0, at most 300"))
        return problems

    @staticmethod
    def _credential_problems(config: dict[str, Any]) -> list[Problem]:
        problems: list[Problem] = []
        given = [key for key in ("private_key", "password") if config.get(key) is not None]
        if not given:
            problems.append(
                (
                    "private_key",
                    "required: the credential holding the private key, "
                    "{{ secrets.NAME }} (or give password)",
                )
            )
        elif len(given) == 2:
            problems.append(("password", "give either private_key or password, not both"))
        if config.get("passphrase") is not None and config.get("private_key") is None:
            problems.append(("passphrase", "only with private_key (it decrypts that key)"))
        for key, what in CREDENTIAL_KEYS.items():
            value = config.get(key)
            if value is not None and not (isinstance(value, str) and SECRET_REFERENCE.match(value)):
                problems.append(
                    (
                        key,
                        "must be a credential, written {{ secrets.NAME }}: never the "
                        f"{what} itself, which every reader of the workflow would see",
                    )
                )
        return problems

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        config = ctx.config  # check_config passed on it just before
        host = config["host"].strip()
        port = _port_number(config.get("port", 22))
        if port is None:
            raise errors.InvalidConfigurationError(
                f"port must be a port number between 1 and 65535, got {config.get('port')!r}"
            )
        revealed = {
            key: _reveal(key, config[key], ctx)
            for key in CREDENTIAL_KEYS
            if config.get(key) is not None
        }
        # Every credential the config read (key, password, env values, known_hosts…) goes to
        # this host: each must allow it. Checked before anything connects.
        for name, used in ctx.credentials.items():
            if not host_allowed(used.allowed_hosts, host, port):
                bracketed = f"[{host}]" if ":" in host else host  # an IPv6 address
                shown = host if port == 22 else f"{bracketed}:{port}"
                raise errors.InvalidConfigurationError(
                    f"credential {name!r} is not allowed for host {shown!r}"
                )
        try:
            known_hosts = asyncssh.import_known_hosts(str(config["known_hosts"]))
        except ValueError:
            problem = _known_hosts_problem(str(config["known_hosts"]))
            raise errors.InvalidConfigurationError(f"known_hosts: {problem}") from None
        timeout = float(ctx.timeout or self.default_timeout)
        marker = f"opsflow-ssh-pid-{uuid.uuid4().hex}"
        command, program = _program(config, marker)
        remote = _Remote(
            host=host,
            port=port,
            username=str(config["username"]),
            known_hosts=known_hosts,
            client_key=_private_key(revealed),
            password=revealed.get("password"),
            command=command,
            program=program,
            marker=marker,
            connect_timeout=min(float(config.get("connect_timeout", CONNECT_TIMEOUT)), timeout),
            timeout=timeout,
            stop_requested=ctx.stop_requested,
        )
        return asyncio.run(_run(remote))


def _reveal(key: str, reference: str, ctx: NodeContext) -> str:
    """The value of the credential that `reference` ({{ secrets.NAME }}) names; reading it
    records it in ctx.credentials, so that it is bound to the host and masked when stored."""
    value = render_value(reference, ctx.template_context)
    if not isinstance(value, str) or not value:
        raise errors.InvalidConfigurationError(f"{key}: the credential is empty")
    return value


_PEM = re.compile(r"^\s*(-----BEGIN [A-Z0-9 ]+-----)(.*?)(-----END [A-Z0-9 ]+-----)\s*$", re.S)


def _pem_lines(text: str) -> str:
    """A PEM key as its parser wants it. The admin's value field is one line, and a browser
    drops the newlines of what is pasted into it: the key file arrives as one line, which is
    split again here (header, the base64 body in lines of 64, footer)."""
    found = _PEM.match(text)
    if "\n" in text or not found or ":" in found.group(2):  # headers (Proc-Type:): left as is
        return text
    body = re.sub(r"\s+", "", found.group(2))
    return "\n".join(
        [found.group(1), *(body[i : i + 64] for i in range(0, len(body), 64)), found.group(3), ""]
    )


def _private_key(revealed: dict[str, str]) -> asyncssh.SSHKey | None:
    if "private_key" not in revealed:
        return None
    try:
        return asyncssh.import_private_key(
            _pem_lines(revealed["private_key"]), revealed.get("passphrase")
        )
    except asyncssh.KeyEncryptionError:  # the passphrase does not open the key
        raise errors.InvalidAccessTokenError(
            "private_key: the passphrase does not decrypt the key"
        ) from None
    except asyncssh.KeyImportError as exc:
        raise errors.InvalidConfigurationError(
            f"private_key: the credential does not hold a private key that can be used ({exc}); "
            "OpenSSH, PKCS#1 and PKCS#8 keys are read"
        ) from None


def _program(config: dict[str, Any], marker: str) -> tuple[str, bytes]:
    """The fixed remote command and the code sent on its stdin (see the module docstring).
    The code first reports its shell's pid on stderr after `marker` (the node takes that line
    out): sshd made that shell a session leader, so the pid is the command's process group."""
    lines = [f"printf '%s:%s\\n' {marker} \"$$\" >&2", "{"]
    for name, value in (config.get("env") or {}).items():  # names checked by check_config
        text = "" if value is None else str(value)
        if "\0" in text:
            raise errors.DataError(f"env.{name} holds a NUL character, which a shell cannot pass")
        lines.append(f"export {name}={shlex.quote(text)}")
    if config.get("script") is not None:
        shell = "bash"
        lines.append(str(config["script"]))
    else:
        shell = "sh"
        lines.append("exec " + shlex.join(str(item) for item in config["command"]))
    lines.append("} </dev/null\n")
    # `exec`: whatever the login shell, the shell reading the code is the session leader.
    return f"exec {shell} -s", "\n".join(lines).encode()


@dataclass
class _Remote:
    host: str
    port: int
    username: str
    known_hosts: asyncssh.SSHKnownHosts
    client_key: asyncssh.SSHKey | None
    password: str | None
    command: str
    program: bytes
    marker: str  # before the pid line of the remote shell on stderr
    connect_timeout: float
    timeout: float
    stop_requested: Callable[[], str | None]

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class _HostKeyWitness(asyncssh.SSHClient):
    """Trusts nothing beyond known_hosts; remembers the key the server offered when known_hosts
    did not list it, so that the error can name its fingerprint."""

    def __init__(self) -> None:
        self.offered: tuple[str, asyncssh.SSHKey] | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key) -> bool:
        self.offered = (addr, key)
        return False


def _host_key_refusal(remote: _Remote, witness: _HostKeyWitness, reason: str) -> str:
    if witness.offered is None:  # e.g. a host certificate that did not validate
        return f"Host key of {remote.where} refused: {reason}"
    addr, key = witness.offered
    offered = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"
    listed = remote.known_hosts.match(remote.host, addr, remote.port)[0]
    if listed:
        expected = ", ".join(dict.fromkeys(k.get_fingerprint("sha256") for k in listed))
        return (
            f"Host key of {remote.where} does not match known_hosts: the server offered "
            f"{offered}, known_hosts lists {expected} for it. If the host was reinstalled, "
            "check the new key out of band and update known_hosts; otherwise someone may be "
            "intercepting the connection. Nothing was sent."
        )
    return (
        f"Host key of {remote.where} is unknown: the server offered {offered}, and known_hosts "
        "has no key for this host. Check that fingerprint out of band (ssh-keygen -lf on the "
        "host) and add the host's line to known_hosts. Nothing was sent."
    )


async def _run(remote: _Remote) -> dict[str, Any]:
    deadline = time.monotonic() + remote.timeout
    witness = _HostKeyWitness()
    try:
        connection = await asyncssh.connect(
            remote.host,
            remote.port,
            client_factory=lambda: witness,
            config=None,  # never the agent's ~/.ssh/config
            known_hosts=remote.known_hosts,
            x509_trusted_certs=None,
            username=remote.username,
            client_keys=[remote.client_key] if remote.client_key else None,
            password=remote.password,
            agent_path=None,
            pkcs11_provider=None,
            gss_host=None,
            host_based_auth=False,
            public_key_auth=remote.client_key is not None,
            password_auth=remote.password is not None,
            kbdint_auth=remote.password is not None,
            connect_timeout=remote.connect_timeout,
            login_timeout=remote.connect_timeout,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise errors.InvalidConfigurationError(
            _host_key_refusal(remote, witness, exc.reason)
        ) from None
    except asyncssh.PermissionDenied as exc:
        way = "key" if remote.client_key is not None else "password"
        raise errors.InvalidAccessTokenError(
            f"SSH login as {remote.username!r} on {remote.where} was refused ({way}): {exc.reason}"
        ) from None
    except TimeoutError:  # before OSError, of which it is one
        raise errors.ModuleTimeoutError(
            f"Could not connect to {remote.where} over SSH within {remote.connect_timeout:g}s"
        ) from None
    except (OSError, asyncssh.Error) as exc:  # refused, unreachable, DNS, dropped handshake
        raise errors.ConnectionError(
            f"Could not connect to {remote.where} over SSH: {_reason(exc)}"
        ) from None
    try:
        return await _Session(connection, remote).run(deadline)
    finally:
        connection.close()
        try:  # a peer that stopped reading must not hold the step past its timeout
            await asyncio.wait_for(connection.wait_closed(), CLOSE_SECONDS)
        except TimeoutError:
            connection.abort()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return str(reason)


class _Capture:
    """One output stream, read to its end (so the remote never blocks on a full window), of
    which at most the cap and one byte are kept. On stderr, it also takes out the line that
    reports the remote shell's pid (`marker:PID`)."""

    def __init__(self, cap: int, marker: str | None = None) -> None:
        self.cap = cap
        self.data = bytearray()
        self.pid: int | None = None
        self._pid_line = re.compile(re.escape(marker.encode()) + rb":(\d+)\n") if marker else None

    async def drain(self, stream) -> None:
        while chunk := await stream.read(READ_CHUNK):
            if len(self.data) > self.cap:
                continue  # cut already: read on, keep nothing
            self.data += chunk
            if self._pid_line is not None and (found := self._pid_line.search(self.data)):
                self.pid = int(found.group(1))
                del self.data[found.start() : found.end()]
                self._pid_line = None
            del self.data[self.cap + 1 :]

    def text(self) -> tuple[str, bool]:
        return cap_text(bytes(self.data), self.cap)


class _Session:
    """The command's session on an open connection: waits for it under the deadline and
    Cancel now, and stops it when it must."""

    def __init__(self, connection, remote: _Remote) -> None:
        self.connection = connection
        self.remote = remote
        cap = settings.OPSFLOW_OUTPUT_CAP_BYTES
        self.out, self.err = _Capture(cap), _Capture(cap, remote.marker)
        self.process = None
        self.ended: asyncio.Future | None = None

    async def run(self, deadline: float) -> dict[str, Any]:
        remote = self.remote
        try:
            self.process = await self.connection.create_process(
                remote.command, input=remote.program, encoding=None, request_pty=False
            )
            self.ended = asyncio.ensure_future(
                asyncio.gather(
                    self.out.drain(self.process.stdout),
                    self.err.drain(self.process.stderr),
                    self.process.wait_closed(),
                )
            )
            try:
                who = await self._wait(deadline)
            except TimeoutError:
                await self._signal("KILL")
                how = (
                    "the remote command was killed (KILL to its process group)"
                    if await self._ended_within(KILL_CONFIRM_SECONDS)
                    else "the server did not confirm that the remote command ended; the "
                    "session was closed"
                )
                raise errors.ModuleTimeoutError(
                    f"Command timed out after {remote.timeout:g}s on {remote.where}; {how}",
                    output=self.output(),
                ) from None
            if who is not None:
                how = await self._stop()
                raise Stopped(
                    f"Cancelled now by {who}: the remote command was stopped ({how})",
                    output=self.output(),
                )
        except (OSError, asyncssh.Error) as exc:
            raise errors.ConnectionError(
                f"The SSH session with {remote.where} broke: {_reason(exc)}",
                output=self.output(),
            ) from None
        output = self.output()
        if output.get("signal"):
            raise errors.UnexpectedError(
                f"Command was killed by signal {output['signal']}", output=output
            )
        if output["exit_code"] != 0:
            raise errors.UnexpectedError(
                f"Command exited with status {output['exit_code']}", output=output
            )
        return output

    async def _wait(self, deadline: float) -> str | None:
        """Wait for the command; None when it ended, or who asked it to stop (Cancel now).
        TimeoutError past the deadline."""
        assert self.ended is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({self.ended}, timeout=min(STOP_CHECK_SECONDS, left))
            if done:
                self.ended.result()  # a broken session raises here
                return None
            who = self.remote.stop_requested()
            if who is not None:
                return who

    async def _ended_within(self, seconds: float) -> bool:
        assert self.ended is not None
        done, _ = await asyncio.wait({self.ended}, timeout=seconds)
        return bool(done)

    async def _signal(self, name: str) -> None:
        """Send the signal to the command's whole process group: `kill` over a second session
        on the same connection, which works for any user on any server; the SSH "signal"
        request when that cannot be done (OpenSSH refuses it for root logins, whose sessions
        run without privilege separation)."""
        if self.err.pid is not None:
            try:
                result = await self.connection.run(
                    f"kill -s {name} -- -{self.err.pid}", timeout=KILL_CONFIRM_SECONDS
                )
                if result.exit_status == 0:
                    return
            except (OSError, asyncssh.Error, TimeoutError):
                pass
        with contextlib.suppress(OSError):  # the channel closed meanwhile: it ended already
            self.process.send_signal(name)

    async def _stop(self) -> str:
        """TERM; KILL after OPSFLOW_CANCEL_GRACE_SECONDS, as shell.command does on Cancel now."""
        grace = settings.OPSFLOW_CANCEL_GRACE_SECONDS
        await self._signal("TERM")
        if await self._ended_within(grace):
            return "SIGTERM"
        await self._signal("KILL")
        await self._ended_within(KILL_CONFIRM_SECONDS)
        return f"SIGKILL after {grace:g} s"

    def output(self) -> dict[str, Any]:
        out_text, out_cut = self.out.text()
        err_text, err_cut = self.err.text()
        process = self.process
        output: dict[str, Any] = {
            "stdout": out_text,
            "stderr": err_text,
            "exit_code": process.exit_status if process is not None else None,
        }
        signal = process.exit_signal if process is not None else None
        if signal:  # (name, core dumped, message, language)
            output["exit_code"] = None
            output["signal"] = signal[0]
        if out_cut or err_cut:
            output["truncated"] = True
        return output
