"""The admin surface that crosses organizations or bypasses services (issue 9, findings 7, 8):
RQ's dashboard is for superusers only, and only a superuser may hard-delete an incomplete
execution; operators discard it through the service."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

from apps.accounts.choices import Role
from apps.executions.choices import IncompleteStatus
from apps.executions.models import IncompleteExecution
from tests.executions.test_failure_api import check_definition
from tests.factories import make_user, make_workflow

pytestmark = pytest.mark.django_db(transaction=True)

DASHBOARD = "/django-rq/"
INCOMPLETE = "/executions/incompleteexecution/"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", password="pw-root")


@pytest.fixture
def with_redis_url(settings):
    """The route checks REDIS_URL when asked; a made-up one, since no view body runs here."""
    settings.REDIS_URL = settings.REDIS_URL or "redis://127.0.0.1:1/0"


def test_the_rq_dashboard_refuses_staff_who_are_not_superusers(org, with_redis_url):
    operator = make_user("ops", org, Role.ADMIN)  # staff, and admin of an organization

    assert logged_in(operator).get(DASHBOARD).status_code == 403
    assert logged_in(operator).get(f"{DASHBOARD}queues/0/").status_code == 403
    assert logged_in(operator).get(f"{DASHBOARD}stats.json").status_code == 403


def test_the_rq_dashboard_sends_anonymous_visitors_to_the_login(with_redis_url):
    response = Client().get(DASHBOARD)

    assert response.status_code == 302
    assert "/login/" in response["Location"]


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="the dashboard reads a real Redis")
def test_a_superuser_sees_the_rq_dashboard(superuser):
    response = logged_in(superuser).get(DASHBOARD)

    assert response.status_code == 200
    assert b"default" in response.content


def test_the_embedded_default_has_no_rq_dashboard(superuser, settings):
    settings.REDIS_URL = None  # its queues live in one process's memory

    assert logged_in(superuser).get(DASHBOARD).status_code == 404


def test_the_admins_own_copy_of_the_rq_dashboard_is_not_registered(org):
    operator = make_user("ops", org, Role.OPERATOR)

    assert logged_in(operator).get("/django_rq/dashboard/").status_code == 404


# --- no hard delete of incomplete executions ------------------------------------------------


@pytest.fixture
def record(org, workers, tmp_path) -> IncompleteExecution:
    from apps.executions.services import trigger_workflow

    workflow = make_workflow(org, check_definition("stuck"))
    trigger_workflow(workflow, variables={"flag": str(tmp_path / "missing")})
    workers.drain()
    return IncompleteExecution.objects.get()


def test_an_operator_cannot_hard_delete_an_incomplete_execution(org, record):
    client = logged_in(make_user("ops", org, Role.OPERATOR))

    assert client.get(f"{INCOMPLETE}{record.pk}/delete/").status_code == 403
    listing = client.get(INCOMPLETE)
    assert listing.status_code == 200
    assert b'value="delete_selected"' not in listing.content
    assert b'value="discard_selected"' in listing.content
    posted = client.post(
        INCOMPLETE, {"action": "delete_selected", "_selected_action": [record.pk], "post": "yes"}
    )
    assert posted.status_code in (200, 302)
    record.refresh_from_db()  # still there, still unresolved
    assert record.status == IncompleteStatus.UNRESOLVED


def test_a_superuser_may_hard_delete_an_incomplete_execution(record, superuser):
    response = logged_in(superuser).post(f"{INCOMPLETE}{record.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not IncompleteExecution.objects.filter(pk=record.pk).exists()
