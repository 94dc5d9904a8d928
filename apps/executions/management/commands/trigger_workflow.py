import time

import yaml
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.executions.choices import EXECUTION_TERMINAL, ExecutionStatus
from apps.executions.services import WorkflowNotRunnable, trigger_workflow
from apps.workflows.definition import DefinitionError, load_yaml
from apps.workflows.management.commands._organization import (
    organization_option,
    resolve_organization,
)
from apps.workflows.models import Workflow


def parse_var(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise CommandError(f"--var takes name=value, got {text!r}")
    name, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return name.strip(), value


class Command(BaseCommand):
    help = (
        "Start an execution of a workflow's published version. With --wait, exit non-zero unless it "
        "completes. On the embedded default (no REDIS_URL) the run is worked inside this command."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument(
            "--var",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="A variable; the value is read as YAML (numbers, true/false, lists).",
        )
        parser.add_argument(
            "--wait", action="store_true", help="Wait for the end; exit 1 unless completed."
        )
        parser.add_argument(
            "--timeout", type=float, default=600, help="Seconds to wait (default 600)."
        )
        organization_option(parser)

    def handle(self, *args, slug, var, wait, timeout, organization, **options):
        org = resolve_organization(organization)
        workflow = (
            Workflow.objects.filter(organization=org, slug=slug)
            .select_related("current_version")
            .first()
        )
        if workflow is None:
            raise CommandError(f"No workflow {slug!r} in {org.slug}.")
        variables = dict(parse_var(v) for v in var)
        try:
            execution = trigger_workflow(workflow, variables=variables)
        except (WorkflowNotRunnable, DefinitionError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Execution #{execution.pk} created.")
        embedded = not settings.REDIS_URL
        if not (wait or embedded):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if embedded:
                from apps.executions.dispatch import get_connection
                from apps.executions.worker import ThreadAgentWorker

                ThreadAgentWorker(settings.OPSFLOW_QUEUES, connection=get_connection()).work(
                    burst=True, with_scheduler=True
                )
            execution.refresh_from_db()
            if execution.status in EXECUTION_TERMINAL:
                break
            time.sleep(0.2)
        else:
            raise CommandError(
                f"Execution #{execution.pk} is still {execution.status} after {timeout:g}s."
            )
        message = f"Execution #{execution.pk} {execution.status} in {execution.duration_ms} ms."
        if execution.status != ExecutionStatus.COMPLETED:
            raise CommandError(f"{message} {execution.error_message}".strip())
        self.stdout.write(self.style.SUCCESS(message))
