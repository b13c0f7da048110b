"""The registry's pages through the real URLs: who may read and do what, every bad input
answered with a clear error and nothing written, the approvals flow with its refusals, a
model card that cannot carry script onto the page, and pages that come in server-side pages."""
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from lifecycle.core.models import AuditEvent, Job
from lifecycle.registry import views
from lifecycle.registry.models import Approval, ModelVersion, PromotionRequest, RegisteredModel, Stage
from tests.conftest import make_user
from tests.registry.factories import make_model, registered, trained_run

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]


@pytest.fixture
def people(db):
    return SimpleNamespace(
        # Erin holds the approver role too: separation of duties must stop her on her own request.
        erin=make_user("erin", "ml_engineer", "approver"), eli=make_user("eli", "ml_engineer"),
        ann=make_user("ann", "approver"), abe=make_user("abe", "approver"),
        vic=make_user("vic", "viewer"), ona=make_user("ona", "oncall"), lee=make_user("lee", "labeler"),
        sam=make_user("sam"))


def approve(request, user):
    request.refresh_from_db()
    return request.approve(user, "fine", seen_sha256=request.evidence_sha256)


@pytest.fixture
def world(trained, people, tmp_path):
    """v1 in production (two approvals), v2 a candidate with an open request for production."""
    v1 = registered(trained, people.erin, tmp_path)
    r1 = v1.request_promotion(people.erin, Stage.PRODUCTION, "the first good one")
    approve(r1, people.ann), approve(r1, people.abe)
    v2 = registered(trained, people.erin, tmp_path, name="second try")
    r2 = v2.request_promotion(people.erin, Stage.PRODUCTION, "newer data")
    v1.refresh_from_db(), r1.refresh_from_db()
    return SimpleNamespace(model=v1.model, v1=v1, v2=v2, r1=r1, r2=r2)


def as_user(client, user):
    client.force_login(user)
    return client


def page_text(response):
    return re.sub(r"\s+", " ", response.content.decode())


def counts():
    return (RegisteredModel.objects.count(), ModelVersion.objects.count(), PromotionRequest.objects.count(),
            Approval.objects.count(), AuditEvent.objects.count())


# --- who may do what --------------------------------------------------------------------------


def read_pages(w):
    return ["/registry/", "/registry/inbox", w.model.get_absolute_url(), w.v1.get_absolute_url(),
            w.v2.get_absolute_url(), w.r2.get_absolute_url(), w.r1.get_absolute_url()]


def engineer_pages(w):
    return ["/registry/new", f"/registry/register?run={w.v2.run_id}", f"/registry/models/{w.model.slug}/settings",
            f"/registry/models/{w.model.slug}/versions/2/card"]


def test_readers_read_and_strangers_and_labelers_are_refused(client, people, world):
    for user in (people.sam, people.lee):
        as_user(client, user)
        for url in read_pages(world) + engineer_pages(world):
            assert client.get(url).status_code == 403, (user.username, url)
    for user in (people.vic, people.ona, people.ann, people.eli):
        as_user(client, user)
        for url in read_pages(world):
            assert client.get(url).status_code == 200, (user.username, url)


def test_viewer_and_oncall_read_only(client, people, world):
    before = counts()
    for user in (people.vic, people.ona):
        as_user(client, user)
        page = client.get(world.r2.get_absolute_url()).content.decode()
        assert 'id="approve-form"' not in page and 'id="reject-form"' not in page and "read-only for you" in page
        page = client.get(world.v2.get_absolute_url()).content.decode()
        assert 'id="promote-form"' not in page and "Edit the card" not in page
        for url in engineer_pages(world):
            assert client.get(url).status_code == 403, (user.username, url)
        slug = world.model.slug
        posts = [(f"/registry/models/{slug}/versions/2/promote", {"to_stage": "staging", "reason": "x"}),
                 (f"/registry/models/{slug}/versions/2/card", {"card": "# gone"}),
                 (f"/registry/models/{slug}/versions/2/verify", {}),
                 (f"/registry/requests/{world.r2.pk}/approve", {"evidence_sha256": world.r2.evidence_sha256}),
                 (f"/registry/requests/{world.r2.pk}/reject", {"comment": "no"}),
                 (f"/registry/models/{slug}/settings", {}), ("/registry/new", {"name": "x"}),
                 ("/registry/register", {"run": world.v2.run_id, "new_model_name": "x"})]
        for url, data in posts:
            assert client.post(url, data).status_code == 403, (user.username, url)
    assert counts() == before


def test_engineers_do_not_approve_and_approvers_do_not_register(client, people, world):
    as_user(client, people.eli)
    assert client.post(f"/registry/requests/{world.r2.pk}/approve",
                       {"evidence_sha256": world.r2.evidence_sha256}).status_code == 403
    assert client.post(f"/registry/requests/{world.r2.pk}/reject", {"comment": "no"}).status_code == 403
    as_user(client, people.ann)
    for url in engineer_pages(world):
        assert client.get(url).status_code == 403, url
    assert not Approval.objects.filter(request=world.r2).exists()


def test_unknown_objects_are_404(client, people, world):
    slug = world.model.slug
    as_user(client, people.erin)
    for url in ["/registry/models/nope/", "/registry/models/nope/settings", f"/registry/models/{slug}/versions/99/",
                f"/registry/models/{slug}/versions/99/card", "/registry/requests/999999/",
                "/registry/models/nope/versions/1/"]:
        assert client.get(url).status_code == 404, url
    for url in [f"/registry/models/{slug}/versions/99/promote", f"/registry/models/{slug}/versions/99/verify",
                "/registry/requests/999999/approve", "/registry/requests/999999/reject"]:
        assert client.post(url, {"comment": "x", "reason": "x"}).status_code == 404, url


# --- models and registering -------------------------------------------------------------------


def test_an_engineer_creates_a_model_and_bad_names_write_nothing(client, people):
    as_user(client, people.eli)
    response = client.post("/registry/new", {"name": "Ticket router", "description": "Routes tickets."})
    model = RegisteredModel.objects.get(slug="ticket-router")
    assert response.status_code == 302 and response["Location"] == model.get_absolute_url()
    assert AuditEvent.objects.filter(action="registered_model.created", object_id=str(model.pk)).exists()
    before = counts()
    for data, message in [({"name": ""}, "This field is required"),
                          ({"name": "Ticket router"}, "already exists"),
                          ({"name": "Other", "slug": "not a slug!"}, "Enter a valid “slug”"),
                          ({"name": "!!!"}, "needs a name with letters or digits")]:
        response = client.post("/registry/new", data)
        assert response.status_code == 400 and message in response.content.decode(), data
        assert "The model was not created." in response.content.decode()
    assert counts() == before


def test_the_run_page_offers_register_and_the_register_page_signs_a_version(client, people, trained, tmp_path):
    run = trained_run(trained, people.eli, tmp_path)
    model = make_model(people.eli, "ticket-router")
    as_user(client, people.vic)
    assert "Register as a model version" not in client.get(run.get_absolute_url()).content.decode()
    as_user(client, people.eli)
    page = client.get(run.get_absolute_url()).content.decode()
    assert f'href="/registry/register?run={run.pk}">Register as a model version</a>' in page
    page = client.get(f"/registry/register?run={run.pk}").content.decode()
    assert f"#{run.pk} {run.name}" in page and f'<option value="{run.pk}" selected>' in page
    response = client.post("/registry/register", {"run": run.pk, "model": model.slug})
    version = ModelVersion.objects.get(run=run)
    assert response.status_code == 302 and response["Location"] == version.get_absolute_url()
    assert version.number == 1 and version.is_signed_valid and version.registered_by == people.eli
    page = client.get(run.get_absolute_url()).content.decode()
    assert f'href="{version.get_absolute_url()}">Registered as Ticket Router v1</a>' in page
    assert "Register as a model version" not in page


def test_registering_under_a_new_model_makes_both(client, people, trained, tmp_path):
    run = trained_run(trained, people.eli, tmp_path)
    as_user(client, people.eli)
    response = client.post("/registry/register", {"run": run.pk, "new_model_name": "Intent classifier"})
    assert response.status_code == 302
    assert ModelVersion.objects.get(run=run).model.slug == "intent-classifier"


def test_bad_registrations_say_why_and_write_nothing(client, people, trained, tmp_path, world):
    failed = trained_run(trained, people.eli, tmp_path, name="broken")
    Job.objects.filter(pk=failed.job_id).update(status=Job.Status.FAILED)
    as_user(client, people.eli)
    page = client.get(f"/registry/register?run={failed.pk}").content.decode()
    assert "has not succeeded" in page  # said before anything is posted
    before = counts()
    slug = world.model.slug
    for data, message in [
        ({"run": "", "model": slug}, "This field is required"),
        ({"run": "abc", "model": slug}, "must be a positive whole number"),
        ({"run": "999999", "model": slug}, "There is no run 999999."),
        ({"run": failed.pk, "new_model_name": "Fresh model"}, "has not succeeded"),
        ({"run": world.v1.run_id, "model": slug}, "already registered"),
        ({"run": world.v1.run_id, "model": slug, "new_model_name": "Another"}, "not both"),
        ({"run": world.v1.run_id}, "Name the new model"),
        ({"run": world.v1.run_id, "model": "no-such-model"}, "Select a valid choice"),
    ]:
        response = client.post("/registry/register", data)
        assert response.status_code == 400, data
        assert message in response.content.decode() and "Nothing was registered." in response.content.decode(), data
    assert counts() == before
    assert not RegisteredModel.objects.filter(name="Fresh model").exists()


# --- the model page: versions, timeline, "which version at time T", settings ---------------------


def test_the_model_page_answers_which_version_held_production_at_a_time(client, people, world):
    as_user(client, people.vic)
    promoted = world.v1.timeline().get().changed_at
    url = world.model.get_absolute_url()
    before = (promoted - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    after = (promoted + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    page = page_text(client.get(url, {"stage": "production", "at": before}))
    assert "no version was in production" in page
    page = page_text(client.get(url, {"stage": "production", "at": after}))
    assert re.search(r'id="held-at-answer".*?<strong>v1</strong></a> was in production', page)
    response = client.get(url, {"stage": "production", "at": "yesterday-ish"})
    assert response.status_code == 400 and "Give a date and time" in response.content.decode()
    response = client.get(url, {"stage": "limbo", "at": after})
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    page = client.get(url).content.decode()
    assert 'data-chart="model-metric-history"' in page and 'data-chart="model-stage-timeline"' in page
    assert re.search(r"candidate → production</td><td>abe</td>", page)


def settings_data(**changes):
    return {"staging_metrics": "accuracy >= 0.5", "staging_tolerance": "", "production_metrics":
            "accuracy >= 0.8\nece <= 0.2", "production_tolerance": "0.01", "staging_approvals": "1",
            "production_approvals": "3", "archived_approvals": "0", **changes}


def test_settings_are_saved_with_an_audit_event_of_before_and_after(client, people, world):
    as_user(client, people.eli)
    url = f"/registry/models/{world.model.slug}/settings"
    page = client.get(url).content.decode()
    assert "accuracy &gt;= 0.3" in page  # the current thresholds, as lines
    response = client.post(url, settings_data())
    assert response.status_code == 302
    model = RegisteredModel.objects.get(pk=world.model.pk)
    assert model.gate_settings["production"] == {"metrics": {"accuracy": {"min": 0.8}, "ece": {"max": 0.2}},
                                                 "regression_tolerance": 0.01}
    assert model.approvals_for(Stage.PRODUCTION) == 3
    event = AuditEvent.objects.filter(action="registered_model.settings_changed").get()
    assert event.actor == "eli" and event.payload["before"]["approvals_required"]["production"] == 2
    assert event.payload["after"]["approvals_required"]["production"] == 3
    client.post(url, settings_data())  # the same again: nothing to record
    assert AuditEvent.objects.filter(action="registered_model.settings_changed").count() == 1


@pytest.mark.parametrize("changes, message", [
    ({"production_metrics": "accuracy => 0.8"}, "is not “metric &gt;= number” or “metric &lt;= number”"),
    ({"production_metrics": "accuracy >= lots"}, "accuracy must be a number"),
    ({"production_metrics": "accuracy >= nan"}, "not NaN"),
    ({"production_metrics": "accuracy >= 0.8\naccuracy >= 0.9"}, "accuracy has a minimum already"),
    ({"production_metrics": "ece >= 0.5\nece <= 0.1"}, "the minimum 0.5 is above the maximum 0.1"),
    ({"production_tolerance": "2"}, "less than or equal to 1"),
    ({"production_tolerance": "-0.1"}, "greater than or equal to 0"),
    ({"production_approvals": "0"}, "greater than or equal to 1"),
    ({"staging_approvals": ""}, "This field is required"),
    ({"production_approvals": "11"}, "less than or equal to 10"),
    ({"archived_approvals": "-1"}, "greater than or equal to 0"),
])
def test_bad_settings_say_why_and_change_nothing(client, people, changes, message):
    model = make_model(people.eli)
    as_user(client, people.eli)
    before = (RegisteredModel.objects.values("gate_settings", "approvals_required").get(pk=model.pk), counts())
    response = client.post(f"/registry/models/{model.slug}/settings", settings_data(**changes))
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page and "The settings were not saved." in page
    assert (RegisteredModel.objects.values("gate_settings", "approvals_required").get(pk=model.pk), counts()) == before


# --- the version page, the card -------------------------------------------------------------------


def test_the_version_page_shows_lineage_card_gates_approvals_and_audit(client, people, world):
    as_user(client, people.vic)
    page = page_text(client.get(world.v1.get_absolute_url()))
    data = world.v1.lineage["dataset_version"]
    run = world.v1.lineage["run"]
    assert re.search(rf'Dataset version, trained on.*?href="{data["url"]}">{data["dataset"]} v{data["number"]}</a>'
                     rf'.*?Training run.*?href="{run["url"]}">#{run["id"]} ', page)
    assert "<h3>Intended use</h3>" in page and "<table>" in page  # the card (its headings one level down), with its metric table
    assert "Approved by ann" in page and "Approved by abe" in page
    assert "signature valid" in page
    for action in ("model_version.created", "promotion.requested", "promotion.approved", "stage.changed"):
        assert f"<code>{action}</code>" in page


HOSTILE_CARD = """## Intended use

<script>alert("card")</script>

[click me](javascript:alert(1)) and [data](data:text/html;base64,PHNjcmlwdD4=) and
[fine](https://example.com/docs)

<img src=x onerror="alert(2)"> <a href="#" onclick="alert(3)">x</a>

## Training data
ok
"""


def test_markdown_in_a_card_renders_inert(client, people, world):
    as_user(client, people.eli)
    url = f"/registry/models/{world.model.slug}/versions/2/card"
    preview = client.post(url, {"card": HOSTILE_CARD, "preview": "1"})
    assert preview.status_code == 200 and ModelVersion.objects.get(pk=world.v2.pk).card == world.v2.card  # not saved
    saved = client.post(url, {"card": HOSTILE_CARD}, follow=True)
    assert saved.redirect_chain == [(world.v2.get_absolute_url(), 302)]
    assert "Card saved. Still to write: Evaluation, Limitations." in saved.content.decode()
    assert ModelVersion.objects.get(pk=world.v2.pk).card == HOSTILE_CARD
    for page in (preview.content.decode(), saved.content.decode()):
        card = re.search(r'<article class="card model-card"[^>]*>(.*?)</article>', page, re.S).group(1)
        assert "<script" not in card and "<img" not in card and "onerror=" not in card.replace("onerror=&quot;", "")
        assert "&lt;script&gt;" in card  # shown as text
        assert 'href="javascript:' not in card and 'href="data:' not in card
        assert '<a href="https://example.com/docs" rel="nofollow noopener noreferrer">fine</a>' in card
        assert not re.search(r"<[a-z]+[^>]*\son[a-z]+=", card)  # no event-handler attribute on any element
    assert AuditEvent.objects.filter(action="model_version.card_edited", actor="eli").exists()


def test_a_card_too_long_is_refused_and_nothing_is_saved(client, people, world):
    as_user(client, people.eli)
    before = counts()
    response = client.post(f"/registry/models/{world.model.slug}/versions/2/card", {"card": "x" * 100_001})
    assert response.status_code == 400 and "at most 100000 characters" in response.content.decode()
    assert ModelVersion.objects.get(pk=world.v2.pk).card == world.v2.card and counts() == before


# --- requesting a promotion ------------------------------------------------------------------------


def test_an_engineer_requests_a_promotion_and_bad_requests_write_nothing(client, people, world, trained, tmp_path):
    v3 = registered(trained, people.eli, tmp_path, model=world.model, name="third")
    as_user(client, people.eli)
    url = f"/registry/models/{world.model.slug}/versions/{v3.number}/promote"
    before = counts()
    for data, message in [({"to_stage": "staging", "reason": ""}, "This field is required"),
                          ({"to_stage": "heaven", "reason": "why not"}, "Select a valid choice"),
                          ({"reason": "why not"}, "This field is required")]:
        response = client.post(url, data)
        assert response.status_code == 400 and message in response.content.decode(), data
        assert "Nothing was requested." in response.content.decode()
    response = client.post(f"/registry/models/{world.model.slug}/versions/2/promote",
                           {"to_stage": "staging", "reason": "again"})
    assert response.status_code == 400 and "already has an open request" in response.content.decode()
    assert counts() == before
    response = client.post(url, {"to_stage": "staging", "reason": "try it on staging"})
    request = PromotionRequest.objects.get(version=v3)
    assert response.status_code == 302 and response["Location"] == request.get_absolute_url()
    assert request.to_stage == "staging" and request.requester == people.eli and request.reason == "try it on staging"


# --- approving and rejecting ---------------------------------------------------------------------


def test_two_approvers_promote_and_the_requester_is_refused_with_the_reason(client, people, world):
    url = world.r2.get_absolute_url()
    as_user(client, people.erin)  # asked for it, and holds the approver role
    page = client.get(url).content.decode()
    assert "You asked for this promotion; someone else must approve it." in page
    assert re.search(r'<fieldset class="bare" disabled>', page)
    response = client.post(f"{url}approve", {"evidence_sha256": world.r2.evidence_sha256, "comment": "mine"})
    assert response.status_code == 403 and "You asked for this promotion" in response.content.decode()
    assert not Approval.objects.filter(request=world.r2).exists()
    assert AuditEvent.objects.filter(action="promotion.denied", actor="erin").exists()

    as_user(client, people.ann)
    page = client.get(url).content.decode()
    assert 'id="approve-refusal"' not in page and f'value="{world.r2.evidence_sha256}"' in page
    response = client.post(f"{url}approve", {"evidence_sha256": world.r2.evidence_sha256, "comment": "compared, fine"})
    assert response.status_code == 302
    assert "Approved (1 of 2)" in client.get(url).content.decode()
    response = client.post(f"{url}approve", {"evidence_sha256": world.r2.evidence_sha256})
    assert response.status_code == 400 and "already approved" in response.content.decode()

    as_user(client, people.abe)
    response = client.post(f"{url}approve", {"evidence_sha256": world.r2.evidence_sha256}, follow=True)
    assert "Approved: Intent Router v2 is production now." in response.content.decode()
    world.v1.refresh_from_db(), world.v2.refresh_from_db()
    assert (world.v1.stage, world.v2.stage) == (Stage.ARCHIVED, Stage.PRODUCTION)


@pytest.mark.parametrize("sha, message", [("", "This field is required"), ("abc", "missing or malformed"),
                                          ("G" * 64, "missing or malformed")])
def test_an_approval_without_the_evidence_hash_is_refused(client, people, world, sha, message):
    as_user(client, people.ann)
    before = counts()
    response = client.post(f"/registry/requests/{world.r2.pk}/approve", {"evidence_sha256": sha})
    assert response.status_code == 400 and message in response.content.decode()
    assert counts() == before


def test_an_approval_on_evidence_the_page_no_longer_shows_is_refused_and_says_so(client, people, world):
    as_user(client, people.ann)
    response = client.post(f"/registry/requests/{world.r2.pk}/approve", {"evidence_sha256": "0" * 64})
    assert response.status_code == 409
    assert "The evidence changed since you opened this page" in response.content.decode()
    assert not Approval.objects.filter(request=world.r2).exists()

    approve(world.r2, people.ann)  # then the card changes under the request: the approval is void
    world.v2.edit_card(people.eli, world.v2.card + "\nOne more note.\n")
    as_user(client, people.abe)
    response = client.post(f"/registry/requests/{world.r2.pk}/approve", {"evidence_sha256": world.r2.evidence_sha256})
    assert response.status_code == 409
    page = page_text(response)
    assert "What changed: card_sha256" in page and "earlier approvals are void" in page
    world.r2.refresh_from_db()
    assert world.r2.valid_approvals().count() == 0 and world.v2.stage == Stage.CANDIDATE
    assert f'value="{world.r2.evidence_sha256}"' in page  # the page now pins the new evidence


def test_a_failed_gate_blocks_until_an_approver_overrides_it_in_red(client, people, world, trained, tmp_path):
    low = registered(trained, people.eli, tmp_path, model=world.model, metrics={"accuracy": 0.1}, name="weak")
    request = low.request_promotion(people.eli, Stage.STAGING, "worth a try")
    assert request.status == PromotionRequest.Status.BLOCKED
    as_user(client, people.ann)
    url = request.get_absolute_url()
    page = client.get(url).content.decode()
    assert 'class="gate-fail"' in page and 'name="override_metrics"' in page
    inbox = client.get("/registry/inbox").content.decode()
    assert f'id="inbox-{request.pk}"' in inbox and "Failed gates" in inbox
    response = client.post(f"{url}approve", {"evidence_sha256": request.evidence_sha256})
    assert response.status_code == 400 and "Failed gates block this request (metrics)" in response.content.decode()
    assert not Approval.objects.filter(request=request).exists()
    response = client.post(f"{url}approve", {"evidence_sha256": request.evidence_sha256,
                                             "override_metrics": "small test split; checked by hand"})
    assert response.status_code == 302
    low.refresh_from_db()
    assert low.stage == Stage.STAGING
    for page in (client.get(url).content.decode(), client.get(low.get_absolute_url()).content.decode()):
        assert re.search(r'class="override"[^>]*>.*?overridden by ann.*?small test split; checked by hand', page, re.S)


def test_rejecting_needs_a_comment(client, people, world):
    as_user(client, people.ann)
    url = f"/registry/requests/{world.r2.pk}/reject"
    before = counts()
    response = client.post(url, {"comment": "  "})
    assert response.status_code == 400 and "rejecting needs a comment" in response.content.decode()
    assert PromotionRequest.objects.get(pk=world.r2.pk).status == PromotionRequest.Status.OPEN and counts() == before
    response = client.post(url, {"comment": "the data is too old"}, follow=True)
    assert "Rejected: Intent Router v2 stays candidate." in response.content.decode()
    request = PromotionRequest.objects.get(pk=world.r2.pk)
    assert request.status == PromotionRequest.Status.REJECTED and request.decision_comment == "the data is too old"
    response = client.post(url, {"comment": "again"})
    assert response.status_code == 400 and "it cannot be rejected" in response.content.decode()


def test_the_request_page_compares_with_production(client, people, world):
    as_user(client, people.ann)
    page = page_text(client.get(world.r2.get_absolute_url()))
    assert "beside production <a" in page and "Candidate v2" in page and "Production v1" in page
    assert re.search(r"<th scope=\"row\">accuracy</th><td>[0-9.]+</td><td>[0-9.]+</td> <td[^>]*>[+-]?0\.0000</td>", page)
    for chart in ("request-metrics", "request-per-class", "request-confusion-candidate", "request-confusion-production",
                  "request-reliability-candidate", "request-reliability-production"):
        assert f'data-chart="{chart}"' in page, chart
    assert "Gates, production v1 when promoted" in page and "Data, production v1" in page


# --- pages come in pages, without a query per row --------------------------------------------------


def test_the_model_list_pages_on_the_server(client, people, monkeypatch):
    monkeypatch.setattr(views, "PAGE_SIZE", 3)
    RegisteredModel.objects.bulk_create(RegisteredModel(name=f"Model {i}", slug=f"model-{i}") for i in range(7))
    as_user(client, people.vic)
    first = client.get("/registry/").content.decode()
    assert first.count('href="/registry/models/model-') == 3 and "Model 6" in first and "Older →" in first
    older = re.search(r'href="\?before=(\d+)"', first).group(1)
    second = client.get(f"/registry/?before={older}").content.decode()
    assert "Model 3" in second and "Model 6" not in second and "← Newer" in second
    response = client.get("/registry/?before=soon")
    assert response.status_code == 400 and "must be a positive whole number" in response.content.decode()


def test_the_inbox_pages_on_the_server_oldest_first(client, people, world, trained, tmp_path, monkeypatch):
    monkeypatch.setattr(views, "INBOX_PAGE_SIZE", 2)
    extra = [registered(trained, people.eli, tmp_path, model=world.model, name=f"extra {i}") for i in range(2)]
    requests = [world.r2] + [v.request_promotion(people.eli, Stage.STAGING, "more") for v in extra]
    as_user(client, people.ann)
    first = client.get("/registry/inbox").content.decode()
    assert [int(i) for i in re.findall(r'id="inbox-(\d+)"', first)] == [r.pk for r in requests[:2]]
    second = client.get("/registry/inbox?page=2").content.decode()
    assert [int(i) for i in re.findall(r'id="inbox-(\d+)"', second)] == [requests[2].pk]
    assert "3 open, oldest first" in first


def test_list_pages_cost_the_same_queries_with_more_rows(client, people, world, trained, tmp_path,
                                                         django_assert_max_num_queries):
    as_user(client, people.ann)
    urls = ["/registry/", "/registry/inbox", world.model.get_absolute_url()]
    before = {}
    for url in urls:
        client.get(url)  # warm the session and role caches
        with django_assert_max_num_queries(100) as captured:
            client.get(url)
        before[url] = len(captured.captured_queries)
    other = make_model(people.eli, "second-model")
    for i in range(3):
        version = registered(trained, people.eli, tmp_path, model=other if i % 2 else world.model, name=f"more {i}")
        version.request_promotion(people.eli, Stage.STAGING, "more")
    for url in urls:
        with django_assert_max_num_queries(before[url]) as captured:
            client.get(url)


def test_the_version_page_audit_events_page_on_the_server(client, people, world, monkeypatch):
    monkeypatch.setattr(views, "AUDIT_PAGE_SIZE", 2)
    as_user(client, people.vic)
    first = client.get(world.v1.get_absolute_url()).content.decode()
    seqs = [int(s) for s in re.findall(r"<tr><td>(\d+)</td><td class=\"nowrap\">", first)]
    assert len(seqs) == 2 and seqs == sorted(seqs, reverse=True)
    older = re.search(r'href="\?before=(\d+)#audit"', first).group(1)
    second = client.get(f"{world.v1.get_absolute_url()}?before={older}").content.decode()
    more = [int(s) for s in re.findall(r"<tr><td>(\d+)</td><td class=\"nowrap\">", second)]
    assert more and max(more) < min(seqs)
    assert client.get(f"{world.v1.get_absolute_url()}?after=-3").status_code == 400


# --- the start page ----------------------------------------------------------------------------------


def test_the_start_page_shows_approvers_what_waits_and_engineers_their_models(client, people, world):
    as_user(client, people.ann)
    page = page_text(client.get("/"))
    assert "Promotions waiting for approval" in page and "1 promotion request waits for a decision." in page
    assert f'href="{world.r2.get_absolute_url()}">#{world.r2.pk} Intent Router v2</a>' in page
    assert 'href="/registry/inbox">Open the approvals inbox</a>' in page
    as_user(client, people.erin)
    page = page_text(client.get("/"))
    assert re.search(r'href="/registry/models/intent-router/">Intent Router</a> <span class="muted">— production v1', page)
    assert "Your open promotion requests" in page
    as_user(client, people.eli)
    assert "Your open promotion requests" not in client.get("/").content.decode()


def test_verify_checks_the_signature_now(client, people, world):
    as_user(client, people.ann)
    before = timezone.now()
    response = client.post(f"/registry/models/{world.model.slug}/versions/1/verify", follow=True)
    assert "Signature checked: signature valid" in response.content.decode()
    assert ModelVersion.objects.get(pk=world.v1.pk).signature_checked_at >= before
