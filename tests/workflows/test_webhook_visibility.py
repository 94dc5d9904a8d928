"""Who sees a workflow's webhook (issue 9, findings 4 and 5; build item 6): the URL is the key
that triggers the run, so viewers never see it (API and admin) and operators do; the secret is
write-only, set or removed by editors and never shown again."""

from __future__ import annotations

import pytest

from apps.accounts.choices import Role
from tests.factories import make_user, make_workflow
from tests.workflows.test_admin import change_url, deploy_definition, resubmitted

SECRET = "s3cret-hmac-key"


@pytest.fixture
def hooked(org):
    workflow = make_workflow(org, deploy_definition())
    workflow.webhook_secret = SECRET
    workflow.save(update_fields=["webhook_secret"])
    return workflow


def test_the_api_gives_viewers_no_webhook_url(viewer, hooked, api_for):
    body = api_for(viewer).get(f"/api/v1/workflows/{hooked.slug}/").json()

    assert body["webhook_url"] is None
    assert hooked.webhook_key not in str(api_for(viewer).get("/api/v1/workflows/").json())


def test_the_api_gives_operators_the_webhook_url(operator, hooked, api_for):
    body = api_for(operator).get(f"/api/v1/workflows/{hooked.slug}/").json()

    assert body["webhook_url"].endswith(f"/hooks/{hooked.webhook_key}/")


@pytest.mark.parametrize(
    ("role", "sees_key"), [(Role.VIEWER, False), (Role.OPERATOR, True), (Role.EDITOR, True)]
)
def test_the_admin_page_shows_the_key_to_operators_up_and_the_secret_to_nobody(
    client, org, hooked, role, sees_key
):
    client.force_login(make_user("someone", org, role))

    page = client.get(change_url(hooked)).content.decode()

    assert (hooked.webhook_key in page) is sees_key
    assert SECRET not in page


def test_an_editor_sets_keeps_and_removes_the_secret_without_ever_seeing_it(client, editor, hooked):
    client.force_login(editor)
    page = client.get(change_url(hooked))
    assert 'name="webhook_secret"' in page.content.decode()

    kept = client.post(change_url(hooked), resubmitted(page, webhook_secret=""))
    assert kept.status_code == 302, kept.content
    hooked.refresh_from_db()
    assert hooked.webhook_secret == SECRET  # blank keeps it

    client.post(change_url(hooked), resubmitted(page, webhook_secret="rotated-key"))
    hooked.refresh_from_db()
    assert hooked.webhook_secret == "rotated-key"

    client.post(change_url(hooked), resubmitted(page, remove_webhook_secret="on"))
    hooked.refresh_from_db()
    assert hooked.webhook_secret == ""
