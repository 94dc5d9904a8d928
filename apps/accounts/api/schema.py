"""The OpenAPI schema says what the API really answers on errors (issue 10 item 5): every
operation documents the one error shape for the 4xx codes it can give."""

from __future__ import annotations

ERROR = {
    "type": "object",
    "description": "The one error shape of the API.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "example": "not_found"},
                "message": {"type": "string"},
                "details": {
                    "description": "A list of {path, message} for invalid input; else an object",
                    "oneOf": [
                        {"type": "array", "items": {"type": "object"}},
                        {"type": "object"},
                    ],
                },
            },
        }
    },
}

WHY = {
    "400": "Invalid input: the details name each problem with its path.",
    "401": "Not authenticated: send a token (Authorization: Token …) or a session.",
    "403": "Your role in the organization does not allow this.",
    "404": "Not found in your organizations.",
    "409": "The object is not in a state that allows this.",
    "413": "The body is larger than OPSFLOW_MAX_BODY_BYTES.",
    "429": "Locked out after too many failed attempts.",
}
# Actions that refuse with 409 when the object's state does not allow them.
CONFLICTS = ("cancel", "retrigger", "mark-succeeded", "retry", "trigger", "approve", "reject")


def _codes(path: str, method: str) -> list[str]:
    if path.endswith("/auth/token/"):
        return ["400", "413", "429"]
    codes = ["401", "403"]
    writes = method in ("post", "put", "patch")
    if writes or method == "get":
        codes.append("400")  # bodies, and the filters of lists
    if "{" in path:
        codes.append("404")
    if writes:
        codes.append("413")
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if (
        last in CONFLICTS
        or (method == "delete" and "/workflows/" in path)
        or (method == "delete" and "/incomplete-executions/" in path)
    ):
        codes.append("409")
    return codes


def document_errors(result, generator, request, public):
    """drf-spectacular postprocessing hook."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code in _codes(path, method):
                operation["responses"].setdefault(code, {"description": WHY[code], "content": body})
    return result
