"""The Content-Security-Policy is live in Chromium: markup injected into a page cannot run
script or restyle it, and the admin works under the same policy."""
from playwright.sync_api import expect

from tests.browser.conftest import log_in
from tests.conftest import make_user

INJECTED = ('<script>document.documentElement.dataset.injected = "ran"</script>'
            '<style>#injected { color: rgb(255, 0, 0) }</style><p id="injected">injected</p>')


def serve_with_injection(page, keep_csp=True):
    """Every page as the server sent it, with INJECTED added: what a stored-markup bug would do."""
    def inject(route):
        response = route.fetch()
        if "text/html" not in response.headers.get("content-type", ""):
            return route.fulfill(response=response)
        headers = {k: v for k, v in response.headers.items()
                   if keep_csp or k.lower() != "content-security-policy"}
        route.fulfill(response=response, headers=headers, body=response.text().replace("</main>", INJECTED + "</main>"))
    page.route("**/*", inject)


def test_an_injected_inline_script_and_style_are_refused(page, live_server, transactional_db, csp_violations):
    serve_with_injection(page)
    page.goto(f"{live_server.url}/login/")
    expect(page.locator("#injected")).to_be_visible()
    assert page.evaluate("document.documentElement.dataset.injected") is None
    assert page.evaluate("getComputedStyle(document.getElementById('injected')).color") != "rgb(255, 0, 0)"
    page.wait_for_function("true")  # a round trip, so the console reports have arrived
    assert any("script-src" in v for v in csp_violations) and any("style-src" in v for v in csp_violations)
    csp_violations.clear()


def test_without_the_header_the_same_injection_runs(page, live_server, transactional_db):
    serve_with_injection(page, keep_csp=False)
    page.goto(f"{live_server.url}/login/")
    expect(page.locator("html")).to_have_attribute("data-injected", "ran")
    assert page.evaluate("getComputedStyle(document.getElementById('injected')).color") == "rgb(255, 0, 0)"


def test_the_admin_works_under_the_policy(page, live_server, transactional_db):
    admin = make_user("ada-admin", superuser=True)
    make_user("kim-labeler", "labeler")
    log_in(page, live_server, admin)
    page.goto(f"{live_server.url}/admin/")
    expect(page.locator("#site-name")).to_be_visible()
    page.goto(f"{live_server.url}/admin/auth/user/")
    page.fill("#searchbar", "kim")
    page.keyboard.press("Enter")
    page.click("text=kim-labeler")
    expect(page.locator("#id_username")).to_have_value("kim-labeler")
    expect(page.locator("#id_groups_from")).to_be_visible()  # built by the admin's own script
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
