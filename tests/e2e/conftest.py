"""Real processes for end-to-end tests: `rqworker` and `run_scheduler` on the test database and Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command

from apps.accounts.choices import Role
from tests.factories import make_org, make_user

ROOT = Path(__file__).resolve().parents[2]

needs_services = pytest.mark.skipif(
    not settings.REDIS_URL
    or settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="multi-process test needs REDIS_URL and a PostgreSQL DATABASE_URL (it runs in CI)",
)


def _database_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Processes:
    """Starts manage.py commands as real processes; stops them all at the end of the test."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.running: list[tuple[subprocess.Popen, object]] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        """`manage.py <args>` with the test database and Redis."""
        return self.spawn("manage.py", *args, **env)

    def web(self, port: int, **env: str) -> subprocess.Popen:
        """The ASGI app under uvicorn, as the Procfile's web line serves it (one process)."""
        return self.spawn(
            "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--no-access-log",
            **env,
        )  # fmt: skip

    def serve(self, **env: str) -> tuple[subprocess.Popen, str]:
        """`web` on a free port, once it answers /healthz; the process and its base URL."""
        port = free_port()
        process = self.web(port, **env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "uvicorn exited"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return process, base
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.2)

    def spawn(self, *args: str, **env: str) -> subprocess.Popen:
        name = args[1] if args[0] in ("manage.py", "-m") else args[0]
        log = open(self.tmp_path / f"{name}-{len(self.running)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "config.settings.base",
                "DATABASE_URL": _database_url(),
                "REDIS_URL": settings.REDIS_URL,
                "SECRET_KEY": "e2e",
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.running.append((process, log))
        return process

    def worker(self, **env: str) -> subprocess.Popen:
        return self.start(
            "rqworker",
            "--worker-class",
            "apps.executions.worker.AgentWorker",
            "--with-scheduler",
            "default",
            "shell",
            **env,
        )

    def stop(self) -> None:
        for process, _log in self.running:
            process.terminate()
        for process, log in self.running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


@pytest.fixture
def processes(transactional_db, redis_conn, tmp_path):
    started = Processes(tmp_path)
    yield started
    started.stop()


@pytest.fixture
def api(live_server, transactional_db):
    """An httpx client for /api/v1 with the token of an editor of `acme`."""
    org = make_org("acme")
    make_user("ops", org, Role.EDITOR)
    call_command("drf_create_token", "ops", verbosity=0)
    from rest_framework.authtoken.models import Token

    token = Token.objects.get(user__username="ops").key
    with httpx.Client(
        base_url=f"{live_server.url}/api/v1",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    ) as client:
        yield client


def refused(console_text: str) -> bool:
    """What the browser says when the Content-Security-Policy refuses something, or when
    Alpine's CSP build cannot run one of the page's expressions."""
    return "Content Security Policy" in console_text or console_text.startswith("Alpine")
