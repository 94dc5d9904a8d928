"""Fuzz the REST API with schemathesis (issue 10 item 6): a throwaway portal on the embedded
default (its own var/ folder and port), one token for each role, and for each token a bounded
run over every operation of the live schema with the checks `not_a_server_error` and
`response_schema_conformance`. Exits 1 on any finding. CI runs the short form; `make fuzz` a
longer one:

    .venv/bin/python scripts/fuzz.py [--examples 10] [--seed 1] [--max-time 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("viewer", "operator", "editor", "admin")
SEED = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from apps.accounts.models import Membership, Organization
org = Organization.objects.get(slug="demo")
for role in {roles!r}:
    user = get_user_model().objects.create_user("fuzz-" + role, password="pw-fuzz-" + role, is_staff=True)
    Membership.objects.create(organization=org, user=user, role=role)
    print("TOKEN", role, Token.objects.create(user=user).key)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10, help="test cases per operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-time", type=int, default=60, help="seconds per role")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="opsflow-fuzz-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        OPSFLOW_VAR_DIR=str(var),
        DJANGO_SETTINGS_MODULE="config.settings.base",
        OPSFLOW_LOGIN_FAILURE_LIMIT="1000",  # the fuzzer's wrong passwords must not lock it out
        OPSFLOW_SSE_MAX_SECONDS="3",  # a paused run's stream would last past the request timeout
        LOG_LEVEL="ERROR",
    )
    env.pop("OPSFLOW_SECRETS_KEYS", None)
    env.pop("SECRET_KEY", None)
    python = sys.executable
    manage = [python, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "seed_demo", "-v0"], cwd=ROOT, env=env, check=True)
    seeded = subprocess.run(
        [*manage, "shell", "-c", SEED.format(roles=ROLES)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    tokens = dict(
        line.split()[1:] for line in seeded.stdout.splitlines() if line.startswith("TOKEN ")
    )
    port = free_port()
    server = subprocess.Popen(
        [*manage, "standalone", "--port", str(port), "--no-seed"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(var / "server.log", "wb"),  # noqa: SIM115
    )
    base = f"http://127.0.0.1:{port}"
    failed = []
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        schemathesis = shutil.which("schemathesis", path=str(Path(python).parent)) or "schemathesis"
        for role in ROLES:
            print(f"== schemathesis as {role}", flush=True)
            run = subprocess.run(
                [
                    schemathesis,
                    "run",
                    f"{base}/api/v1/schema/?format=json",
                    "--checks",
                    "not_a_server_error,response_schema_conformance",
                    "--max-examples",
                    str(args.examples),
                    "--seed",
                    str(args.seed),
                    "--max-time",
                    str(args.max_time),
                    "--header",
                    f"Authorization: Token {tokens[role]}",
                    "--generation-allow-x00",
                    "true",
                    "--request-timeout",
                    "20",
                    "--no-color",
                ],
                cwd=var,  # schemathesis keeps a cache in its working directory
            )
            if run.returncode != 0:
                failed.append(role)
    finally:
        server.terminate()
        server.wait(timeout=20)
    log = (var / "server.log").read_text(errors="replace")
    if "Traceback" in log:
        print("== the server logged tracebacks:\n" + log[-4000:])
        failed.append("server log")
    shutil.rmtree(var, ignore_errors=True)
    if failed:
        print(f"fuzzing found problems ({', '.join(failed)})")
        return 1
    print("fuzzing found nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
