"""`secrets` in a running step's templates: decrypted in the worker, on first use, and
remembered so that the step masks every value it used and http.request binds it to its hosts."""

from __future__ import annotations

from dataclasses import dataclass

from apps.credentials import crypto
from apps.credentials.models import Credential
from apps.executions.errors import DataError, InvalidConfigurationError
from apps.executions.templating import Namespace


@dataclass(frozen=True)
class UsedCredential:
    name: str
    value: str
    allowed_hosts: tuple[str, ...]


class Secrets(Namespace):
    """One attempt's view of the credentials of its workflow's organization."""

    def __init__(self, workflow_id: int):
        self._workflow_id = workflow_id
        self.used: dict[str, UsedCredential] = {}

    def __repr__(self) -> str:
        return "<secrets>"

    def lookup(self, name: str) -> str:
        if name in self.used:
            return self.used[name].value
        row = (
            Credential.objects.filter(organization__workflows=self._workflow_id, name=name)
            .only("ciphertext", "allowed_hosts")
            .first()
        )
        if row is None:
            raise DataError(f"Unknown credential: secrets.{name} (this organization has none)")
        try:
            value = row.reveal()
        except crypto.UnreadableSecret as exc:
            raise InvalidConfigurationError(f"credential {name!r} cannot be read: {exc}") from None
        self.used[name] = UsedCredential(name, value, tuple(row.allowed_hosts))
        return value

    def values(self) -> list[str]:
        return [used.value for used in self.used.values()]
