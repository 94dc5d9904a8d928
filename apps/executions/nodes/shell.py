"""`shell.command`: an argv list (or a bash `script`) run on the agent, in its own process group."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from django.conf import settings

from apps.executions import errors
from apps.executions.nodes.base import NodeContext, NodeType, Problem, cap_text, register


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


@register
class ShellCommandNode(NodeType):
    name = "shell.command"
    default_timeout = 300.0

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
        if "env" in config and not isinstance(config["env"], dict):
            problems.append(("env", "must be a mapping"))
        if "cwd" in config and not isinstance(config["cwd"], str):
            problems.append(("cwd", "must be a string"))
        return problems

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        config = ctx.config
        argv = (
            ["bash", "-c", config["script"]]
            if config.get("script") is not None
            else config["command"]
        )
        if not isinstance(argv, list) or not argv:
            raise errors.InvalidConfigurationError("command must be a non-empty list")
        env = {**os.environ, **{str(k): str(v) for k, v in (config.get("env") or {}).items()}}
        timeout = ctx.timeout or self.default_timeout
        # Output is spooled to temporary files so that memory stays bounded by the cap.
        with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
            try:
                process = subprocess.Popen(
                    [str(a) for a in argv],
                    stdout=out_file,
                    stderr=err_file,
                    stdin=subprocess.DEVNULL,
                    cwd=config.get("cwd") or None,
                    env=env,
                    start_new_session=True,  # its own process group, so a timeout kills every child
                    preexec_fn=_DIE_WITH_PARENT,
                )
            except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
                raise errors.InvalidConfigurationError(f"Cannot run {argv[0]!r}: {exc}") from exc
            try:
                process.wait(timeout=timeout)
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
