"""Test settings: fast hashing, locmem email, and the same engine as production."""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("OPSFLOW_VAR_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "var", "test"))

from config.settings.base import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
