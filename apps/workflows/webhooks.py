"""`POST /hooks/<key>/`: start a run from an outside system (DESIGN §9).

A plain Django view rather than DRF: the signature is computed over the raw body, and every
answer, even to a body that is not JSON or too large, is the API's JSON error shape.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import IntegrityError, transaction
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from apps.analytics import metrics_counters
from apps.executions.choices import Trigger
from apps.executions.services import WorkflowNotRunnable, trigger_workflow
from apps.workflows.definition import DefinitionError
from apps.workflows.models import WebhookDelivery, Workflow
from config.limits import document_problem, loads_json, problem_text

SIGNATURE_HEADER = "X-Opsflow-Signature"
IDEMPOTENCY_WINDOW = timedelta(hours=24)


def error(status: int, code: str, message: str, details=None) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": code, "message": message, "details": details or []}}, status=status
    )


def _not_json(text: str):
    raise ValueError(f"{text} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


def signature_for(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def accepted(execution, repeat: bool = False) -> JsonResponse:
    response = JsonResponse(
        {"execution": execution.pk, "status": execution.status, "duplicate": repeat}, status=202
    )
    response.duplicate = repeat  # for the count of outcomes
    return response


def counted(view):
    """An inbound endpoint: CSRF-exempt (the key and signature authenticate it), and every
    answer counted by outcome for /metrics (one HINCRBY; never fails the request)."""

    @csrf_exempt
    @functools.wraps(view)
    def endpoint(request, key: str):
        outcome = metrics_counters.WEBHOOK_ERROR
        try:
            response = view(request, key)
            outcome = metrics_counters.webhook_outcome(
                response.status_code, getattr(response, "duplicate", False)
            )
            return response
        finally:
            metrics_counters.count_webhook(outcome)

    return endpoint


def too_large() -> JsonResponse:
    return error(
        413,
        "payload_too_large",
        f"The body is larger than {settings.OPSFLOW_MAX_BODY_BYTES} bytes.",
    )


def read_delivery(request, key: str, signed=None) -> tuple[Workflow, dict] | JsonResponse:
    """The checks every inbound call passes, in order: POST, the size limit, the key, the
    signature when the workflow has a secret (`signed(workflow, request, body)` may accept
    other forms of it), and a JSON object within the document limits. Returns the workflow and
    the payload, or the error to answer."""
    if request.method != "POST":
        response = error(405, "method_not_allowed", "Use POST.")
        response["Allow"] = "POST"
        return response
    declared = request.META.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and int(declared) > settings.OPSFLOW_MAX_BODY_BYTES:
        return too_large()
    try:
        body = request.body
    except RequestDataTooBig:
        return too_large()
    if len(body) > settings.OPSFLOW_MAX_BODY_BYTES:
        return too_large()

    workflow = Workflow.objects.select_related("current_version").filter(webhook_key=key).first()
    if workflow is None:
        return error(404, "not_found", "No workflow has this webhook key.")
    if workflow.webhook_secret and not (signed and signed(workflow, request, body)):
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not given:
            return error(
                401,
                "signature_required",
                f"This webhook needs an {SIGNATURE_HEADER} header (sha256=<hex HMAC of the body>).",
            )
        expected = signature_for(workflow.webhook_secret, body).encode()
        if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected):
            return error(401, "bad_signature", "The signature does not match the body.")

    try:
        payload = loads_json(body or b"{}", parse_constant=_not_json, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, "invalid_json", f"The body is not JSON: {exc}")
    if not isinstance(payload, dict):
        return error(
            400,
            "invalid",
            "The body must be a JSON object.",
            [{"path": "", "message": "must be an object"}],
        )
    problem = document_problem(payload)
    if problem:
        return error(
            400,
            "invalid",
            f"The body cannot be accepted: {problem_text(problem)}.",
            [{"path": problem[0], "message": problem[1]}],
        )
    return workflow, payload


def _receive(request, key: str):
    delivery = read_delivery(request, key)
    if isinstance(delivery, JsonResponse):
        return delivery
    workflow, payload = delivery
    variables = payload.get("variables", {})
    if not isinstance(variables, dict):
        return error(
            400,
            "invalid",
            "variables: must be an object",
            [{"path": "variables", "message": "must be an object"}],
        )

    idempotency_key = request.headers.get("Idempotency-Key", "").strip()[:200]
    if idempotency_key:
        earlier = (
            WebhookDelivery.objects.filter(
                workflow=workflow,
                idempotency_key=idempotency_key,
                created_at__gte=timezone.now() - IDEMPOTENCY_WINDOW,
            )
            .select_related("execution")
            .first()
        )
        if earlier:
            return accepted(earlier.execution, repeat=True)
        WebhookDelivery.objects.filter(
            workflow=workflow, idempotency_key=idempotency_key
        ).delete()  # expired

    try:
        with transaction.atomic():
            execution = trigger_workflow(
                workflow, variables=variables, trigger=Trigger.WEBHOOK, trigger_data=payload
            )
            if idempotency_key:
                WebhookDelivery.objects.create(
                    workflow=workflow, idempotency_key=idempotency_key, execution=execution
                )
    except WorkflowNotRunnable as exc:
        return error(409, "conflict", str(exc))
    except DefinitionError as exc:
        details = [p.as_dict() for p in exc.problems]
        return error(400, "invalid", "; ".join(str(p) for p in exc.problems), details)
    except IntegrityError:
        earlier = (
            idempotency_key
            and WebhookDelivery.objects.select_related("execution")
            .filter(workflow=workflow, idempotency_key=idempotency_key)
            .first()
        )
        if not earlier:
            raise  # not the idempotency race: a real error
        return accepted(earlier.execution, repeat=True)  # the same key raced in: the first one won
    return accepted(execution)


receive = counted(_receive)
