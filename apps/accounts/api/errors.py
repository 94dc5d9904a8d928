"""The one error shape of the API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The resource is not in a state that allows this."


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is larger than the limit (OPSFLOW_MAX_BODY_BYTES)."


class DefinitionInvalid(exceptions.APIException):
    """A workflow definition with problems; details list every one with its path."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_definition"

    def __init__(self, problems: list[dict[str, str]]):
        self.problems = problems
        super().__init__(f"The definition has {len(problems)} problem(s).")


def _flatten(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """Turn DRF's nested error detail into a list of {path, message}."""
    if isinstance(detail, dict):
        out: list[dict[str, str]] = []
        for key, value in detail.items():
            if key == "non_field_errors":
                path = prefix
            elif prefix:
                path = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}"
            else:
                path = str(key)
            out.extend(_flatten(value, path))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return [{"path": prefix, "message": str(item)} for item in detail]
        out = []
        for index, item in enumerate(detail):
            if item:
                out.extend(_flatten(item, f"{prefix}[{index}]"))
        return out
    return [{"path": prefix, "message": str(detail)}]


def exception_handler(exc, context):
    # Normalize Django's own exceptions first so that they carry a DRF detail and code.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, DefinitionInvalid):
        details: Any = exc.problems
        message = str(exc.detail)
        code = exc.default_code
    elif isinstance(exc, exceptions.ValidationError):
        details = _flatten(exc.detail)
        message = (
            "; ".join(
                f"{d['path']}: {d['message']}" if d["path"] else d["message"] for d in details
            )
            or "Invalid input."
        )
        code = "invalid"
    else:
        detail = getattr(exc, "detail", None)
        if isinstance(detail, dict | list):
            details = detail
            message = str(getattr(exc, "default_detail", "Error"))
        else:
            details = {}
            message = str(detail) if detail is not None else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        if isinstance(exc, Conflict) and getattr(exc, "extra", None):
            details = exc.extra
    response.data = {"error": {"code": code, "message": message, "details": details}}
    return response


def error_response(status_code: int, code: str, message: str, details: Any = None) -> Response:
    return Response(
        {"error": {"code": code, "message": message, "details": details or {}}}, status=status_code
    )


class UnknownEndpoint(APIView):
    """Every path under /api/v1/ that no endpoint serves: 404 in the error shape (not the
    admin's login redirect, which the catch-all admin route would give)."""

    authentication_classes: list = []
    permission_classes: list = []
    schema = None  # not an endpoint of the schema

    def _not_found(self, request, *args, **kwargs):
        raise exceptions.NotFound(f"No API endpoint {request.path}; see /api/v1/docs/.")

    get = post = put = patch = delete = head = options = _not_found
