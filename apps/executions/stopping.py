"""Cancel now: the cancel service asks, through Redis, that the running steps of a run stop;
the node running each one checks between slices of its work (a shell command every quarter
second, an HTTP request while it waits) and stops: SIGTERM to the command's process group,
SIGKILL after OPSFLOW_CANCEL_GRACE_SECONDS; an HTTP request is abandoned. The step is then
recorded `cancelled`. Redis rather than the database: the check runs every 250 ms per running
step, and a key costs nothing to read."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

TTL_SECONDS = 3600  # a step longer than this after its cancel was killed by its timeout anyway


def _key(step_id: int) -> str:
    return f"opsflow:stop:{step_id}"


class Stopped(Exception):
    """The node stopped because its run was cancelled now. `output`: what it produced so far."""

    def __init__(self, message: str, output: dict | None = None):
        super().__init__(message)
        self.message, self.output = message, output or {}


def request(step_ids: list[int], who: str) -> None:
    from apps.executions.dispatch import get_connection

    if not step_ids:
        return
    try:
        pipe = get_connection().pipeline()
        for step_id in step_ids:
            pipe.set(_key(step_id), who, ex=TTL_SECONDS)
        pipe.execute()
    except RedisError:  # the steps finish as with a plain cancel, and are recorded
        logger.warning("cancel now: Redis did not take the stop of %s", step_ids, exc_info=True)


def requested_by(step_id: int) -> str | None:
    """Who asked this step to stop, or None."""
    from apps.executions.dispatch import get_connection

    try:
        who = get_connection().get(_key(step_id))
    except RedisError:
        return None
    if who is None:
        return None
    return who.decode() if isinstance(who, bytes) else str(who)
