"""Retrain triggers: drift in N scheduled checks in a row, a burning quality SLO, or enough
feedback make the deployment's one waiting draft (never while the model is in incident mode);
the draft's job folds the feedback into a child of the newest frozen data and fills the config;
nothing trains until an engineer starts it from the draft page, which queues a Run."""
from datetime import timedelta

import pytest
from django.utils import timezone

from lifecycle.core.jobs import perform
from lifecycle.core.models import AuditEvent
from lifecycle.datasets.operations import derive_version
from lifecycle.datasets.models import DatasetVersion, Example
from lifecycle.deployments.models import Feedback
from lifecycle.monitoring import retrain
from lifecycle.monitoring.models import SLO, Alert, DriftCheck, Incident, Reference, RetrainDraft, RetrainRule
from lifecycle.runs.models import Run
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import as_user, log_row, page_text, write

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]


def drift_check(deployment, version, *, drifted, trigger=DriftCheck.Trigger.SCHEDULE):
    reference = Reference.objects.get_or_create(version=version, defaults={"status": Reference.Status.READY})[0]
    now = timezone.now()
    check = DriftCheck.objects.create(deployment=deployment, version=version, reference=reference, trigger=trigger,
                                      window_start=now - timedelta(hours=1), window_end=now, requests=500,
                                      drifted=drifted, drifted_features=3 if drifted else 0)
    return retrain.after_drift_check(check)


def corrected(deployment, base):
    """Feedback on two answers: one whose text is a test row of `base` (relabeled in place), one
    the data does not hold (appended to train). Returns (the test row, its new label)."""
    row = base.examples.filter(split=Example.TEST).order_by("row").first()
    other = next(label for label in base.label_set if label != row.label)
    rows = [log_row(deployment, text=row.text, label=row.label), log_row(deployment, text="a brand new ticket 77")]
    write(rows)
    Feedback.give(request_id=rows[0].request_id, label=other)
    Feedback.give(request_id=rows[1].request_id, label=other)
    return row, other


@pytest.fixture
def deployment(trained, people, tmp_path):
    return make_deployment(trained, people, tmp_path)


def test_drift_twice_in_a_row_makes_a_draft_and_a_burning_quality_slo_adds_to_it(deployment, people, redis):
    stable = deployment.current_release.stable
    RetrainRule.objects.create(deployment=deployment, kind=RetrainRule.Kind.DRIFT, consecutive=2)
    assert drift_check(deployment, stable, drifted=True) is None  # one of two
    assert drift_check(deployment, stable, drifted=True, trigger=DriftCheck.Trigger.DEMAND) is None  # not scheduled
    draft = drift_check(deployment, stable, drifted=True)
    assert draft.status == RetrainDraft.Status.PREPARING and draft.source_version == stable
    assert draft.base_dataset_version == stable.run.dataset_version
    assert len(draft.evidence["firings"][0]["checks"]) == 2
    assert AuditEvent.objects.get(action="retrain.drafted").object_id == str(draft.pk)
    assert drift_check(deployment, stable, drifted=True) is None  # the count starts again after firing

    slo = SLO.objects.create(deployment=deployment, name="feedback accuracy", kind=SLO.Kind.FEEDBACK_ACCURACY,
                             target=0.9, state={"sli": 0.7, "budget_remaining": -1.0})
    latency = SLO.objects.create(deployment=deployment, name="latency", kind=SLO.Kind.LATENCY, target=0.99)
    RetrainRule.objects.create(deployment=deployment, kind=RetrainRule.Kind.SLO_BURN)
    assert retrain.after_slo_evaluation(slo) is None  # no alert yet
    now = timezone.now()
    Alert.objects.create(fingerprint="f1", deployment=deployment, model=deployment.model, kind=Alert.Kind.SLO,
                         severity=Alert.Severity.PAGE, slo=slo, title="feedback accuracy burning", first_fired_at=now,
                         last_fired_at=now)
    assert retrain.after_slo_evaluation(latency) is None  # not a quality SLO
    assert retrain.after_slo_evaluation(slo) == draft
    assert retrain.after_slo_evaluation(slo) is None  # once per alert
    draft.refresh_from_db()
    assert [f["kind"] for f in draft.evidence["firings"]] == ["drift", "slo_burn"]
    assert RetrainDraft.objects.count() == 1 and AuditEvent.objects.filter(action="retrain.evidence_added").count() == 1


def test_no_draft_while_the_model_is_in_incident_mode(deployment, people, redis):
    RetrainRule.objects.create(deployment=deployment, kind=RetrainRule.Kind.FEEDBACK, min_feedback=2)
    base = deployment.current_release.stable.run.dataset_version
    corrected(deployment, base)
    now = timezone.now()
    Incident.objects.create(model=deployment.model, deployment=deployment, title="x", reason="x",
                            window_start=now - timedelta(hours=1), window_end=now, opened_by=people["ona"])
    assert retrain.check_feedback_rules() == 0
    assert not RetrainDraft.objects.exists() and RetrainRule.objects.get().last_fired_at is None
    Incident.objects.update(lifted_at=timezone.now(), lift_reason="over")
    assert retrain.check_feedback_rules() == 1
    assert RetrainDraft.objects.get().evidence["firings"][0]["feedback"] == 2
    assert retrain.check_feedback_rules() == 0  # counted again from the firing


def test_the_newest_labeling_frozen_version_is_the_base(deployment):
    trained_on = deployment.current_release.stable.run.dataset_version
    frozen = derive_version(trained_on, DatasetVersion.Operation.RELABEL, lambda batch: batch)
    assert retrain.base_version(deployment.current_release.stable) == frozen


def test_the_draft_folds_feedback_in_and_an_engineer_starts_it_as_a_queued_run(client, deployment, people, redis):
    stable = deployment.current_release.stable
    base = stable.run.dataset_version
    row, other = corrected(deployment, base)
    rule = RetrainRule.objects.create(deployment=deployment, kind=RetrainRule.Kind.FEEDBACK, min_feedback=2)
    draft = retrain.check_feedback(rule)
    runs = Run.objects.count()
    perform(draft.job_id)
    draft.refresh_from_db()
    assert draft.status == RetrainDraft.Status.READY, draft.error
    assert Run.objects.count() == runs  # nothing trains by itself

    child = draft.dataset_version
    assert (child.operation, child.parent, child.row_count) == ("feedback", base, base.row_count + 1)
    same = child.examples.get(origin_row=row.origin_row)
    assert (same.text, same.label, same.split) == (row.text, other, Example.TEST)
    added = child.examples.get(text="a brand new ticket 77")
    assert (added.label, added.split, added.origin_row, added.metadata["source"]) == (other, Example.TRAIN, None, "feedback")
    assert child.manifest["reports"]["feedback"]["relabeled"] == 1
    assert child.manifest["reports"]["feedback"]["appended_to_train"] == 1
    assert child.leakage_report["near_duplicates_appended"]["checked"] is False
    assert child.leakage_report["exact_duplicates"] is not None and not child.has_leakage
    assert draft.config == {**stable.run.config, "dataset_version": child.pk}
    as_user(client, people["erin"])
    assert client.get(child.get_absolute_url()).status_code == 200
    diff = client.get(f"/datasets/{child.dataset.slug}/diff?a={base.number}&b={child.number}")
    assert diff.status_code == 200 and "a brand new ticket 77" in page_text(diff)

    as_user(client, people["sam"])
    assert client.get(f"/monitoring/retrain/{draft.pk}").status_code == 403
    for name in ("vic", "ann", "ona"):
        as_user(client, people[name])
        assert client.get(f"/monitoring/retrain/{draft.pk}").status_code == 200
    assert client.post(f"/monitoring/retrain/{draft.pk}/start").status_code == 403  # on-call reads only
    as_user(client, people["erin"])
    text = page_text(client.get(f"/monitoring/retrain/{draft.pk}"))
    assert "dataset_version" in text and f"?a={base.number}&b={child.number}" in text and "1 rows relabeled" in text
    refused = client.post(f"/monitoring/retrain/{draft.pk}/dismiss", {"reason": ""})
    assert refused.status_code == 400 and "dismissing a draft needs a reason" in page_text(refused)

    response = client.post(f"/monitoring/retrain/{draft.pk}/start")
    run = Run.objects.get(dataset_version=child)
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert run.status == "queued" and run.config["dataset_version"] == child.pk and run.created_by == people["erin"]
    draft.refresh_from_db()
    assert (draft.status, draft.run, draft.decided_by) == ("started", run, people["erin"])
    assert AuditEvent.objects.get(action="retrain.started").payload["run"] == run.pk
    again = client.post(f"/monitoring/retrain/{draft.pk}/start")
    assert again.status_code == 400 and "This draft is started" in page_text(again)
    assert Run.objects.filter(dataset_version=child).count() == 1


def test_an_engineer_sets_enables_and_disables_rules(client, deployment, people):
    url = f"/monitoring/deployments/{deployment.name}/retrain-rules"
    as_user(client, people["vic"])
    assert client.get(url).status_code == 200
    assert client.post(url, {"kind": "drift", "consecutive": "3", "min_feedback": "100", "enabled": "on"}).status_code == 403
    as_user(client, people["erin"])
    refused = client.post(url, {"kind": "drift", "consecutive": "0", "min_feedback": "100"})
    assert refused.status_code == 400 and "At least 1 check." in page_text(refused)
    assert not RetrainRule.objects.exists()
    client.post(url, {"kind": "drift", "consecutive": "4", "min_feedback": "100", "enabled": "on"})
    rule = RetrainRule.objects.get()
    assert (rule.kind, rule.consecutive, rule.enabled) == ("drift", 4, True)
    client.post(url, {"toggle": "1", "kind": "drift", "enabled": "0"})
    rule.refresh_from_db()
    assert not rule.enabled and rule.consecutive == 4
    assert [e.payload["after"]["enabled"] for e in AuditEvent.objects.filter(action="retrain.rule_saved").order_by("seq")] == [
        True, False]
    assert "off" in page_text(client.get(url))
