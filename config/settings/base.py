"""Settings shared by every environment. Everything configurable comes from the environment."""

import ipaddress
import re
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_int_list, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env_str("OPSFLOW_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", default=False)

EMBEDDED = DEBUG or not env_str("DATABASE_URL")


def generated_once(name: str, make) -> str:
    """The embedded default's keys: generated once and kept under var/ (never a shared
    constant), readable by this user only."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key_file = VAR_DIR / name
    if not key_file.exists():
        key_file.write_text(make())
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not EMBEDDED:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DATABASE_URL is set and DEBUG is off."
        )
    SECRET_KEY = generated_once("secret_key", lambda: secrets.token_urlsafe(50))

# Credentials are encrypted with these Fernet keys (comma-separated): the first encrypts, every
# one decrypts, so a new key goes first and `manage.py rotate_credentials` re-encrypts.
OPSFLOW_SECRETS_KEYS = env_list("OPSFLOW_SECRETS_KEYS", [])
if not OPSFLOW_SECRETS_KEYS:
    if not EMBEDDED:
        raise ImproperlyConfigured(
            "OPSFLOW_SECRETS_KEYS must be set when DATABASE_URL is set and DEBUG is off "
            "(make a key with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')."
        )
    OPSFLOW_SECRETS_KEYS = [generated_once("secrets_key", lambda: Fernet.generate_key().decode())]
for _position, _key in enumerate(OPSFLOW_SECRETS_KEYS, start=1):
    try:
        Fernet(_key)
    except ValueError:
        raise ImproperlyConfigured(
            f"OPSFLOW_SECRETS_KEYS: key {_position} is not a Fernet key "
            "(32 bytes in url-safe base64, 44 characters)."
        ) from None

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # django-unfold: the admin's look, before django.contrib.admin so that its templates win. The
    # basic config: the default one replaces admin.site with its own, and ours is OpsflowAdminSite.
    "unfold.apps.BasicAppConfig",
    "apps.accounts.admin_app.OpsflowAdminConfig",  # django.contrib.admin, the dashboard as index
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_rq",
    "apps.accounts",
    "apps.workflows",
    "apps.executions",
    "apps.approvals",
    "apps.analytics",
    "apps.credentials",
    "csp",
    "axes",  # last: its middleware and backend wrap the login
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",
    "apps.accounts.audit.AuditMiddleware",
    "apps.accounts.permissions.RolesMiddleware",
    "apps.accounts.timezones.TimezoneMiddleware",
]

# Login throttling (django-axes): after OPSFLOW_LOGIN_FAILURE_LIMIT failures for one user name
# from one address, that pair is refused for OPSFLOW_LOGIN_COOLOFF_MINUTES (the admin login,
# the API token endpoint, the emailed approval links). `manage.py axes_reset_username NAME`
# unlocks early.
# Content-Security-Policy (django-csp) on every response: only the portal's own scripts, styles,
# images and fonts (static files, htmx included, which runs without eval), no inline script or
# style, no framing, forms post only here.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("OPSFLOW_LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("OPSFLOW_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "apps.accounts.lockout.lockout_response"
# The client's address is REMOTE_ADDR unless the portal is told how many proxies (which append
# to X-Forwarded-For) stand in front of it: a forged header must not buy fresh attempts.
OPSFLOW_TRUSTED_PROXIES = env_int("OPSFLOW_TRUSTED_PROXIES", 0, minimum=0)
AXES_IPWARE_META_PRECEDENCE_ORDER = (
    ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"] if OPSFLOW_TRUSTED_PROXIES else ["REMOTE_ADDR"]
)
AXES_IPWARE_PROXY_COUNT = OPSFLOW_TRUSTED_PROXIES or None

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.approvals.context_processors.inbox",
            ],
        },
    },
]

# --- Database: DATABASE_URL, or SQLite in WAL mode under var/ (the embedded default) ---
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_health_checks=True)}
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # A pool per process, not persistent connections: under ASGI each request may run on a
        # new thread, and a per-thread persistent connection then leaks one PostgreSQL backend
        # per request until "too many clients".
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": env_int("OPSFLOW_DB_POOL_SIZE", 10, minimum=1),
            "timeout": 10,
        }  # with CONN_HEALTH_CHECKS, Django has the pool check each connection it lends
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = 60
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "opsflow.sqlite3",
            "CONN_MAX_AGE": None,  # keep each thread's connection: reopening costs ~2 ms per job
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: REDIS_URL, or the in-process fakeredis server (the embedded default) ---
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL and not re.match(r"^rediss?://", REDIS_URL):
    raise ImproperlyConfigured("REDIS_URL must start with redis:// or rediss://.")
OPSFLOW_QUEUES = env_list("OPSFLOW_QUEUES", ["default", "shell"])
RQ_QUEUES = {
    name: ({"URL": REDIS_URL} if REDIS_URL else {"HOST": "localhost", "PORT": 6379, "DB": 0})
    for name in OPSFLOW_QUEUES
}
# A plain `rqworker` (DESIGN §1's command) runs as an Opsflow agent: non-forking, with a heartbeat.
RQ = {"COMMIT_MODE": "on_db_commit", "WORKER_CLASS": "apps.executions.worker.AgentWorker"}
RQ_SHOW_ADMIN_LINK = False  # its admin copy would be open to all staff: /django-rq/ instead

# --- Engine knobs ---
OPSFLOW_OUTPUT_CAP_BYTES = env_int("OPSFLOW_OUTPUT_CAP_BYTES", 1024 * 1024, minimum=1024)
OPSFLOW_MAX_BODY_BYTES = env_int("OPSFLOW_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = OPSFLOW_MAX_BODY_BYTES
# Bounds on every document sent in (API and webhook bodies, definitions, variables, bundles):
# nesting depth; nodes and edges of one definition; what one template may make, and how long
# rendering one node's config may take.
OPSFLOW_MAX_DEPTH = env_int("OPSFLOW_MAX_DEPTH", 64, minimum=4)
OPSFLOW_MAX_NODES = env_int("OPSFLOW_MAX_NODES", 500, minimum=1)
OPSFLOW_MAX_EDGES = env_int("OPSFLOW_MAX_EDGES", 2000, minimum=1)
OPSFLOW_TEMPLATE_MAX_BYTES = env_int("OPSFLOW_TEMPLATE_MAX_BYTES", 1024 * 1024, minimum=1024)
OPSFLOW_TEMPLATE_SECONDS = env_int("OPSFLOW_TEMPLATE_SECONDS", 5, minimum=1)
# A cron schedule that fires more often than this (seconds) is refused.
OPSFLOW_CRON_MIN_INTERVAL = env_int("OPSFLOW_CRON_MIN_INTERVAL", 10, minimum=1)
OPSFLOW_LOCAL_CONTINUATION = env_bool("OPSFLOW_LOCAL_CONTINUATION", default=True)
OPSFLOW_IE_RETRY_SCHEDULE = env_int_list(
    "OPSFLOW_IE_RETRY_SCHEDULE", [60, 600, 600, 1800, 1800, 1800, 10800, 10800]
)
OPSFLOW_IE_STORAGE_LIMIT_BYTES = env_int(
    "OPSFLOW_IE_STORAGE_LIMIT_BYTES", 500 * 1024 * 1024, minimum=0
)
OPSFLOW_APPROVAL_LINK_MAX_AGE = env_int("OPSFLOW_APPROVAL_LINK_MAX_AGE", 7 * 24 * 3600, minimum=60)
OPSFLOW_RETENTION_DAYS = env_int("OPSFLOW_RETENTION_DAYS", 30, minimum=0)
# Lists count exactly up to this many rows; beyond it the count is the planner's estimate.
OPSFLOW_EXACT_COUNT_MAX = env_int("OPSFLOW_EXACT_COUNT_MAX", 10_000, minimum=100)
# Retention deletes this many executions (with their steps and events) per transaction.
OPSFLOW_PRUNE_BATCH = env_int("OPSFLOW_PRUNE_BATCH", 2_000, minimum=1)
OPSFLOW_OVERDUE_GRACE = env_int("OPSFLOW_OVERDUE_GRACE", 60, minimum=0)
OPSFLOW_WORKER_THREADS = env_int("OPSFLOW_WORKER_THREADS", 2, minimum=1)
# Agents stamp a heartbeat in the database; the reconciler calls one dead after OPSFLOW_AGENT_TIMEOUT.
OPSFLOW_HEARTBEAT_SECONDS = env_int("OPSFLOW_HEARTBEAT_SECONDS", 5, minimum=1)
OPSFLOW_AGENT_TIMEOUT = env_int("OPSFLOW_AGENT_TIMEOUT", 30, minimum=2)
if OPSFLOW_AGENT_TIMEOUT < 2 * OPSFLOW_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"OPSFLOW_AGENT_TIMEOUT ({OPSFLOW_AGENT_TIMEOUT}) must be at least twice "
        f"OPSFLOW_HEARTBEAT_SECONDS ({OPSFLOW_HEARTBEAT_SECONDS})"
    )
# Cancel now: seconds a stopped shell command has between SIGTERM and SIGKILL.
OPSFLOW_CANCEL_GRACE_SECONDS = env_int("OPSFLOW_CANCEL_GRACE_SECONDS", 10, minimum=0)
# The execution stream (Server-Sent Events): how often it reads the database (milliseconds),
# the quiet time before a heartbeat comment, how long one stream lasts before the client
# reconnects, and the reconnect delay it tells the browser.
OPSFLOW_SSE_POLL_SECONDS = env_int("OPSFLOW_SSE_POLL_MS", 500, minimum=50) / 1000
OPSFLOW_SSE_HEARTBEAT_SECONDS = env_int("OPSFLOW_SSE_HEARTBEAT_SECONDS", 15, minimum=1)
OPSFLOW_SSE_MAX_SECONDS = env_int("OPSFLOW_SSE_MAX_SECONDS", 3600, minimum=1)
OPSFLOW_SSE_RETRY_MS = env_int("OPSFLOW_SSE_RETRY_MS", 2000, minimum=100)
# Escalation signals (the dashboard, GET /api/v1/analytics/health/): failures in the last hour
# are a spike at OPSFLOW_SPIKE_FACTOR times the hourly average of the 24 hours before, when
# there are at least OPSFLOW_SPIKE_MINIMUM of them from at least OPSFLOW_SPIKE_WORKFLOWS workflows.
OPSFLOW_SPIKE_FACTOR = env_int("OPSFLOW_SPIKE_FACTOR", 3, minimum=1)
OPSFLOW_SPIKE_MINIMUM = env_int("OPSFLOW_SPIKE_MINIMUM", 5, minimum=1)
OPSFLOW_SPIKE_WORKFLOWS = env_int("OPSFLOW_SPIKE_WORKFLOWS", 2, minimum=1)
# Analytics exports: more rows than this are refused as a direct download (narrow the range).
OPSFLOW_EXPORT_SYNC_MAX_ROWS = env_int("OPSFLOW_EXPORT_SYNC_MAX_ROWS", 100_000, minimum=1)
# Larger exports run in the background: their files (under OPSFLOW_EXPORT_DIR, which the web
# processes and the workers must share) are kept this many hours, progress saved every N rows.
OPSFLOW_EXPORT_TTL_HOURS = env_int("OPSFLOW_EXPORT_TTL_HOURS", 24, minimum=1)
OPSFLOW_EXPORT_DIR = Path(env_str("OPSFLOW_EXPORT_DIR", str(VAR_DIR / "exports")))
OPSFLOW_EXPORT_PROGRESS_ROWS = env_int("OPSFLOW_EXPORT_PROGRESS_ROWS", 5000, minimum=1)
# The longest range an analytics summary or export covers, in days.
OPSFLOW_ANALYTICS_MAX_DAYS = env_int("OPSFLOW_ANALYTICS_MAX_DAYS", 400, minimum=1)
# Prometheus metrics at /metrics: the bearer token scrapers send (Authorization: Bearer ...).
# Empty refuses every request, unless DEBUG is on (then the page is open, for development).
OPSFLOW_METRICS_TOKEN = env_str("OPSFLOW_METRICS_TOKEN", "")
# The scheduler leader renews its lock every second; a standby takes over this long after it dies.
OPSFLOW_SCHEDULER_LEADER_TTL = env_int("OPSFLOW_SCHEDULER_LEADER_TTL", 15, minimum=2)
# A dispatched step that no RQ job will run (Redis lost the job, a dead worker took it) is
# enqueued again after this long; one whose enqueue failed (Redis down) as soon as Redis answers.
OPSFLOW_LOST_DISPATCH_AFTER = env_int("OPSFLOW_LOST_DISPATCH_AFTER", 30, minimum=1)
# Shell nodes: the queues they may run on (the first is their default), the worker's
# environment variables they may see besides PATH, HOME and LANG, and the unprivileged user they
# run as when the worker is root (unset: the worker's own user).
OPSFLOW_SHELL_QUEUES = env_list("OPSFLOW_SHELL_QUEUES", ["shell"])
if not OPSFLOW_SHELL_QUEUES:
    raise ImproperlyConfigured("OPSFLOW_SHELL_QUEUES must name at least one queue.")
OPSFLOW_SHELL_ENV_PASSTHROUGH = env_list("OPSFLOW_SHELL_ENV_PASSTHROUGH", [])
OPSFLOW_SHELL_USER = env_str("OPSFLOW_SHELL_USER", "")
# http.request refuses these addresses, checked on every resolved address of every hop before
# it connects: link-local by default (it holds the clouds' metadata services). With
# OPSFLOW_HTTP_DENY_PRIVATE, loopback and the private ranges too.
OPSFLOW_HTTP_DENY = env_list("OPSFLOW_HTTP_DENY", ["169.254.0.0/16", "fe80::/10"])
OPSFLOW_HTTP_DENY_PRIVATE = env_bool("OPSFLOW_HTTP_DENY_PRIVATE", default=False)
PRIVATE_NETWORKS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
]
try:
    OPSFLOW_HTTP_DENY_NETWORKS = [
        ipaddress.ip_network(n, strict=False)
        for n in OPSFLOW_HTTP_DENY + (PRIVATE_NETWORKS if OPSFLOW_HTTP_DENY_PRIVATE else [])
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"OPSFLOW_HTTP_DENY: {exc}") from None
# Header values masked (***) in stored step input and output, besides Authorization,
# Proxy-Authorization, Cookie, Set-Cookie and X-Api-Key.
OPSFLOW_SENSITIVE_HEADERS = env_list("OPSFLOW_SENSITIVE_HEADERS", [])
# Seconds a command of the web, the scheduler or an enqueue may wait for Redis.
OPSFLOW_REDIS_TIMEOUT = env_int("OPSFLOW_REDIS_TIMEOUT", 5, minimum=1)
# The portal's public URL, for emailed links. Unset: `manage.py standalone` (make run) uses the
# address it serves; other processes fall back to DEFAULT_BASE_URL (set it in production).
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
OPSFLOW_BASE_URL = env_str("OPSFLOW_BASE_URL", "")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]  # vendored front-end assets (static/vendor/README.md)
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(
    parents=True, exist_ok=True
)  # whitenoise warns without it; files come from the finders
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "admin:login"
# Where the login page without ?next= lands (unfold's login form carries no next field).
LOGIN_REDIRECT_URL = "admin:index"

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "opsflow@localhost")
# The SMTP backend's server (approval emails, notify.email): docs/nodes/notify.md.
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)  # STARTTLS, usually port 587
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", default=False)  # TLS from the start, usually port 465
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL exclude each other: set one.")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30, minimum=1)  # seconds; Django's default waits forever

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",  # first, so anonymous calls get 401
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "apps.accounts.pagination.OpsflowPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.accounts.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": ["apps.accounts.api.parsers.LimitedJSONParser"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Opsflow API",
    "DESCRIPTION": "Workflows, executions, approvals and incomplete executions.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.accounts.api.schema.document_errors",
    ],
    "ENUM_NAME_OVERRIDES": {
        "ExecutionStatusEnum": "apps.executions.choices.ExecutionStatus",
        "ApprovalStatusEnum": "apps.approvals.choices.ApprovalStatus",
        "StepStatusEnum": "apps.executions.choices.StepStatus",
        "IncompleteStatusEnum": "apps.executions.choices.IncompleteStatus",
    },
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "rq.worker": {"level": "WARNING"},
        "asyncssh": {"level": "WARNING"},  # (ssh.command) several INFO lines a connection
        "django.db.backends": {"level": "INFO"},
        "axes.apps": {"level": "WARNING"},  # its start-up banner; lockouts still log
    },
}

# --- The admin's look: django-unfold (its assets ship in the package: nothing from a CDN). ---
# The page shell is the portal's own (templates/unfold/layouts/skeleton.html), built for the
# Content-Security-Policy: Alpine's CSP build, the colours as a stylesheet (opsflow/theme.css).
UNFOLD = {
    "SITE_TITLE": "Opsflow",
    "SITE_HEADER": "Opsflow",
    "SITE_SUBHEADER": "Operations portal",
    "SITE_SYMBOL": "conversion_path",
    "SITE_URL": None,
    "SITE_FAVICONS": [
        {
            "rel": "icon",
            "type": "image/svg+xml",
            "href": lambda request: _static("opsflow/favicon.svg"),
        }
    ],
    "STYLES": [lambda request: _static("opsflow/opsflow.css")],
    "SCRIPTS": [lambda request: _static("opsflow/opsflow.js")],
    "SHOW_HISTORY": False,  # the Audit page says who changed what
    "SHOW_VIEW_ON_SITE": False,
    "ACCOUNT": {
        "navigation": [{"title": "API docs", "link": "/api/v1/docs/"}],
    },
    "SIDEBAR": {
        "show_search": False,
        "show_all_applications": False,
        "navigation": "apps.accounts.navigation.sidebar",
    },
}


def _static(path: str) -> str:
    from django.templatetags.static import static

    return static(path)
