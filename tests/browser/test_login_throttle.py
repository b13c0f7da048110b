"""A person who mistypes their password too often is told to wait, even with the right one,
and an admin's unlock lets them in again."""
from axes.models import AccessAttempt
from playwright.sync_api import expect

from tests.conftest import PASSWORD, make_user

LIMIT = 3


def try_password(page, live_server, username, password):
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


def test_too_many_wrong_passwords_lock_the_login_until_an_admin_unlocks(page, live_server, transactional_db,
                                                                           settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    user = make_user("erin-engineer", "ml_engineer")
    for _ in range(LIMIT - 1):
        try_password(page, live_server, user.username, "wrong")
        expect(page.locator(".error")).to_contain_text("did not match")
    try_password(page, live_server, user.username, "wrong")
    expect(page.locator("h1")).to_have_text("Too many failed logins")
    expect(page.locator("main")).to_contain_text("Try again in 15 minutes")

    try_password(page, live_server, user.username, PASSWORD)  # the right one is refused too
    expect(page.locator("h1")).to_have_text("Too many failed logins")

    AccessAttempt.objects.filter(username=user.username).delete()  # what the admin's unlock does
    try_password(page, live_server, user.username, PASSWORD)
    expect(page).to_have_url(f"{live_server.url}/")
