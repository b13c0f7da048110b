"""The front half of datasets as a new user meets it, in the browser: a slug filled from the
name, the upload's first rows before mapping, a small templated upload whose split cannot
meet its fractions (said why, not usable, a way out that works), a child made twice, and the
example browser's Previous, Next and total."""
import json

import pytest
from playwright.sync_api import expect

from lifecycle.datasets.models import DatasetVersion
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.workers import start_manage, stop

TEMPLATES = {
    "refund": "please refund the payment for order {n}",
    "shipping": "where is the parcel for order {n}",
    "address": "please change the delivery address on order {n}",
}


@pytest.fixture
def worker(transactional_db, settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    process = start_manage(tmp_path, "lifecycle_worker", "default")
    yield process
    stop(process)


def templated_file(tmp_path):
    labels = list(TEMPLATES)
    rows = [{"message": TEMPLATES[labels[i % 3]].format(n=10000 + i), "intent": labels[i % 3],
             "customer": f"customer-{i % 50}"} for i in range(200)]
    rows[0]["message"] = "<b>please</b> refund the payment for order 10000"  # shown as text, never as markup
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wait_for_job(page):
    """Reload the job page until the job has ended; return its status."""
    status = page.locator("h1 .status")
    for _ in range(120):
        text = status.inner_text()
        if text in ("succeeded", "failed", "cancelled", "interrupted"):
            return text
        page.wait_for_timeout(500)
        page.reload()
    return status.inner_text()


def test_a_small_templated_upload_says_its_split_falls_short_and_a_way_out_works(page, live_server, worker, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}/datasets/new")
    expect(page.locator("label[for=id_pii_policy]")).to_have_text("PII policy:")
    page.fill("#id_name", "Order Questions")
    expect(page.locator("#id_slug")).to_have_value("order-questions")
    page.click("button:has-text('Create dataset')")
    page.wait_for_url(f"{live_server.url}/datasets/order-questions/upload")

    page.set_input_files("input[type=file]", str(templated_file(tmp_path)))
    page.click("button:has-text('Upload and map columns')")
    preview = page.locator("#upload-preview")
    expect(preview.locator("tbody tr")).to_have_count(5)
    expect(preview.locator("tbody tr").first).to_contain_text("<b>please</b> refund the payment for order 10000")
    expect(preview.locator("b")).to_have_count(0)
    page.select_option("select[name=text]", "message")
    page.select_option("select[name=label]", "intent")
    page.select_option("select[name=group]", "customer")
    page.click("button:has-text('Start the import')")
    expect(page.locator("#upload-status")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#upload-phase")).to_have_text("")

    page.click("#upload-version a")
    expect(page.locator("#split-rows")).to_have_text("Splits seeded (seed 0): train 200.")
    shortfall = page.locator("#split-shortfall")
    expect(shortfall).to_contain_text("The split cannot meet its fractions")
    expect(shortfall).to_contain_text("joined by groups and near duplicates")
    expect(page.locator("#training-usable")).to_contain_text("not usable")
    page.goto(f"{live_server.url}/runs/new")
    expect(page.locator("select[name=dataset_version] option")).not_to_contain_text(["order-questions v1"])
    page.go_back()

    page.click("button:has-text('Split by groups only')")
    assert wait_for_job(page) == "succeeded"
    page.goto(f"{live_server.url}/datasets/order-questions/v2/")
    expect(page.locator("#split-rows")).to_contain_text("train 160, validation 20, test 20.")
    expect(page.locator("#split-shortfall")).to_have_count(0)
    expect(page.locator("#training-usable")).to_have_text("usable")
    page.goto(f"{live_server.url}/runs/new")
    expect(page.locator("select[name=dataset_version]")).to_contain_text("order-questions v2")

    # The same way out again finds v2 instead of making v3.
    page.goto(f"{live_server.url}/datasets/order-questions/v1/")
    page.click("button:has-text('Split by groups only')")
    expect(page.locator(".messages")).to_contain_text("v2 already is this split of v1")
    expect(page.locator("h1")).to_contain_text("v2")
    assert DatasetVersion.objects.filter(dataset__slug="order-questions").count() == 2


def test_the_example_browser_pages_back_and_forth_and_shows_the_total(page, live_server, worker, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}/datasets/new")
    page.fill("#id_name", "Orders")
    page.click("button:has-text('Create dataset')")
    page.set_input_files("input[type=file]", str(templated_file(tmp_path)))
    page.click("button:has-text('Upload and map columns')")
    page.select_option("select[name=text]", "message")
    page.select_option("select[name=label]", "intent")
    page.click("button:has-text('Start the import')")
    expect(page.locator("#upload-status")).to_have_text("succeeded", timeout=60_000)
    page.click("#upload-version a")

    total = page.locator("#examples-total")
    expect(total).to_have_text("200 examples match; rows 0–49 shown.")
    expect(page.locator("a[rel=prev]")).to_have_count(0)
    page.click("a[rel=next]")
    expect(total).to_have_text("200 examples match; rows 50–99 shown.")
    page.click("a[rel=next]")
    page.click("a[rel=prev]")
    expect(total).to_have_text("200 examples match; rows 50–99 shown.")
    page.click("a[rel=prev]")
    expect(total).to_have_text("200 examples match; rows 0–49 shown.")
    expect(page.locator("a[rel=prev]")).to_have_count(0)

    page.fill("input[name=label]", "refund")
    page.click("button:has-text('Filter')")
    expect(total).to_contain_text("67 examples match")
    page.click("a[rel=next]")
    page.click("a[rel=prev]")
    expect(total).to_contain_text("67 examples match")
    expect(page.locator("table.examples tbody tr")).to_have_count(50)
