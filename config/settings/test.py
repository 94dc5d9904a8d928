"""Test settings: fast hashing, locmem email, and the same engine as production."""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key")
# A fixed Fernet key for tests only (workers the tests start inherit it).
os.environ.setdefault("OPSFLOW_SECRETS_KEYS", "H3YxbpVBAEGEJjbctznuAOxUciGMG2iuwg_88xr3Nkw=")
os.environ.setdefault(
    "OPSFLOW_VAR_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "var", "test")
)

from config.settings.base import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
LOGGING["root"]["level"] = "WARNING"  # noqa: F405

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not shared-cache memory: WAL and the busy timeout then behave as in the embedded default,
    # so concurrent workers wait for the write lock instead of failing with "table is locked".
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-opsflow.sqlite3")}  # noqa: F405
