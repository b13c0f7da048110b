"""Stages move only through requests: gates are evidence, N-of-M approvals with separation of
duties, evidence pinned by hash, the promotion done once in the N-th approval's transaction,
the previous production version archived, and the timeline answering "what was in
production at time T"."""
import threading

import pytest
from django.db import connection
from django.utils import timezone

from lifecycle.core.models import AuditEvent
from lifecycle.registry.models import (
    ApprovalDenied, EvidenceChanged, ModelVersion, PromotionRequest, RegistryError, Stage, StageChange,
)
from tests.conftest import make_user
from tests.registry.factories import make_model, registered

pytestmark = pytest.mark.usefixtures("store_with_output")


@pytest.fixture
def people(db):
    return {
        # Erin holds the approver role too: separation of duties must stop her anyway.
        "erin": make_user("erin", "ml_engineer", "approver"),
        "ann": make_user("ann", "approver"),
        "abe": make_user("abe", "approver"),
        "ada": make_user("ada", "approver"),
        "vic": make_user("vic", "viewer"),
        "lee": make_user("lee", "labeler"),
        "ona": make_user("ona", "oncall"),
    }


def to_production(trained, people, tmp_path, **kwargs):
    version = registered(trained, people["erin"], tmp_path, **kwargs)
    return version, version.request_promotion(people["erin"], Stage.PRODUCTION, "beats the baseline")


def approve(request, user, comment="looks right"):
    request.refresh_from_db()
    return request.approve(user, comment, seen_sha256=request.evidence_sha256)


@pytest.mark.django_db
def test_two_approvals_promote_once_and_the_timeline_says_who_and_when(trained, people, tmp_path):
    version, request = to_production(trained, people, tmp_path)
    assert request.status == PromotionRequest.Status.OPEN and request.approvals_required == 2
    assert {g["gate"]: g["status"] for g in request.gate_results} == {
        "metrics": "pass", "no_regression": "not_applicable", "data": "pass", "labeling_qc": "not_applicable",
        "signature": "pass", "card": "pass",
        "error_budget": "not_applicable"}  # monitoring's gate (registered by that app): no SLO watches this model
    approve(request, people["ann"])
    version.refresh_from_db()
    assert version.stage == Stage.CANDIDATE  # one of two
    before = timezone.now()
    approve(request, people["abe"])
    version.refresh_from_db()
    request.refresh_from_db()
    assert version.stage == Stage.PRODUCTION and request.status == PromotionRequest.Status.APPROVED
    assert [(c.from_stage, c.to_stage, c.actor.username) for c in version.timeline()] == [("candidate", "production", "abe")]
    assert version.model.held_at(Stage.PRODUCTION, before) is None
    assert version.model.held_at(Stage.PRODUCTION, timezone.now()) == version
    actions = list(AuditEvent.objects.filter(object_id=str(request.pk), object_type="registry.promotionrequest")
                   .order_by("seq").values_list("action", flat=True))
    assert actions == ["promotion.requested", "promotion.approved", "promotion.approved"]


@pytest.mark.django_db
def test_a_new_production_version_archives_the_old_one_in_the_same_transaction(trained, people, tmp_path):
    old, request = to_production(trained, people, tmp_path)
    approve(request, people["ann"]), approve(request, people["abe"])
    moment = timezone.now()
    new, request = to_production(trained, people, tmp_path)
    gate = {g["gate"]: g for g in request.gate_results}["no_regression"]
    # The same generated data: the same test split, so the two are compared.
    assert gate["status"] == "pass" and gate["numbers"]["accuracy"]["delta"] == 0
    approve(request, people["ann"]), approve(request, people["ada"])
    old.refresh_from_db(), new.refresh_from_db()
    assert (old.stage, new.stage) == (Stage.ARCHIVED, Stage.PRODUCTION)
    assert ModelVersion.objects.filter(model=new.model, stage=Stage.PRODUCTION).count() == 1
    assert new.model.held_at(Stage.PRODUCTION, moment) == old
    assert new.model.held_at(Stage.PRODUCTION, timezone.now()) == new
    archived = StageChange.objects.get(version=old, to_stage=Stage.ARCHIVED)
    assert archived.changed_at == StageChange.objects.get(version=new, to_stage=Stage.PRODUCTION).changed_at


@pytest.mark.django_db
@pytest.mark.parametrize("who, why", [("erin", "asked for this promotion")])
def test_the_requester_may_not_approve_even_as_an_approver(trained, people, tmp_path, who, why):
    version, request = to_production(trained, people, tmp_path)
    with pytest.raises(ApprovalDenied, match=why):
        approve(request, people[who])
    assert not request.approvals.exists()
    assert AuditEvent.objects.filter(action="promotion.denied", actor=who).count() == 1


@pytest.mark.django_db
def test_the_runs_author_and_the_registrar_may_not_approve(trained, people, tmp_path):
    author = make_user("rhea", "ml_engineer", "approver")
    registrar = make_user("reg", "ml_engineer", "approver")
    from tests.registry.factories import trained_run

    run = trained_run(trained, author, tmp_path)
    model = make_model(registrar)
    version = ModelVersion.register(registrar, model, run)
    request = version.request_promotion(people["erin"], Stage.PRODUCTION, "ship it")
    with pytest.raises(ApprovalDenied, match="started the run"):
        approve(request, author)
    with pytest.raises(ApprovalDenied, match="registered this version"):
        approve(request, registrar)
    assert not request.approvals.exists()
    assert AuditEvent.objects.filter(action="promotion.denied").count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["vic", "lee", "ona"])
def test_only_approvers_approve_or_reject(trained, people, tmp_path, who):
    version, request = to_production(trained, people, tmp_path)
    with pytest.raises(ApprovalDenied, match="Only approvers"):
        approve(request, people[who])
    with pytest.raises(ApprovalDenied, match="Only approvers"):
        request.reject(people[who], "no")
    request.refresh_from_db()
    assert request.status == PromotionRequest.Status.OPEN and not request.approvals.exists()


@pytest.mark.django_db
def test_evidence_that_changed_after_the_first_approval_voids_it_and_says_what_changed(trained, people, tmp_path):
    version, request = to_production(trained, people, tmp_path)
    approve(request, people["ann"])
    version.edit_card(people["erin"], version.card + "\nOne more known limitation.\n")
    with pytest.raises(EvidenceChanged, match="card_sha256"):
        request.approve(people["abe"], "fine", seen_sha256=request.evidence_sha256)
    request.refresh_from_db()
    version.refresh_from_db()
    assert version.stage == Stage.CANDIDATE
    assert request.approvals.get().void and "card_sha256" in request.void_note
    assert request.evidence["card_sha256"] == version.card_sha256
    # Both approve again on the new evidence: now it goes through.
    approve(request, people["abe"]), approve(request, people["ann"])
    version.refresh_from_db()
    assert version.stage == Stage.PRODUCTION
    assert AuditEvent.objects.filter(action="promotion.evidence_changed").count() == 1
    assert AuditEvent.objects.filter(action="model_version.card_edited").count() == 1


@pytest.mark.django_db
def test_an_approval_of_evidence_the_approver_did_not_see_is_refused(trained, people, tmp_path):
    version, request = to_production(trained, people, tmp_path)
    with pytest.raises(EvidenceChanged):
        request.approve(people["ann"], "ok", seen_sha256="0" * 64)
    assert not request.approvals.exists()


@pytest.mark.django_db
def test_rejecting_needs_a_comment_and_a_rejected_request_takes_no_approval(trained, people, tmp_path):
    version, request = to_production(trained, people, tmp_path)
    with pytest.raises(RegistryError, match="needs a comment"):
        request.reject(people["ann"], "  ")
    request.reject(people["ann"], "calibration is off on the refund class")
    request.refresh_from_db()
    assert request.status == PromotionRequest.Status.REJECTED and request.decided_by == people["ann"]
    with pytest.raises(RegistryError, match="rejected"):
        approve(request, people["abe"])
    with pytest.raises(RegistryError, match="rejected"):
        request.reject(people["abe"], "again")
    version.refresh_from_db()
    assert version.stage == Stage.CANDIDATE and not request.approvals.exists()
    # A new request can be made once the old one is closed.
    assert version.request_promotion(people["erin"], Stage.STAGING, "try staging first").approvals_required == 1


@pytest.mark.django_db
def test_a_failed_gate_blocks_until_an_approver_overrides_it_in_writing(trained, people, tmp_path):
    version, request = to_production(trained, people, tmp_path, metrics={"accuracy": 0.11})
    assert request.status == PromotionRequest.Status.BLOCKED
    metrics_gate = {g["gate"]: g for g in request.gate_results}["metrics"]
    assert metrics_gate["status"] == "fail" and "accuracy 0.1100 < 0.3" in metrics_gate["message"]
    with pytest.raises(RegistryError, match="Failed gates block"):
        approve(request, people["ann"])
    with pytest.raises(RegistryError, match="needs a written reason"):
        request.refresh_from_db() or request.approve(people["ann"], "ok", seen_sha256=request.evidence_sha256,
                                                     overrides={"metrics": " "})
    request.refresh_from_db()
    request.approve(people["ann"], "ok", seen_sha256=request.evidence_sha256,
                    overrides={"metrics": "accepted for a one-week pilot on low-risk tickets"})
    request.refresh_from_db()
    assert request.status == PromotionRequest.Status.OPEN and request.overrides[0]["by"] == "ann"
    approve(request, people["abe"])
    version.refresh_from_db()
    assert version.stage == Stage.PRODUCTION
    assert AuditEvent.objects.filter(action="promotion.gate_overridden").get().payload["gate"] == "metrics"


@pytest.mark.django_db
def test_one_open_request_per_version_and_moves_follow_the_stage_graph(trained, people, tmp_path):
    version, request = to_production(trained, people, tmp_path)
    with pytest.raises(RegistryError, match="already has an open request"):
        version.request_promotion(people["erin"], Stage.STAGING, "also staging")
    with pytest.raises(RegistryError, match="reason is required"):
        registered(trained, people["erin"], tmp_path).request_promotion(people["erin"], Stage.STAGING, "")
    other = registered(trained, people["erin"], tmp_path)
    with pytest.raises(RegistryError, match="cannot be moved to candidate"):
        other.request_promotion(people["erin"], Stage.CANDIDATE, "back")


@pytest.mark.django_db
def test_archiving_needs_no_approval_and_is_still_a_request(trained, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path)
    request = version.request_promotion(people["erin"], Stage.ARCHIVED, "superseded")
    version.refresh_from_db()
    assert version.stage == Stage.ARCHIVED and request.status == PromotionRequest.Status.APPROVED
    assert StageChange.objects.get(version=version).request == request


@pytest.mark.django_db(transaction=True)
def test_two_approvers_at_once_for_the_last_approval_are_both_counted_and_promote_once(trained, people, tmp_path):
    version, request = to_production(trained, people, tmp_path)
    approve(request, people["ann"])
    request.refresh_from_db()
    seen = request.evidence_sha256
    barrier, errors = threading.Barrier(2), []

    def click(user):
        try:
            barrier.wait()
            PromotionRequest.objects.get(pk=request.pk).approve(user, "yes", seen_sha256=seen)
        except Exception as exc:  # noqa: BLE001 (the assertion below shows it)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=click, args=(people[name],)) for name in ("abe", "ada")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert errors == []
    version.refresh_from_db()
    assert version.stage == Stage.PRODUCTION
    assert request.approvals.filter(void=False).count() == 3
    assert StageChange.objects.filter(version=version, to_stage=Stage.PRODUCTION).count() == 1
    assert AuditEvent.objects.filter(action="stage.changed").count() == 1
    assert AuditEvent.verify_chain() is None


@pytest.mark.django_db
def test_a_regression_against_production_beyond_the_tolerance_fails_its_gate(trained, people, tmp_path):
    old, request = to_production(trained, people, tmp_path)
    approve(request, people["ann"]), approve(request, people["abe"])
    worse = trained["test_metrics"]["accuracy"] - 0.05
    _, request = to_production(trained, people, tmp_path, metrics={"accuracy": worse})
    gate = {g["gate"]: g for g in request.gate_results}["no_regression"]
    assert gate["status"] == "fail" and "drop 0.0500 > 0.02" in gate["message"]
    assert request.status == PromotionRequest.Status.BLOCKED
    # Trained on other data (another test split): not comparable, and said so.
    from tests.runs.factories import intent_version

    other = intent_version(tmp_path, people["erin"], n=300, seed=9, slug="other-intents")
    _, request = to_production(trained, people, tmp_path, version=other)
    gate = {g["gate"]: g for g in request.gate_results}["no_regression"]
    assert gate["status"] == "not_applicable" and "another test split" in gate["message"]
