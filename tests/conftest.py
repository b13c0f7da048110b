"""Named users with clear roles and small make_* factories, shared by every test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from lifecycle.core.roles import ROLES

PASSWORD = "correct-horse-battery-staple"


def make_user(username, *roles, superuser=False):
    user = User.objects.create_user(username=username, password=PASSWORD, is_superuser=superuser, is_staff=superuser)
    for role in roles:
        group, _ = Group.objects.get_or_create(name=role)
        user.groups.add(group)
    return user


@pytest.fixture
def groups(db):
    return [Group.objects.get_or_create(name=role)[0] for role in ROLES]


@pytest.fixture
def engineer(db):
    return make_user("erin-engineer", "ml_engineer")


@pytest.fixture
def approver(db):
    return make_user("alex-approver", "approver")


@pytest.fixture
def labeler(db):
    return make_user("lee-labeler", "labeler")


@pytest.fixture
def oncall(db):
    return make_user("omar-oncall", "oncall")


@pytest.fixture
def viewer(db):
    return make_user("vic-viewer", "viewer")


@pytest.fixture
def stranger(db):
    """Logged in, but holds no role at all."""
    return make_user("sam-stranger")


@pytest.fixture
def admin_user(db):
    return make_user("ada-admin", superuser=True)


@pytest.fixture
def redis():
    """The test Redis (db 15 unless LIFECYCLE_TEST_REDIS_DB), emptied before and after: real
    queues for real workers."""
    from django.conf import settings

    from lifecycle.core import queues

    conn = queues.get_connection("default")
    assert conn.connection_pool.connection_kwargs.get("db") == settings.TEST_REDIS_DB, "refusing to flush this Redis db"
    conn.flushdb()
    yield conn
    conn.flushdb()


def client_for(client, user):
    client.force_login(user)
    return client


def _is_transactional(item):
    marker = item.get_closest_marker("django_db")
    names = getattr(item, "fixturenames", ())
    return bool(marker and marker.kwargs.get("transaction")) or "transactional_db" in names or "live_server" in names


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Transactional tests end with a flush, which is a TRUNCATE, which the audit trail's
    append-only trigger refuses. Lift that one trigger for the flush and put it back after."""
    from django.db import connection
    from pytest_django.plugin import blocking_manager_key

    transactional = _is_transactional(item)
    if transactional:
        with item.config.stash[blocking_manager_key].unblock():
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE core_auditevent DISABLE TRIGGER core_auditevent_no_truncate")
    yield
    if transactional and nextitem is not None:  # after the last test the database is gone
        with item.config.stash[blocking_manager_key].unblock():
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE core_auditevent ENABLE TRIGGER core_auditevent_no_truncate")


def pytest_collection_modifyitems(session, config, items):
    """Browser tests run last. Playwright's session-wide event loop runs Django calls in other
    contexts, and an RQ work horse forked by a later in-process burst worker can inherit a
    database connection from one of them (seen as "server closed the connection")."""
    for item in items:
        if "tests/browser/" in str(item.path):
            item.add_marker(pytest.mark.browser)
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


# --- the session's one real training run (the registry's tests and its browser test) ----------


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The session's one real training run: its report (tests/registry/trained.py) and the
    artifact folder holding its output."""
    # LIFECYCLE_TEST_TRAINED_DIR (a developer's shortcut, unset in CI): reuse a folder an
    # earlier session trained into instead of training again.
    reuse = os.environ.get("LIFECYCLE_TEST_TRAINED_DIR")
    if reuse and (Path(reuse) / "trained.json").exists():
        report = json.loads((Path(reuse) / "trained.json").read_text())
        return {**report, "artifacts": Path(reuse) / "artifacts"}
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("trained")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{out / 'db.sqlite3'}", "DEBUG": "true",
           "LIFECYCLE_DATA_DIR": str(out), "ARTIFACT_DIR": str(out / "artifacts"),
           "MODEL_CACHE_DIR": str(out / "model-cache")}
    for args in (["migrate", "-v0"], ["shell", "-c", f"from tests.registry.trained import train; train({str(out)!r})"]):
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=Path(__file__).resolve().parents[1], env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "trained.json").read_text())
    report["artifacts"] = out / "artifacts"
    return report
