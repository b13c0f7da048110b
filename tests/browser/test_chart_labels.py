"""A label written as HTML shows in the chart as the text it is: no link, no restyling."""
from playwright.sync_api import expect

from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.labeling.factories import labeled_version

LINK = '<a href="https://evil.example/phish">Click here to re-login</a>'
BIG = '<span style="font-size:90px">big</span>'


def test_hostile_labels_show_as_literal_text_in_ticks_and_hover(page, live_server, transactional_db, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    labeled_version(tmp_path, engineer, n=30, labels=[LINK, BIG, "Q&A"], slug="hostile")
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}/datasets/hostile/")
    chart = page.locator(".chart[data-chart=label-chart]")
    ticks = chart.locator(".xtick text")
    expect(ticks).to_have_count(3)
    expect(ticks).to_have_text(sorted([LINK, BIG, "Q&A"]))
    expect(chart.locator("svg a")).to_have_count(0)
    expect(chart.locator("svg [style*='90px']")).to_have_count(0)

    chart.locator(".bars .point path").first.hover(force=True)  # through the drag layer above it
    hover = chart.locator(".hoverlayer")
    expect(hover).to_contain_text(LINK)
    expect(hover.locator("a")).to_have_count(0)
