"""Every response carries the strict Content-Security-Policy (the browser side is in
tests/browser/test_csp.py)."""
import pytest
from django.http import HttpResponseServerError

from lifecycle.core.middleware import ContentSecurityPolicyMiddleware
from tests.conftest import make_user


def policy(response):
    header = response.headers["Content-Security-Policy"]
    return {name: sources for name, *sources in (part.split() for part in header.split(";"))}


def assert_strict(response):
    found = policy(response)
    assert found["default-src"] == ["'self'"] and found["script-src"] == ["'self'"]
    assert found["object-src"] == ["'none'"] and found["frame-ancestors"] == ["'none'"]
    assert found["base-uri"] == ["'self'"] and found["form-action"] == ["'self'"]
    # The one 'unsafe-inline' is for style attributes (Plotly sets them at run time): never for
    # scripts, never for <style> elements.
    assert found["style-src-attr"] == ["'unsafe-inline'"]
    assert not any(source.startswith("'unsafe-") for name, sources in found.items() if name != "style-src-attr"
                   for source in sources)
    # Styles: our own files, plus inline <style> only with an exact hash (no 'unsafe-inline').
    assert found["style-src"][0] == "'self'" and all(s.startswith("'sha256-") for s in found["style-src"][1:])


@pytest.mark.parametrize("path", ["/login/", "/", "/datasets/", "/audit/", "/admin/", "/api/v1/runs", "/no-such-page/"])
def test_pages_json_and_errors_carry_the_policy(client, db, path):
    client.force_login(make_user("ada-admin", "ml_engineer", "approver", superuser=True))
    assert_strict(client.get(path))


def test_an_anonymous_redirect_and_an_api_401_carry_it_too(client, db):
    assert client.get("/datasets/").status_code == 302
    assert_strict(client.get("/datasets/"))
    assert client.get("/api/v1/runs").status_code == 401
    assert_strict(client.get("/api/v1/runs"))


def test_django_debug_pages_go_without_it_and_pages_keep_it(client, db, settings, rf):
    # The yellow debug error page is inline CSS and script; it exists only with DEBUG on. A 404
    # is our own page even then (NotFoundPageMiddleware), so it keeps the policy.
    settings.DEBUG = True
    client.force_login(make_user("erin-engineer", "ml_engineer"))
    missing = client.get("/datasets/no-such-dataset/")
    assert missing.status_code == 404 and "There is nothing at this address." in missing.content.decode()
    assert_strict(missing)
    assert_strict(client.get("/datasets/"))
    debug_500 = ContentSecurityPolicyMiddleware(lambda request: HttpResponseServerError("debug page"))(rf.get("/"))
    assert "Content-Security-Policy" not in debug_500.headers
