"""TopDog settings.

The environment is read here and only here (through topdog.env). With nothing set, the
service runs on its embedded default: SQLite, the in-memory channel layer, the database
task backend with a worker started by `manage.py serve`, and the offline AI provider.
"""

import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

from topdog.env import env_bool, env_int, env_list, env_str
from topdog.observability.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TOPDOG_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY") or ""
if not SECRET_KEY:
    # Embedded default: a key generated once and kept beside the SQLite database, so
    # sessions survive restarts without anyone having to invent a secret.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    _key_file = VAR_DIR / "secret_key"
    if not _key_file.exists():
        _key_file.write_text(get_random_secret_key())
        _key_file.chmod(0o600)
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "topdog.observability",
    "django_tasks",
    "django_tasks_db",
    "ai_orchestration",
    "workflows",
]

MIDDLEWARE = [
    # Outermost: request id, HTTP metrics and the access log see every response.
    "topdog.observability.middleware.RequestObservabilityMiddleware",
    "topdog.limits.RequestGuardMiddleware",
    "topdog.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "topdog.urls"
ASGI_APPLICATION = "topdog.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "topdog" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if not DATABASE_URL:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
_db = dj_database_url.parse(DATABASE_URL or f"sqlite:///{VAR_DIR / 'topdog.sqlite3'}")
if _db["ENGINE"] == "django.db.backends.postgresql":
    # Django's psycopg 3 connection pool; CONN_MAX_AGE must stay 0 with a pool.
    _db["CONN_MAX_AGE"] = 0
    # Per-process test database, so concurrent test runs on one server never collide.
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}_{os.getpid()}"}
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN_SIZE", 2),
        "max_size": env_int("DB_POOL_MAX_SIZE", 20),
        "timeout": env_int("DB_POOL_TIMEOUT", 10),
    }
    # Parameters bound by the server, and statements a connection has run this often
    # kept prepared: the hot queries are then planned once per connection, not per
    # request. Turn both off behind a transaction-pooling proxy (PgBouncer and the like).
    _db["OPTIONS"]["server_side_binding"] = env_bool("DB_SERVER_SIDE_BINDING", True)
    _db["OPTIONS"]["prepare_threshold"] = env_int("DB_PREPARE_THRESHOLD", 5) or None
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes SQLite's write lock when a transaction starts, which gives the
    # services the same "lock, then read, then write" order select_for_update gives
    # on PostgreSQL; the timeout makes concurrent writers (server, worker) wait.
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not shared-cache memory: threads in the tests then see real locking.
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-topdog-{os.getpid()}.sqlite3")}
# Connections are checked before use. With the pool, Django hands psycopg_pool
# `check=ConnectionPool.check_connection`: each connection is checked as it leaves the
# pool, and one the server dropped (a restart, pg_terminate_backend) is replaced, not used.
# (Django 5.2 passes `check` itself, so it cannot be given in OPTIONS["pool"].)
_db["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels and cache ---------------------------------------------------------------


def _next_redis_db(url: str) -> str:
    """`url` with the database index after its own (redis://h:6379/0 -> redis://h:6379/1)."""
    parts = urlsplit(url)
    index = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{index + 1}"))


REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis with its operations per event loop bounded below redis-py's
            # pool limit (100), so a disconnect storm queues instead of failing.
            "BACKEND": "workflows.broadcast.BoundedRedisChannelLayer",
            "CONFIG": {
                # redis-py 8 times socket reads out after 5 s by default, the same 5 s that
                # channels-redis blocks in BZPOPMIN; a longer read timeout keeps idle
                # consumers from crashing while a dead Redis is still noticed.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "capacity": env_int("CHANNEL_LAYER_CAPACITY", 1000),
                "expiry": 60,
                "in_flight": env_int("CHANNEL_LAYER_IN_FLIGHT", 50),
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            # Never the channel layer's database: clearing the cache is a FLUSHDB, which
            # would drop every group membership of every connected websocket.
            "LOCATION": env_str("CACHE_URL") or _next_redis_db(REDIS_URL),
            "KEY_PREFIX": "topdog",
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": env_int("CHANNEL_LAYER_CAPACITY", 1000)},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Tasks ----------------------------------------------------------------------------
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# --- Auth -----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/dashboard/"

# --- HTTP limits ----------------------------------------------------------------------
# Request bodies above this many bytes are answered 413 before any view runs.
TOPDOG_MAX_BODY_BYTES = env_int("TOPDOG_MAX_BODY_BYTES", 2 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = TOPDOG_MAX_BODY_BYTES
# Query strings above this many bytes are answered 414 (topdog/limits.py).
TOPDOG_MAX_QUERY_STRING_BYTES = env_int("TOPDOG_MAX_QUERY_STRING_BYTES", 8192)
# JSON bodies nested deeper than this (arrays and objects) are answered 400.
TOPDOG_MAX_JSON_DEPTH = env_int("TOPDOG_MAX_JSON_DEPTH", 64)

# --- REST framework -------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "workflows.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["workflows.api.parsers.DepthLimitedJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "workflows.api.errors.exception_handler",
    # With Redis, the windows live in Redis (workflows/api/throttling.py: one round trip).
    "DEFAULT_THROTTLE_CLASSES": [
        "workflows.api.throttling.RedisAnonRateThrottle",
        "workflows.api.throttling.RedisUserRateThrottle",
    ]
    if REDIS_URL
    else [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("THROTTLE_ANON_RATE", "60/minute"),
        "user": env_str("THROTTLE_USER_RATE", "6000/minute"),
        # Failed authentications (bad tokens, no credentials) per client address.
        "auth_failure": env_str(
            "THROTTLE_AUTH_FAILURE_RATE", env_str("THROTTLE_ANON_RATE", "60/minute")
        ),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "TopDog API",
    "DESCRIPTION": "AI software-build workflows as audited state machines.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from the installed sidecar package, so /api/docs/ works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "PhaseEnum": "workflows.states.PHASES",
        "CheckRunKindEnum": "workflows.models.CheckRun.Kind",
        "CheckRunStatusEnum": "workflows.models.CheckRun.Status",
        "RunStatusEnum": "ai_orchestration.models.AIRun.Status",
        "RegressTargetEnum": ["IMPLEMENTATION", "PLANNING"],
        "HealthStatusEnum": ["ok", "degraded"],
    },
    # The IDE paths' trailing-slash aliases are left out; every operation lists every
    # status it can answer (workflows/api/schema.py).
    "PREPROCESSING_HOOKS": ["workflows.api.schema.ide_slash_aliases_drop"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "workflows.api.schema.api_responses_complete",
    ],
}

# --- TopDog ---------------------------------------------------------------------------
# Seed model names the IDE may ask for, and what they mean.
TOPDOG_MODELS = {
    "GPT4": {
        "provider": "openai",
        "model": env_str("TOPDOG_OPENAI_MODEL", "gpt-4o"),
        "context_tokens": 128_000,
    },
    "GPT35": {
        "provider": "openai",
        "model": env_str("TOPDOG_OPENAI_SMALL_MODEL", "gpt-4o-mini"),
        "context_tokens": 128_000,
    },
    "CLAUDE": {
        "provider": "anthropic",
        "model": env_str("TOPDOG_ANTHROPIC_MODEL", "claude-sonnet-4-6"),
        "context_tokens": 200_000,
    },
    "LOCAL": {
        "provider": "local",
        "model": env_str("TOPDOG_LOCAL_MODEL", "llama3.1"),
        "context_tokens": env_int("TOPDOG_LOCAL_CONTEXT_TOKENS", 8192),
    },
    "OFFLINE": {"provider": "offline", "model": "topdog-offline-1", "context_tokens": 16_000},
}
# Besides the seed names above (any case), `model` may be a concrete model id, routed to
# its provider by the first prefix here that it starts with, or `provider:model` with a
# provider of TOPDOG_PROVIDERS (`local:llama3.1`, `openai:gpt-4.1`). workflows/models_catalog.py
# resolves every name.
TOPDOG_MODEL_ROUTES = [
    ("gpt-", "openai"),
    ("chatgpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("claude-", "anthropic"),
]
# Context windows of model families (the longest family a model id belongs to: `gpt-4`
# covers `gpt-4-0613` but not `gpt-4o`); else the provider's default below.
TOPDOG_MODEL_CONTEXT_TOKENS = {
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    **json.loads(env_str("TOPDOG_MODEL_CONTEXT_TOKENS_JSON") or "{}"),
}
TOPDOG_PROVIDER_CONTEXT_TOKENS = {
    "openai": 128_000,
    "anthropic": 200_000,
    "local": env_int("TOPDOG_LOCAL_CONTEXT_TOKENS", 8192),
    "offline": 16_000,
}
TOPDOG_DEFAULT_MODEL = env_str("TOPDOG_DEFAULT_MODEL", "OFFLINE")
# Sampling defaults of every role; a project's `role_models` may set them per role.
TOPDOG_DEFAULT_TEMPERATURE = 0.2
TOPDOG_DEFAULT_MAX_TOKENS = env_int("TOPDOG_DEFAULT_MAX_TOKENS", 4096)
# Regressions a workflow may take before the next one fails it.
TOPDOG_DEFAULT_REGRESSION_LIMIT = env_int("TOPDOG_DEFAULT_REGRESSION_LIMIT", 3)
# Idempotency keys are remembered this long; an in-flight key older than the lease is
# considered abandoned (its request died) and may be taken over.
TOPDOG_IDEMPOTENCY_TTL_SECONDS = env_int("TOPDOG_IDEMPOTENCY_TTL_SECONDS", 24 * 3600)
TOPDOG_IDEMPOTENCY_LEASE_SECONDS = env_int("TOPDOG_IDEMPOTENCY_LEASE_SECONDS", 60)

# --- Static files, i18n ---------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logs, metrics, traces (topdog/observability/) ---------------------------------
# "plain" (default) or "json": one JSON object per line with request_id, user and, where
# known, workflow_id/run_id. Secrets are scrubbed from every line in both formats.
LOG_FORMAT = env_str("LOG_FORMAT", "plain").strip().lower() or "plain"
LOGGING = logging_config(log_format=LOG_FORMAT, level=env_str("LOG_LEVEL", "INFO"))
# GET /metrics: "protected" (staff, or Authorization: Bearer TOPDOG_METRICS_TOKEN),
# "open" (anyone) or "off" (404).
TOPDOG_METRICS = env_str("TOPDOG_METRICS", "protected").strip().lower() or "protected"
if TOPDOG_METRICS not in ("protected", "open", "off"):
    raise ImproperlyConfigured(
        f"TOPDOG_METRICS must be protected, open or off, got {TOPDOG_METRICS!r}"
    )
TOPDOG_METRICS_TOKEN = env_str("TOPDOG_METRICS_TOKEN")
# A task worker serves its own in-process metrics (provider calls) on this port, or on
# the first free one of a range ("9101-9108"); unset: not served.
TOPDOG_WORKER_METRICS_PORT = env_str("TOPDOG_WORKER_METRICS_PORT")
TOPDOG_WORKER_METRICS_ADDR = env_str("TOPDOG_WORKER_METRICS_ADDR", "127.0.0.1")
# OpenTelemetry traces go to this OTLP/HTTP endpoint when set (unset: no tracing at all).
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT")
# Put prompt and answer text on model-call spans (scrubbed of known secrets).
TOPDOG_OTEL_CAPTURE_PROMPTS = env_bool("TOPDOG_OTEL_CAPTURE_PROMPTS", False)

# --- manage.py serve ------------------------------------------------------------------
# Serve /static/ (the admin's CSS and JS) from the ASGI app; turn off when a proxy or
# CDN serves `collectstatic` output instead.
TOPDOG_SERVE_STATIC = env_bool("TOPDOG_SERVE_STATIC", True)
# Password for the `admin` superuser that the first `manage.py serve` creates
# (empty: generate one and print it once).
TOPDOG_ADMIN_PASSWORD = env_str("TOPDOG_ADMIN_PASSWORD")

# --- AI providers ---------------------------------------------------------------------
# A provider is configured when its variable is set; `offline` needs nothing.
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
LOCAL_LLM_BASE_URL = env_str("LOCAL_LLM_BASE_URL")
# Adapters by name, loaded with import_string; the keys are what TOPDOG_MODELS refer to.
TOPDOG_PROVIDERS = {
    "openai": {
        "class": "ai_orchestration.providers.openai.OpenAIProvider",
        "api_key": OPENAI_API_KEY,
        "base_url": env_str("OPENAI_BASE_URL"),
        "timeout": env_int("TOPDOG_LLM_TIMEOUT_SECONDS", 120),
    },
    "anthropic": {
        "class": "ai_orchestration.providers.anthropic.AnthropicProvider",
        "api_key": ANTHROPIC_API_KEY,
        "base_url": env_str("ANTHROPIC_BASE_URL"),
        "timeout": env_int("TOPDOG_LLM_TIMEOUT_SECONDS", 120),
    },
    "local": {
        "class": "ai_orchestration.providers.local.LocalProvider",
        "api_key": env_str("LOCAL_LLM_API_KEY"),
        "base_url": LOCAL_LLM_BASE_URL,
        "timeout": env_int("TOPDOG_LLM_TIMEOUT_SECONDS", 120),
    },
    "offline": {
        "class": "ai_orchestration.providers.offline.OfflineProvider",
        "delay_ms": env_int("TOPDOG_OFFLINE_DELAY_MS", 0),
        "fail_first": env_bool("TOPDOG_OFFLINE_FAIL_FIRST", False),
        # One pause per call (benchmarks of the work item graph), cancel-checked.
        "call_delay_ms": env_int("TOPDOG_OFFLINE_CALL_DELAY_MS", 0),
    },
}
# One overall deadline per model call, across all its retries.
TOPDOG_LLM_DEADLINE_SECONDS = env_int("TOPDOG_LLM_DEADLINE_SECONDS", 300)

# --- Websockets -----------------------------------------------------------------------
# Seconds between heartbeat frames (each also recovers a dropped last event).
TOPDOG_WS_HEARTBEAT_SECONDS = env_int("TOPDOG_WS_HEARTBEAT_SECONDS", 20)
# A client further behind than this many events is told to resync instead of replayed.
TOPDOG_WS_REPLAY_LIMIT = env_int("TOPDOG_WS_REPLAY_LIMIT", 5000)
# Open websockets per user, counted across nodes with a Redis cache (0: no limit).
TOPDOG_WS_MAX_SOCKETS_PER_USER = env_int("TOPDOG_WS_MAX_SOCKETS_PER_USER", 50)
# Frames a client may send per second on one connection, pings included (0: no limit).
TOPDOG_WS_MAX_MESSAGES_PER_SECOND = env_int("TOPDOG_WS_MAX_MESSAGES_PER_SECOND", 20)
# Larger client frames are answered with an error frame (the socket stays open).
TOPDOG_WS_MAX_MESSAGE_BYTES = env_int("TOPDOG_WS_MAX_MESSAGE_BYTES", 16384)

# --- Autopilot ------------------------------------------------------------------------
# USD per million tokens (input, output) by model; local and offline models cost 0.
# Override with TOPDOG_PRICES_JSON='{"model": [input, output], ...}'.
# A model id is priced by the longest family it belongs to (`gpt-4o-2024-08-06` as
# `gpt-4o`); an id of no listed family is booked at 0 with a warning in the log.
TOPDOG_PRICES = {
    "gpt-4": [30.0, 60.0],
    "gpt-4-turbo": [10.0, 30.0],
    "gpt-3.5-turbo": [0.5, 1.5],
    "gpt-4o": [2.5, 10.0],
    "gpt-4o-mini": [0.15, 0.6],
    "gpt-4.1": [2.0, 8.0],
    "gpt-4.1-mini": [0.4, 1.6],
    "o1": [15.0, 60.0],
    "o3": [2.0, 8.0],
    "o4-mini": [1.1, 4.4],
    "claude-3-5-sonnet": [3.0, 15.0],
    "claude-3-7-sonnet": [3.0, 15.0],
    "claude-3-5-haiku": [0.8, 4.0],
    "claude-3-opus": [15.0, 75.0],
    "claude-sonnet-4": [3.0, 15.0],
    "claude-sonnet-4-6": [3.0, 15.0],
    "claude-sonnet-4-5": [3.0, 15.0],
    **json.loads(env_str("TOPDOG_PRICES_JSON") or "{}"),
}
# A running autopilot step renews its lease every heartbeat; a run whose lease has
# expired (its worker died) is picked up again, at most TOPDOG_AUTOPILOT_MAX_RECOVERIES
# times before it is failed.
TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS = env_int("TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS", 5)
TOPDOG_AUTOPILOT_LEASE_SECONDS = env_int("TOPDOG_AUTOPILOT_LEASE_SECONDS", 30)
TOPDOG_AUTOPILOT_MAX_RECOVERIES = env_int("TOPDOG_AUTOPILOT_MAX_RECOVERIES", 3)
# Task workers and watchdogs write a beat (workflows.WorkerBeat) this often; a worker
# whose beat is more than two lease periods old is dead, and its running task rows are
# failed by the watchdog. Beats not seen for TOPDOG_WORKER_BEAT_KEEP_HOURS are deleted.
TOPDOG_WORKER_BEAT_SECONDS = env_int("TOPDOG_WORKER_BEAT_SECONDS", 5)
TOPDOG_WORKER_BEAT_KEEP_HOURS = env_int("TOPDOG_WORKER_BEAT_KEEP_HOURS", 24)
# A worker or watchdog loop that fails on a database or Redis error runs again after a
# pause: TOPDOG_WORKER_BACKOFF_MS doubling up to TOPDOG_WORKER_BACKOFF_MAX_MS (each a random
# time between half and all of it), back to the first once a run lasted
# TOPDOG_WORKER_HEALTHY_SECONDS.
TOPDOG_WORKER_BACKOFF_MS = env_int("TOPDOG_WORKER_BACKOFF_MS", 500)
TOPDOG_WORKER_BACKOFF_MAX_MS = env_int("TOPDOG_WORKER_BACKOFF_MAX_MS", 30000)
TOPDOG_WORKER_HEALTHY_SECONDS = env_int("TOPDOG_WORKER_HEALTHY_SECONDS", 60)
# Work items: tries per item before it (and the run) fails, and the pause before the
# second try (doubled for each further one).
TOPDOG_WORK_ITEM_MAX_ATTEMPTS = env_int("TOPDOG_WORK_ITEM_MAX_ATTEMPTS", 3)
TOPDOG_WORK_ITEM_BACKOFF_MS = env_int("TOPDOG_WORK_ITEM_BACKOFF_MS", 500)

# --- Secrets at rest ------------------------------------------------------------------
# Keys that encrypt stored secrets (project API keys, tokens). The first one encrypts;
# all of them decrypt, so a new key can be put first and the old one kept for a while.
# When unset, a key is derived from SECRET_KEY.
TOPDOG_ENCRYPTION_KEYS = env_list("TOPDOG_ENCRYPTION_KEYS", [])

# --- GitHub and git remotes -----------------------------------------------------------
# GitHub's REST API (set for GitHub Enterprise: https://ghe.example.com/api/v3).
TOPDOG_GITHUB_API_URL = env_str("TOPDOG_GITHUB_API_URL", "https://api.github.com")
# Hosts a project's repository may be on (owner/name refers to the first).
TOPDOG_REPOSITORY_HOSTS = env_list("TOPDOG_REPOSITORY_HOSTS", ["github.com"])
# Hosts a project's plain git remote (https) may point at.
TOPDOG_GIT_REMOTE_HOSTS = env_list(
    "TOPDOG_GIT_REMOTE_HOSTS", ["github.com", "gitlab.com", "bitbucket.org", "codeberg.org"]
)
# Allow file:// remotes (local bare repositories): for tests and single-machine setups.
TOPDOG_GIT_ALLOW_LOCAL_REMOTES = env_bool("TOPDOG_GIT_ALLOW_LOCAL_REMOTES", False)
TOPDOG_GIT_AUTHOR_NAME = env_str("TOPDOG_GIT_AUTHOR_NAME", "TopDog")
TOPDOG_GIT_AUTHOR_EMAIL = env_str("TOPDOG_GIT_AUTHOR_EMAIL", "topdog@localhost")

# --- Sandboxed checks -------------------------------------------------------------------
# Where each change set is applied and its tests run. "auto": bubblewrap where `bwrap`
# works on this machine, else off. "subprocess" (no isolation) only when asked for.
TOPDOG_SANDBOX = env_str("TOPDOG_SANDBOX", "auto")
TOPDOG_SANDBOX_BACKENDS = {
    "bubblewrap": "integrations.sandbox.bubblewrap.BubblewrapBackend",
    "subprocess": "integrations.sandbox.local.SubprocessBackend",
    "off": "integrations.sandbox.off.OffBackend",
}
TOPDOG_WORKSPACE_DIR = Path(env_str("TOPDOG_WORKSPACE_DIR") or str(VAR_DIR / "workspaces"))
TOPDOG_WORKSPACE_MAX_MB = env_int("TOPDOG_WORKSPACE_MAX_MB", 2048)
TOPDOG_SANDBOX_LIMITS = {
    "wall_seconds": env_int("TOPDOG_SANDBOX_WALL_SECONDS", 300),
    "cpu_seconds": env_int("TOPDOG_SANDBOX_CPU_SECONDS", 600),
    "memory_bytes": env_int("TOPDOG_SANDBOX_MEMORY_MB", 2048) * 1024 * 1024,
    "processes": env_int("TOPDOG_SANDBOX_PROCESSES", 256),
    "write_bytes": env_int("TOPDOG_SANDBOX_WRITE_MB", 1024) * 1024 * 1024,
    "output_bytes": env_int("TOPDOG_SANDBOX_OUTPUT_KB", 256) * 1024,
}
# The setup step installs dependencies, so it may reach the network; the test step never.
TOPDOG_SANDBOX_SETUP_NETWORK = env_bool("TOPDOG_SANDBOX_SETUP_NETWORK", True)
