"""Encryption at rest: MultiFernet over OPSFLOW_SECRETS_KEYS (the first key encrypts, every key
decrypts), so keys rotate without downtime: put the new key first, run
`manage.py rotate_credentials`, then drop the old key."""

from __future__ import annotations

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class UnreadableSecret(Exception):
    """None of OPSFLOW_SECRETS_KEYS opens the stored value (a key was dropped too early)."""


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.OPSFLOW_SECRETS_KEYS))


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise UnreadableSecret(
            "none of OPSFLOW_SECRETS_KEYS decrypts it (was the key it was saved with removed?)"
        ) from None


def rotate(token: str) -> str:
    """The same value encrypted with the first key."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise UnreadableSecret("none of OPSFLOW_SECRETS_KEYS decrypts it") from None
