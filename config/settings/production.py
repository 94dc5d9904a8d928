"""Production settings: PostgreSQL and Redis are required; behind a TLS-terminating proxy,
HTTPS is enforced (redirect, HSTS, secure cookies). `manage.py check --deploy` is clean with
these and the variables the README lists."""

from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int
from config.settings.base import *  # noqa: F403
from config.settings.base import DATABASE_URL, REDIS_URL

if not DATABASE_URL:
    raise ImproperlyConfigured("DATABASE_URL must be set in production.")
if not REDIS_URL:
    raise ImproperlyConfigured("REDIS_URL must be set in production.")

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=True)
# The proxy in front says the request came over HTTPS. Only safe behind a proxy that sets (or
# strips) this header: the portal must not be reachable around it.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
# probes and Prometheus scrapers speak plain HTTP inside the network
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
if not SECURE_HSTS_PRELOAD:
    # Asking browsers to preload the domain is the owner's decision, not a default.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
