"""A job's page, the job list and the QC page follow a job to its end by themselves."""
import pytest
from django.db import transaction
from playwright.sync_api import expect

from lifecycle.core.jobs import enqueue
from lifecycle.datasets.tasks import derive_version
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.labeling.factories import label_queue, labeled_version, make_project
from tests.runs.factories import intent_version
from tests.workers import run_burst


@pytest.fixture
def engineer(transactional_db, redis, settings, tmp_path):
    # redis: emptied, so no worker another test killed is still registered on a queue.
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return make_user("erin-engineer", "ml_engineer")


def test_a_queued_jobs_page_turns_into_its_outcome_with_a_link_without_reloading(page, browser, live_server,
                                                                                  engineer, tmp_path):
    version = intent_version(tmp_path, engineer, n=120)
    with transaction.atomic():
        job = enqueue(derive_version, user=engineer, version_id=version.pk, operation="resplit", seed=4)
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}/jobs/{job.pk}")
    status = page.locator("h1 [data-job-field=status]")
    expect(status).to_have_text("queued")
    expect(page.locator("[data-job-field=wait]")).to_have_text(
        "No worker is listening on queue default: nothing on it runs until one starts "
        "(manage.py lifecycle_worker default).")
    expect(page.locator("button:has-text('Cancel')")).to_be_visible()
    page.evaluate("window.stillTheSamePage = true")
    listing = browser.new_page()
    log_in(listing, live_server, engineer)
    listing.goto(f"{live_server.url}/jobs/")
    expect(listing.locator(f"[data-job='{job.pk}'][data-job-field=status]")).to_have_text("queued")

    run_burst(tmp_path, "default")

    expect(status).to_have_text("succeeded")
    child = version.dataset.versions.order_by("-number").first()
    outcome = page.locator("[data-job-field=outcome]")
    expect(outcome).to_contain_text(f"Made version {child.number} of {version.dataset.name}")
    expect(outcome.locator("a")).to_have_attribute("href", child.get_absolute_url())
    expect(page.locator("button:has-text('Cancel')")).to_have_count(0)
    expect(page.locator("[data-job-field=wait]")).to_have_text("")
    expect(page.locator(".job-status [data-job-field=phase]")).to_have_text("")  # no stale "resplit 0 of 120"
    assert page.evaluate("window.stillTheSamePage") is True
    expect(listing.locator(f"[data-job='{job.pk}'][data-job-field=status]")).to_have_text("succeeded")
    outcome.locator("a").click()
    expect(page.locator("h1")).to_contain_text(f"v{child.number}")


def test_the_qc_pages_recompute_notice_goes_away_by_itself(page, live_server, engineer, tmp_path):
    version = labeled_version(tmp_path, engineer, n=30)
    project = make_project(version, engineer, overlap=1, gold_share=0, name="Ticket intents")
    labeler = make_user("kim-labeler", "labeler")
    label_queue(project, labeler, lambda a: a.item.example.label, limit=10)
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}/labeling/{project.pk}/qc")
    page.click("#recompute")
    notice = page.locator(".job-status")
    expect(notice).to_contain_text("QC is being recomputed.")
    expect(notice).to_contain_text("No worker is listening on queue monitoring")

    run_burst(tmp_path, "monitoring")

    expect(notice).to_have_count(0)
    expect(page.locator("#qc-when")).to_contain_text("from 10 answers")
    expect(page.get_by_text("QC is being recomputed")).to_have_count(0)
