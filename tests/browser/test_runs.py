"""Start a training run from the form and watch its loss curve and progress bar fill in
until it succeeds and shows its evaluation."""
import pytest
from playwright.sync_api import expect

from lifecycle.runs import launch
from lifecycle.runs.models import Run
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.runs.factories import MINILM, intent_version
from tests.workers import start_manage, stop, wait_for


@pytest.fixture
def training_worker(transactional_db, settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    process = start_manage(tmp_path, "lifecycle_worker", "training")
    yield process
    stop(process)


def loss_points(page):
    return page.evaluate("() => { const el = document.querySelector('[data-chart=\"run-chart-loss\"]');"
                         " return el && el.data ? el.data[0].x.length : 0; }")


def test_start_a_run_from_the_form_and_watch_it_train(page, live_server, training_worker, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    version = intent_version(tmp_path, engineer, n=400)
    log_in(page, live_server, engineer)
    page.click(".mainnav >> text=Runs")
    page.click("text=New run")
    page.select_option("select[name=dataset_version]", str(version.pk))
    page.select_option("select[name=base_model]", MINILM)
    page.select_option("select[name=method]", "lora")
    page.fill("input[name=name]", "browser LoRA")
    page.fill("input[name=max_steps]", "120")
    page.fill("input[name=batch_size]", "16")
    page.fill("input[name=max_length]", "48")
    page.click("text=Advanced")
    page.fill("input[name=eval_every]", "30")
    page.click("button:has-text('Start the run')")
    expect(page.locator("h1")).to_contain_text("browser LoRA")

    # While it runs: the progress bar and the step counter move, the loss curve grows.
    expect(page.locator("#run-status")).to_have_text("running", timeout=60_000)
    seen_steps, seen_points = set(), set()
    while page.locator("#run-status").inner_text() == "running" and len(seen_steps) < 3:
        step = page.locator("#run-step").inner_text()
        if step not in ("0", "120"):
            seen_steps.add(step)
            seen_points.add(loss_points(page))
        page.wait_for_timeout(300)
    assert len(seen_steps) >= 2, seen_steps  # at least two distinct positions, polled live
    assert max(seen_points) > 0
    width = page.locator("#run-bar").evaluate("el => parseFloat(el.style.width)")
    assert 0 < width <= 100

    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=180_000)
    expect(page.locator("#evaluation")).to_be_visible(timeout=10_000)
    expect(page.locator("#run-step")).to_have_text("120")
    assert loss_points(page) == 120
    run = Run.objects.get(name="browser LoRA")
    assert run.status == "succeeded" and run.test_metrics["accuracy"] > 0
    expect(page.locator("[data-chart='run-confusion']")).to_be_visible()


def test_cancel_resume_and_compare_in_the_browser(page, live_server, training_worker, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    version = intent_version(tmp_path, engineer, n=240)
    base = {"dataset_version": version.pk, "base_model": MINILM, "method": "lora", "batch_size": 8,
            "max_length": 48, "eval_every": 10}
    long_run = launch.start(engineer, {**base, "max_steps": 5000, "checkpoint_every": 10}, name="long run")
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}{long_run.get_absolute_url()}")
    expect(page.locator("#run-status")).to_have_text("running", timeout=60_000)
    wait_for(lambda: long_run.checkpoints.exists(), 120, "a first checkpoint")

    page.once("dialog", lambda dialog: dialog.accept())  # Cancel asks first
    page.click("button:has-text('Cancel')")
    expect(page.locator(".messages")).to_contain_text("Cancel requested")
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=15_000)
    page.reload()  # the finished page offers Resume now that a checkpoint exists
    page.click("button:has-text('Resume from the last checkpoint')")
    expect(page.locator(".messages")).to_contain_text("Resuming from the checkpoint at step")
    expect(page.locator("#run-status")).to_have_text("running", timeout=60_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel')")
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=15_000)
    assert Run.objects.get(pk=long_run.pk).attempt == 2

    short = launch.start(engineer, {**base, "max_steps": 20, "learning_rate": 3e-3}, name="short run")
    wait_for(lambda: Run.objects.get(pk=short.pk).status == "succeeded", 180, "the short run")
    page.click(".mainnav >> text=Runs")
    page.check(f"input[name=runs][value='{long_run.pk}']")
    page.check(f"input[name=runs][value='{short.pk}']")
    page.click("button:has-text('Compare the chosen runs')")
    expect(page.locator("h1")).to_have_text("Compare 2 runs")
    expect(page.locator("[data-chart='compare-loss']")).to_be_visible()
    differing = page.locator("tr.differs th")
    expect(differing.filter(has_text="max_steps")).to_have_count(1)
    expect(differing.filter(has_text="learning_rate")).to_have_count(1)
    expect(page.locator("tr:not(.differs) th", has_text="batch_size")).to_have_count(1)
