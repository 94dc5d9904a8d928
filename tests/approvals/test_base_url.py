"""Emailed links go where the portal answers (issue 10 item 8): `make run PORT=9000` links to
port 9000 unless OPSFLOW_BASE_URL says otherwise; a deployment without it is warned about."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from apps.approvals.models import Approval
from apps.approvals.notifications import link
from apps.executions.management.commands.standalone import adopt_served_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gate(open_gate) -> Approval:
    return open_gate()


def test_standalone_on_another_port_links_to_that_port(settings, gate, owner):
    settings.OPSFLOW_BASE_URL = ""

    served = adopt_served_url("127.0.0.1", 9000)

    assert served == "http://127.0.0.1:9000"
    assert link(gate, owner, "approve").startswith("http://127.0.0.1:9000/approvals/respond/")


def test_a_set_base_url_wins_over_the_served_address(settings, gate, owner):
    settings.OPSFLOW_BASE_URL = "https://ops.example.com/"

    assert adopt_served_url("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    assert link(gate, owner, "reject").startswith("https://ops.example.com/approvals/respond/")


def test_check_deploy_warns_when_the_base_url_is_unset(settings, capsys):
    settings.OPSFLOW_BASE_URL = ""

    call_command("check", "--deploy", "--tag", "security")

    assert "opsflow.W001" in capsys.readouterr().err
