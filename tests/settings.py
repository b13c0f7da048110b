"""Test settings: the test-wide environment, set before Django reads lifecycle.settings.

The suite runs against the real PostgreSQL and Redis on 127.0.0.1 unless DATABASE_URL /
REDIS_URL say otherwise; DEBUG is off so tests see production behaviour.
"""
import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
# Tests flush their Redis database: db 15 unless LIFECYCLE_TEST_REDIS_DB picks another (two
# suites on one machine each need their own).
TEST_REDIS_DB = int(os.environ.get("LIFECYCLE_TEST_REDIS_DB", "15"))
os.environ.setdefault("REDIS_URL", f"redis://127.0.0.1:6379/{TEST_REDIS_DB}")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdefghijklmnop")
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
os.environ.setdefault("CSRF_COOKIE_SECURE", "false")
os.environ.setdefault("JOB_HEARTBEAT_SECONDS", "1")
os.environ.setdefault("LIFECYCLE_DATA_DIR", tempfile.mkdtemp(prefix="lifecycle-test-"))

# The registry's signing key, made once per test process (settings refuse to start without one).
from lifecycle.lib import signing_keys  # noqa: E402

os.environ.setdefault("SIGNING_KEY_FILE", str(signing_keys.create(os.path.join(os.environ["LIFECYCLE_DATA_DIR"], "signing-key.pem"))))

from lifecycle.settings import *  # noqa: E402,F401,F403

# No collectstatic in tests: serve static files through the finders, without a manifest.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# One test database per pytest process, so that two runs on one machine never share it.
DATABASES["default"]["TEST"] = {"NAME": f"test_lifecycle_{os.getpid()}"}  # noqa: F405

# Playwright's sync API runs an event loop in the test thread; the ORM calls made by browser
# tests between clicks are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
