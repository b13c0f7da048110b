"""Upload a file in the browser, map its columns, watch the ingest finish, read the PII report."""
import json
import re

import pytest
from playwright.sync_api import expect

from lifecycle.datasets.models import Dataset
from lifecycle.datasets.synthetic import generate
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.workers import start_manage, stop


@pytest.fixture
def worker(transactional_db, settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    process = start_manage(tmp_path, "lifecycle_worker", "default")
    yield process
    stop(process)


def test_upload_map_watch_progress_and_see_the_pii_report(page, live_server, worker, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    Dataset.create(engineer, slug="support", name="Support", pii_policy="redact")
    path = tmp_path / "messages.jsonl"
    path.write_text("".join(json.dumps({"message": r["text"], "intent": r["label"], "customer": r["customer_id"]}) + "\n"
                            for r in generate(1500, pii_rate=0.1)))
    log_in(page, live_server, engineer)
    page.click(".mainnav >> text=Datasets")
    page.click("text=Support")
    page.click("text=Upload a file")
    page.set_input_files("input[type=file]", str(path))
    page.check("input[value=drop]")
    page.click("button:has-text('Upload and map columns')")
    expect(page.locator("h2")).to_have_text("Map the columns")
    page.select_option("select[name=text]", "message")
    page.select_option("select[name=label]", "intent")
    page.select_option("select[name=group]", "customer")
    page.click("button:has-text('Start the import')")
    expect(page.locator("#upload-status")).to_have_text("succeeded", timeout=60_000)
    page.click("#upload-version a")
    expect(page.locator("h1")).to_contain_text("Support v2")  # the redacted child of v1
    expect(page.locator("section:has(h2:has-text('PII'))")).to_contain_text("PII redacted")
    page.click("text=v1")
    pii = page.locator("section:has(h2:has-text('PII'))")
    expect(pii).to_contain_text("PII found")
    expect(pii).to_contain_text("EMAIL")
    expect(page.locator("table.examples tbody tr")).to_have_count(50)
    page.select_option("select[name=pii]", "yes")
    page.click("button:has-text('Filter')")
    first = page.locator("table.examples tbody tr").first
    expect(first.locator("td").last.locator(".flag-found")).to_have_text(re.compile(r"(EMAIL|PHONE|IBAN|CREDIT_CARD)"))
