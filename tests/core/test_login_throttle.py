"""Login throttling: a username from one address, and one address for any usernames, each
locked after its own number of wrong passwords; an audit event on lockout and on unlock."""
import json
import subprocess
import sys

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client, RequestFactory

from lifecycle.core.login_throttle import client_address
from lifecycle.core.models import AuditEvent
from tests.conftest import PASSWORD, make_user
from tests.workers import ROOT, worker_env

PAIR_LIMIT, ADDRESS_LIMIT = 3, 6
LOCKED = "Too many failed logins"


@pytest.fixture(autouse=True)
def limits(settings):
    settings.AXES_FAILURE_LIMIT = PAIR_LIMIT
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = ADDRESS_LIMIT
    # The real hasher costs ~0.4 s a check; the throttle does not depend on it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def log_in(username, password, address="10.0.0.1", **headers):
    return Client(REMOTE_ADDR=address, **headers).post("/login/", {"username": username, "password": password})


def fail(username, times, address="10.0.0.1", **headers):
    return [log_in(username, "wrong", address, **headers).status_code for _ in range(times)]


def assert_locked(response):
    assert response.status_code == 429
    assert LOCKED in response.content.decode() and response["Retry-After"] == "900"
    assert "_auth_user_id" not in response.client.session


@pytest.mark.django_db
def test_wrong_passwords_lock_that_username_from_that_address_even_for_the_right_one():
    make_user("erin-engineer", "ml_engineer")
    assert fail("erin-engineer", PAIR_LIMIT) == [200] * (PAIR_LIMIT - 1) + [429]
    assert_locked(log_in("erin-engineer", PASSWORD))


@pytest.mark.django_db
def test_the_lock_stays_with_the_guessers_address_and_username():
    make_user("erin-engineer", "ml_engineer")
    make_user("alex-approver", "approver")
    fail("erin-engineer", PAIR_LIMIT, address="10.0.0.1")
    # Typing a colleague's name from elsewhere does not lock the colleague out...
    assert log_in("erin-engineer", PASSWORD, address="10.0.0.2").status_code == 302
    # ...nor does one person's lock stop the others behind the same address.
    assert log_in("alex-approver", PASSWORD, address="10.0.0.1").status_code == 302


@pytest.mark.django_db
def test_an_address_trying_many_usernames_is_locked_for_every_username():
    make_user("erin-engineer", "ml_engineer")
    statuses = [fail(f"guess-{n}", 1, address="10.0.0.3")[0] for n in range(ADDRESS_LIMIT)]
    assert statuses == [200] * (ADDRESS_LIMIT - 1) + [429]  # no username reached the pair limit
    assert_locked(log_in("erin-engineer", PASSWORD, address="10.0.0.3"))
    assert log_in("erin-engineer", PASSWORD, address="10.0.0.4").status_code == 302


@pytest.mark.django_db
def test_a_forged_forwarded_for_header_does_not_escape_the_lock():
    make_user("erin-engineer", "ml_engineer")
    for n in range(PAIR_LIMIT):
        fail("erin-engineer", 1, HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")
    assert_locked(log_in("erin-engineer", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.99"))


def test_forwarded_for_is_read_only_from_the_configured_proxies(settings):
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.9", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7, 10.0.0.8")
    assert client_address(request) == "10.0.0.9"
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_address(request) == "10.0.0.8"
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_address(request) == "198.51.100.7"
    settings.TRUSTED_PROXY_COUNT = 4  # fewer entries than proxies: the request did not come through them
    assert client_address(request) == "10.0.0.9"
    settings.TRUSTED_PROXY_COUNT = 1
    garbled = RequestFactory().get("/", REMOTE_ADDR="10.0.0.9", HTTP_X_FORWARDED_FOR="not-an-address")
    assert client_address(garbled) == "10.0.0.9"


@pytest.mark.django_db
def test_a_lockout_writes_one_audit_event_and_no_password():
    make_user("erin-engineer", "ml_engineer")
    fail("erin-engineer", PAIR_LIMIT + 2)  # two more refused while locked
    log_in("erin-engineer", PASSWORD)
    [event] = AuditEvent.objects.filter(action="login.locked")
    assert event.actor == "" and event.object_id == "erin-engineer"
    assert event.payload == {"username": "erin-engineer", "address": "10.0.0.1", "failures": PAIR_LIMIT,
                             "address_failures": PAIR_LIMIT}
    stored = json.dumps(list(AuditEvent.objects.values("payload"))) + json.dumps(list(AccessAttempt.objects.values()), default=str)
    assert "wrong" not in stored and PASSWORD not in stored
    assert AuditEvent.verify_chain() is None


@pytest.mark.django_db
def test_the_reset_command_unlocks_and_is_audited():
    make_user("erin-engineer", "ml_engineer")
    fail("erin-engineer", PAIR_LIMIT)
    call_command("axes_reset_username", "erin-engineer", stdout=open("/dev/null", "w"))
    assert log_in("erin-engineer", PASSWORD).status_code == 302
    [event] = AuditEvent.objects.filter(action="login.unlocked")
    assert event.payload == {"username": "erin-engineer", "address": "10.0.0.1", "failures": PAIR_LIMIT}


@pytest.mark.django_db
def test_an_admin_unlocks_in_the_admin_and_it_is_audited(admin_user):
    make_user("erin-engineer", "ml_engineer")
    fail("erin-engineer", PAIR_LIMIT)
    admin = Client()
    admin.force_login(admin_user)
    ids = list(AccessAttempt.objects.values_list("pk", flat=True))
    response = admin.post("/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": ids, "post": "yes"})
    assert response.status_code == 302 and not AccessAttempt.objects.exists()
    assert log_in("erin-engineer", PASSWORD).status_code == 302
    assert AuditEvent.objects.filter(action="login.unlocked").count() == 1


@pytest.mark.django_db
def test_expired_failures_are_pruned_without_an_unlock_event(settings):
    make_user("erin-engineer", "ml_engineer")
    fail("erin-engineer", PAIR_LIMIT - 1)
    AccessAttempt.objects.update(attempt_time="2000-01-01T00:00:00Z")
    assert fail("erin-engineer", 1) == [200]  # the old failures no longer count...
    assert AccessAttempt.objects.get().failures_since_start == 1  # ...and axes pruned them
    assert not AuditEvent.objects.filter(action="login.unlocked").exists()


@pytest.mark.django_db(transaction=True)
def test_a_lockout_made_by_another_process_holds_here():
    make_user("erin-engineer", "ml_engineer")
    code = ("from django.test import Client; c = Client(REMOTE_ADDR='10.0.0.5'); "
            "print([c.post('/login/', {'username': 'erin-engineer', 'password': 'wrong'}).status_code for _ in range(3)])")
    other = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, capture_output=True, text=True,
                           env=worker_env(LOGIN_FAILURE_LIMIT="3"), timeout=120)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip().splitlines()[-1] == "[200, 200, 429]"  # LOGIN_FAILURE_LIMIT read from the environment
    assert_locked(log_in("erin-engineer", PASSWORD, address="10.0.0.5"))


@pytest.mark.django_db
def test_the_test_clients_login_helpers_still_work():
    user = make_user("erin-engineer", "ml_engineer")
    client = Client()
    assert client.login(username="erin-engineer", password=PASSWORD)
    assert not client.login(username="erin-engineer", password="wrong")
    client.force_login(user)
    assert client.get("/").status_code == 200
