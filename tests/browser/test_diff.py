"""Compare a version with its redacted child in the browser: the edits are counted, the changed
words are marked, and the edits page on."""
import pytest
from playwright.sync_api import expect

from lifecycle.datasets import ingest, pipeline
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.readers import ColumnMapping
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.datasets.files import write_jsonl


@pytest.fixture
def redaction(transactional_db, settings, tmp_path):
    """v1 with an address in each of 60 rows, among 80; v2 its redacted child."""
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    dataset = Dataset.create(None, slug="support", name="Support", pii_policy="redact")
    data = [{"text": f"ticket {i} about order {i * 7919 % 10000}" + (f" from client{i}@example.com" if i < 60 else ""),
             "label": ["billing", "shipping"][i % 2]} for i in range(80)]
    options = ingest.Options.for_dataset(dataset, ColumnMapping({}), "reject")
    return pipeline.upload(dataset, str(write_jsonl(tmp_path / "d.jsonl", data)), "jsonl", options)


def test_a_redaction_diff_shows_the_edits_marked_and_pages_on(page, live_server, redaction):
    log_in(page, live_server, make_user("erin-engineer", "ml_engineer"))
    page.goto(f"{live_server.url}/datasets/support/diff?a=1&b=2")
    expect(page.locator("h1")).to_have_text("Support: v1 → v2")
    expect(page.locator("#edited-count")).to_have_text("60")
    expect(page.locator("#added-count")).to_have_text("0")
    expect(page.locator("#removed-count")).to_have_text("0")
    expect(page.locator("#match-by")).to_contain_text("matched by identity")
    rows = page.locator("#edited-rows tbody tr")
    expect(rows).to_have_count(50)
    first = rows.first
    expect(first.locator("td").nth(1).locator("del")).to_have_text("client0@example.com")
    expect(first.locator("td").nth(2).locator("ins")).to_have_text("<EMAIL>")
    expect(first.locator("td").nth(2)).to_have_text("ticket 0 about order 0 from <EMAIL>")
    expect(page.locator(".chart[data-chart=diff-chart] .xtick text")).to_have_text(["billing", "shipping"])

    page.click("text=Next edited →")
    expect(page).to_have_url(f"{live_server.url}/datasets/support/diff?a=1&b=2&edited=2&added=1&removed=1#edited")
    expect(page.locator("#edited")).to_contain_text("page 2")
    expect(rows).to_have_count(10)
    expect(rows.first.locator("td").first).to_have_text("50")
    expect(page.locator("text=Next edited →")).to_have_count(0)
    page.click("text=← Previous edited")
    expect(rows).to_have_count(50)
