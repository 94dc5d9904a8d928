"""Production settings are what production runs (issue 10 item 4): the Procfile and the ASGI and
WSGI entry points use config.settings.production unless told otherwise, `check --deploy` is
clean with it, and every response carries a Content-Security-Policy of the portal's own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DATABASE_URL": "postgres://opsflow@db.internal:5432/opsflow",  # never connected to here
    "REDIS_URL": "redis://redis.internal:6379/0",
    "SECRET_KEY": "k" * 20 + "-production-only-" + "x" * 30,
    "OPSFLOW_SECRETS_KEYS": Fernet.generate_key().decode(),
    "ALLOWED_HOSTS": "ops.example.com",
    "OPSFLOW_BASE_URL": "https://ops.example.com",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPSFLOW_", "DJANGO_"))}
    clean.pop("DATABASE_URL", None)
    clean.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **PRODUCTION, "DJANGO_SETTINGS_MODULE": "config.settings.production", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_entry_points_and_the_procfile_default_to_production():
    for entry in ("config/asgi.py", "config/wsgi.py"):
        text = (ROOT / entry).read_text()
        assert 'setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")' in text
    procfile = (ROOT / "Procfile").read_text().splitlines()
    assert len(procfile) == 3
    # the web tier serves requests in parallel: a process per core unless WEB_CONCURRENCY says
    assert procfile[0].startswith("web: ")
    assert "--workers ${WEB_CONCURRENCY:-$(nproc)}" in procfile[0]
    assert procfile[0].endswith("--http config.http:NoDelayH11Protocol")
    for line in procfile:
        assert (
            "DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-config.settings.production}" in line
        )


def test_production_settings_refuse_to_start_without_postgresql():
    result = manage("check", DATABASE_URL="")

    assert result.returncode != 0
    assert "DATABASE_URL must be set in production." in result.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/login/", "/api/v1/docs/", "/healthz", "/api/v1/nope/"])
def test_every_response_carries_the_content_security_policy(client, url):
    policy = client.get(url)["Content-Security-Policy"]

    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy


@pytest.mark.django_db
def test_portal_pages_have_no_inline_script_style_or_handler(admin_client):
    for url in ("/", "/workflows/workflow/", "/approvals/approval/inbox/", "/api/v1/docs/"):
        page = admin_client.get(url).content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), url
        assert "<style" not in page, url
        assert not re.search(r"\son[a-z]+=\"", page), url
        assert ' style="' not in page, url
