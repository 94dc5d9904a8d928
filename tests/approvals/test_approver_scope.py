"""Approvers are scoped to the workflow's organization (issue 9, finding 6; build item 7).

A Django group is global: `group:sre` used to reach a member of another organization who was in
that group, and they approved through the emailed link. Now a group or a username resolves only
to members of the workflow's organization, on every channel.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from apps.accounts.choices import Role
from apps.approvals import services as approval_services
from apps.approvals.choices import ApprovalStatus
from apps.approvals.notifications import link
from tests.approvals.test_api_and_web import decision_url
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sre(org, other_org):
    """Group `sre`: an operator of acme, and an admin of globex (another organization)."""
    group = Group.objects.create(name="sre")
    ours = make_user("ours", org, Role.OPERATOR)
    theirs = make_user("theirs", other_org, Role.ADMIN)
    group.user_set.add(ours, theirs)
    return ours, theirs


def test_a_group_reaches_only_the_members_of_the_workflows_organization(open_gate, sre):
    ours, theirs = sre
    approval = open_gate(["group:sre"])

    assert list(approval_services.permitted_users(approval)) == [ours]
    assert approval_services.can_respond(approval, ours)
    assert not approval_services.can_respond(approval, theirs)


def test_another_organizations_group_member_cannot_decide_through_the_emailed_link(open_gate, sre):
    _ours, theirs = sre
    approval = open_gate(["group:sre"])

    response = Client().post(urlsplit(link(approval, theirs, "approve")).path)

    assert response.status_code == 403
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING


def test_a_username_of_another_organization_is_not_an_approver(open_gate, other_org):
    stranger = make_user("stranger", other_org, Role.ADMIN)
    approval = open_gate(["stranger"])

    assert list(approval_services.permitted_users(approval)) == []
    with pytest.raises(approval_services.NotAllowed):
        approval_services.decide(approval, stranger, "approve", via="api")


def test_a_viewer_named_explicitly_may_decide(open_gate, viewer, api_for):
    approval = open_gate(["viewer"])

    response = api_for(viewer).post(decision_url(approval.pk), {"note": "ok"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "approved"


# --- what the emailed link shows ---------------------------------------------------------------


def test_the_emailed_link_shows_no_upstream_output_without_a_login(open_gate, operator):
    approval = open_gate(["operator"])
    path = urlsplit(link(approval, operator, "approve")).path

    anonymous = Client().get(path).content.decode()
    member = Client()
    member.force_login(operator)
    logged_in = member.get(path).content.decode()

    assert approval.message in anonymous and "check" in anonymous  # the message, the nodes
    shown = "&#x27;host&#x27;: &#x27;web1&#x27;"  # `check`'s output {"host": "web1"}, as shown
    assert shown not in anonymous
    assert "Log in" in anonymous
    assert shown in logged_in
