"""System checks that refuse a broken configuration at start-up with one clear message each.

They run on `manage.py check`, runserver, migrate, and when the WSGI app loads (wsgi.py).
"""
import os
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, register

TAG = "lifecycle"


@register(TAG)
def check_data_dir(app_configs, **kwargs):
    data_dir = settings.DATA_DIR
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [Error(f"LIFECYCLE_DATA_DIR {data_dir} cannot be created: {exc.strerror}", id="lifecycle.E001")]
    if not os.access(data_dir, os.W_OK):
        return [Error(f"LIFECYCLE_DATA_DIR {data_dir} is not writable by this process", id="lifecycle.E001")]
    return []


@register(TAG)
def check_redis_url(app_configs, **kwargs):
    scheme = urlsplit(settings.REDIS_URL).scheme
    if scheme not in ("redis", "rediss", "unix"):
        return [Error(f"REDIS_URL must start with redis://, rediss:// or unix://, not {scheme or 'nothing'}://", id="lifecycle.E002")]
    return []


@register(TAG)
def check_artifact_backend(app_configs, **kwargs):
    backend = settings.ARTIFACT_BACKEND
    if backend not in ("local", "s3"):
        return [Error(f"ARTIFACT_BACKEND must be 'local' or 's3', not {backend!r}", id="lifecycle.E003")]
    if backend == "s3" and not settings.ARTIFACT_S3_BUCKET:
        return [Error("ARTIFACT_BACKEND is 's3' but ARTIFACT_S3_BUCKET is not set", id="lifecycle.E003")]
    return []


@register(TAG)
def check_heartbeat(app_configs, **kwargs):
    beat, window = settings.JOB_HEARTBEAT_SECONDS, settings.JOB_HEARTBEAT_WINDOW_SECONDS
    if beat < 1 or window <= beat:
        return [Error(f"JOB_HEARTBEAT_WINDOW_SECONDS ({window}) must be larger than JOB_HEARTBEAT_SECONDS ({beat}), which must be at least 1", id="lifecycle.E004")]
    return []


@register(TAG)
def check_login_limits(app_configs, **kwargs):
    # A limit of 0 (or less) would lock every account at its first attempt, admins included.
    bad = [name for name in ("LOGIN_FAILURE_LIMIT", "LOGIN_ADDRESS_FAILURE_LIMIT") if getattr(settings, name) < 1]
    return [Error(f"{name} must be at least 1 (a lower limit locks every login at once)", id="lifecycle.E005")
            for name in bad]
