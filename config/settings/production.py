"""Production settings: PostgreSQL and Redis are required, cookies are secure."""

from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool
from config.settings.base import *  # noqa: F403
from config.settings.base import DATABASE_URL, REDIS_URL

if not DATABASE_URL:
    raise ImproperlyConfigured("DATABASE_URL must be set in production.")
if not REDIS_URL:
    raise ImproperlyConfigured("REDIS_URL must be set in production.")

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
