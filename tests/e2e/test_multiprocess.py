"""End to end across processes: the HTTP API in a live server, a real `rqworker` process, PostgreSQL and Redis."""

from __future__ import annotations

import os
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


@pytest.fixture
def rq_worker_process(transactional_db, redis_conn):
    """A real `manage.py rqworker` process on the test database and Redis."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "e2e",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "rqworker",
            "--worker-class",
            "apps.executions.worker.AgentWorker",
            "--with-scheduler",
            "default",
            "shell",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@needs_services
@pytest.mark.multiprocess
def test_a_workflow_runs_on_a_real_worker_process_through_the_http_api(
    live_server, rq_worker_process
):
    org = make_org("acme")
    make_user("ops", org, Role.EDITOR)
    call_command("drf_create_token", "ops", verbosity=0)
    from rest_framework.authtoken.models import Token

    token = Token.objects.get(user__username="ops").key
    api = httpx.Client(
        base_url=f"{live_server.url}/api/v1",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )

    definition = {
        "slug": "e2e",
        "name": "End to end",
        "variables": {"base": {"type": "string", "required": True}},
        "nodes": [
            {
                "id": "check",
                "type": "http.request",
                "config": {"url": "{{ vars.base }}/healthz", "expect_status": [200]},
            },
            {
                "id": "say",
                "type": "shell.command",
                "queue": "shell",
                "config": {"command": ["echo", "status {{ nodes.check.output.status_code }}"]},
            },
            {
                "id": "done",
                "type": "noop",
                "config": {"output": {"said": "{{ nodes.say.output.stdout | trim }}"}},
            },
        ],
        "edges": [{"from": "check", "to": "say"}, {"from": "say", "to": "done"}],
    }
    assert api.post("/workflows/", json=definition).status_code == 201
    published = api.post("/workflows/e2e/publish/")
    assert published.status_code == 201 and published.json()["version"] == 1
    created = api.post("/workflows/e2e/trigger/", json={"variables": {"base": live_server.url}})
    assert created.status_code == 201, created.text
    execution_id = created.json()["id"]

    deadline = time.monotonic() + 60
    body = {}
    while time.monotonic() < deadline:
        body = api.get(f"/executions/{execution_id}/").json()
        if body["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert body["status"] == "completed", body
    steps = {s["node_id"]: s for s in body["steps"]}
    assert steps["check"]["output"]["status_code"] == 200
    assert steps["say"]["output"]["stdout"] == "status 200\n"
    assert steps["say"]["output"]["exit_code"] == 0
    assert steps["done"]["input"] == {"output": {"said": "status 200"}}
    assert all(s["worker"] for s in steps.values())
    assert body["jobs_completed"] == body["jobs_total"] == 3
