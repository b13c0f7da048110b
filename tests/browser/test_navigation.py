"""A labeler and an engineer each click every item of their menu (none answers 403) and follow
their start page to what they do next; the labeler's answer is timed from when it was shown."""
import pytest
from playwright.sync_api import expect

from lifecycle.labeling.models import Assignment
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.labeling.factories import labeled_version, make_project
from tests.runs.test_web import make_run

REFUSED = "You are not allowed to do this"


@pytest.fixture
def project(transactional_db, settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    engineer = make_user("erin-engineer", "ml_engineer")
    version = labeled_version(tmp_path, engineer, n=30)
    make_run(version, name="first try", user=engineer)
    return make_project(version, engineer, overlap=2, gold_share=0, name="Ticket intents")


def click_every_menu_item(page):
    labels = page.locator(".mainnav a").all_inner_texts()
    assert labels
    for label in labels:
        with page.expect_navigation() as navigation:
            page.click(f".mainnav a:text-is('{label}')")
        assert navigation.value.status == 200, f"{label} answered {navigation.value.status}"
        expect(page.locator("h1").first).not_to_have_text(REFUSED)
        expect(page.locator(".mainnav a[aria-current=page]")).to_have_text(label)
    return labels


def test_a_labeler_opens_every_menu_item_and_labels_from_the_start_page(page, live_server, project):
    labeler = make_user("lee-labeler", "labeler")
    log_in(page, live_server, labeler)
    queue = page.locator("#home-queues")
    expect(queue).to_contain_text("30 examples wait for you")
    assert click_every_menu_item(page) == ["Labeling", "Jobs"]

    page.click(".brand")
    page.click("#home-queues >> text=Ticket intents")
    expect(page.locator("#text")).not_to_have_text("Loading…")
    page.wait_for_timeout(1500)  # the labeler reads the example
    page.keyboard.press("1")
    expect(page.locator("#done")).to_have_text("1")
    answer = Assignment.objects.get(annotator=labeler, state=Assignment.State.ANSWERED)
    assert answer.seconds >= 1.5
    page.click(".brand")
    expect(queue).to_contain_text("29 examples wait for you")  # the one on screen now still counts


def test_an_engineer_opens_every_menu_item_and_the_newest_run_from_the_start_page(page, live_server, project):
    log_in(page, live_server, project.created_by)
    expect(page.locator("#home-runs")).to_contain_text("first try")
    assert click_every_menu_item(page) == ["Datasets", "Labeling", "Runs", "Registry", "Deployments", "Monitoring",
                                           "Audit", "Jobs"]
    page.click(".brand")
    page.click("#home-runs >> text=first try")
    expect(page.locator("h1")).to_contain_text("first try")
    page.goto(f"{live_server.url}/monitoring/")
    expect(page.locator("h1")).to_have_text("Monitoring")
