from django.db import models


class ExecutionStatus(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    RETRYING = "retrying", "Retrying"
    INTERRUPTED = "interrupted", "Interrupted"
    INCOMPLETE = "incomplete", "Incomplete"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


EXECUTION_TERMINAL = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)
# Started and not over: these count against a workflow's max_concurrent_executions.
EXECUTION_LIVE = frozenset(
    {
        ExecutionStatus.PENDING,
        ExecutionStatus.RUNNING,
        ExecutionStatus.PAUSED,
        ExecutionStatus.RETRYING,
        ExecutionStatus.INTERRUPTED,
    }
)
# States in which the engine may still start steps of the execution.
EXECUTION_ADVANCING = frozenset(
    {
        ExecutionStatus.PENDING,
        ExecutionStatus.RUNNING,
        ExecutionStatus.PAUSED,
        ExecutionStatus.RETRYING,
        ExecutionStatus.INTERRUPTED,
    }
)


class StepStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DISPATCHED = "dispatched", "Dispatched"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    TIMEOUT = "timeout", "Timeout"
    CANCELLED = "cancelled", "Cancelled"
    INTERRUPTED = "interrupted", "Interrupted"
    SKIPPED = "skipped", "Skipped"


STEP_RUNNABLE = frozenset({StepStatus.PENDING, StepStatus.DISPATCHED})
STEP_OPEN = frozenset({StepStatus.PENDING, StepStatus.DISPATCHED, StepStatus.RUNNING})
STEP_FAILED = frozenset({StepStatus.FAILED, StepStatus.TIMEOUT})
STEP_FINISHED = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.TIMEOUT,
        StepStatus.CANCELLED,
        StepStatus.SKIPPED,
    }
)


class AgentState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping (draining)"
    STOPPED = "stopped", "Stopped"
    LOST = "lost", "Lost (no heartbeat)"


class StepHandling(models.TextChoices):
    """How a failed attempt was handled (DESIGN §6); blank while it is not a handled failure."""

    NONE = "", "—"
    ERROR_ROUTE = "error_route", "Error route"
    CONTINUE = "continue", "Continued (on_error: continue)"
    NOT_CRITICAL = "not_critical", "Ignored (not critical)"
    MANUAL = "manual", "Marked succeeded by an operator"


class IncompleteStatus(models.TextChoices):
    UNRESOLVED = "unresolved", "Unresolved"
    SCHEDULED = "scheduled", "Auto-retry scheduled"
    RETRYING = "retrying", "Retrying"
    RESOLVED = "resolved", "Resolved"
    DISCARDED = "discarded", "Discarded"


INCOMPLETE_OPEN = frozenset(
    {IncompleteStatus.UNRESOLVED, IncompleteStatus.SCHEDULED, IncompleteStatus.RETRYING}
)
INCOMPLETE_RETRYABLE = frozenset({IncompleteStatus.UNRESOLVED, IncompleteStatus.SCHEDULED})


class Trigger(models.TextChoices):
    MANUAL = "manual", "Manual"
    WEBHOOK = "webhook", "Webhook"
    CRON = "cron", "Cron"
    INCIDENT = "incident", "Incident"


class EventKind(models.TextChoices):
    CREATED = "created", "Execution created"
    EXECUTION_STARTED = "execution_started", "Execution started"
    EXECUTION_COMPLETED = "execution_completed", "Execution completed"
    EXECUTION_FAILED = "execution_failed", "Execution failed"
    NODE_DISPATCHED = "node_dispatched", "Node dispatched"
    NODE_STARTED = "node_started", "Node started"
    NODE_COMPLETED = "node_completed", "Node completed"
    NODE_FAILED = "node_failed", "Node failed"
    NODE_SKIPPED = "node_skipped", "Node skipped"
    NODE_CANCELLED = "node_cancelled", "Node cancelled"
    CONDITION = "condition", "Condition evaluated"
    ERROR_ROUTED = "error_routed", "Error routed"
    RETRY_SCHEDULED = "retry_scheduled", "Retry scheduled"
    EXECUTION_INCOMPLETE = "execution_incomplete", "Stored as incomplete"
    EXECUTION_RESUMED = "execution_resumed", "Execution resumed"
    EXECUTION_CANCELLED = "execution_cancelled", "Execution cancelled"
    EXECUTION_HELD = "execution_held", "Held"
    EXECUTION_SKIPPED = "execution_skipped", "Skipped"
    EXECUTION_RELEASED = "execution_released", "Released"
    DATA_LOSS = "data_loss", "Incomplete execution not stored"
    MANUAL_SUCCESS = "manual_success", "Marked succeeded"
    RETRIGGERED = "retriggered", "Re-triggered"
    EXECUTION_PAUSED = "execution_paused", "Paused"
    APPROVAL_REQUESTED = "approval_requested", "Approval requested"
    APPROVAL_RESPONSE = "approval_response", "Approval response"
    APPROVAL_DECIDED = "approval_decided", "Approval decided"
    APPROVAL_ESCALATED = "approval_escalated", "Approval escalated"
    DUPLICATE_DELIVERY = "duplicate_delivery", "Duplicate delivery ignored"
    NODE_INTERRUPTED = "node_interrupted", "Node interrupted"


# Badge colours (DESIGN §8), used by the admin: names of the palette in static/opsflow/opsflow.css.
STATUS_COLOURS = {
    ExecutionStatus.SCHEDULED: "grey",
    ExecutionStatus.PENDING: "grey",
    ExecutionStatus.RUNNING: "blue",
    ExecutionStatus.PAUSED: "indigo",
    ExecutionStatus.RETRYING: "amber",
    ExecutionStatus.INTERRUPTED: "brown",
    ExecutionStatus.INCOMPLETE: "orange",
    ExecutionStatus.COMPLETED: "green",
    ExecutionStatus.FAILED: "red",
    ExecutionStatus.CANCELLED: "grey",
    StepStatus.DISPATCHED: "grey",
    AgentState.STOPPING: "amber",
    AgentState.LOST: "red",
    StepStatus.TIMEOUT: "red",
    StepStatus.SKIPPED: "light",
    IncompleteStatus.UNRESOLVED: "orange",
    IncompleteStatus.RESOLVED: "green",
    IncompleteStatus.DISCARDED: "grey",
}
