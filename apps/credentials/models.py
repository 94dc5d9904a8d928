"""Credentials (issue 9 item 3): an organization's secrets, encrypted at rest, write-only.

Their own app: they are not part of a workflow's definition (one credential serves many
workflows, and editing a workflow never shows a value), their rules (encryption, host binding,
masking) are a boundary of their own, and the worker is the only place that decrypts them.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from apps.credentials import crypto

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
NAME_HELP = "letters, digits and _, not first a digit: templates read it as secrets.NAME"
MIN_VALUE_LENGTH = 4
MAX_VALUE_LENGTH = 64 * 1024


class Credential(models.Model):
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="credentials"
    )
    name = models.CharField(
        max_length=64, validators=[RegexValidator(NAME_PATTERN, NAME_HELP)], help_text=NAME_HELP
    )
    ciphertext = models.TextField(editable=False)
    allowed_hosts = models.JSONField(
        default=list,
        blank=True,
        help_text="Hosts it may go to (http.request, notify.chat, ssh.command): host, "
        "host:port or *.domain. Empty: none.",
    )
    description = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="unique_credential"),
        ]
        ordering = ["organization__name", "name"]

    def __str__(self) -> str:
        return self.name

    def set_value(self, value: str) -> None:
        self.ciphertext = crypto.encrypt(value)

    def reveal(self) -> str:
        """The value in clear: for the worker that sends it, nothing else."""
        return crypto.decrypt(self.ciphertext)
