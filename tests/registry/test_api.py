"""The registry's JSON API: who may read and write each endpoint, models, registration (and
every refused reference, with nothing written), paging, promotion requests, approvals pinned to
the evidence read, rejections, and the API's error shape."""
import json

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import ApiToken, AuditEvent, Job
from lifecycle.registry.models import ModelVersion, PromotionRequest, RegisteredModel, Stage
from lifecycle.runs.models import Run
from tests.registry.factories import make_model, registered, trained_run

pytestmark = pytest.mark.django_db


def make_user(username, *roles):
    """A user with roles and no password (the tests log in with force_login or a token):
    hashing eight passwords per test would cost more than the test."""
    user = User.objects.create(username=username)
    user.groups.add(*(Group.objects.get_or_create(name=role)[0] for role in roles))
    return user


@pytest.fixture
def people(db):
    return {
        "erin": make_user("erin", "ml_engineer", "approver"),  # an approver too: separation of duties still applies
        "eli": make_user("eli", "ml_engineer"),
        "ann": make_user("ann", "approver"),
        "abe": make_user("abe", "approver"),
        "vic": make_user("vic", "viewer"),
        "ona": make_user("ona", "oncall"),
        "lee": make_user("lee", "labeler"),
        "sam": make_user("sam"),
    }


def as_user(user):
    client = Client()
    client.force_login(user)
    return client


def post(client, url, body, **extra):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data, content_type="application/json", **extra)


def written():
    """What a refused request must leave as it was."""
    return (RegisteredModel.objects.count(), ModelVersion.objects.count(), PromotionRequest.objects.count(),
            AuditEvent.objects.count(), list(RegisteredModel.objects.values_list("last_number", flat=True)))


def models_url():
    return "/api/v1/registry/models"


def versions_url(slug="intent-router"):
    return f"/api/v1/registry/models/{slug}/versions"


def version_url(slug="intent-router", number=1):
    return f"/api/v1/registry/models/{slug}/versions/{number}"


def request_url(request_id, action=""):
    return f"/api/v1/registry/requests/{request_id}" + (f"/{action}" if action else "")


# --- who may do what -------------------------------------------------------------------------


def test_readers_read_engineers_and_approvers_write_labelers_and_strangers_get_nothing(trained, store_with_output, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path)
    request = version.request_promotion(people["erin"], Stage.STAGING, "first look")
    reads = [models_url(), f"{models_url()}/intent-router", versions_url(), version_url(), f"{version_url()}/export",
             request_url(request.pk)]
    writes = [(models_url(), {"name": "Other"}), (versions_url(), {"run": version.run_id}),
              (f"{version_url()}/requests", {"to_stage": "production", "reason": "x"}),
              (request_url(request.pk, "approve"), {"evidence_sha256": request.evidence_sha256}),
              (request_url(request.pk, "reject"), {"comment": "no"})]
    for name in ("vic", "ona"):
        client = as_user(people[name])
        for url in reads:
            assert client.get(url).status_code == 200, (name, url)
        before = written()
        for url, body in writes:
            response = post(client, url, body)
            assert response.status_code == 403, (name, url)
            assert response.json()["error"] == "forbidden" and "needs one of these roles" in response.json()["detail"]
        assert written() == before
    for name in ("lee", "sam"):
        client = as_user(people[name])
        before = written()
        for url in reads:
            assert client.get(url).status_code == 403, (name, url)
        for url, body in writes:
            assert post(client, url, body).status_code == 403, (name, url)
        assert written() == before
    # An engineer may not approve or reject; an approver may not register or ask.
    eli, ann = as_user(people["eli"]), as_user(people["ann"])
    assert post(eli, request_url(request.pk, "approve"), {"evidence_sha256": request.evidence_sha256}).status_code == 403
    assert post(eli, request_url(request.pk, "reject"), {"comment": "no"}).status_code == 403
    assert post(ann, versions_url(), {"run": version.run_id}).status_code == 403
    assert post(ann, f"{version_url()}/requests", {"to_stage": "production", "reason": "x"}).status_code == 403


def test_anonymous_gets_401_and_a_bad_token_401(trained, store_with_output, people, tmp_path):
    registered(trained, people["erin"], tmp_path)
    assert Client().get(version_url()).status_code == 401
    assert Client(HTTP_AUTHORIZATION="Bearer lc_not-a-token").get(version_url()).status_code == 401


def test_a_token_registers_and_asks_without_csrf_while_a_session_needs_it(trained, store_with_output, people, tmp_path):
    make_model(people["erin"])
    run = trained_run(trained, people["erin"], tmp_path)
    _, key = ApiToken.issue(people["eli"], "ci")
    bot = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {key}")
    response = post(bot, versions_url(), {"run": run.pk, "artifact": run.output_sha256})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["number"] == 1 and body["registered_by"] == "eli" and body["signature"]["status"] == "valid"
    assert body["output_sha256"] == run.output_sha256 and body["lineage"]["run"]["id"] == run.pk
    response = post(bot, f"{version_url()}/requests", {"to_stage": "staging", "reason": "nightly candidate"})
    assert response.status_code == 201 and response.json()["requester"] == "eli"
    session = Client(enforce_csrf_checks=True)
    session.force_login(people["eli"])
    before = written()
    assert post(session, models_url(), {"name": "No CSRF"}).status_code == 403
    assert written() == before


# --- models ----------------------------------------------------------------------------------


def test_an_engineer_creates_a_model_and_everyone_reading_sees_it(people):
    erin = as_user(people["erin"])
    response = post(erin, models_url(), {"name": "Intent Router", "description": "Routes tickets."})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["slug"] == "intent-router" and body["created_by"] == "erin" and body["last_number"] == 0
    assert body["production"] is None and body["approvals_required"]["production"] == 2
    listed = as_user(people["vic"]).get(models_url()).json()["models"]
    assert [m["slug"] for m in listed] == ["intent-router"]
    assert as_user(people["vic"]).get(f"{models_url()}/intent-router").json()["description"] == "Routes tickets."
    assert AuditEvent.objects.filter(action="registered_model.created").count() == 1


@pytest.mark.parametrize("body, status, message", [
    ({"name": "X", "owner": "me"}, 400, "unknown field(s): owner"),
    ({"slug": "x"}, 400, "missing field(s): name"),
    ({"name": 12}, 400, "name must be text"),
    ({"name": "   "}, 400, "name must not be empty"),
    ({"name": "X", "slug": "../etc"}, 400, "slug may hold only"),
    ({"name": "X", "description": ["a"]}, 400, "description must be text"),
    ({"name": "x" * 201}, 400, "at most 200 characters"),
    ({"name": "Existing"}, 400, "already exists"),
    ({"name": "New", "slug": "existing"}, 400, "already exists"),
    ("[1, 2]", 400, "must be a JSON object"),
    ("{not json", 400, "not valid JSON"),
    ("", 400, "must be a JSON object"),
])
def test_a_bad_model_body_is_refused_and_nothing_is_written(people, body, status, message):
    RegisteredModel.create(people["erin"], name="Existing")
    before = written()
    response = post(as_user(people["erin"]), models_url(), body)
    assert response.status_code == status
    assert set(response.json()) == {"error", "detail"} and message in response.json()["detail"]
    assert written() == before


# --- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize("artifact, message", [
    ("file:///etc/passwd", "paths and URLs are not accepted"),
    ("/proc/self/environ", "paths and URLs are not accepted"),
    ("../../x", "paths and URLs are not accepted"),
    ("s3://someone-elses-bucket/k", "paths and URLs are not accepted"),
    ("http://example.com/model.safetensors", "paths and URLs are not accepted"),
    ("f" * 64, "No artifact with that key"),
    (None, "paths and URLs are not accepted"),
    (7, "paths and URLs are not accepted"),
])
def test_registering_names_only_our_own_stores_keys(trained, store_with_output, people, tmp_path, artifact, message):
    make_model(people["erin"])
    run = trained_run(trained, people["erin"], tmp_path)
    before = written()
    response = post(as_user(people["erin"]), versions_url(), {"run": run.pk, "artifact": artifact})
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert written() == before


def test_an_artifact_our_store_holds_that_is_not_the_runs_output_is_refused(trained, store_with_output, people, tmp_path):
    make_model(people["erin"])
    run = trained_run(trained, people["erin"], tmp_path)
    other = get_store().put_bytes(b"someone else's weights").sha256
    before = written()
    response = post(as_user(people["erin"]), versions_url(), {"run": run.pk, "artifact": other})
    assert response.status_code == 400 and "not this run's output" in response.json()["detail"]
    assert written() == before


@pytest.mark.parametrize("body, status, message", [
    ({"run": "1"}, 400, "run must be a run's id"),
    ({"run": 1.5}, 400, "run must be a run's id"),
    ({"run": True}, 400, "run must be a run's id"),
    ({"run": None}, 400, "run must be a run's id"),
    ({"run": 0}, 400, "must be between 1 and"),
    ({"run": 2**70}, 400, "must be between 1 and"),
    ({"run": 999999}, 404, "no run 999999"),
    ({}, 400, "missing field(s): run"),
    ({"run": 1, "path": "/tmp/model"}, 400, "unknown field(s): path"),
])
def test_a_bad_run_reference_is_refused_and_nothing_is_written(people, body, status, message):
    make_model(people["erin"])
    before = written()
    response = post(as_user(people["erin"]), versions_url(), body)
    assert response.status_code == status, response.content
    assert message in response.json()["detail"]
    assert written() == before


def test_a_run_that_did_not_succeed_or_is_registered_already_is_refused(trained, store_with_output, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path)
    failed = trained_run(trained, people["erin"], tmp_path)
    Job.objects.filter(pk=failed.job_id).update(status=Job.Status.FAILED)
    erin = as_user(people["erin"])
    before = written()
    response = post(erin, versions_url(), {"run": failed.pk})
    assert response.status_code == 400 and "has not succeeded" in response.json()["detail"]
    response = post(erin, versions_url(), {"run": version.run_id})
    assert response.status_code == 400 and "already registered" in response.json()["detail"]
    assert post(erin, versions_url("no-such-model"), {"run": version.run_id}).status_code == 404
    assert written() == before
    assert Run.objects.get(pk=failed.pk).model_versions.count() == 0


# --- reading versions --------------------------------------------------------------------------


def test_versions_page_newest_first_and_unknown_things_are_404_json(trained, store_with_output, people, tmp_path):
    for _ in range(3):
        registered(trained, people["erin"], tmp_path)
    vic = as_user(people["vic"])
    first = vic.get(versions_url(), {"size": 2}).json()
    assert [v["number"] for v in first["versions"]] == [3, 2] and first["newer"] is None
    second = vic.get(first["older"]).json()
    assert [v["number"] for v in second["versions"]] == [1] and second["older"] is None
    assert [v["number"] for v in vic.get(second["newer"]).json()["versions"]] == [3, 2]
    detail = vic.get(version_url(number=2)).json()
    assert detail["number"] == 2 and detail["stage"] == "candidate" and "## Training data" in detail["card"]
    assert detail["export_url"] == f"{version_url(number=2)}/export"
    for url, message in [(version_url(number=9), "has no version 9"), (version_url("nope", 1), "no registered model 'nope'"),
                         (f"{models_url()}/nope", "no registered model"), (versions_url("nope"), "no registered model"),
                         (request_url(424242), "no promotion request 424242"), (f"{version_url(number=9)}/export", "has no version 9")]:
        response = vic.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"] == "not_found" and message in response.json()["detail"]
    for query in ({"size": 0}, {"size": 1000}, {"before": "x"}, {"after": "-1"}):
        response = vic.get(versions_url(), query)
        assert response.status_code == 400 and response.json()["error"] == "bad_request", query


def test_a_wrong_method_is_405_in_the_api_shape(trained, store_with_output, people, tmp_path):
    registered(trained, people["erin"], tmp_path)
    erin = as_user(people["erin"])
    response = post(erin, version_url(), {})
    assert response.status_code == 405 and response["Allow"] == "GET" and response.json()["error"] == "method_not_allowed"
    assert erin.get(f"{version_url()}/requests").status_code == 405


# --- promotion requests and approvals -----------------------------------------------------------


def test_asked_approved_twice_and_promoted_through_the_api(trained, store_with_output, people, tmp_path):
    registered(trained, people["erin"], tmp_path)
    response = post(as_user(people["erin"]), f"{version_url()}/requests", {"to_stage": "production", "reason": "beats v0"})
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["status"] == "open" and created["approvals_required"] == 2
    assert {g["gate"]: g["status"] for g in created["gates"]}["metrics"] == "pass"
    request_id = created["id"]
    seen = as_user(people["vic"]).get(request_url(request_id)).json()["evidence_sha256"]
    # The requester holds the approver role but asked: separation of duties, 403, and audited.
    response = post(as_user(people["erin"]), request_url(request_id, "approve"), {"evidence_sha256": seen})
    assert response.status_code == 403 and "someone else must approve" in response.json()["detail"]
    assert AuditEvent.objects.filter(action="promotion.denied").count() == 1
    response = post(as_user(people["ann"]), request_url(request_id, "approve"), {"evidence_sha256": seen, "comment": "ok"})
    assert response.status_code == 200, response.content
    assert [a["approver"] for a in response.json()["approvals"]] == ["ann"] and response.json()["status"] == "open"
    response = post(as_user(people["ann"]), request_url(request_id, "approve"), {"evidence_sha256": seen})
    assert response.status_code == 400 and "already approved" in response.json()["detail"]
    response = post(as_user(people["abe"]), request_url(request_id, "approve"), {"evidence_sha256": seen})
    assert response.status_code == 200
    assert response.json()["status"] == "approved" and response.json()["version"]["stage"] == "production"
    assert ModelVersion.objects.get().stage == Stage.PRODUCTION


@pytest.mark.parametrize("body, message", [
    ({}, "missing field(s): evidence_sha256"),
    ({"evidence_sha256": "abc"}, "64-hex evidence hash"),
    ({"evidence_sha256": 5}, "64-hex evidence hash"),
    ({"evidence_sha256": "0" * 64, "overrides": ["metrics"]}, "overrides must map"),
    ({"evidence_sha256": "0" * 64, "overrides": {"metrics": 1}}, "overrides must map"),
    ({"evidence_sha256": "0" * 64, "comment": {}}, "comment must be text"),
    ({"evidence_sha256": "0" * 64, "seen": "x"}, "unknown field(s): seen"),
])
def test_a_bad_approval_body_is_refused_and_nothing_is_written(trained, store_with_output, people, tmp_path, body, message):
    version = registered(trained, people["erin"], tmp_path)
    request = version.request_promotion(people["erin"], Stage.STAGING, "try it")
    before = written()
    response = post(as_user(people["ann"]), request_url(request.pk, "approve"), body)
    assert response.status_code == 400 and message in response.json()["detail"]
    assert written() == before and not request.approvals.exists()


def test_approving_evidence_other_than_the_current_one_is_409(trained, store_with_output, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path)
    request = version.request_promotion(people["erin"], Stage.PRODUCTION, "ready")
    ann = as_user(people["ann"])
    response = post(ann, request_url(request.pk, "approve"), {"evidence_sha256": "0" * 64})
    assert response.status_code == 409 and response.json()["error"] == "evidence_changed"
    assert response.json()["changed"] == [] and not request.approvals.exists()
    assert post(ann, request_url(request.pk, "approve"), {"evidence_sha256": request.evidence_sha256}).status_code == 200
    # The card changes after the first approval: the next one is refused, says what changed, voids the first.
    version.edit_card(people["erin"], version.card + "\n\nEdited after review.\n")
    response = post(as_user(people["abe"]), request_url(request.pk, "approve"), {"evidence_sha256": request.evidence_sha256})
    assert response.status_code == 409
    assert "card_sha256" in response.json()["changed"] and "void" in response.json()["detail"]
    request.refresh_from_db()
    assert request.valid_approvals().count() == 0 and ModelVersion.objects.get().stage == Stage.CANDIDATE


def test_a_failed_gate_passes_only_with_a_written_override(trained, store_with_output, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path, metrics={"accuracy": 0.25})  # production wants 0.3
    request = version.request_promotion(people["erin"], Stage.PRODUCTION, "needed for the launch")
    assert request.status == PromotionRequest.Status.BLOCKED
    ann = as_user(people["ann"])
    response = post(ann, request_url(request.pk, "approve"), {"evidence_sha256": request.evidence_sha256})
    assert response.status_code == 400 and "Failed gates block" in response.json()["detail"]
    response = post(ann, request_url(request.pk, "approve"),
                    {"evidence_sha256": request.evidence_sha256, "overrides": {"metrics": ""}})
    assert response.status_code == 400 and "needs a written reason" in response.json()["detail"]
    response = post(ann, request_url(request.pk, "approve"), {"evidence_sha256": request.evidence_sha256,
                                                              "overrides": {"metrics": "accepted for the pilot"}})
    assert response.status_code == 200, response.content
    assert response.json()["overrides"][0]["by"] == "ann" and response.json()["status"] == "open"


def test_rejecting_needs_a_comment_and_a_rejected_request_takes_no_more(trained, store_with_output, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path)
    request = version.request_promotion(people["erin"], Stage.STAGING, "try it")
    ann = as_user(people["ann"])
    before = written()
    for body, message in [({}, "missing field(s): comment"), ({"comment": "  "}, "needs a comment"),
                          ({"comment": "no", "why": "x"}, "unknown field(s): why")]:
        response = post(ann, request_url(request.pk, "reject"), body)
        assert response.status_code == 400 and message in response.json()["detail"]
    assert written() == before
    response = post(ann, request_url(request.pk, "reject"), {"comment": "the card is thin"})
    assert response.status_code == 200
    assert response.json()["status"] == "rejected" and response.json()["decided_by"] == "ann"
    response = post(as_user(people["abe"]), request_url(request.pk, "approve"), {"evidence_sha256": request.evidence_sha256})
    assert response.status_code == 400 and "rejected" in response.json()["detail"]


@pytest.mark.parametrize("body, message", [
    ({"to_stage": "heaven", "reason": "x"}, "Unknown target stage"),
    ({"to_stage": "production", "reason": " "}, "a reason is required"),
    ({"to_stage": "production"}, "missing field(s): reason"),
    ({"to_stage": ["production"], "reason": "x"}, "to_stage must be text"),
    ({"to_stage": "production", "reason": "x", "approvals": 0}, "unknown field(s): approvals"),
])
def test_a_bad_promotion_request_is_refused_and_nothing_is_written(trained, store_with_output, people, tmp_path, body, message):
    registered(trained, people["erin"], tmp_path)
    before = written()
    response = post(as_user(people["erin"]), f"{version_url()}/requests", body)
    assert response.status_code == 400 and message in response.json()["detail"]
    assert written() == before
