"""The whole loop's steps, one function per person's part (tests/browser/test_whole_loop.py
plays them in order). Each step clicks through the pages as that person would, asserts what
they would read there, and photographs every page it opens (Shots)."""
import itertools
import re
import uuid
from pathlib import Path

from django.db.models import Sum
from playwright.sync_api import expect

from lifecycle.deployments.models import Deployment, PredictionLog, ServingToken
from lifecycle.labeling.models import Assignment, Item
from lifecycle.monitoring.demo import drifted
from lifecycle.monitoring.models import Reference, Rollup
from lifecycle.registry.models import ModelVersion, PromotionRequest
from lifecycle.runs.models import Run
from tests.browser.test_registry import user_page
from tests.deployments.serving_helpers import Client, wait_applied, wait_served
from tests.runs.factories import MINILM
from tests.workers import wait_for

PROJECT = "Support tickets, March"
RUN = "tickets relabeled in March"
DEPLOYMENT = "support-router"
INPUTS_PER_REQUEST = 4
TRAINING_STEPS = 80
WAIT = 60_000  # ms: what a job on a busy two-core machine may take before the page shows it


class Shots:
    """Full-page screenshots numbered in the order the pages were seen: 01-..., 02-..."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = itertools.count(1)
        self.taken = {}

    def __call__(self, page, name):
        path = self.folder / f"{next(self.count):02d}-{name}.png"
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(path), full_page=True)
        self.taken[name] = path
        return path


# --- the labeler -----------------------------------------------------------------------------------


def label_the_rest_by_keyboard(browser, live_server, labeler, project, shots):
    """From the start page to the project's queue; every example answered with its number key."""
    truth = dict(Item.objects.filter(project=project).values_list("example__text", "example__label"))
    keys = {label: key for key, label in project.label_keys}
    waiting = Item.objects.filter(project=project, state=Item.State.OPEN).count()
    page = user_page(browser, live_server, labeler)
    shots(page, "labeler-start")
    page.click(".mainnav >> text=Labeling")
    page.click(f"text={PROJECT}")
    expect(page.locator("h1")).to_contain_text(PROJECT)
    shots(page, "labeling-project")
    page.click("text=Start labeling")
    text = page.locator("#text")
    expect(text).not_to_have_text("Loading…")
    shots(page, "labeling-keyboard")
    for done in range(1, waiting + 1):
        shown = text.inner_text()
        page.keyboard.press(keys[truth[shown]])
        # The count and the next ticket come in one answer (a duplicate may read the same).
        expect(page.locator("#done")).to_have_text(str(done))
    assert text.inner_text() not in truth  # the queue is empty: a message, not an example
    shots(page, "labeling-done")
    assert Assignment.objects.filter(annotator=labeler, state="answered").count() == waiting
    page.close()
    return waiting


# --- the engineer ----------------------------------------------------------------------------------


def adjudicate_the_ties(engineer_page, project, shots):
    """Where two labelers disagreed, the engineer decides from the adjudication queue."""
    page = engineer_page
    page.click(".mainnav >> text=Labeling")
    page.click(f"text={PROJECT}")
    ties = list(Item.objects.filter(project=project, state=Item.State.TIE).select_related("example"))
    page.click(f"text=Adjudication queue ({len(ties)})")
    for item in ties:
        expect(page.locator(f"#item-{item.pk}")).to_be_visible()
    shots(page, "adjudication")
    for item in ties:
        card = page.locator(f"#item-{item.pk}")
        card.locator("input[name=note]").fill("The ticket says it in its first words.")
        card.locator(f"button[value='{item.example.label}']").click()
        expect(page.locator(".messages")).to_contain_text(f"decided '{item.example.label}'")
    expect(page.locator("#queue-empty")).to_be_visible()
    assert not Item.objects.filter(project=project, state=Item.State.TIE).exists()
    page.click(f".crumbs >> text={PROJECT}")
    return len(ties)


def freeze_the_labels(engineer_page, live_server, project, answers, shots):
    """QC recomputed from its page, passing; then the labels become a new dataset version."""
    page = engineer_page
    page.click("text=QC details")
    page.click("#recompute")
    expect(page.locator("#qc-answers")).to_have_text(str(answers), timeout=WAIT)  # the page reloads itself
    alpha = float(page.locator("#qc-alpha").inner_text())
    assert 0.9 < alpha < 1, alpha  # nearly everyone agreed: the ties
    expect(page.locator("#qc-verdict")).to_contain_text("passes")
    shots(page, "qc")
    page.click(f".crumbs >> text={PROJECT}")
    page.click("button:has-text('Create version from labels')")
    expect(page.locator(".messages")).to_contain_text("being written")
    for _ in range(300):
        if page.locator("#frozen-version").count():
            break
        page.wait_for_timeout(300)
        page.reload()
    shots(page, "labeling-frozen")
    project.refresh_from_db()
    assert project.status == "frozen" and project.frozen_version is not None
    page.click("#frozen-version")
    expect(page.locator("h1")).to_contain_text(f"v{project.frozen_version.number}")
    shots(page, "dataset-version")
    # Back along "Made by" to the version the upload made: what its PII scan found.
    parent = page.locator("dt:has-text('Made by') + dd a")
    while parent.count():
        number = parent.inner_text()
        parent.click()
        expect(page.locator("h1")).to_contain_text(number)
        shots(page, f"dataset-{number}")
    expect(page.locator("body")).to_contain_text("Duplicates")
    return project.frozen_version


def loss_points(page):
    return page.evaluate("() => { const el = document.querySelector('[data-chart=\"run-chart-loss\"]');"
                         " return el && el.data ? el.data[0].x.length : 0; }")


def train_on_it(page, live_server, version, shots):
    """The New run form on the frozen version; the page follows the run until it succeeds."""
    page.click(".mainnav >> text=Runs")
    page.click("text=New run")
    page.select_option("select[name=dataset_version]", str(version.pk))
    page.select_option("select[name=base_model]", MINILM)
    page.select_option("select[name=method]", "lora")
    page.fill("input[name=name]", RUN)
    page.fill("input[name=max_steps]", str(TRAINING_STEPS))
    page.fill("input[name=batch_size]", "16")
    page.fill("input[name=max_length]", "48")
    page.click("text=Advanced")
    page.fill("input[name=learning_rate]", "0.002")
    page.fill("input[name=eval_every]", "20")
    shots(page, "run-form")
    page.click("button:has-text('Start the run')")
    expect(page.locator("h1")).to_contain_text(RUN)
    expect(page.locator("#run-status")).to_have_text("running", timeout=2 * WAIT)
    # Followed live: the step moves and the curve grows; photographed from halfway.
    seen = set()
    while page.locator("#run-status").inner_text() == "running":
        step = int(page.locator("#run-step").inner_text())
        if 0 < step < TRAINING_STEPS and loss_points(page):
            seen.add(step)
        if step >= TRAINING_STEPS // 2 and len(seen) >= 2:
            break
        page.wait_for_timeout(300)
    assert len(seen) >= 2, f"the page showed the run at steps {seen} only while it ran"
    shots(page, "run-training")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=5 * WAIT)
    expect(page.locator("#evaluation")).to_be_visible(timeout=10_000)
    expect(page.locator("#run-step")).to_have_text(str(TRAINING_STEPS))
    assert loss_points(page) == TRAINING_STEPS
    shots(page, "run-succeeded")
    run = Run.objects.get(name=RUN)
    assert run.status == "succeeded" and run.dataset_version_id == version.pk
    return run, seen


def register_and_request_staging(page, run, model, shots):
    """Register the run's output from its page, then ask for staging (two approvals)."""
    page.click("#run-actions >> text=Register as a model version")
    expect(page.locator("#register-run")).to_contain_text(run.name)
    page.select_option("select[name=model]", model.slug)
    shots(page, "register")
    page.click("button:has-text('Register and sign')")
    expect(page.locator(".titlebar h1")).to_contain_text(f"{model.name} v2")
    expect(page.locator(".messages")).to_contain_text("is registered and signed")
    expect(page.locator("#signature")).to_contain_text("valid")
    expect(page.locator("ol.lineage")).to_contain_text(run.name)
    expect(page.locator("ol.lineage")).to_contain_text(PROJECT)
    page.select_option("select[name=to_stage]", "staging")
    page.fill("textarea[name=reason]", "Trained on March's relabeled tickets; a canary next.")
    shots(page, "model-version")
    page.click("button:has-text('Request the promotion')")
    expect(page.locator("#request-status")).to_have_text("open")
    version = ModelVersion.objects.get(model=model, number=2)
    request = PromotionRequest.objects.get(version=version)
    assert request.approvals_required == 2 and request.to_stage == "staging"
    shots(page, "promotion-requested")
    return version, request


# --- the approvers ---------------------------------------------------------------------------------


def compare_and_approve(browser, live_server, approver, request, model, shots):
    """The first approver: the inbox, the evidence beside production's, approval 1 of 2."""
    page = user_page(browser, live_server, approver)
    expect(page.locator("#home-promotions")).to_contain_text("1 promotion request waits for a decision.")
    page.click("#home-promotions >> text=Open the approvals inbox")
    item = page.locator(f"#inbox-{request.pk}")
    expect(item).to_contain_text(f"{model.name} v2")
    shots(page, "approvals-inbox")
    item.locator("text=Review the evidence and decide").click()
    expect(page.locator(".titlebar h1")).to_contain_text(f"Request #{request.pk}")
    expect(page.locator("#evidence")).to_contain_text("beside production v1")
    expect(page.locator("#metric-comparison")).to_contain_text("accuracy")
    for chart in ("request-metrics", "request-confusion-candidate", "request-confusion-production"):
        expect(page.locator(f"[data-chart='{chart}'] .main-svg").first).to_be_attached()
    expect(page.locator("#approve-refusal")).to_have_count(0)
    shots(page, "evidence-compared")
    page.fill("#approve_comment", "Compared with production v1: fine for a 20 % canary.")
    page.click("#approve-button")
    expect(page.locator(".messages")).to_contain_text("Approved (1 of 2)")
    shots(page, "first-approval")
    page.close()


def second_approval(browser, live_server, approver, request, model, shots):
    page = user_page(browser, live_server, approver)
    page.goto(f"{live_server.url}/registry/inbox")
    page.click(f"#inbox-{request.pk} >> text=Review the evidence and decide")
    expect(page.locator("#approval-list")).to_contain_text(request.approvals.first().approver.username)
    page.fill("#approve_comment", "Agreed; watch the canary.")
    page.click("#approve-button")
    expect(page.locator(".messages")).to_contain_text(f"{model.name} v2 is staging now")
    expect(page.locator("#request-status")).to_have_text("approved")
    shots(page, "second-approval")
    page.close()


# --- the engineer again: the canary ----------------------------------------------------------------


def start_canary(page, live_server, deployment, candidate, shots):
    page.click(".mainnav >> text=Deployments")
    page.click(f"text={deployment.name}")
    expect(page.locator("#stable-share")).to_have_text("100 %")
    form = page.locator("#release-form")
    form.locator("select[name=candidate]").select_option(str(candidate.pk))
    form.locator("select[name=mode]").select_option("canary")
    form.locator("input[name=share]").fill("20")
    form.locator("textarea[name=reason]").fill("v2 on March's labels: a fifth of the traffic first.")
    shots(page, "release-form")
    form.locator("button:has-text('Start the release')").click()
    expect(page.locator(".messages")).to_contain_text("takes 20 % of live traffic")
    expect(page.locator("#stable-share")).to_have_text("80 %")
    expect(page.locator("#candidate-share")).to_contain_text("v2 20 %")
    shots(page, "canary-started")
    deployment.refresh_from_db()
    assert deployment.current_release.candidate_id == candidate.pk


# --- traffic (a client of the serving API, not a person) ------------------------------------------


def send_traffic(server, deployment, engineer, texts, *, normal_on_canary=40, drifting_on_canary=160, feedback=12):
    """Normal tickets, then the same tickets drifting, until the canary answered enough of
    each for a drift check; every fifth request's first answer (up to `feedback` of them) gets
    the ticket's own label as feedback. Returns (texts answered per route, feedback sent)."""
    _token, key = ServingToken.issue(engineer, "whole-loop traffic", [deployment], rate_per_second=500, burst=1000)
    client = Client(server.url, token=key)
    wait_applied(deployment)
    wait_served(client, deployment.name, inputs=[texts[0][0]])
    answered, sent_feedback = {"stable": 0, "canary": 0}, 0
    cycle = itertools.cycle(range(len(texts)))
    for phase, wanted in (("normal", normal_on_canary), ("drifting", drifting_on_canary)):
        on_canary = 0
        for n in itertools.count():
            if on_canary >= wanted:
                break
            batch = [texts[next(cycle)] for _ in range(INPUTS_PER_REQUEST)]
            inputs = [text if phase == "normal" else drifted(text, n * INPUTS_PER_REQUEST + i)
                      for i, (text, _label) in enumerate(batch)]
            reply = client.predict(deployment.name, inputs, key=str(uuid.uuid4()))
            assert reply.status == 200, reply
            route = reply.json["route"]
            answered[route] += len(inputs)
            on_canary += len(inputs) if route == "canary" else 0
            if sent_feedback < feedback and n % 5 == 0:
                given = client.post("/v1/feedback", {"request_id": reply.json["request_id"], "position": 0,
                                                     "label": batch[0][1], "note": "the ticket's own label"})
                assert given.status == 200, given
                sent_feedback += 1
    client.close()
    return answered, sent_feedback


def wait_monitored(deployment, versions, answered, timeout=240):
    """Until both versions' reference statistics are ready (the training worker computes them
    after each release) and every logged answer is rolled up (the monitoring worker's pass);
    the answers are all logged once the serving process has flushed its log."""
    ready = Reference.objects.filter(version__in=versions, status=Reference.Status.READY)
    wait_for(lambda: ready.count() == len(versions), timeout, "both versions' reference statistics")
    wait_for(lambda: PredictionLog.objects.filter(deployment=deployment).count() >= answered, timeout,
             "the serving process's log")
    logged = PredictionLog.objects.filter(deployment=deployment).count()
    wait_for(lambda: Rollup.objects.filter(deployment=deployment).aggregate(n=Sum("requests"))["n"] == logged,
             timeout, "the prediction log's rollups")


# --- on-call -------------------------------------------------------------------------------------


def check_drift_and_see_the_alert(browser, live_server, oncall, deployment, candidate, shots):
    """On-call checks the canary's drift from its page, then finds the alert on the on-call
    dashboard. Returns the on-call page, on that dashboard."""
    page = user_page(browser, live_server, oncall)
    page.click(".mainnav >> text=Monitoring")
    shots(page, "monitoring-overview")
    # From the on-call dashboard's row of the deployment.
    page.click(".dashboard-nav >> text=On-call")
    page.click(f"#oncall-{deployment.name} [data-drift]")
    card = page.locator(f"#version-{candidate.pk}")
    expect(card).to_be_visible()
    card.locator("button.run-check").click()
    expect(page.locator(".messages")).to_contain_text(f"Checking v{candidate.number}")
    expect(card.locator(".check-summary")).to_contain_text("drift in", timeout=2 * WAIT)  # job-watch reloads the page
    shots(page, "drift-checked")
    page.click(".mainnav >> text=Monitoring")
    page.click(".dashboard-nav >> text=On-call")
    expect(page.locator("h1")).to_have_text("On-call")
    section = page.locator(f"#oncall-{deployment.name}")
    expect(section.locator("[data-list=alerts]")).to_contain_text(f"Drift on {deployment.name} v{candidate.number}")
    expect(section).to_contain_text(f"v{candidate.number} canary 20 %")
    shots(page, "oncall-alert")
    return page


def roll_back(page, live_server, deployment, shots):
    """From the on-call dashboard: the deployment, Roll back…, a reason, stable at 100 %."""
    page.click(f"#oncall-{deployment.name} h2 >> text={deployment.name}")
    expect(page.locator(".titlebar h1")).to_contain_text(deployment.name)
    expect(page.locator("#candidate-share")).to_contain_text("20 %")
    shots(page, "deployment-canary")
    page.click("#rollback-button")
    expect(page.locator("h1")).to_contain_text(f"Roll back release 2 of {deployment.name}?")
    expect(page.locator(".rollback-confirm")).to_contain_text("1 serving process is live")
    shots(page, "rollback-confirm")
    page.fill("textarea[name=reason]", "v2's inputs drifted (drift alert); back to v1 while we look.")
    page.click("#confirm-rollback")
    expect(page.locator(".messages")).to_contain_text("Rolled back: all traffic goes to")
    expect(page.locator("#stable-share")).to_have_text("100 %")
    expect(page.locator("#candidate-share")).to_have_text("—")
    expect(page.locator(".rollback-card")).to_have_attribute("data-completed", "yes", timeout=30_000)
    expect(page.locator("#time-to-rollback")).to_have_text(re.compile(r"^\d+ ms$"))
    shots(page, "rolled-back")
    assert Deployment.objects.get(pk=deployment.pk).routes()["candidate"] is None


# --- the dashboards --------------------------------------------------------------------------------


def read_the_dashboards(browser, live_server, viewer, engineer_page, oncall_page, deployment, candidate, shots):
    page = user_page(browser, live_server, viewer)
    page.click(".mainnav >> text=Monitoring")
    page.click(".dashboard-nav >> text=Executive")
    expect(page.locator("h1")).to_contain_text("What is in production")
    expect(page.locator("body")).to_contain_text(deployment.name)
    expect(page.locator("body")).to_contain_text("over 1 rollback")
    shots(page, "executive")
    page.close()

    oncall_page.goto(f"{live_server.url}/monitoring/on-call")
    section = oncall_page.locator(f"#oncall-{deployment.name}")
    expect(section.locator("[data-list=rollbacks]")).to_contain_text(oncall_page.locator(".who .username").inner_text())
    expect(section.locator("[data-rollback]")).to_have_count(0)
    shots(oncall_page, "oncall-after-rollback")

    engineer_page.goto(f"{live_server.url}/monitoring/debug/{candidate.pk}")
    expect(engineer_page.locator("h1")).to_contain_text(f"v{candidate.number}")
    expect(engineer_page.locator("[data-chart] .main-svg").first).to_be_attached()
    shots(engineer_page, "debug")

    engineer_page.goto(f"{live_server.url}{candidate.get_absolute_url()}")
    expect(engineer_page.locator("ol.lineage")).to_contain_text(PROJECT)
    shots(engineer_page, "model-version-lineage")
