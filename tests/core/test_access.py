"""Walk every URL pattern: anonymous users are sent to log in (401 for the API), users
without the needed role get 403. New pages are covered as soon as they are routed."""
import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from tests.conftest import make_user

# Reachable without logging in, on purpose.
PUBLIC = {"login", "healthz",
          "metrics"}  # Prometheus scrapes with its own bearer token (METRICS_TOKEN; tests/core/test_metrics.py)
# Any logged-in user, whatever their roles: their own account and the start page.
LOGIN_ONLY = {"home", "logout", "tokens", "token_create", "token_revoke", "api_me"}
CONVERTER_VALUES = {"int": "1", "str": "x", "slug": "x", "uuid": "00000000-0000-0000-0000-000000000000", "path": "x"}


def concrete(route):
    return re.sub(r"<(?:(\w+):)?\w+>", lambda m: CONVERTER_VALUES[m.group(1) or "str"], route)


def walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if pattern.app_name == "admin":
                continue  # the admin has its own staff check, tested below
            yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield "/" + concrete(prefix + str(pattern.pattern)), pattern


ROUTES = list(walk(get_resolver().url_patterns))
ROUTE_IDS = [url for url, _ in ROUTES]


def required_roles(pattern):
    return getattr(pattern.callback, "lifecycle_roles", None)


def test_the_walk_sees_the_routes():
    names = {pattern.name for _, pattern in ROUTES}
    assert {"home", "audit", "healthz", "login"} <= names


@pytest.mark.parametrize("url, pattern", ROUTES, ids=ROUTE_IDS)
def test_every_route_declares_who_may_use_it(url, pattern):
    assert pattern.name in PUBLIC | LOGIN_ONLY or required_roles(pattern), (
        f"{url} has no @role_required: decide which roles may use it"
    )


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("url, pattern", ROUTES, ids=ROUTE_IDS)
def test_anonymous_is_sent_to_log_in(client, url, pattern, method):
    if pattern.name in PUBLIC:
        return
    response = getattr(client, method)(url)
    if url.startswith("/api/"):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    else:
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("url, pattern", ROUTES, ids=ROUTE_IDS)
def test_viewer_is_refused_where_a_role_is_needed(client, url, pattern, method):
    roles = required_roles(pattern)
    if not roles or "viewer" in roles:
        return
    client.force_login(make_user("vic-viewer", "viewer"))
    response = getattr(client, method)(url)
    assert response.status_code == 403
    if not url.startswith("/api/"):
        assert b"This needs one of these roles" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("url, pattern", ROUTES, ids=ROUTE_IDS)
def test_user_without_any_role_is_refused_every_role_page(client, url, pattern):
    if not required_roles(pattern):
        return
    client.force_login(make_user("sam-stranger"))
    assert client.get(url).status_code == 403


@pytest.mark.django_db
def test_admin_site_is_for_staff_only(client):
    client.force_login(make_user("vic-viewer", "viewer"))
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_forbidden_page_is_readable_and_names_the_roles(client):
    client.force_login(make_user("vic-viewer", "viewer"))
    response = client.get("/audit/")
    assert response.status_code == 403
    assert b"approver, ml_engineer, oncall" in response.content
    assert b"Your roles:" in response.content
