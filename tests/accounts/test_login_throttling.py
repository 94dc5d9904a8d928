"""Login throttling (issue 10 item 3): after 10 failures for one user name from one address in
15 minutes, that pair is refused for 15 minutes, the right password included, on the admin
login, the API token endpoint and the emailed approval links; `axes_reset_username` unlocks."""

from __future__ import annotations

import html

import pytest
from django.core.management import call_command
from django.test import Client

from apps.approvals.models import Approval
from apps.approvals.notifications import make_token
from tests.factories import make_user

LOGIN = "/login/"
TOKEN = "/api/v1/auth/token/"


@pytest.fixture
def alice(org):
    return make_user("alice", org, "operator")  # password "pw-alice"


def login(client: Client, password: str, username: str = "alice"):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/"})


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.django_db
def test_ten_failures_lock_the_name_at_that_address_even_for_the_right_password(alice):
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(10):
        assert login(client, "wrong").status_code in (200, 429)

    locked = login(client, "pw-alice")

    assert locked.status_code == 429
    page = html.unescape(locked.content.decode())
    assert "Too many failed attempts for 'alice' from your address" in page
    assert "axes_reset_username alice" in page
    assert not logged_in(client)


@pytest.mark.django_db
def test_another_address_and_a_reset_let_the_user_in(alice):
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(10):
        login(attacker, "wrong")

    elsewhere = Client(REMOTE_ADDR="198.51.100.2")
    login(elsewhere, "pw-alice")
    assert logged_in(elsewhere)

    call_command("axes_reset_username", "alice")
    login(attacker, "pw-alice")
    assert logged_in(attacker)


@pytest.mark.django_db
def test_a_forged_forwarded_for_header_buys_no_fresh_attempts(alice):
    for i in range(10):
        Client(REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}").post(
            LOGIN, {"username": "alice", "password": "wrong"}
        )

    client = Client(REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="10.9.9.9")
    assert login(client, "pw-alice").status_code == 429


@pytest.mark.django_db
def test_the_token_endpoint_gives_a_token_and_is_throttled_the_same(alice):
    client = Client(REMOTE_ADDR="203.0.113.7")
    good = {"username": "alice", "password": "pw-alice"}

    first = client.post(TOKEN, good, content_type="application/json")
    assert first.status_code == 200 and len(first.json()["token"]) == 40

    for _ in range(10):
        wrong = client.post(TOKEN, {**good, "password": "wrong"}, content_type="application/json")
        assert wrong.status_code in (400, 429)
    locked = client.post(TOKEN, good, content_type="application/json")

    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "locked_out"
    assert "axes_reset_username alice" in locked.json()["error"]["message"]


@pytest.mark.django_db(transaction=True)
def test_altered_approval_links_lock_that_address_out_of_deciding(open_gate, operator):
    gate: Approval = open_gate()
    client = Client(REMOTE_ADDR="203.0.113.7")
    for i in range(10):
        client.post(f"/approvals/respond/not-a-valid-token-{i}/")

    good = client.post(f"/approvals/respond/{make_token(gate, operator, 'approve')}/")

    assert good.status_code == 429
    assert "Too many failed attempts from your address" in good.content.decode()
    gate.refresh_from_db()
    assert gate.status == "pending"
    other = Client(REMOTE_ADDR="198.51.100.2")
    assert (
        other.post(f"/approvals/respond/{make_token(gate, operator, 'approve')}/").status_code
        == 200
    )
