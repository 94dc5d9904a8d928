"""The OpenAPI schema, the API docs (served without any CDN) and the health endpoints."""

from __future__ import annotations

import os
import re

import pytest
import redis
from django.core.management import call_command
from django.test import Client
from django.urls import resolve

from apps.executions import dispatch

ROUTES = {
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/api/v1/schema/": "schema",
    "/api/v1/docs/": "api-docs",
    "/api/v1/workflows/": "workflow-list",
    "/api/v1/executions/": "execution-list",
}

CDN_MARKERS = ("cdn.", "jsdelivr", "unpkg", "cdnjs", "googleapis")


@pytest.mark.parametrize(("path", "name"), ROUTES.items())
def test_each_public_url_reaches_its_own_view_not_the_admins_catch_all(path, name):
    assert resolve(path).url_name == name


def test_the_schema_is_served_as_openapi_with_the_workflow_and_execution_paths(viewer, api_for):
    response = api_for(viewer).get("/api/v1/schema/", {"format": "json"})

    assert response.status_code == 200, response.content
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Opsflow API"
    for path in (
        "/api/v1/workflows/",
        "/api/v1/workflows/{slug}/",
        "/api/v1/workflows/{slug}/draft/",
        "/api/v1/workflows/{slug}/publish/",
        "/api/v1/workflows/{slug}/versions/",
        "/api/v1/workflows/{slug}/trigger/",
        "/api/v1/executions/",
        "/api/v1/executions/{id}/",
        "/api/v1/executions/{id}/events/",
    ):
        assert path in schema["paths"], path
    execution_filters = {
        p["name"] for p in schema["paths"]["/api/v1/executions/"]["get"]["parameters"]
    }
    assert {"workflow", "status", "trigger", "started_after", "started_before"} <= execution_filters


def test_the_schema_command_produces_a_valid_openapi_document(tmp_path):
    target = tmp_path / "schema.yaml"

    call_command("spectacular", "--validate", "--file", str(target))

    assert target.read_text().startswith("openapi: 3.")


def test_the_docs_page_loads_its_assets_from_this_server_not_a_cdn(viewer, api_for):
    client = api_for(viewer)

    response = client.get("/api/v1/docs/")

    assert response.status_code == 200, response.content
    html = response.content.decode()
    for marker in CDN_MARKERS:
        assert marker not in html, marker
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", html)
    assert any("swagger-ui" in asset for asset in assets), assets
    for asset in assets:
        assert asset.startswith("/"), asset
        served = Client().get(asset)
        assert served.status_code == 200, asset
        served.close()


def test_healthz_answers_200_without_authentication():
    response = Client().get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_the_database_and_redis_reachable(redis_conn):
    response = Client().get("/readyz")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": True, "redis": True}
    assert "down" not in body
    assert body["unsent_steps"] == 0


@pytest.mark.django_db
def test_readyz_answers_503_when_redis_is_unreachable(redis_conn, monkeypatch):
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    monkeypatch.setattr(dispatch, "_connection", (os.getpid(), unreachable))

    response = Client().get("/readyz")

    assert response.status_code == 503, response.content
    body = response.json()
    assert body["checks"] == {"database": True, "redis": False}
    assert body["down"] == ["redis"]
    assert "127.0.0.1" not in response.content.decode()  # where Redis lives stays in the log


@pytest.mark.django_db
def test_readyz_names_the_database_when_it_is_the_store_that_is_down(redis_conn, monkeypatch):
    from django.db import OperationalError

    from apps.executions import views

    class Down:
        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(views, "connection", Down())

    response = Client().get("/readyz")

    assert response.status_code == 503, response.content
    body = response.json()
    assert body["checks"] == {"database": False, "redis": True}
    assert body["down"] == ["database"]
    assert body["unsent_steps"] is None  # unknown without the database


@pytest.fixture
def schema(viewer, api_for) -> dict:
    return api_for(viewer).get("/api/v1/schema/", {"format": "json"}).json()


def _field(schema: dict, component: str, field: str) -> dict:
    return schema["components"]["schemas"][component]["properties"][field]


@pytest.mark.parametrize(
    ("component", "field"),
    [
        ("Approval", "decided_by"),
        ("ExecutionDetail", "triggered_by"),
        ("ExecutionEvent", "step"),
        ("WorkflowVersion", "created_by"),
    ],
)
def test_fields_that_come_back_null_are_declared_nullable(schema, component, field):
    """Issue 10 item 5: these were declared non-null and answered null (a webhook run has no
    user, a log line no step, a version made by a command no author)."""
    assert _field(schema, component, field).get("nullable") is True


def test_the_bulk_endpoints_declare_what_they_answer(schema):
    for action in ("bulk-retry", "bulk-discard"):
        ok = schema["paths"][f"/api/v1/incomplete-executions/{action}/"]["post"]["responses"]["200"]
        ref = ok["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/BulkResult"
    assert set(schema["components"]["schemas"]["BulkResult"]["properties"]) == {"done", "skipped"}


def test_every_operation_documents_its_errors_in_the_error_shape(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path.endswith("/auth/token/"):
                assert {"400", "413", "429"} <= codes
            else:
                assert {"401", "403"} <= codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method in ("post", "put", "patch"):
                assert {"400", "413"} <= codes, (method, path)
            error = operation["responses"].get("404") or operation["responses"]["400"]
            assert error["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
    cancel = schema["paths"]["/api/v1/executions/{id}/cancel/"]["post"]["responses"]
    assert "409" in cancel
    assert set(schema["components"]["schemas"]["Error"]["properties"]["error"]["required"]) == {
        "code",
        "message",
        "details",
    }


def test_operation_ids_are_unique_and_the_same_on_every_generation(viewer, api_for):
    def ids() -> list[str]:
        schema = api_for(viewer).get("/api/v1/schema/", {"format": "json"}).json()
        return [op["operationId"] for ops in schema["paths"].values() for op in ops.values()]

    first = ids()
    assert len(first) == len(set(first))
    assert ids() == first
    assert {"workflows_trigger_create", "incomplete_executions_bulk_retry_create"} <= set(first)
