"""Credential changes: the API, the admin and the commands all go through here."""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction

from apps.accounts import audit
from apps.credentials import crypto
from apps.credentials.hosts import normalized, pattern_problem
from apps.credentials.models import (
    MAX_VALUE_LENGTH,
    MIN_VALUE_LENGTH,
    NAME_HELP,
    NAME_PATTERN,
    Credential,
)


class CredentialInvalid(ValueError):
    """The fields that are wrong, each with its message; nothing was saved."""

    def __init__(self, problems: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


def value_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) < MIN_VALUE_LENGTH:
        return (
            f"must be at least {MIN_VALUE_LENGTH} characters (a shorter one could not be masked "
            "without masking ordinary text)"
        )
    if len(value) > MAX_VALUE_LENGTH:
        return f"must be at most {MAX_VALUE_LENGTH} characters"
    if value != value.strip():
        return "must not begin or end with whitespace"
    return None


def hosts_problems(hosts: Any) -> dict[str, str]:
    if not isinstance(hosts, list):
        return {"allowed_hosts": "must be a list of host names, host:port or *.domain"}
    problems = {}
    for i, pattern in enumerate(hosts):
        problem = pattern_problem(pattern)
        if problem:
            problems[f"allowed_hosts[{i}]"] = problem
    return problems


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    problems: dict[str, str] = {}
    if "name" in fields:
        name = fields["name"]
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name) or len(name) > 64:
            problems["name"] = f"must be at most 64 characters: {NAME_HELP}"
    if "value" in fields and (problem := value_problem(fields["value"])):
        problems["value"] = problem
    if "allowed_hosts" in fields:
        problems.update(hosts_problems(fields["allowed_hosts"]))
    if "description" in fields and (
        not isinstance(fields["description"], str) or len(fields["description"]) > 200
    ):
        problems["description"] = "must be a string of at most 200 characters"
    if problems:
        raise CredentialInvalid(problems)
    if "allowed_hosts" in fields:
        fields = {**fields, "allowed_hosts": normalized(fields["allowed_hosts"])}
    return fields


def create_credential(organization, user, **fields: Any) -> Credential:
    """A new credential; `name` and `value` are required."""
    missing = {f: "required" for f in ("name", "value") if f not in fields}
    if missing:
        raise CredentialInvalid(missing)
    fields = _checked(fields)
    credential = Credential(
        organization=organization,
        name=fields["name"],
        allowed_hosts=fields.get("allowed_hosts", []),
        description=fields.get("description", ""),
        created_by=user,
        updated_by=user,
    )
    credential.set_value(fields["value"])
    try:
        with transaction.atomic():
            credential.save()
            audit.record(
                "credential.create",
                credential,
                user=user,
                changes={
                    "value": [None, audit.CHANGED],
                    "allowed_hosts": [None, credential.allowed_hosts],
                },
            )
    except IntegrityError:
        raise CredentialInvalid(
            {"name": f"{organization.slug} already has a credential {fields['name']!r}"}
        ) from None
    return credential


def update_credential(credential: Credential, user, **fields: Any) -> Credential:
    """Change the value (rotate it), the hosts or the description. The name stays: templates
    refer to it."""
    if "name" in fields and fields["name"] != credential.name:
        raise CredentialInvalid(
            {"name": "cannot be changed (templates refer to it): create a new credential"}
        )
    fields.pop("name", None)
    unknown = set(fields) - {"value", "allowed_hosts", "description"}
    if unknown:
        raise CredentialInvalid({k: "unknown field" for k in sorted(unknown)})
    fields = _checked(fields)
    changes = {}
    if "value" in fields:
        credential.set_value(fields.pop("value"))
        changes["value"] = [audit.CHANGED, audit.CHANGED]
    changes.update(audit.diff({k: getattr(credential, k) for k in fields}, fields))
    for key, value in fields.items():
        setattr(credential, key, value)
    credential.updated_by = user
    credential.save()
    if changes:
        audit.record("credential.change", credential, user=user, changes=changes)
    return credential


def delete_credential(credential: Credential, user=None) -> None:
    target = ("credentials.credential", str(credential.pk), credential.name)
    organization = credential.organization
    credential.delete()
    audit.record("credential.delete", user=user, organization=organization, target=target)


def rotate_credentials() -> tuple[int, list[str]]:
    """Encrypt every stored value again with the first key. Returns how many were rotated and
    the ones no key opens (left as they are)."""
    rotated, unreadable = 0, []
    for credential in Credential.objects.select_related("organization").iterator():
        try:
            credential.ciphertext = crypto.rotate(credential.ciphertext)
        except crypto.UnreadableSecret:
            unreadable.append(f"{credential.organization.slug}/{credential.name}")
            continue
        Credential.objects.filter(pk=credential.pk).update(ciphertext=credential.ciphertext)
        rotated += 1
    return rotated, unreadable
