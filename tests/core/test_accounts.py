"""Bootstrap, API tokens, health endpoint, CSRF."""
import io

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.test import Client

from lifecycle.core.models import ApiToken, AuditEvent
from lifecycle.core.roles import ROLES
from tests.conftest import make_user


@pytest.mark.django_db
def test_bootstrap_creates_roles_idempotently(monkeypatch):
    monkeypatch.setenv("LIFECYCLE_ADMIN_PASSWORD", "a-long-admin-password")
    out = io.StringIO()
    call_command("bootstrap", admin="root-admin", stdout=out)
    call_command("bootstrap", admin="root-admin", stdout=out)
    assert set(Group.objects.values_list("name", flat=True)) == set(ROLES)
    assert Group.objects.get(name="labeler").permissions.filter(codename="view_auditevent").count() == 0
    assert Group.objects.get(name="approver").permissions.filter(codename="view_auditevent").exists()
    admin = User.objects.get(username="root-admin")
    assert admin.is_superuser and admin.check_password("a-long-admin-password")
    assert "a-long-admin-password" not in out.getvalue()  # secrets never printed when given
    assert AuditEvent.objects.filter(action="role.configured").count() == len(ROLES)  # not again on re-run
    assert AuditEvent.verify_chain() is None


@pytest.mark.django_db
def test_api_token_authenticates_and_only_its_hash_is_stored(client):
    user = make_user("erin", "ml_engineer")
    token, key = ApiToken.issue(user, "cli")
    assert key not in token.key_hash and token.key_hash == ApiToken.hash_key(key)
    response = Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200 and response.json()["roles"] == ["ml_engineer"]
    assert Client().get("/api/v1/me", HTTP_AUTHORIZATION="Bearer lc_wrong").status_code == 401
    token.revoke(user)
    assert Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401


@pytest.mark.django_db
def test_token_of_inactive_user_is_refused():
    user = make_user("erin", "ml_engineer")
    _, key = ApiToken.issue(user, "cli")
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401


@pytest.mark.django_db
def test_token_form_requires_a_name_and_strangers_cannot_revoke(client):
    owner, other = make_user("erin", "ml_engineer"), make_user("sam")
    token, _ = ApiToken.issue(owner, "cli")
    client.force_login(other)
    assert client.post("/account/tokens/new", {"name": ""}).status_code == 400
    assert client.post(f"/account/tokens/{token.pk}/revoke").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


@pytest.mark.django_db
def test_cross_origin_text_plain_post_without_csrf_token_is_refused():
    user = make_user("erin", "ml_engineer")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    response = browser.post("/account/tokens/new", data="name=evil", content_type="text/plain", HTTP_ORIGIN="https://evil.example")
    assert response.status_code == 403
    response = browser.post("/account/tokens/new", {"name": "evil"}, HTTP_ORIGIN="https://evil.example")
    assert response.status_code == 403
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_api_post_with_session_but_without_csrf_is_refused():
    user = make_user("erin", "ml_engineer")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    assert browser.post("/api/v1/me", data="{}", content_type="application/json").status_code == 403


@pytest.mark.django_db
def test_healthz_reports_database_and_redis(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}
