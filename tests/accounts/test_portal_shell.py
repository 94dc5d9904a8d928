"""The portal's shell (issue 12 item 1): django-unfold's look on every admin page, built for the
Content-Security-Policy (Alpine's CSP build, one htmx, nothing inline), with a sidebar that
shows each user only the pages their role opens."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.approvals.test_api_and_web import open_gate, open_gates  # noqa: F401
from tests.factories import make_user

pytestmark = pytest.mark.django_db

PAGES = [
    "/",
    "/executions/execution/",
    "/executions/incompleteexecution/",
    "/executions/agent/",
    "/workflows/workflow/",
    "/approvals/approval/",
    "/approvals/approval/inbox/",
]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def sidebar_links(html: str) -> set[str]:
    nav = html[html.index('id="nav-sidebar-inner"') :]
    return set(re.findall(r'href="([^"]+)"', nav[: nav.index("</nav>")]))


def test_the_login_page_without_a_next_address_lands_on_the_dashboard(operator):
    client = Client()

    response = client.post("/login/", {"username": "operator", "password": "pw-operator"})

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("path", PAGES)
def test_every_page_runs_the_csp_build_of_alpine_and_one_htmx_with_nothing_inline(operator, path):
    html = logged_in(operator).get(path).content.decode()

    scripts = re.findall(r"<script\b[^>]*>", html)
    assert all("src=" in tag for tag in scripts), "an inline script would be refused"
    sources = [re.search(r'src="([^"]+)"', tag).group(1) for tag in scripts]
    assert any(s.endswith("vendor/alpinejs-csp/alpine-csp.min.js") for s in sources)
    assert not any(s.endswith("unfold/js/alpine/alpine.js") for s in sources)  # needs eval
    assert len([s for s in sources if re.search(r"/htmx[^/]*\.js$", s)]) == 1
    assert "<style" not in html
    assert not re.search(r"\sstyle=", html)
    assert "opsflow/theme.css" in html  # the colours unfold would have sent inline


def test_the_sidebar_lists_the_automation_pages_an_operator_may_open(operator):
    links = sidebar_links(logged_in(operator).get("/").content.decode())

    assert {
        "/",
        "/workflows/workflow/",
        "/executions/execution/",
        "/approvals/approval/inbox/",
        "/executions/incompleteexecution/",
        "/executions/agent/",
    } <= links
    # Credentials are for editors and admins, users and groups for superusers.
    assert "/credentials/credential/" not in links
    assert "/auth/user/" not in links
    assert "/django-rq/" not in links


def test_the_sidebar_shows_credentials_to_editors(editor):
    links = sidebar_links(logged_in(editor).get("/").content.decode())

    assert "/credentials/credential/" in links


def test_a_superuser_sees_the_administration_pages(db, settings):
    settings.REDIS_URL = settings.REDIS_URL or "redis://127.0.0.1:1/0"
    root = make_user("root", is_superuser=True)

    links = sidebar_links(logged_in(root).get("/").content.decode())

    assert {"/auth/user/", "/auth/group/", "/accounts/organization/", "/django-rq/"} <= links


def test_a_member_of_no_organization_gets_no_automation_pages(db):
    stranger = make_user("stranger")  # staff, but no membership anywhere

    links = sidebar_links(logged_in(stranger).get("/").content.decode())

    assert "/executions/execution/" not in links
    assert "/workflows/workflow/" not in links


@pytest.mark.django_db(transaction=True)
def test_the_header_and_the_sidebar_count_the_approvals_waiting_on_the_user(
    operator,
    open_gate,  # noqa: F811 (a fixture)
):
    open_gate()  # open to every operator of the organization
    html = logged_in(operator).get("/executions/execution/").content.decode()

    assert 'id="opsflow-inbox">Approvals (1)</a>' in html
    nav = html[html.index('id="nav-sidebar-inner"') :]
    entry = nav[nav.index("Pending approvals") :]
    assert re.match(r"Pending approvals\s*</span>\s*<span[^>]*>\s*1\s*</span>", entry), entry[:300]


def test_the_locked_out_page_renders_for_an_anonymous_visitor(rf):
    from django.contrib.auth.models import AnonymousUser

    from apps.accounts.lockout import lockout_response

    request = rf.post("/login/", {"username": "someone"})
    request.user = AnonymousUser()

    response = lockout_response(request)

    assert response.status_code == 429
    assert "Too many failed attempts for &#x27;someone&#x27;" in response.content.decode()


def test_a_missing_page_keeps_the_portal_around_it_for_a_signed_in_user(operator, settings):
    settings.DEBUG = False

    response = logged_in(operator).get("/executions/execution/999999/change/")

    assert response.status_code == 404
    html = response.content.decode()
    assert "Nothing here" in html
    assert "/executions/execution/" in sidebar_links(html)  # the sidebar, to go on from here


def test_the_404_page_renders_for_an_anonymous_visitor(rf):
    from django.contrib.auth.models import AnonymousUser

    from apps.accounts.views import not_found

    request = rf.get("/somewhere/")
    request.user = AnonymousUser()

    response = not_found(request)

    assert response.status_code == 404
    html = response.content.decode()
    assert "Nothing here" in html and 'id="nav-sidebar' not in html
