"""Browser tests drive Debian's Chromium through Playwright against pytest-django's live server."""
import shutil
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, make_user

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


# Chromium logs a refused inline script or style to the console; the DOM event also names
# the directive. Both count, so a violation cannot pass unseen whichever way it is reported.
CSP_WATCH = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.violatedDirective} refused ${e.blockedURI || "inline"}`));"""


def is_csp_violation(text):
    return text.startswith("CSP violation") or "Content Security Policy" in text


def watch_csp(page, violations):
    page.add_init_script(CSP_WATCH)
    page.on("console", lambda message: is_csp_violation(message.text) and violations.append(message.text))
    return page


@pytest.fixture(autouse=True)
def csp_violations(request, monkeypatch):
    """Every page a browser test opens fails the test on a CSP violation; a test that provokes
    one on purpose reads this list and clears it."""
    violations = []
    if "page" in request.fixturenames:
        watch_csp(request.getfixturevalue("page"), violations)
    if "browser" in request.fixturenames:
        browser = request.getfixturevalue("browser")
        new_page = browser.new_page
        monkeypatch.setattr(browser, "new_page", lambda *a, **kw: watch_csp(new_page(*a, **kw), violations))
    yield violations
    assert not violations, f"Content-Security-Policy violations: {violations}"


def log_in(page, live_server, user):
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


# --- the deployments' and monitoring's browser tests -------------------------------------------


@pytest.fixture
def store(transactional_db, settings, tmp_path, trained):
    """This test's artifact store, holding the trained output (the live server reads it too)."""
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    shutil.copytree(trained["artifacts"], settings.ARTIFACT_DIR)
    for path in Path(settings.ARTIFACT_DIR).rglob("*"):
        if path.is_file():
            path.chmod(0o600)
    return settings.ARTIFACT_DIR


@pytest.fixture
def people(transactional_db):
    return {"erin": make_user("erin-engineer", "ml_engineer"), "ann": make_user("ann-approver", "approver"),
            "abe": make_user("abe-approver", "approver"), "ona": make_user("ona-oncall", "oncall")}
