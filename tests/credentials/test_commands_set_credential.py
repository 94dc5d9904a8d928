"""`manage.py set_credential`: the value from standard input, created then changed, audited by
the credential services; a bad host or an empty value is an error that changes nothing."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from apps.credentials.models import Credential

pytestmark = pytest.mark.django_db


def run(monkeypatch, value: str, *args: str) -> str:
    monkeypatch.setattr("sys.stdin", io.StringIO(value))
    out = io.StringIO()
    call_command("set_credential", *args, stdout=out)
    return out.getvalue()


def test_it_creates_then_changes_a_credential_from_stdin(org, monkeypatch):
    said = run(
        monkeypatch, "first-value\n", "KEY", "--organization", org.slug, "--allowed-host", "h:22"
    )
    assert f"Created credential KEY of {org.slug}." in said
    credential = Credential.objects.get(organization=org, name="KEY")
    assert credential.reveal() == "first-value" and credential.allowed_hosts == ["h:22"]

    said = run(monkeypatch, "second-value", "KEY", "--organization", org.slug)

    assert "Changed credential KEY" in said
    credential.refresh_from_db()
    assert credential.reveal() == "second-value" and credential.allowed_hosts == ["h:22"]


def test_an_empty_value_or_a_bad_host_changes_nothing(org, monkeypatch):
    with pytest.raises(CommandError, match="standard input, and it was empty"):
        run(monkeypatch, "\n", "KEY", "--organization", org.slug)
    with pytest.raises(CommandError, match="allowed_hosts"):
        run(monkeypatch, "v", "KEY", "--organization", org.slug, "--allowed-host", "http://x/")
    with pytest.raises(CommandError, match="no organization 'nope'"):
        run(monkeypatch, "v", "KEY", "--organization", "nope")
    assert not Credential.objects.exists()
