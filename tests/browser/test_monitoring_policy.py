"""Incident mode and retrain drafts in the browser: an on-call engineer opens incident mode for a
model from its confirm page (the failing window filled in with the last hour), gives a reason,
and sees the incident's timeline and the promotion freeze; an engineer reviews a ready retrain
draft and starts it, landing on the queued run."""

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from lifecycle.core.jobs import perform
from lifecycle.deployments.models import Feedback
from lifecycle.monitoring import retrain
from lifecycle.monitoring.models import Incident, RetrainDraft, RetrainRule
from lifecycle.runs.models import Run
from tests.browser.test_registry import shot, user_page
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import log_row, write

pytestmark = [pytest.mark.browser]


def console_errors(page):
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def test_oncall_opens_incident_mode_from_the_confirm_page_and_sees_the_timeline(browser, live_server, store, trained,
                                                                                people, tmp_path, redis):
    deployment = make_deployment(trained, people, tmp_path)
    write([log_row(deployment, text="refund for order 5", created_at=timezone.now())])
    ona = user_page(browser, live_server, people["ona"])
    errors = console_errors(ona)
    ona.goto(f"{live_server.url}/monitoring/incidents")
    expect(ona.locator("#incidents")).to_contain_text("No model is in incident mode.")
    ona.click("#incident-models >> text=Intent Router")
    expect(ona.locator("h1")).to_contain_text("Open incident mode for Intent Router?")
    start, end = ona.input_value("#id_window_start"), ona.input_value("#id_window_end")
    assert start and end and start < end  # the last hour, filled in

    ona.click("#confirm-incident")
    expect(ona.locator(".error-summary")).to_contain_text("Say what is wrong")
    assert not Incident.objects.exists()
    assert errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    errors.clear()  # that refusal's status, on purpose
    ona.fill("textarea[name=reason]", "refunds routed to shipping since 10:00")
    ona.click("#confirm-incident")

    expect(ona.locator(".messages")).to_contain_text("Intent Router is in incident mode")
    expect(ona.locator("#incident-state")).to_have_text("open")
    expect(ona.locator("#incident-frozen")).to_contain_text("is open (opened by ona-oncall")
    expect(ona.locator("#incident-timeline")).to_contain_text("incident.opened")
    expect(ona.locator("#incident-capture")).to_contain_text("capture job")
    shot(ona, tmp_path, "01-incident")
    incident = Incident.objects.get()
    assert incident.opened_by == people["ona"] and incident.capture_job is not None
    assert not errors, errors


def test_an_engineer_starts_a_ready_retrain_draft(browser, live_server, store, trained, people, tmp_path, redis):
    deployment = make_deployment(trained, people, tmp_path)
    rows = [log_row(deployment, text="money back for the broken kettle")]
    write(rows)
    Feedback.give(request_id=rows[0].request_id, label="refund_request")
    rule = RetrainRule.objects.create(deployment=deployment, kind=RetrainRule.Kind.FEEDBACK, min_feedback=1)
    draft = retrain.check_feedback(rule)
    perform(draft.job_id)
    assert RetrainDraft.objects.get(pk=draft.pk).status == "ready"

    erin = user_page(browser, live_server, people["erin"])
    errors = console_errors(erin)
    erin.goto(f"{live_server.url}/monitoring/retrain?status=ready")
    erin.click(f"#drafts >> text=#{draft.pk}")
    expect(erin.locator("#draft-status")).to_have_text("ready")
    expect(erin.locator("#draft-firings")).to_contain_text("usable feedback")
    expect(erin.locator("#draft-config-diff")).to_contain_text("dataset_version")
    expect(erin.locator("#draft-feedback")).to_contain_text("1 appended to the train split")
    shot(erin, tmp_path, "02-draft")
    assert not Run.objects.filter(name__startswith="retrain").exists()
    erin.click("#start-draft")
    expect(erin.locator(".messages")).to_contain_text(f"from draft {draft.pk}")
    run = Run.objects.get(name__startswith="retrain")
    assert erin.url.endswith(run.get_absolute_url()) and run.status == "queued"
    assert RetrainDraft.objects.get(pk=draft.pk).run == run
    assert not errors, errors
