"""Credentials are managed by editors and admins, encrypted at rest, and write-only (issue 9
build item 3): no API answer or admin page ever carries a value once it is saved."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from apps.accounts.choices import Role
from apps.credentials.models import Credential
from tests.factories import make_user

VALUE = "tok-3f9a-credential-value"


@pytest.fixture
def stored(org, editor):
    from apps.credentials.services import create_credential

    return create_credential(
        org, editor, name="API_TOKEN", value=VALUE, allowed_hosts=["api.example.com"]
    )


def test_an_editor_creates_a_credential_that_is_encrypted_and_never_returned(org, editor, api_for):
    answer = api_for(editor).post(
        "/api/v1/credentials/",
        {"name": "API_TOKEN", "value": VALUE, "allowed_hosts": ["API.example.com", "*.corp:8443"]},
        format="json",
    )

    assert answer.status_code == 201, answer.content
    assert VALUE not in answer.content.decode()
    assert answer.json()["allowed_hosts"] == ["api.example.com", "*.corp:8443"]
    row = Credential.objects.get(organization=org, name="API_TOKEN")
    assert VALUE not in row.ciphertext
    assert row.reveal() == VALUE
    listed = api_for(editor).get("/api/v1/credentials/").content.decode()
    assert "API_TOKEN" in listed and VALUE not in listed


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "X1", "value": "abc"}, "value"),
        ({"name": "X1"}, "value"),
        ({"name": "1X", "value": VALUE}, "name"),
        ({"name": "has-dash", "value": VALUE}, "name"),
        ({"name": "X1", "value": VALUE, "allowed_hosts": ["a b"]}, "allowed_hosts[0]"),
        ({"name": "X1", "value": VALUE, "allowed_hosts": "api.example.com"}, "allowed_hosts"),
        ({"name": "X1", "value": VALUE, "allowed_hosts": ["h:99999"]}, "allowed_hosts[0]"),
        ({"name": "X1", "value": VALUE, "secret": 1}, "secret"),
        ({"name": "X1", "value": 12345}, "value"),
        ({"name": "API_TOKEN", "value": VALUE}, "name"),
    ],
)
def test_bad_input_is_refused_with_the_field_and_changes_nothing(
    stored, editor, api_for, body, field
):
    answer = api_for(editor).post("/api/v1/credentials/", body, format="json")

    assert answer.status_code == 400, answer.content
    assert field in answer.content.decode()
    assert list(Credential.objects.values_list("name", flat=True)) == ["API_TOKEN"]


def test_patch_rotates_the_value_and_changes_hosts_but_never_the_name(stored, editor, api_for):
    client = api_for(editor)
    answer = client.patch(
        "/api/v1/credentials/API_TOKEN/",
        {"value": "rotated-value-0042", "allowed_hosts": ["new.example.com"]},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    assert "rotated-value-0042" not in answer.content.decode()
    stored.refresh_from_db()
    assert stored.reveal() == "rotated-value-0042"
    assert stored.allowed_hosts == ["new.example.com"]

    renamed = client.patch("/api/v1/credentials/API_TOKEN/", {"name": "OTHER"}, format="json")
    assert renamed.status_code == 400
    assert "cannot be changed" in renamed.content.decode()
    assert Credential.objects.get().name == "API_TOKEN"

    assert client.delete("/api/v1/credentials/API_TOKEN/").status_code == 204
    assert not Credential.objects.exists()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_viewers_and_operators_neither_see_nor_manage_credentials(stored, org, role, api_for):
    client = api_for(make_user("low", org, role))

    assert client.get("/api/v1/credentials/").json()["results"] == []
    assert client.get("/api/v1/credentials/API_TOKEN/").status_code == 403
    assert (
        client.patch(
            "/api/v1/credentials/API_TOKEN/", {"value": "x" * 8}, format="json"
        ).status_code
        == 403
    )
    assert client.delete("/api/v1/credentials/API_TOKEN/").status_code == 403
    made = client.post("/api/v1/credentials/", {"name": "MINE", "value": VALUE}, format="json")
    assert made.status_code == 403
    assert Credential.objects.count() == 1
    assert Credential.objects.get().reveal() == VALUE


def test_another_organizations_member_gets_not_found(stored, outsider, api_for):
    client = api_for(outsider)

    assert client.get("/api/v1/credentials/").json()["results"] == []
    assert client.get("/api/v1/credentials/API_TOKEN/").status_code == 404
    assert client.delete("/api/v1/credentials/API_TOKEN/").status_code == 404
    assert Credential.objects.count() == 1


def test_rotation_re_encrypts_with_the_new_first_key(stored, settings):
    old = settings.OPSFLOW_SECRETS_KEYS[0]
    new = Fernet.generate_key().decode()
    settings.OPSFLOW_SECRETS_KEYS = [new, old]
    call_command("rotate_credentials")

    settings.OPSFLOW_SECRETS_KEYS = [new]  # the old key is gone: the value still opens
    stored.refresh_from_db()
    assert stored.reveal() == VALUE

    settings.OPSFLOW_SECRETS_KEYS = [Fernet.generate_key().decode()]  # a wrong key
    with pytest.raises(CommandError, match="acme/API_TOKEN"):
        call_command("rotate_credentials")


def test_the_admin_page_never_renders_the_value_and_blank_keeps_it(client, stored, editor):
    client.force_login(editor)
    url = f"/credentials/credential/{stored.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert VALUE not in page.content.decode()

    kept = client.post(
        url, {"value": "", "hosts": "api.example.com\n*.example.org", "description": "d"}
    )
    assert kept.status_code == 302, kept.content.decode()[-2000:]
    stored.refresh_from_db()
    assert stored.reveal() == VALUE
    assert stored.allowed_hosts == ["api.example.com", "*.example.org"]

    bad = client.post(url, {"value": "ab", "hosts": "", "description": ""})
    assert bad.status_code == 200 and "at least 4 characters" in bad.content.decode()
    stored.refresh_from_db()
    assert stored.reveal() == VALUE


def test_an_editor_adds_a_credential_in_the_admin(client, org, editor):
    client.force_login(editor)
    answer = client.post(
        "/credentials/credential/add/",
        {
            "organization": org.pk,
            "name": "DB_PASSWORD",
            "value": VALUE,
            "hosts": "db.internal:5432",
        },
    )
    assert answer.status_code == 302, answer.content.decode()[-2000:]
    row = Credential.objects.get(name="DB_PASSWORD")
    assert row.reveal() == VALUE and row.allowed_hosts == ["db.internal:5432"]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_the_admin_hides_credentials_below_editor(client, stored, org, role):
    client.force_login(make_user("low", org, role))
    assert client.get("/credentials/credential/").status_code == 403
    assert client.get(f"/credentials/credential/{stored.pk}/change/").status_code == 403
