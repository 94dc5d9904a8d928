"""Job functions for the raw RQ baseline in engine_overhead.py.

They live in an importable module so that the worker can resolve them by dotted path,
exactly as it resolves `apps.executions.jobs.run_step`.
"""

from __future__ import annotations

from rq import Queue, get_current_job

HOP_FUNC = "bench._rq_jobs.hop"


def hop(remaining: int, options: dict) -> None:
    """A no-op link of a chain: enqueue the next link on the same queue until none remain."""
    if remaining <= 1:
        return
    job = get_current_job()
    Queue(job.origin, connection=job.connection).enqueue(
        HOP_FUNC, remaining - 1, options, **options
    )
