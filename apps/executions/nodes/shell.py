"""`shell.command`: an argv list (or a bash `script`) run on the agent, in its own process group.

Untrusted values never become shell code: a `script` is never rendered (a template in it is
refused when the definition is saved), so values reach it through `env` as "$NAME". The child
sees a minimal environment, never the worker's (its DATABASE_URL, SECRET_KEY, …), and runs in a
fresh temporary directory, removed afterwards, as OPSFLOW_SHELL_USER when that is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from django.conf import settings

from apps.executions import errors
from apps.executions.nodes.base import NodeContext, NodeType, Problem, cap_text, register
from apps.executions.stopping import Stopped
from apps.executions.templating import has_template

NO_TEMPLATES_IN_SCRIPT = (
    "templates are not allowed in script: a value would become shell code. Pass values "
    'through env (env: {NAME: "{{ vars.x }}"}) and use "$NAME" in the script'
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Linux refuses one argument or environment string longer than this (MAX_ARG_STRLEN).
MAX_ARG_STRLEN = 32 * 4096


def _die_with_parent_linux():
    """On Linux, the command gets SIGKILL when the agent running it dies (kill -9, OOM), so a
    new attempt elsewhere does not run alongside an orphan. Its own children are not covered."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now: the child only calls it
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1

    def set_pdeathsig() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_pdeathsig


_DIE_WITH_PARENT = _die_with_parent_linux()


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


STOP_CHECK_SECONDS = 0.25


def _wait(process: subprocess.Popen, timeout: float, stop_requested) -> str | None:
    """Wait for the command; None when it exited, or who asked it to stop (Cancel now).
    TimeoutExpired past `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(process.args, timeout)
        try:
            process.wait(timeout=min(STOP_CHECK_SECONDS, left))
            return None
        except subprocess.TimeoutExpired:
            who = stop_requested()
            if who is not None:
                return who


def _stop_group(process: subprocess.Popen) -> str:
    """SIGTERM to the process group; SIGKILL after OPSFLOW_CANCEL_GRACE_SECONDS."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=settings.OPSFLOW_CANCEL_GRACE_SECONDS)
        return "SIGTERM"
    except subprocess.TimeoutExpired:
        _kill_group(process)
        process.wait()
        return f"SIGKILL after {settings.OPSFLOW_CANCEL_GRACE_SECONDS:g} s"


@register
class ShellCommandNode(NodeType):
    name = "shell.command"
    default_timeout = 300.0
    raw_keys = frozenset({"script"})  # passed to bash as written, never rendered

    def allowed_queues(self) -> list[str] | None:
        return list(settings.OPSFLOW_SHELL_QUEUES)

    def check_config(self, config) -> list[Problem]:
        command, script = config.get("command"), config.get("script")
        if command is None and script is None:
            return [("command", "required (an argv list), or give script")]
        if command is not None and script is not None:
            return [("script", "give either command or script, not both")]
        problems: list[Problem] = []
        if command is not None and (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) for a in command)
        ):
            problems.append(("command", "must be a non-empty list of strings"))
        if script is not None and (not isinstance(script, str) or not script.strip()):
            problems.append(("script", "must be a non-empty string"))
        if isinstance(script, str) and has_template(script):
            problems.append(("script", NO_TEMPLATES_IN_SCRIPT))
        if isinstance(command, list):
            problems += [
                (f"command[{index}]", NO_TEMPLATES_IN_SCRIPT.replace("in script", "in shell code"))
                for index in shell_code_items(command)
                if isinstance(command[index], str) and has_template(command[index])
            ]
        if "env" in config and not isinstance(config["env"], dict):
            problems.append(("env", "must be a mapping"))
        elif isinstance(config.get("env"), dict):
            problems += [
                (f"env.{name}", "must be a variable name (letters, digits, _; not first a digit)")
                for name in config["env"]
                if not ENV_NAME.match(str(name))
            ]
        if "cwd" in config and not isinstance(config["cwd"], str):
            problems.append(("cwd", "must be a string"))
        return problems

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        config = ctx.config
        script = config.get("script")  # templated? check_config refused it, at save and now
        queue = ctx.node.get("queue", settings.OPSFLOW_SHELL_QUEUES[0])  # always set in a version
        if queue not in settings.OPSFLOW_SHELL_QUEUES:  # a version published before the rule
            raise errors.InvalidConfigurationError(
                f"shell commands run only on {', '.join(settings.OPSFLOW_SHELL_QUEUES)} "
                f"(OPSFLOW_SHELL_QUEUES), not on queue {queue!r}"
            )
        argv = ["bash", "-c", script] if script is not None else config["command"]
        if not isinstance(argv, list) or not argv:
            raise errors.InvalidConfigurationError("command must be a non-empty list")
        argv = [str(a) for a in argv]
        raw = ctx.raw_config.get("command") if isinstance(ctx.raw_config, dict) else None
        if isinstance(raw, list) and any(
            isinstance(raw[i], str) and has_template(raw[i]) for i in shell_code_items(raw)
        ):
            raise errors.InvalidConfigurationError(  # saved before the rule: never run it
                f"command: {NO_TEMPLATES_IN_SCRIPT.replace('in script', 'in shell code')}"
            )
        user = _shell_user()
        workdir = tempfile.mkdtemp(prefix="opsflow-step-")
        try:
            if user is not None:
                os.chown(workdir, user.pw_uid, user.pw_gid)
            env = _child_env(config.get("env") or {}, home=workdir)
            _check_os_limits(argv, env)
            return self._run(ctx, argv, env, config.get("cwd") or workdir, user)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, ctx: NodeContext, argv, env, cwd, user) -> dict[str, Any]:
        timeout = ctx.timeout or self.default_timeout
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        # Output is spooled to temporary files so that memory stays bounded by the cap.
        with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
            try:
                process = subprocess.Popen(
                    argv,
                    stdout=out_file,
                    stderr=err_file,
                    stdin=subprocess.DEVNULL,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,  # its own process group, so a timeout kills every child
                    preexec_fn=_DIE_WITH_PARENT,
                    **as_user,
                )
            except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
                raise errors.InvalidConfigurationError(f"Cannot run {argv[0]!r}: {exc}") from exc
            try:
                who = _wait(process, timeout, ctx.stop_requested)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.wait()
                output = self._output(out_file, err_file, None)
                raise errors.ModuleTimeoutError(
                    f"Command timed out after {timeout:g}s; its process group was killed",
                    output=output,
                ) from None
            except BaseException:
                _kill_group(process)
                raise
            if who is not None:
                how = _stop_group(process)
                raise Stopped(
                    f"Cancelled now by {who}: the command was stopped ({how})",
                    output=self._output(out_file, err_file, process.returncode),
                )
            output = self._output(out_file, err_file, process.returncode)
        if process.returncode != 0:
            raise errors.UnexpectedError(
                f"Command exited with status {process.returncode}", output=output
            )
        return output

    @staticmethod
    def _output(out_file, err_file, exit_code: int | None) -> dict[str, Any]:
        cap = settings.OPSFLOW_OUTPUT_CAP_BYTES
        out_file.seek(0)
        err_file.seek(0)
        out_text, out_cut = cap_text(out_file.read(cap + 1), cap)
        err_text, err_cut = cap_text(err_file.read(cap + 1), cap)
        output: dict[str, Any] = {"stdout": out_text, "stderr": err_text, "exit_code": exit_code}
        if out_cut or err_cut:
            output["truncated"] = True
        return output


SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "fish"})


def shell_code_items(command: list[Any]) -> list[int]:
    """Indexes of the argv items that a shell parses as code: `["bash", "-c", CODE, …]` is a
    script by another name, so it follows the script rule."""
    if not command or not isinstance(command[0], str):
        return []
    if os.path.basename(command[0]) not in SHELLS:
        return []
    for index, item in enumerate(command[1:-1], start=1):
        is_flag = isinstance(item, str) and item.startswith("-") and not item.startswith("--")
        if is_flag and "c" in item[1:]:
            return [index + 1]
    return []


def _shell_user() -> pwd.struct_passwd | None:
    """OPSFLOW_SHELL_USER, when set and the worker runs as root (only root may switch)."""
    name = settings.OPSFLOW_SHELL_USER
    if not name or os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise errors.InvalidConfigurationError(
            f"OPSFLOW_SHELL_USER names {name!r}, which is no user on this agent"
        ) from None


def _child_env(node_env: dict[str, Any], home: str) -> dict[str, str]:
    """PATH, HOME (the step's own directory), LANG, the OPSFLOW_SHELL_ENV_PASSTHROUGH names the
    worker has, then the node's `env`: nothing else of the worker's environment."""
    env = {
        "PATH": os.environ.get("PATH", DEFAULT_PATH),
        "HOME": home,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    for name in settings.OPSFLOW_SHELL_ENV_PASSTHROUGH:
        if name in os.environ:
            env[name] = os.environ[name]
    for name, value in node_env.items():  # names checked by check_config
        env[str(name)] = "" if value is None else str(value)
    return env


def _check_os_limits(argv: list[str], env: dict[str, str]) -> None:
    """A clear DataError instead of the OS's "Argument list too long" (E2BIG)."""
    for index, arg in enumerate(argv):
        if len(arg.encode()) >= MAX_ARG_STRLEN:
            raise errors.DataError(
                f"command[{index}] is {len(arg.encode())} bytes; the OS takes at most "
                f"{MAX_ARG_STRLEN - 1} bytes in one argument (pass large data through a file)"
            )
    for name, value in env.items():
        size = len(name.encode()) + 1 + len(value.encode())
        if size >= MAX_ARG_STRLEN:
            raise errors.DataError(
                f"env.{name} is {size} bytes; the OS takes at most {MAX_ARG_STRLEN - 1} bytes "
                "in one environment variable (pass large data through a file)"
            )
    total = sum(len(a.encode()) + 1 for a in argv) + sum(
        len(k.encode()) + len(v.encode()) + 2 for k, v in env.items()
    )
    limit = os.sysconf("SC_ARG_MAX") if hasattr(os, "sysconf") else 2 * 1024 * 1024
    if total >= limit:
        raise errors.DataError(
            f"the command and its environment are {total} bytes; the OS takes at most {limit} "
            "(pass large data through a file)"
        )
