"""Assertions on the API's one error shape: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from typing import Any

ERROR_KEYS = {"code", "message", "details"}


def error_of(response) -> dict[str, Any]:
    """The body's `error` object, after checking that it has exactly the contract's keys."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def detail_paths(response) -> set[str]:
    details = error_of(response)["details"]
    assert isinstance(details, list), details
    return {detail["path"] for detail in details}
