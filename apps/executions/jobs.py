"""RQ jobs. Every step runs through the one wrapper `run_step`."""

from __future__ import annotations

from django.db import close_old_connections


def run_step(step_id: int) -> None:
    """Load the step, return at once if it is no longer runnable, run it, record the outcome."""
    from apps.executions.services import run_step_chain

    close_old_connections()
    run_step_chain(step_id)
