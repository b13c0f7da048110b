"""Deployment test data through the real methods: versions of the session's trained model moved
to production and staging by real promotion requests, and a deployment serving them."""
from lifecycle.deployments.models import Deployment
from lifecycle.registry.models import Stage
from tests.registry.factories import registered


def promote(version, stage, requester, *approvers):
    request = version.request_promotion(requester, stage, "tested")
    for approver in approvers:
        request.refresh_from_db()
        request.approve(approver, "looks right", seen_sha256=request.evidence_sha256)
    version.refresh_from_db()
    assert version.stage == stage, request.gate_results
    return version


def two_versions(trained, people, tmp_path, slug="intent-router"):
    """v1 in production (two approvals), v2 in staging (one): a stable and a candidate."""
    stable = registered(trained, people["erin"], tmp_path, slug=slug, name="lora minilm v1")
    promote(stable, Stage.PRODUCTION, people["erin"], people["ann"], people["abe"])
    candidate = registered(trained, people["erin"], tmp_path, slug=slug, name="lora minilm v2")
    promote(candidate, Stage.STAGING, people["erin"], people["ann"])
    return stable, candidate


def make_deployment(trained, people, tmp_path, *, name="support-router", mode=None, share=10.0, rules=None):
    """A deployment serving v1; with `mode` ("canary" or "shadow"), v2 released beside it."""
    stable, candidate = two_versions(trained, people, tmp_path)
    deployment = Deployment.create(people["erin"], name=name, model=stable.model, stable=stable,
                                   description="Routes support tickets.")
    if mode:
        deployment.start_release(people["erin"], candidate=candidate, mode=mode, share=share, rules=rules,
                                 reason="try v2")
        deployment.refresh_from_db()
    return deployment
