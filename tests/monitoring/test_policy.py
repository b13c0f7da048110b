"""The error-budget policy as a registry gate: an exhausted budget, an open page alert or an open
incident blocks a promotion of the model; a freeze that starts while a request is open voids
its approvals; an approver's written override lets it through, audited; a deployment's own
promotion goes through the same gate."""
from datetime import timedelta

import pytest
from django.utils import timezone

from lifecycle.core.models import AuditEvent
from lifecycle.monitoring import policy
from lifecycle.monitoring.models import SLO, Alert, Incident
from lifecycle.registry import gates
from lifecycle.registry.models import EvidenceChanged, PromotionRequest, RegistryError, Stage
from tests.deployments.factories import make_deployment

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]


def make_slo(deployment, *, budget_remaining, name="latency p<500 ms", kind=SLO.Kind.LATENCY):
    state = {} if budget_remaining is None else {"sli": 0.99, "target": 0.99, "budget_remaining": budget_remaining}
    return SLO.objects.create(deployment=deployment, name=name, kind=kind, target=0.99, threshold_ms=500, state=state)


def make_alert(deployment, *, severity=Alert.Severity.PAGE, status=Alert.Status.FIRING, key="slo:1"):
    now = timezone.now()
    return Alert.objects.create(fingerprint=f"{deployment.pk}-{key}-{severity}", deployment=deployment,
                                model=deployment.model, kind=Alert.Kind.SLO, severity=severity, status=status,
                                title="latency burning 14.4x over 1 h", first_fired_at=now, last_fired_at=now)


def gate_of(found):
    return next(g for g in found if g["gate"] == "error_budget")


def evaluate(version):
    return policy.ErrorBudget().evaluate(version, Stage.PRODUCTION)


def test_the_gate_is_registered_after_the_built_in_ones_and_registers_once():
    names = [g.name for g in gates.all_gates()]
    assert names[-1] == "error_budget" and names.count("error_budget") == 1
    gates.register(policy.ErrorBudget())  # a second import replaces, never duplicates
    assert [g.name for g in gates.all_gates()].count("error_budget") == 1
    with pytest.raises(ValueError, match="built-in"):
        gates.register(type("Fake", (gates.Gate,), {"name": "metrics"})())


def test_not_applicable_unwatched_then_pass_with_numbers_then_fail_for_each_reason(trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path, mode="canary")
    candidate = deployment.current_release.candidate
    result = evaluate(candidate)
    assert (result.status, result.message) == ("not_applicable", "No SLO watches a deployment of this model.")

    slo = make_slo(deployment, budget_remaining=0.4)
    make_slo(deployment, budget_remaining=None, name="availability", kind=SLO.Kind.AVAILABILITY)
    result = evaluate(candidate)
    assert result.status == "pass"
    assert result.message == ("1 of 2 SLO(s) on 1 deployment(s) have error budget left (1 not evaluated yet); "
                              "no open page alert; no open incident.")
    assert [s["exhausted"] for s in result.numbers["slos"]] == [None, False]

    SLO.objects.filter(pk=slo.pk).update(state={**slo.state, "budget_remaining": -0.25})
    result = evaluate(candidate)
    assert result.status == "fail"
    assert "the SLO “latency p<500 ms” of support-router (99 % over 30 days) has spent its error budget" in result.message

    SLO.objects.filter(pk=slo.pk).update(state={**slo.state, "budget_remaining": 0.1})
    make_alert(deployment, severity=Alert.Severity.TICKET, key="ticket")  # a ticket never freezes
    assert evaluate(candidate).status == "pass"
    alert = make_alert(deployment)
    result = evaluate(candidate)
    assert result.status == "fail" and f"page alert #{alert.pk} on support-router is firing" in result.message
    Alert.objects.filter(pk=alert.pk).update(status=Alert.Status.RESOLVED)

    incident = Incident.objects.create(model=deployment.model, deployment=deployment, title="wrong answers",
                                       reason="wrong answers", window_start=timezone.now() - timedelta(hours=1),
                                       window_end=timezone.now(), opened_by=people["ona"])
    result = evaluate(candidate)
    assert result.status == "fail" and f"incident #{incident.pk} is open (opened by ona" in result.message
    assert policy.frozen(deployment.model) == [result.message.removeprefix("Promotions are frozen: ").rstrip(".")]


def test_a_freeze_during_a_request_voids_its_approvals_until_an_approver_overrides_in_writing(trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path, mode="canary")
    candidate = deployment.current_release.candidate
    slo = make_slo(deployment, budget_remaining=0.5)
    request = PromotionRequest.open(people["erin"], candidate, Stage.PRODUCTION, "canary looks good")
    assert request.status == "open" and gate_of(request.gate_results)["status"] == "pass"
    request.approve(people["ann"], "fine", seen_sha256=request.evidence_sha256)

    # The budget runs out while the request waits for its second approval.
    SLO.objects.filter(pk=slo.pk).update(state={**slo.state, "budget_remaining": -0.02})
    with pytest.raises(EvidenceChanged, match="gate error_budget"):
        request.approve(people["abe"], "fine", seen_sha256=request.evidence_sha256)
    request.refresh_from_db()
    assert request.status == "blocked" and request.valid_approvals().count() == 0
    assert [g["gate"] for g in request.failed_gates] == ["error_budget"]
    with pytest.raises(RegistryError, match="Failed gates block this request"):
        request.approve(people["abe"], "fine", seen_sha256=request.evidence_sha256)
    with pytest.raises(RegistryError, match="needs a written reason"):
        request.approve(people["abe"], "fine", seen_sha256=request.evidence_sha256, overrides={"error_budget": " "})
    assert request.valid_approvals().count() == 0

    # The budget keeps burning (another evaluation): the evidence does not move, the override lands.
    SLO.objects.filter(pk=slo.pk).update(state={**slo.state, "budget_remaining": -0.4})
    request.approve(people["abe"], "fine", seen_sha256=request.evidence_sha256,
                    overrides={"error_budget": "the burn is the old version's; v2 fixes it"})
    override = AuditEvent.objects.get(action="promotion.gate_overridden")
    assert override.actor == "abe" and override.payload["gate"] == "error_budget"
    assert override.payload["reason"] == "the burn is the old version's; v2 fixes it"
    request.refresh_from_db()
    request.approve(people["ann"], "again, with the override", seen_sha256=request.evidence_sha256)
    candidate.refresh_from_db()
    assert candidate.stage == Stage.PRODUCTION


def test_a_deployment_promoting_its_canary_is_blocked_by_an_open_page_alert(trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path, mode="canary")
    release = deployment.current_release
    make_slo(deployment, budget_remaining=0.9)
    alert = make_alert(deployment, status=Alert.Status.ACKNOWLEDGED)
    request = release.promote(people["erin"], "the canary passed")
    assert request.status == "blocked"
    [failed] = request.failed_gates
    assert failed["gate"] == "error_budget" and f"page alert #{alert.pk}" in failed["message"]
    assert failed["numbers"]["page_alerts"][0]["id"] == alert.pk
    with pytest.raises(RegistryError, match="error_budget"):
        request.approve(people["ann"], "ok", seen_sha256=request.evidence_sha256)
    release.refresh_from_db()
    release.candidate.refresh_from_db()
    assert release.status == "promoting" and release.candidate.stage == Stage.STAGING
