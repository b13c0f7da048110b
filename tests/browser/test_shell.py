"""Log in, find the roles in the header, read and filter the audit trail, make an API token."""
from django.db import transaction
from playwright.sync_api import expect

from lifecycle.core.models import AuditEvent
from tests.browser.conftest import log_in
from tests.conftest import make_user


def test_login_shows_roles_and_navigation_and_logout(page, live_server, transactional_db):
    user = make_user("erin-engineer", "ml_engineer")
    page.goto(f"{live_server.url}/audit/")
    expect(page).to_have_url(f"{live_server.url}/login/?next=/audit/")
    log_in(page, live_server, user)
    expect(page.locator(".who .role")).to_have_text(["ml_engineer"])
    expect(page.locator(".mainnav")).to_contain_text("Audit")
    page.click("text=Log out")
    expect(page).to_have_url(f"{live_server.url}/login/")


def test_wrong_password_says_so(page, live_server, transactional_db):
    make_user("erin-engineer", "ml_engineer")
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "erin-engineer")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("did not match")


def test_audit_trail_filters_and_pages(page, live_server, transactional_db):
    approver = make_user("alex-approver", "approver")
    with transaction.atomic():
        for n in range(60):
            AuditEvent.record(approver if n % 2 else None, "demo.even" if n % 2 == 0 else "demo.odd", payload={"n": n, "html": "<b>x</b>"})
    log_in(page, live_server, approver)
    page.click(".mainnav >> text=Audit")
    expect(page.locator("table.data tbody tr")).to_have_count(50)
    page.click("text=Older →")
    expect(page.locator("table.data tbody tr")).to_have_count(10)
    page.fill("input[name=action]", "demo.odd")
    page.click("button:has-text('Filter')")
    expect(page.locator("table.data tbody tr")).to_have_count(30)
    expect(page.locator("table.data")).to_contain_text("<b>x</b>")  # shown as text, not markup
    with page.expect_download() as download:
        page.click("text=CSV")
    assert download.value.suggested_filename == "audit.csv"


def test_viewer_sees_a_readable_refusal(page, live_server, transactional_db):
    log_in(page, live_server, make_user("vic-viewer", "viewer"))
    page.goto(f"{live_server.url}/audit/")
    expect(page.locator("h1")).to_have_text("You are not allowed to do this")
    expect(page.locator("main")).to_contain_text("approver, ml_engineer, oncall")


def test_create_and_revoke_an_api_token(page, live_server, transactional_db):
    user = make_user("erin-engineer", "ml_engineer")
    log_in(page, live_server, user)
    page.click("text=API tokens")
    page.fill("input[name=name]", "laptop CLI")
    page.click("button:has-text('Create token')")
    key = page.locator("#new-token").inner_text().strip()
    assert key.startswith("lc_")
    api = page.request.get(f"{live_server.url}/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert api.json() == {"username": "erin-engineer", "roles": ["ml_engineer"]}
    page.click("text=Back to your tokens")
    page.once("dialog", lambda dialog: dialog.accept())  # data-confirm asks first
    page.click("button:has-text('Revoke')")
    expect(page.locator(".messages")).to_contain_text("revoked")
    assert page.request.get(f"{live_server.url}/api/v1/me", headers={"Authorization": f"Bearer {key}"}).status == 401
