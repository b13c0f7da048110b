"""Feedback through the pages: reviewers filter recent answers and correct them, an engineer
exports the corrections as a dataset version through the datasets app's own ingest; and the
serving tokens page (a key shown once, stored hashed, revoked)."""
import hashlib
import uuid

import pytest

from lifecycle.core.jobs import perform
from lifecycle.core.models import Job
from lifecycle.datasets.models import DatasetVersion, Upload
from lifecycle.deployments import views
from lifecycle.deployments.models import Deployment, Feedback, PredictionLog, ServingToken
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import as_user, log_row, page_text, write

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]

NAME = "support-router"


@pytest.fixture
def answers(trained, people, tmp_path):
    """A canary deployment's answers: two stable, one canary, one the shadow disagrees with, an error."""
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=10)
    ids = {name: uuid.uuid4() for name in ("sure", "canary", "unsure", "flip", "error")}
    write([
        log_row(deployment, request_id=ids["sure"], label="order_status", confidence=0.95, text="where is order 1"),
        log_row(deployment, route="canary", request_id=ids["canary"], label="refund_request", confidence=0.4,
                text="money back for order 2"),
        log_row(deployment, request_id=ids["unsure"], label="cancel_order", confidence=0.7, text="stop order 3"),
        log_row(deployment, request_id=ids["flip"], label="order_status", confidence=0.9, text="order 4 is broken"),
        log_row(deployment, route="shadow", request_id=ids["flip"], label="complaint", text="order 4 is broken"),
        log_row(deployment, request_id=ids["error"], status="error", text="???"),
    ])
    return deployment, ids


def listed(response):
    return [row["row"].input_text for row in response.context["rows"]]


@pytest.mark.parametrize("query, expected", [
    ("", ["???", "order 4 is broken", "stop order 3", "money back for order 2", "where is order 1"]),
    ("route=canary", ["money back for order 2"]),
    ("label=order_status", ["order 4 is broken", "where is order 1"]),
    ("confidence_min=0.5&confidence_max=0.8", ["stop order 3"]),
    ("disagreeing=on", ["order 4 is broken"]),
    (f"deployment={NAME}&route=stable&confidence_min=0.9", ["order 4 is broken", "where is order 1"]),
])
def test_reviewers_filter_recent_answers_and_never_see_the_shadows(client, answers, people, query, expected):
    as_user(client, people["lee"])
    response = client.get(f"/deployments/feedback?{query}")
    assert response.status_code == 200 and listed(response) == expected


def test_the_review_page_comes_in_pages_and_shows_the_shadows_answer(client, answers, people, monkeypatch):
    monkeypatch.setattr(views, "REVIEW_PAGE_SIZE", 2)
    as_user(client, people["ona"])
    first = client.get("/deployments/feedback?route=stable")
    assert listed(first) == ["???", "order 4 is broken"] and first.context["page"].older is not None
    assert '<code class="flip">complaint</code>' in page_text(first)
    second = client.get(f"/deployments/feedback?route=stable&before={first.context['page'].older}")
    assert listed(second) == ["stop order 3", "where is order 1"]


@pytest.mark.parametrize("query, message", [
    ("confidence_min=2", "Ensure this value is less than or equal to 1"),
    ("confidence_min=0.8&confidence_max=0.2", "The upper bound is below the lower one"),
    ("deployment=nowhere", "Select a valid choice"),
    ("route=shadow", "Select a valid choice"),
    ("before=abc", "Enter a whole number"),
])
def test_bad_filters_are_refused_plainly(client, answers, people, query, message):
    as_user(client, people["erin"])
    response = client.get(f"/deployments/feedback?{query}")
    assert response.status_code == 400 and message in page_text(response)


def test_a_labeler_corrects_an_answer_and_returns_to_the_same_filters(client, answers, people):
    deployment, ids = answers
    as_user(client, people["lee"])
    response = client.post("/deployments/feedback/give", {
        "request_id": ids["sure"], "position": 0, "label": "refund_request", "note": "asks for money",
        "back": "route=stable&label=order_status&next=https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == "/deployments/feedback?route=stable&label=order_status"
    feedback = Feedback.objects.get(request_id=ids["sure"])
    assert (feedback.label, feedback.predicted_label, feedback.is_override, feedback.given_by) == (
        "refund_request", "order_status", True, people["lee"])
    client.post("/deployments/feedback/give", {"request_id": ids["canary"], "position": 0, "verdict": "right"})
    right = Feedback.objects.get(request_id=ids["canary"])
    assert right.correct is True and not right.is_override
    text = page_text(client.get("/deployments/feedback"))
    assert "corrected to <code>refund_request</code>" in text and "by lee" in text


@pytest.mark.parametrize("data, message", [
    ({"label": "nonsense"}, "'nonsense' is not one of the model's labels"),
    ({"request_id": "00000000-0000-0000-0000-000000000001", "label": "complaint"}, "No prediction with that request id"),
    ({"request_id": "not-a-uuid", "label": "complaint"}, "Enter a valid UUID"),
    ({}, "Choose the right label, or say whether the answer is right"),
    ({"position": "-1", "label": "complaint"}, "Ensure this value is greater than or equal to 0"),
])
def test_a_bad_correction_is_refused_and_nothing_saved(client, answers, people, data, message):
    _, ids = answers
    as_user(client, people["ona"])
    response = client.post("/deployments/feedback/give", {"request_id": ids["sure"], "position": 0, **data}, follow=True)
    assert f"Nothing was saved: {message}" in page_text(response)
    assert not Feedback.objects.exists()


def test_approvers_and_viewers_do_not_correct(client, answers, people):
    _, ids = answers
    for who in ("ann", "vic", "sam"):
        as_user(client, people[who])
        assert client.post("/deployments/feedback/give", {"request_id": ids["sure"], "position": 0,
                                                          "label": "complaint"}).status_code == 403
    assert not Feedback.objects.exists()


# --- the export -------------------------------------------------------------------------------


def perform_queued():
    for job in Job.objects.filter(status="queued").order_by("pk"):
        perform(job.pk)


def test_feedback_becomes_a_dataset_version_through_the_datasets_ingest(client, answers, people, redis):
    deployment, ids = answers
    email_id = uuid.uuid4()
    gone_id = uuid.uuid4()
    write([log_row(deployment, request_id=email_id, label="order_status", text="locked out, write to jo@example.com"),
           log_row(deployment, request_id=gone_id, label="order_status", text="this one leaves the log")])
    give = dict(user=people["lee"])
    Feedback.give(request_id=ids["sure"], label="refund_request", **give)  # a correction
    Feedback.give(request_id=ids["canary"], correct=True, **give)  # confirmed: its own label
    Feedback.give(request_id=ids["unsure"], correct=False, **give)  # wrong, right label unknown: left out
    Feedback.give(request_id=email_id, label="account_locked", **give)
    Feedback.give(request_id=gone_id, label="complaint", **give)
    PredictionLog.objects.filter(request_id=gone_id).delete()  # the retention purge took it
    dataset = deployment.current_release.stable.run.dataset_version.dataset
    before = set(dataset.versions.values_list("pk", flat=True))

    as_user(client, people["erin"])
    page = page_text(client.get(f"/deployments/{NAME}/"))
    assert "Export 4 labeled answers as a dataset version" in page
    response = client.post(f"/deployments/{NAME}/feedback/export")
    assert response.status_code == 302
    export = Job.objects.get(task="lifecycle.deployments.feedback_export.export_feedback")
    again = client.post(f"/deployments/{NAME}/feedback/export", follow=True)
    assert "is queued already" in page_text(again)
    assert Job.objects.filter(task=export.task).count() == 1
    perform(export.pk)
    export.refresh_from_db()
    assert export.status == "succeeded", export.error
    assert (export.result["rows"], export.result["gone"]) == (3, 1)
    upload = Upload.objects.get(pk=export.result["upload"])
    assert upload.dataset == dataset and upload.mapping["group"] == "request_id"
    perform_queued()  # the upload's own ingest job
    upload.refresh_from_db()
    assert upload.job.status == "succeeded", upload.job.error
    made = DatasetVersion.objects.filter(dataset=dataset).exclude(pk__in=before).order_by("number")
    assert [v.operation for v in made] == ["upload", "redact"]  # the dataset's policy is to redact
    final = made.last()
    assert final.pii_status == "redacted" and upload.version == final
    rows = {e.text: (e.label, e.group) for e in final.examples.all()}
    assert rows == {"where is order 1": ("refund_request", str(ids["sure"])),
                    "money back for order 2": ("refund_request", str(ids["canary"])),
                    "locked out, write to <EMAIL>": ("account_locked", str(email_id))}
    example = final.examples.get(group=str(ids["sure"]))
    assert example.metadata["predicted_label"] == "order_status" and example.metadata["deployment"] == NAME
    text = page_text(client.get(f"/deployments/{NAME}/"))
    assert "Wrote 3 corrected rows; 1 whose prediction has left the log were left out" in text


def test_an_export_with_nothing_to_export_is_refused(client, answers, people, redis):
    deployment, ids = answers
    Feedback.give(request_id=ids["unsure"], correct=False, user=people["ona"])
    as_user(client, people["erin"])
    response = client.post(f"/deployments/{NAME}/feedback/export", follow=True)
    assert "Nothing was exported: No feedback gives a right label yet" in page_text(response)
    assert not Job.objects.filter(task="lifecycle.deployments.feedback_export.export_feedback").exists()
    as_user(client, people["ona"])
    assert client.post(f"/deployments/{NAME}/feedback/export").status_code == 403


# --- serving tokens ---------------------------------------------------------------------------


def test_an_engineer_makes_a_token_sees_its_key_once_and_revokes_it(client, answers, people):
    as_user(client, people["erin"])
    response = client.post("/deployments/tokens", {"name": "router", "deployments": [NAME], "rate_per_second": "5",
                                                   "burst": "10"})
    token = ServingToken.objects.get()
    key = response.context["created"]["key"]
    assert response.status_code == 201 and response["Cache-Control"] == "no-store" and key in page_text(response)
    assert token.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in str(ServingToken.objects.values())
    assert list(token.deployments.values_list("name", flat=True)) == [NAME]
    assert (token.rate_per_second, token.burst) == (5.0, 10)
    assert key not in page_text(client.get("/deployments/tokens"))
    response = client.post(f"/deployments/tokens/{token.pk}/revoke", follow=True)
    token.refresh_from_db()
    assert token.revoked_at is not None and "Revoked router" in page_text(response)
    again = client.post(f"/deployments/tokens/{token.pk}/revoke", follow=True)
    assert "was revoked already" in page_text(again)
    assert client.post("/deployments/tokens/999/revoke").status_code == 404


@pytest.mark.parametrize("data, message", [
    ({"deployments": []}, "A serving token names at least one deployment"),
    ({"deployments": ["nowhere"]}, "Select a valid choice"),
    ({"rate_per_second": "0"}, "Ensure this value is greater than or equal to 0.1"),
    ({"burst": "0"}, "Ensure this value is greater than or equal to 1"),
    ({"name": ""}, "This field is required"),
])
def test_a_bad_token_is_refused_and_nothing_made(client, answers, people, data, message):
    as_user(client, people["erin"])
    response = client.post("/deployments/tokens", {"name": "router", "deployments": [NAME], "rate_per_second": "5",
                                                   "burst": "10", **data})
    assert response.status_code == 400 and message in page_text(response)
    assert not ServingToken.objects.exists()


def test_only_engineers_make_or_revoke_tokens(client, answers, people):
    token, _ = ServingToken.issue(people["erin"], "x", [Deployment.objects.get()])
    for who in ("ona", "ann", "vic", "lee"):
        as_user(client, people[who])
        assert client.post("/deployments/tokens", {"name": "y", "deployments": [NAME]}).status_code == 403
        assert client.post(f"/deployments/tokens/{token.pk}/revoke").status_code == 403
    token.refresh_from_db()
    assert ServingToken.objects.count() == 1 and token.revoked_at is None
