"""Incident triggers (issue 14 item 1): alerts from Prometheus Alertmanager, PagerDuty (v3
webhooks) or a documented generic shape start runs, one per alert and status.

`POST /hooks/<key>/incident/` passes the webhook's checks (size, key, JSON limits; when the
workflow has a secret: the X-Opsflow-Signature HMAC, PagerDuty's own `X-PagerDuty-Signature:
v1=<HMAC>` of the same secret, or `Authorization: Bearer <secret>` for Alertmanager, which can
send a token but not sign). Each alert of the payload is normalized to an `incident`:

    id, title, severity, status (firing | resolved), source, service, labels, annotations,
    url, started_at

then matched against the trigger's `match` (status, severity, labels). A match starts a run
with `{{ incident.* }}` in its templates, unless the same alert (id and status) started one
within the trigger's `dedupe_window` (1 h): the answer then names that run and nothing is made.
An alert that does not match is recorded as skipped, with the reason, and counted on the
delivery row; the answer lists every alert's outcome.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import JsonResponse
from django.utils import timezone

from apps.executions.choices import Trigger
from apps.executions.services import WorkflowNotRunnable, trigger_workflow
from apps.workflows.choices import IncidentOutcome, IncidentSource, TriggerType
from apps.workflows.definition import DefinitionError
from apps.workflows.models import IncidentDelivery, Workflow
from apps.workflows.webhooks import counted, error, read_delivery, signature_for

FIRING, RESOLVED = "firing", "resolved"
DEFAULT_DEDUPE_WINDOW = 3600
MAX_DEDUPE_WINDOW = 7 * 86_400
MAX_ALERTS = 100  # alerts in one delivery (an Alertmanager group); more is a 400
TEXT_LIMIT = 500  # id, title, severity, service, url: longer values are cut
MATCH_KEYS = ("status", "severity", "labels")
SKIPPED_KEPT = timedelta(days=30)  # skipped deliveries (no run) are pruned after this


class BadPayload(ValueError):
    """The payload is not the source's shape: where, and what is wrong."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message


# --- normalization ---


def _text(value: Any, limit: int = TEXT_LIMIT) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return value[:limit]


def _strings(value: Any, path: str) -> dict[str, str]:
    """A mapping of text to text (labels, annotations); other values become their text."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadPayload(path, "must be an object")
    return {_text(k, 200): _text(v, 2000) for k, v in value.items()}


def _incident(source: str, **fields: Any) -> dict[str, Any]:
    incident = {
        "id": _text(fields.get("id")),
        "title": _text(fields.get("title")),
        "severity": _text(fields.get("severity")).lower(),
        "status": fields.get("status"),
        "source": source,
        "service": _text(fields.get("service")),
        "labels": fields.get("labels") or {},
        "annotations": fields.get("annotations") or {},
        "url": _text(fields.get("url"), 2000),
        "started_at": _text(fields.get("started_at"), 64),
    }
    if not incident["id"]:
        raise BadPayload(fields.get("path", ""), "the alert has no id")
    return incident


def from_alertmanager(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Alertmanager's webhook (version 4): one incident per alert of the group. The id is the
    alert's fingerprint; the title its `summary` annotation, else its alertname."""
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise BadPayload("alerts", "required: a list of alerts (Alertmanager's webhook payload)")
    common_labels = payload.get("commonLabels") or {}
    incidents = []
    for n, alert in enumerate(alerts):
        path = f"alerts[{n}]"
        if not isinstance(alert, dict):
            raise BadPayload(path, "must be an object")
        labels = _strings(alert.get("labels"), f"{path}.labels")
        annotations = _strings(alert.get("annotations"), f"{path}.annotations")
        status = alert.get("status") or payload.get("status")
        if status not in (FIRING, RESOLVED):
            raise BadPayload(f"{path}.status", "must be firing or resolved")
        fingerprint = alert.get("fingerprint") or _fingerprint(labels or common_labels)
        incidents.append(
            _incident(
                IncidentSource.ALERTMANAGER,
                path=path,
                id=fingerprint,
                title=annotations.get("summary") or labels.get("alertname") or fingerprint,
                severity=labels.get("severity", ""),
                status=status,
                service=labels.get("service") or labels.get("job", ""),
                labels=labels,
                annotations=annotations,
                url=alert.get("generatorURL") or payload.get("externalURL", ""),
                started_at=alert.get("startsAt", ""),
            )
        )
    return incidents


def _fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager sends a fingerprint; without one, the same labels make the same id."""
    text = json.dumps(labels, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PAGERDUTY_FIRING = {"incident.triggered", "incident.reopened"}
PAGERDUTY_RESOLVED = {"incident.resolved"}


def from_pagerduty(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """PagerDuty's v3 webhook: one event, its incident under `event.data`. Triggered and
    reopened incidents are firing, resolved ones resolved; other events (acknowledged,
    annotated, escalated …) are no alert change: they start nothing (an empty list)."""
    event = payload.get("event")
    if not isinstance(event, dict):
        raise BadPayload("event", "required: an object (PagerDuty's v3 webhook payload)")
    kind = event.get("event_type")
    if not isinstance(kind, str):
        raise BadPayload("event.event_type", "required")
    data = event.get("data")
    if not isinstance(data, dict):
        raise BadPayload("event.data", "required: the incident")
    if kind in PAGERDUTY_FIRING:
        status = FIRING
    elif kind in PAGERDUTY_RESOLVED:
        status = RESOLVED
    else:
        return []
    service = data.get("service") if isinstance(data.get("service"), dict) else {}
    priority = data.get("priority") if isinstance(data.get("priority"), dict) else {}
    labels = {
        key: _text(value, 200)
        for key, value in (
            ("urgency", data.get("urgency")),
            ("priority", priority.get("summary")),
            ("service_id", service.get("id")),
            ("incident_number", data.get("number")),
        )
        if value not in (None, "")
    }
    return [
        _incident(
            IncidentSource.PAGERDUTY,
            path="event.data",
            id=data.get("id") or event.get("id"),
            title=data.get("title"),
            severity=priority.get("summary") or data.get("urgency") or "",
            status=status,
            service=service.get("summary", ""),
            labels=labels,
            annotations={},
            url=data.get("html_url", ""),
            started_at=data.get("created_at") or event.get("occurred_at", ""),
        )
    ]


def from_generic(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The generic shape: the incident's fields themselves, or `{"incidents": [...]}`."""
    items = payload.get("incidents") if "incidents" in payload else [payload]
    if not isinstance(items, list):
        raise BadPayload("incidents", "must be a list")
    incidents = []
    for n, item in enumerate(items):
        path = f"incidents[{n}]" if "incidents" in payload else ""
        if not isinstance(item, dict):
            raise BadPayload(path, "must be an object")
        status = item.get("status", FIRING)
        if status not in (FIRING, RESOLVED):
            raise BadPayload(f"{path}.status".lstrip("."), "must be firing or resolved")
        incidents.append(
            _incident(
                IncidentSource.GENERIC,
                path=path,
                id=item.get("id"),
                title=item.get("title") or item.get("id"),
                severity=item.get("severity", ""),
                status=status,
                service=item.get("service", ""),
                labels=_strings(item.get("labels"), f"{path}.labels".lstrip(".")),
                annotations=_strings(item.get("annotations"), f"{path}.annotations".lstrip(".")),
                url=item.get("url", ""),
                started_at=item.get("started_at", ""),
            )
        )
    return incidents


NORMALIZERS = {
    IncidentSource.ALERTMANAGER: from_alertmanager,
    IncidentSource.PAGERDUTY: from_pagerduty,
    IncidentSource.GENERIC: from_generic,
}


def normalize(source: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    incidents = NORMALIZERS[source](payload)
    if len(incidents) > MAX_ALERTS:
        raise BadPayload("alerts", f"{len(incidents)} alerts in one delivery; at most {MAX_ALERTS}")
    return incidents


# --- matching ---


def _allowed(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def mismatch(incident: dict[str, Any], match: dict[str, Any]) -> str | None:
    """Why the trigger's `match` refuses this incident, or None when it matches."""
    if "status" in match and incident["status"] not in _allowed(match["status"]):
        return f"status {incident['status']!r} is not in match.status"
    if "severity" in match:
        allowed = [s.lower() for s in _allowed(match["severity"])]
        if incident["severity"] not in allowed:
            return f"severity {incident['severity'] or '(none)'!r} is not in match.severity"
    for name, wanted in (match.get("labels") or {}).items():
        value = incident["labels"].get(name)
        if value is None or value not in _allowed(wanted):
            return f"label {name}={value!r} is not in match.labels.{name}"
    return None


def check_trigger(trigger: dict[str, Any], add) -> dict[str, Any]:
    """Validate an incident trigger's keys (definition time); `add(path, message)`."""
    source = trigger.get("source", IncidentSource.GENERIC.value)
    if source not in IncidentSource.values:
        add("trigger.source", f"must be one of {', '.join(IncidentSource.values)}")
    window = trigger.get("dedupe_window", DEFAULT_DEDUPE_WINDOW)
    if (
        isinstance(window, bool)
        or not isinstance(window, int)
        or not 0 <= window <= MAX_DEDUPE_WINDOW
    ):
        add("trigger.dedupe_window", f"must be whole seconds from 0 to {MAX_DEDUPE_WINDOW}")
    match = trigger.get("match", {})
    if not isinstance(match, dict):
        add("trigger.match", "must be a mapping of status, severity and labels")
        match = {}
    for key in match:
        if key not in MATCH_KEYS:
            add(f"trigger.match.{key}", f"unknown key; use {', '.join(MATCH_KEYS)}")
    for key in ("status", "severity"):
        if key in match and not _scalar_or_list(match[key]):
            add(f"trigger.match.{key}", "must be a text or a list of texts")
    for value in _allowed(match["status"]) if "status" in match else []:
        if value not in (FIRING, RESOLVED):
            add("trigger.match.status", f"{value!r}: must be firing or resolved")
    labels = match.get("labels", {})
    if not isinstance(labels, dict):
        add("trigger.match.labels", "must be a mapping of label names to values")
    else:
        for name, value in labels.items():
            if not _scalar_or_list(value):
                add(f"trigger.match.labels.{name}", "must be a text or a list of texts")
    return {**trigger, "source": source, "dedupe_window": window, "match": match}


def _scalar_or_list(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, str | int) for v in value)
    return isinstance(value, str | int) and not isinstance(value, bool)


# --- the endpoint ---


def _signed(workflow: Workflow, request, body: bytes) -> bool:
    """The secret's other forms: PagerDuty's signature header (v1=<hex HMAC-SHA256 of the
    body>; several while PagerDuty rotates, comma-separated) and a bearer token."""
    secret = workflow.webhook_secret.encode()
    expected = signature_for(workflow.webhook_secret, body).removeprefix("sha256=").encode()
    for part in request.headers.get("X-PagerDuty-Signature", "").split(","):
        scheme, _, given = part.strip().partition("=")
        if scheme == "v1" and hmac.compare_digest(given.encode("utf-8", "replace"), expected):
            return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("utf-8", "replace"), secret
    )


def _receive_incident(request, key: str) -> JsonResponse:
    delivery = read_delivery(request, key, signed=_signed)
    if isinstance(delivery, JsonResponse):
        return delivery
    workflow, payload = delivery
    version = workflow.current_version
    trigger = (version.definition.get("trigger") or {}) if version is not None else {}
    if trigger.get("type") != TriggerType.INCIDENT:
        return error(
            409,
            "conflict",
            f"Workflow {workflow.slug!r} has no published version with an incident trigger.",
        )
    try:
        incidents = normalize(trigger.get("source", IncidentSource.GENERIC), payload)
    except BadPayload as exc:
        return error(400, "invalid", str(exc), [{"path": exc.path, "message": exc.message}])
    window = timedelta(seconds=trigger.get("dedupe_window", DEFAULT_DEDUPE_WINDOW))
    results = []
    for incident in incidents:
        try:
            results.append(_deliver(workflow, incident, trigger.get("match") or {}, window))
        except WorkflowNotRunnable as exc:
            return error(409, "conflict", str(exc))
        except DefinitionError as exc:
            details = [p.as_dict() for p in exc.problems]
            return error(400, "invalid", "; ".join(str(p) for p in exc.problems), details)
    response = JsonResponse({"incidents": results}, status=202)
    response.duplicate = bool(results) and all(r["outcome"] != "started" for r in results)
    return response


def _deliver(
    workflow: Workflow, incident: dict[str, Any], match: dict[str, Any], window: timedelta
) -> dict[str, Any]:
    """One alert: a run, the earlier run of the same alert and status, or skipped."""
    now = timezone.now()
    reason = mismatch(incident, match)
    key = {"workflow": workflow, "incident_id": incident["id"], "status": incident["status"]}
    current = IncidentDelivery.objects.filter(**key, current=True)
    earlier = current.select_related("execution").first()
    if earlier is not None and earlier.created_at >= now - window:
        return _repeat(incident, earlier)
    if earlier is not None:  # past the window: it stays for its run, no longer answering
        current.filter(pk=earlier.pk, created_at__lt=now - window).update(current=False)
    try:
        with transaction.atomic():
            # The row first: a concurrent delivery of the same alert waits on it, then loses.
            row = IncidentDelivery.objects.create(
                **key,
                source=incident["source"],
                title=incident["title"][:300],
                outcome=IncidentOutcome.SKIPPED if reason else IncidentOutcome.STARTED,
                reason=reason or "",
                created_at=now,
            )
            if reason:
                return _result(incident, IncidentOutcome.SKIPPED, None, reason)
            row.execution = trigger_workflow(
                workflow,
                trigger=Trigger.INCIDENT,
                trigger_data={"incident": incident},
            )
            row.save(update_fields=["execution"])
    except IntegrityError:
        winner = current.select_related("execution").first()
        if winner is None:
            raise
        return _repeat(incident, winner)
    return _result(incident, IncidentOutcome.STARTED, row.execution, "")


def _repeat(incident, earlier: IncidentDelivery) -> dict[str, Any]:
    """The same alert again within the window: counted on its row, answered as it was (its
    run, or skipped again for the same reason)."""
    IncidentDelivery.objects.filter(pk=earlier.pk).update(repeats=F("repeats") + 1)
    if earlier.outcome == IncidentOutcome.SKIPPED:
        return _result(incident, IncidentOutcome.SKIPPED, None, earlier.reason)
    return _result(incident, IncidentOutcome.DUPLICATE, earlier.execution, "")


def _result(incident, outcome: str, execution, reason: str) -> dict[str, Any]:
    return {
        "id": incident["id"],
        "status": incident["status"],
        "outcome": str(outcome),
        "execution": execution.pk if execution is not None else None,
        "reason": reason,
    }


receive_incident = counted(_receive_incident)


def prune_skipped(now=None) -> int:
    """Retention for the skipped alerts (a delivery with a run goes with its run)."""
    cutoff = (now or timezone.now()) - SKIPPED_KEPT
    deleted, _ = IncidentDelivery.objects.filter(
        execution__isnull=True, created_at__lt=cutoff
    ).delete()
    return deleted
