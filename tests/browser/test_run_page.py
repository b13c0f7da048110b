"""The run page shows the run's live state: charts wait for their first step instead of drawing
empty axes, Cancel asks first, and once the run ends its stale message, Cancel button and
time left go without a reload. Compare tells its runs apart by colour.

No model trains here: the test plays the training worker's part through the Job's own state
changes (claim, progress, points, succeed or cancel), which is all the page ever reads."""
import json

import pytest
from playwright.sync_api import expect

from lifecycle.core.models import Job
from lifecycle.runs.models import Run
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.runs.factories import MINILM, intent_version
from tests.runs.test_web import add_points, add_report, make_run

WAITING = "waiting for the first step"


@pytest.fixture
def engineer(transactional_db, settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return make_user("erin-engineer", "ml_engineer")


def mark_page(page):
    """A flag that only a reload (or a navigation) can take away."""
    page.evaluate("() => { window.samePage = true; }")


def still_same_page(page):
    return page.evaluate("() => window.samePage === true")


def axis_ticks(page, chart_id):
    return page.locator(f"[data-chart='{chart_id}'] .xtick").count()


def test_a_queued_run_waits_for_its_first_step_and_drops_its_flash_when_it_ends(page, live_server, engineer, tmp_path):
    version = intent_version(tmp_path, engineer, n=120)
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}/runs/new")
    page.select_option("select[name=dataset_version]", str(version.pk))
    page.select_option("select[name=base_model]", MINILM)
    page.fill("input[name=name]", "waiting run")
    page.click("button:has-text('Start the run')")
    run = Run.objects.get(name="waiting run")
    expect(page.locator(".messages")).to_have_text(f"Run {run.pk} is queued.")
    expect(page.locator("#run-status")).to_have_text("queued")

    # Queued: each chart says it is waiting; no axes are drawn (Plotly's empty −1…6 grid).
    for chart_id in ("run-chart-loss", "run-chart-lr", "run-chart-eval-metrics"):
        expect(page.locator(f"[data-chart='{chart_id}']")).to_contain_text(WAITING)
        assert axis_ticks(page, chart_id) == 0
    mark_page(page)

    # The worker claims the job and logs its first steps: the charts draw them live.
    run.job.claim("test-worker")
    run.set_progress(phase="training", step=2, total_steps=20, epoch=0.1, eta_seconds=37)
    add_points(run, "train", [1, 2], loss=[0.9, 0.8], lr=[1e-3, 1e-3])
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#run-eta")).to_have_text("about 37s left")
    expect(page.locator("[data-chart='run-chart-loss']")).not_to_contain_text(WAITING)
    assert axis_ticks(page, "run-chart-loss") > 0
    # "is queued" was true when the page loaded; it is not once the run runs.
    expect(page.locator(".messages")).to_have_count(0)

    # It succeeds: the evaluation appears and the controls of a running run go, in place.
    add_points(run, "eval", [20], eval_loss=[0.5], accuracy=[0.8], macro_f1=[0.7])
    add_report(run)
    run.set_progress(phase="done", step=20, total_steps=20, epoch=1.0, eta_seconds=0)
    assert Job.objects.get(pk=run.job_id).mark_succeeded()
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#evaluation")).to_be_visible()
    expect(page.locator("[data-chart='run-confusion'] .main-svg").first).to_be_visible()
    expect(page.locator("button:has-text('Cancel')")).to_have_count(0)
    expect(page.locator(".messages")).to_have_count(0)
    assert still_same_page(page)


def test_cancel_asks_first_and_the_cancelled_run_drops_its_button_and_time_left(page, live_server, engineer, tmp_path):
    from tests.runs.test_web import make_version

    version = make_version(tmp_path)
    run = make_run(version, user=engineer, status=Job.Status.RUNNING, name="long run",
                   progress={"phase": "training", "step": 5, "total_steps": 500, "epoch": 0.2, "eta_seconds": 37})
    add_points(run, "train", [1, 2, 3, 4, 5], loss=[1.0, 0.9, 0.85, 0.8, 0.78], lr=[1e-3] * 5)
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}{run.get_absolute_url()}")
    expect(page.locator("#run-eta")).to_have_text("about 37s left")
    cancel = page.locator("button:has-text('Cancel')")

    # Dismissed: nothing is sent, the run keeps running.
    questions = []

    def dismiss(dialog):
        questions.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    cancel.click()
    expect(cancel).to_be_visible()
    assert questions and f"Cancel run {run.pk}?" in questions[0]
    page.wait_for_load_state("networkidle")
    assert Job.objects.get(pk=run.job_id).cancel_requested_at is None
    expect(page.locator("#run-status")).to_have_text("running")

    # Accepted: the cancel is asked for; the worker stops the run and the page follows it.
    page.once("dialog", lambda dialog: dialog.accept())
    cancel.click()
    expect(page.locator(".messages")).to_contain_text("Cancel requested")
    mark_page(page)
    assert Job.objects.get(pk=run.job_id).mark_cancelled()  # refused unless a cancel was requested
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator("button:has-text('Cancel')")).to_have_count(0)
    expect(page.locator("#run-eta")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("left")
    expect(page.locator(".messages")).to_have_count(0)
    assert still_same_page(page)


def test_compare_draws_three_runs_in_three_distinct_colours(page, live_server, engineer, tmp_path):
    from tests.runs.test_web import make_version

    version = make_version(tmp_path)
    runs = [make_run(version, user=engineer, status=Job.Status.SUCCEEDED, name=f"run {i}", learning_rate=lr)
            for i, lr in enumerate([1e-3, 2e-3, 3e-3])]
    for i, run in enumerate(runs):
        add_points(run, "train", [1, 2, 3], loss=[1.0 - i / 10, 0.8 - i / 10, 0.7 - i / 10])
        add_points(run, "eval", [3], eval_loss=[0.75 - i / 10])
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}/runs/compare?runs={','.join(str(r.pk) for r in runs)}")
    expect(page.locator("h1")).to_have_text("Compare 3 runs")
    for chart_id in ("compare-loss", "compare-eval-loss"):
        figure = json.loads(page.locator(f"script#{chart_id}").text_content())
        colours = [trace["line"]["color"] for trace in figure["data"]]
        assert len(figure["data"]) == 3 and len(set(colours)) == 3, colours
        # What Plotly drew, not only what it was given.
        expect(page.locator(f"[data-chart='{chart_id}'] .main-svg").first).to_be_visible()
        drawn = page.evaluate(f"() => document.querySelector(\"[data-chart='{chart_id}']\")._fullData.map(t => t.line.color)")
        assert drawn == colours
    # The same run has the same colour in both charts.
    loss = json.loads(page.locator("script#compare-loss").text_content())
    eval_loss = json.loads(page.locator("script#compare-eval-loss").text_content())
    assert [t["line"]["color"] for t in loss["data"]] == [t["line"]["color"] for t in eval_loss["data"]]


def test_the_run_form_shows_its_errors_in_red_next_to_the_fields_and_on_top(page, live_server, engineer, tmp_path):
    version = intent_version(tmp_path, engineer, n=120)
    log_in(page, live_server, engineer)
    page.goto(f"{live_server.url}/runs/new")
    page.select_option("select[name=dataset_version]", str(version.pk))
    page.fill("input[name=learning_rate]", "0")
    page.click("text=Advanced")
    page.fill("input[name=checkpoint_every]", "0")
    page.click("button:has-text('Start the run')")

    summary = page.locator("#form-errors")
    expect(summary).to_be_visible()
    expect(summary).to_contain_text("The run was not started. 3 things need a change")
    for label, message in [("Base model", "choose a base model"), ("Learning rate", "must be a number above 0"),
                           ("Checkpoint every", "must be between 1 and 10000000")]:
        expect(summary.locator("li", has_text=label)).to_contain_text(message)
    # Each message also sits next to its field, in the error colour, the field marked invalid;
    # the advanced section with an error in it is open.
    field = page.locator(".field", has=page.locator("input[name=learning_rate]"))
    expect(field.locator(".errorlist")).to_contain_text("must be a number above 0")
    expect(field.locator(".errorlist")).to_have_css("color", "rgb(179, 38, 30)")
    expect(page.locator("input[name=learning_rate]")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("input[name=checkpoint_every]")).to_be_visible()
    summary.locator("a", has_text="Learning rate").click()
    page.wait_for_url("**#id_learning_rate")
    expect(page.locator("input[name=learning_rate]")).to_be_in_viewport()
    assert not Run.objects.exists() and not Job.objects.filter(queue="training").exists()
