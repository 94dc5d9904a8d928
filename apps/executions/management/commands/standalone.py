"""`manage.py standalone`: the whole product in one process, like `airflow standalone`."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time

import uvicorn
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from apps.accounts.choices import Role
from apps.accounts.models import Membership, Organization
from apps.executions.dispatch import get_connection
from apps.executions.scheduler import SchedulerLoop
from apps.executions.worker import ThreadAgentWorker

logger = logging.getLogger(__name__)


def run_worker_thread(index: int, stop: threading.Event) -> None:
    """A worker thread: blocking dequeue on the shared connection; restarts if it ever exits."""
    while not stop.is_set():
        worker = ThreadAgentWorker(
            settings.OPSFLOW_QUEUES,
            connection=get_connection(),
            name=f"embedded-{index}-{secrets.token_hex(3)}",
        )
        try:
            worker.work(burst=False, logging_level="WARNING")
        except Exception:
            logger.exception("embedded worker %s stopped; restarting", index)
        time.sleep(1)


def adopt_served_url(host: str, port: int) -> str:
    """The address served here. Unless OPSFLOW_BASE_URL is set, it becomes OPSFLOW_BASE_URL for
    this process, whose workers email approval links (`make run PORT=9000` links to 9000)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    served = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    if not settings.OPSFLOW_BASE_URL:
        settings.OPSFLOW_BASE_URL = served
    return served


class _Server(uvicorn.Server):
    """uvicorn's server, with a last step once it has shut down: uvicorn then raises the
    signal that stopped it again, and the process ends without running `finally` blocks."""

    def __init__(self, config, on_exit=None):
        super().__init__(config)
        self.on_exit = on_exit

    async def shutdown(self, sockets=None):
        await super().shutdown(sockets)
        if self.on_exit is not None:
            await asyncio.to_thread(self.on_exit)


class Command(BaseCommand):
    help = "Migrate, create an admin, seed the demo, then serve the web app with in-process workers and scheduler."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.OPSFLOW_WORKER_THREADS,
            help="Worker threads (default OPSFLOW_WORKER_THREADS).",
        )
        parser.add_argument(
            "--no-seed", action="store_true", help="Do not create the demo workflows."
        )

    def handle(self, *args, host, port, workers, no_seed, **options):
        embedded_db = not settings.DATABASE_URL
        embedded_redis = not settings.REDIS_URL
        call_command("migrate", interactive=False, verbosity=0)
        username, password = self._ensure_admin()
        base_url = adopt_served_url(host, port)
        if not no_seed:
            call_command("seed_demo", base_url=settings.OPSFLOW_BASE_URL, verbosity=0)
            self._ensure_demo_membership(username)

        stop = threading.Event()
        if embedded_redis:
            for index in range(max(workers, 1)):
                threading.Thread(
                    target=run_worker_thread,
                    args=(index, stop),
                    daemon=True,
                    name=f"opsflow-worker-{index}",
                ).start()
            threading.Thread(
                target=SchedulerLoop(embedded=True).run,
                args=(stop,),
                daemon=True,
                name="opsflow-scheduler",
            ).start()

        database = (
            "SQLite (WAL) at " + str(settings.DATABASES["default"]["NAME"])
            if embedded_db
            else "PostgreSQL/DATABASE_URL"
        )
        queue_side = (
            f"in-process fakeredis, {workers} worker thread(s), scheduler thread"
            if embedded_redis
            else "REDIS_URL (start workers and the scheduler from the Procfile)"
        )
        self.stdout.write(self.style.SUCCESS("\nOpsflow is starting"))
        self.stdout.write(f"  URL:      {base_url}/")
        self.stdout.write(f"  Login:    {username} / {password}")
        self.stdout.write(f"  API docs: {base_url}/api/v1/docs/")
        self.stdout.write(f"  Database: {database}")
        self.stdout.write(f"  Queues:   {queue_side}\n")
        config = uvicorn.Config(
            "config.asgi:application", host=host, port=port, lifespan="off", log_level="warning"
        )
        try:
            _Server(config, on_exit=self._stopped if embedded_redis else None).run()
        finally:
            stop.set()

    def _stopped(self) -> None:
        """This process's worker threads end with it: their agents show as stopped, not lost
        (and a step one was running is interrupted at the next start, not after a timeout)."""
        import os
        import socket

        from apps.executions.models import Agent

        names = Agent.objects.filter(hostname=socket.gethostname(), pid=os.getpid())
        for name in names.values_list("name", flat=True):
            Agent.mark_stopped(name)

    def _ensure_admin(self) -> tuple[str, str]:
        """Create `admin` with a generated password the first time; keep the password under var/."""
        password_file = settings.VAR_DIR / "admin-password.txt"
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            admin = User.objects.filter(is_superuser=True).order_by("pk").first()
            if password_file.exists():
                return admin.username, password_file.read_text().strip()
            return admin.username, "(unchanged; set it with `manage.py changepassword`)"
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        return "admin", password

    def _ensure_demo_membership(self, username: str) -> None:
        user = get_user_model().objects.filter(username=username).first()
        org = Organization.objects.filter(slug="demo").first()
        if user and org:
            Membership.objects.get_or_create(
                organization=org, user=user, defaults={"role": Role.ADMIN}
            )
