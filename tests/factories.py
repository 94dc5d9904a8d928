"""Plain factory functions for tests."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from django.contrib.auth import get_user_model

from apps.accounts.models import Membership, Organization
from apps.workflows.models import Workflow
from apps.workflows.services import create_workflow, publish_workflow

_seq = itertools.count(1)


def make_org(slug: str | None = None) -> Organization:
    slug = slug or f"org-{next(_seq)}"
    return Organization.objects.create(slug=slug, name=slug.title())


def make_user(
    username: str | None = None, org: Organization | None = None, role: str | None = None, **extra
):
    username = username or f"user{next(_seq)}"
    user = get_user_model().objects.create_user(
        username=username, password="pw-" + username, is_staff=True, **extra
    )
    if org is not None and role is not None:
        Membership.objects.create(organization=org, user=user, role=role)
    return user


def chain_definition(slug: str, length: int, node_type: str = "noop") -> dict[str, Any]:
    nodes = [{"id": f"n{i}", "type": node_type} for i in range(length)]
    edges = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(length - 1)]
    return {"slug": slug, "name": slug.replace("-", " ").title(), "nodes": nodes, "edges": edges}


def make_workflow(org: Organization, definition: dict[str, Any], publish: bool = True) -> Workflow:
    workflow = create_workflow(org, copy.deepcopy(definition))
    if publish:
        publish_workflow(workflow)
    workflow.refresh_from_db()
    return workflow
