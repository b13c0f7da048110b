"""Start-up refuses a broken configuration with one clear line, and production settings are clean."""
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def manage(*args, **env):
    """Run manage.py with a clean environment holding only `env` (plus PATH)."""
    clean = {"PATH": os.environ["PATH"], "LIFECYCLE_DATA_DIR": os.environ["LIFECYCLE_DATA_DIR"], **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120)


def production_env(**extra):
    return {"SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "lifecycle.example.com",
            "SIGNING_KEY_FILE": os.environ["SIGNING_KEY_FILE"], **extra}


def test_missing_secret_key_with_debug_off_refuses_to_start():
    result = manage("check")
    assert result.returncode == 2
    assert result.stderr.strip() == "Lifecycle configuration error: SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off"


def test_secret_key_file_is_read(tmp_path):
    key_file = tmp_path / "secret"
    key_file.write_text(secrets.token_urlsafe(50) + "\n")
    result = manage("check", SECRET_KEY_FILE=str(key_file), ALLOWED_HOSTS="x.example.com",
                    SIGNING_KEY_FILE=os.environ["SIGNING_KEY_FILE"])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("signing_key", [None, "/nonexistent/signing-key.pem"])
def test_a_missing_signing_key_with_debug_off_refuses_to_start_with_one_line(signing_key):
    env = {"SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "x.example.com"}
    if signing_key:
        env["SIGNING_KEY_FILE"] = signing_key
    result = manage("check", **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Lifecycle configuration error: SIGNING_KEY_FILE must name"), lines


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("nonsense", "DATABASE_URL is malformed"),
        ("postgres://u@h:notaport/db", "DATABASE_URL is malformed"),
        ("mysql://u@h/db", "DATABASE_URL scheme 'mysql' is not supported"),
        ("postgres://", "DATABASE_URL names no database"),
    ],
)
def test_malformed_database_url_gives_one_clear_message(url, fragment):
    result = manage("check", **production_env(DATABASE_URL=url))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Lifecycle configuration error: ") and fragment in lines[0]


def test_bad_boolean_names_the_variable():
    result = manage("check", **production_env(DEBUG="maybe"))
    assert result.returncode == 2
    assert "DEBUG must be true or false, not 'maybe'" in result.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "lifecycle.E002"),
        ({"ARTIFACT_BACKEND": "ftp"}, "lifecycle.E003"),
        ({"ARTIFACT_BACKEND": "s3"}, "ARTIFACT_S3_BUCKET is not set"),
        ({"JOB_HEARTBEAT_SECONDS": "10", "JOB_HEARTBEAT_WINDOW_SECONDS": "5"}, "lifecycle.E004"),
        ({"LOGIN_FAILURE_LIMIT": "0"}, "LOGIN_FAILURE_LIMIT must be at least 1"),
        ({"LOGIN_ADDRESS_FAILURE_LIMIT": "-1"}, "LOGIN_ADDRESS_FAILURE_LIMIT must be at least 1"),
    ],
)
def test_system_checks_refuse_broken_configuration(env, message):
    result = manage("check", **production_env(**env))
    assert result.returncode == 1
    assert message in result.stderr


def test_wsgi_refuses_broken_configuration():
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "lifecycle.settings", **production_env(ARTIFACT_BACKEND="ftp")}
    result = subprocess.run([sys.executable, "-c", "import lifecycle.wsgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ARTIFACT_BACKEND must be 'local' or 's3'" in result.stderr


def test_deploy_check_is_clean_under_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
