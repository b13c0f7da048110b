"""Deployments and releases through their model methods: what may be released, one change at
a time, every change audited and bumping the generation serving processes follow."""
import pytest

from lifecycle.core.models import AuditEvent
from lifecycle.deployments.models import Deployment, DeploymentError, Release, Rollback, ServingProcess
from lifecycle.registry.models import ModelVersion, Stage
from tests.deployments.factories import make_deployment, two_versions
from tests.registry.factories import registered

pytestmark = pytest.mark.django_db


def test_a_deployment_serves_its_stable_version_and_a_canary_joins_with_its_share(trained, store_with_output, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=10)
    release = deployment.current_release
    assert (release.number, release.mode, release.share, release.stable_share) == (2, "canary", 10.0, 90.0)
    routes = deployment.routes()
    assert routes["candidate"] == release.candidate_id and routes["share"] == 10.0 and routes["generation"] == 2
    assert list(AuditEvent.objects.filter(action__startswith="release.").values_list("action", flat=True)) == ["release.started"]
    assert Release.objects.get(deployment=deployment, number=1).status == Release.Status.SUPERSEDED


def test_only_staging_or_production_versions_with_a_valid_signature_are_released(trained, store_with_output, people, tmp_path):
    stable, candidate = two_versions(trained, people, tmp_path)
    fresh = registered(trained, people["erin"], tmp_path, name="v3")  # a candidate-stage version
    with pytest.raises(DeploymentError, match="only staging or production"):
        Deployment.create(people["erin"], name="d", model=stable.model, stable=fresh)
    deployment = Deployment.create(people["erin"], name="d", model=stable.model, stable=stable)
    with pytest.raises(DeploymentError, match="only staging or production"):
        deployment.start_release(people["erin"], candidate=fresh, mode="canary", share=5)
    ModelVersion.objects.filter(pk=candidate.pk).update(signature_status="invalid", signature_error="file changed")
    candidate.refresh_from_db()
    with pytest.raises(DeploymentError, match="signature"):
        deployment.start_release(people["erin"], candidate=candidate, mode="canary", share=5)
    with pytest.raises(DeploymentError, match="0 to 100"):
        deployment.start_release(people["erin"], candidate=stable, mode="canary", share=150)
    assert Release.objects.filter(deployment=deployment).count() == 1


def test_one_candidate_at_a_time_and_shares_change_in_place(trained, store_with_output, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=10)
    release = deployment.current_release
    with pytest.raises(DeploymentError, match="still has a candidate"):
        deployment.start_release(people["erin"], candidate=release.candidate, mode="shadow")
    release.set_share(people["erin"], 20)
    deployment.refresh_from_db()
    assert deployment.current_release_id == release.pk and deployment.current_release.share == 20.0
    assert deployment.generation == 3
    with pytest.raises(DeploymentError, match="by promotion"):
        release.set_share(people["erin"], 100)


def test_rollback_takes_the_candidate_out_in_one_change_and_times_itself(trained, store_with_output, people, tmp_path,
                                                                         django_capture_on_commit_callbacks):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=30)
    release = deployment.current_release
    with pytest.raises(DeploymentError, match="reason"):
        release.rollback(people["ona"], "  ")
    with django_capture_on_commit_callbacks(execute=True):
        rollback = release.rollback(people["ona"], "p99 doubled")
    deployment.refresh_from_db()
    assert deployment.routes()["candidate"] is None and deployment.current_release.status == "rolled_back"
    assert deployment.current_release.stable_share == 100.0
    # No serving process is live: nothing to wait for, so it completes at once.
    rollback.refresh_from_db()
    assert rollback.completed_at is not None and rollback.time_to_rollback_ms >= 0
    event = AuditEvent.objects.get(action="release.rolled_back")
    assert event.actor == "ona" and event.payload["reason"] == "p99 doubled"
    with pytest.raises(DeploymentError, match="nothing to roll back"):
        release.rollback(people["ona"], "again")


def test_a_rollback_waits_for_every_live_serving_process(trained, store_with_output, people, tmp_path):
    from django.utils import timezone

    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=30)
    now = timezone.now()
    for name in ("a", "b"):
        ServingProcess.beat(name, host="h", pid=1, port=1, started_at=now, loaded=[], notices_ok=True)
    rollback = deployment.current_release.rollback(people["ona"], "errors")
    rollback.refresh_from_db()
    assert rollback.completed_at is None
    ServingProcess.applied("a", deployment.pk, rollback.generation, timezone.now())
    rollback.refresh_from_db()
    assert rollback.completed_at is None
    ServingProcess.applied("b", deployment.pk, rollback.generation, timezone.now())
    rollback.refresh_from_db()
    assert rollback.completed_at is not None and {p["process"] for p in rollback.processes} == {"a", "b"}
    assert rollback.time_to_rollback_ms == pytest.approx(
        (rollback.completed_at - rollback.clicked_at).total_seconds() * 1000)


def test_promoting_a_canary_waits_for_the_registry_and_then_serves_it_as_stable(trained, store_with_output, people, tmp_path,
                                                                                django_capture_on_commit_callbacks):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=10)
    release = deployment.current_release
    request = release.promote(people["erin"], "canary looks good")
    assert request is not None and release.status == Release.Status.PROMOTING
    assert release.complete_promotion() is None  # not approved yet: the canary keeps its share
    for approver in (people["ann"], people["abe"]):
        request.refresh_from_db()
        with django_capture_on_commit_callbacks(execute=True):
            request.approve(approver, "ok", seen_sha256=request.evidence_sha256)
    deployment.refresh_from_db()
    new = deployment.current_release
    assert new.number == 3 and new.stable_id == release.candidate_id and new.candidate_id is None
    assert Release.objects.get(pk=release.pk).status == Release.Status.PROMOTED
    assert ModelVersion.objects.get(pk=release.stable_id).stage == Stage.ARCHIVED


def test_a_rejected_promotion_leaves_the_canary_running(trained, store_with_output, people, tmp_path,
                                                         django_capture_on_commit_callbacks):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=10)
    release = deployment.current_release
    request = release.promote(people["erin"], "go")
    with django_capture_on_commit_callbacks(execute=True):
        request.reject(people["ann"], "not yet")
    deployment.refresh_from_db()
    assert deployment.current_release.status == Release.Status.ACTIVE
    assert Rollback.objects.count() == 0


def test_lineage_walks_on_from_a_version_to_the_deployments_that_served_it(trained, store_with_output, people, tmp_path, client):
    from tests.conftest import client_for

    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=10)
    candidate = deployment.current_release.candidate
    page = client_for(client, people["vic"]).get(candidate.get_absolute_url())
    assert page.status_code == 200
    text = page.content.decode()
    assert "support-router" in text and "release 2 as canary (active)" in text


def test_serving_limits_that_would_refuse_every_request_stop_the_start(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.SERVING_MAX_INPUTS, settings.SERVING_MAX_QUEUE = 300, 256
    with pytest.raises(SystemCheckError, match="SERVING_MAX_INPUTS"):
        call_command("check")
