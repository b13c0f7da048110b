"""The deployment pages through the real URLs: who may read and do what, every bad input
answered with a clear error and nothing written, a release started, its share changed, its
promotion asked for, and the rollback's confirm step with its measured time."""
import pytest
from django.test import Client, override_settings
from django.utils import timezone

from lifecycle.core.models import AuditEvent
from lifecycle.deployments import views
from lifecycle.deployments.models import Deployment, Release, Rollback, ServingProcess
from lifecycle.registry.models import PromotionRequest, Stage
from tests.deployments.factories import make_deployment, promote, two_versions
from tests.deployments.page_helpers import as_user, page_text
from tests.registry.factories import registered

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]

NAME = "support-router"
READERS = {"erin", "ann", "ona", "vic"}
ROLLERS = {"erin", "ona"}
ENGINEERS = {"erin"}
REVIEWERS = {"erin", "ona", "lee"}


@pytest.fixture
def canary(trained, people, tmp_path):
    return make_deployment(trained, people, tmp_path, mode="canary", share=10)


def counts():
    return (Deployment.objects.count(), Release.objects.count(), Rollback.objects.count(), AuditEvent.objects.count())


# --- who may open what --------------------------------------------------------------------------

PAGES = [
    ("/deployments/", READERS),
    (f"/deployments/{NAME}/", READERS),
    (f"/deployments/{NAME}/releases/2/shadow", READERS),
    (f"/deployments/{NAME}/releases/2/rollback", ROLLERS),
    ("/deployments/new", ENGINEERS),
    ("/deployments/tokens", ENGINEERS),
    ("/deployments/feedback", REVIEWERS),
    ("/api/v1/deployments", READERS),
    (f"/api/v1/deployments/{NAME}", READERS),
    (f"/api/v1/deployments/{NAME}/metrics", READERS),
]


@pytest.mark.parametrize("who", ["erin", "ann", "ona", "vic", "lee", "sam"])
def test_each_role_opens_its_pages_and_is_refused_the_others(client, canary, people, who):
    as_user(client, people[who])
    for url, allowed in PAGES:
        status = client.get(url).status_code
        assert status == (200 if who in allowed else 403), (who, url, status)


@pytest.mark.parametrize("url", [
    "/deployments/nowhere/", "/deployments/nowhere/releases/1/shadow", "/deployments/nowhere/releases/1/rollback",
    f"/deployments/{NAME}/releases/9/shadow", f"/deployments/{NAME}/releases/9/rollback",
    "/api/v1/deployments/nowhere", "/api/v1/deployments/nowhere/metrics", f"/api/v1/deployments/{NAME}/rollbacks/99",
])
def test_an_unknown_deployment_release_or_rollback_is_not_found(client, canary, people, url):
    as_user(client, people["ona"])
    response = client.get(url)
    assert response.status_code == 404
    if url.startswith("/api/"):
        assert response.json()["error"] == "not_found"


def test_a_stranger_cannot_act_and_nothing_changes(client, canary, people):
    before = counts()
    release = canary.current_release
    for who in ("sam", "lee", "vic", "ann"):
        as_user(client, people[who])
        assert client.post(f"/deployments/{NAME}/releases/2/rollback", {"reason": "x"}).status_code == 403
        assert client.post(f"/deployments/{NAME}/releases/2/share", {"share": 50}).status_code == 403
        assert client.post(f"/deployments/{NAME}/releases/2/promote", {"reason": "x"}).status_code == 403
        assert client.post(f"/api/v1/deployments/{NAME}/rollback", {"reason": "x"},
                           content_type="application/json").status_code == 403
    release.refresh_from_db()
    assert counts() == before and release.share == 10.0 and release.status == Release.Status.ACTIVE


# --- the list ---------------------------------------------------------------------------------


def test_the_list_shows_what_each_deployment_serves_page_by_page(client, canary, people, monkeypatch):
    model, stable = canary.model, canary.current_release.stable
    for name in ("billing", "returns"):
        Deployment.create(people["erin"], name=name, model=model, stable=stable, environment="staging")
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    as_user(client, people["vic"])
    first = client.get("/deployments/")
    text = page_text(first)
    assert [d.name for d in first.context["page"].items] == ["returns", "billing"]
    assert "staging" in text and first.context["page"].older is not None
    second = client.get(f"/deployments/?before={first.context['page'].older}")
    row = page_text(second)
    assert [d.name for d in second.context["page"].items] == [NAME]
    assert f"v{stable.number}" in row and "90 %" in row and "canary" in row and "10 %" in row and "pending" in row
    assert client.get("/deployments/?before=x").status_code == 400


# --- a new deployment ---------------------------------------------------------------------------


@pytest.fixture
def versions(trained, people, tmp_path):
    """v1 production, v2 staging of intent-router; v1 of another model in staging; a candidate-stage v3."""
    stable, candidate = two_versions(trained, people, tmp_path)
    other = promote(registered(trained, people["erin"], tmp_path, slug="other-router", name="other"), Stage.STAGING,
                    people["erin"], people["ann"])
    fresh = registered(trained, people["erin"], tmp_path, name="not promoted")
    return {"stable": stable, "candidate": candidate, "other": other, "fresh": fresh}


def test_an_engineer_creates_a_deployment_of_a_servable_version(client, versions, people):
    as_user(client, people["erin"])
    page = client.get("/deployments/new")
    offered = {v.pk for v in page.context["form"].fields["stable"].queryset}
    assert offered == {versions["stable"].pk, versions["candidate"].pk, versions["other"].pk}
    response = client.post("/deployments/new", {"name": "tickets", "environment": "production", "description": "d",
                                                "model": "intent-router", "stable": versions["stable"].pk})
    deployment = Deployment.objects.get(name="tickets")
    assert response.status_code == 302 and response["Location"] == "/deployments/tickets/"
    assert deployment.current_release.stable == versions["stable"] and deployment.current_release.stable_share == 100.0
    assert AuditEvent.objects.filter(action="deployment.created").count() == 1
    assert "tickets serves" in page_text(client.get("/deployments/tickets/"))


@pytest.mark.parametrize("change, message", [
    ({"stable": "999999"}, "Choose a staging or production version with a valid signature"),
    ({"stable": "fresh"}, "Choose a staging or production version with a valid signature"),
    ({"stable": "other"}, "is a version of Other Router, not of Intent Router"),
    ({"name": "Not A Name"}, "Use lower-case letters, digits and hyphens"),
    ({"name": "tokens"}, "is the address of one of this section's pages"),
    ({"name": ""}, "This field is required"),
    ({"model": "no-such-model"}, "Select a valid choice"),
])
def test_a_bad_deployment_is_refused_with_a_clear_error_and_nothing_written(client, versions, people, change, message):
    as_user(client, people["erin"])
    data = {"name": "tickets", "environment": "production", "model": "intent-router", "stable": versions["stable"].pk}
    data.update({k: (versions[v].pk if v in versions else v) for k, v in change.items()})
    before = counts()
    response = client.post("/deployments/new", data)
    assert response.status_code == 400 and message in page_text(response)
    assert counts() == before


def test_a_taken_name_is_refused(client, canary, people):
    as_user(client, people["erin"])
    before = counts()
    response = client.post("/deployments/new", {"name": NAME, "environment": "production", "model": "intent-router",
                                                "stable": canary.current_release.stable_id})
    assert response.status_code == 400 and f"A deployment named {NAME} exists already" in page_text(response)
    assert counts() == before


# --- releases: start, share, promote -----------------------------------------------------------


@pytest.fixture
def stable_only(trained, people, tmp_path):
    return make_deployment(trained, people, tmp_path)


def test_an_engineer_starts_a_canary_then_changes_its_share(client, stable_only, people):
    candidate = stable_only.model.versions.get(stage=Stage.STAGING)
    as_user(client, people["erin"])
    page = client.get(f"/deployments/{NAME}/")
    assert set(page.context["release_form"].fields["candidate"].queryset) == {candidate}
    response = client.post(f"/deployments/{NAME}/releases/new",
                           {"candidate": candidate.pk, "mode": "canary", "share": "5", "reason": "try it"})
    assert response.status_code == 302
    release = Deployment.objects.get(name=NAME).current_release
    assert (release.number, release.candidate, release.mode, release.share) == (2, candidate, "canary", 5.0)
    response = client.post(f"/deployments/{NAME}/releases/2/share", {"share": "25", "reason": "looks fine"})
    release.refresh_from_db()
    assert response.status_code == 302 and release.share == 25.0
    text = page_text(client.get(f"/deployments/{NAME}/"))
    assert "75 %" in text and "25 %" in text and "share went from 5 % to 25 %" in text


def test_a_shadow_release_shows_its_shadow_page_link(client, stable_only, people):
    candidate = stable_only.model.versions.get(stage=Stage.STAGING)
    as_user(client, people["erin"])
    client.post(f"/deployments/{NAME}/releases/new", {"candidate": candidate.pk, "mode": "shadow", "share": "40"})
    release = Deployment.objects.get(name=NAME).current_release
    assert release.mode == "shadow" and release.share == 0.0 and release.stable_share == 100.0
    assert f"/deployments/{NAME}/releases/2/shadow" in page_text(client.get(f"/deployments/{NAME}/"))


@pytest.mark.parametrize("data, message", [
    ({"share": "150"}, "The canary's share is a number of percent, 0 to 100."),
    ({"share": "-1"}, "The canary's share is a number of percent, 0 to 100."),
    ({"share": "lots"}, "The canary's share is a number of percent, 0 to 100."),
    ({"share": ""}, "The canary's share is a number of percent, 0 to 100."),
    ({"candidate": "999999"}, "staging or production versions with a valid signature (not the stable one)"),
    ({"candidate": "stable"}, "staging or production versions with a valid signature (not the stable one)"),
    ({"candidate": "other"}, "staging or production versions with a valid signature (not the stable one)"),
    ({"mode": "blue-green"}, "Select a valid choice"),
])
def test_a_bad_release_is_refused_and_nothing_written(client, trained, people, tmp_path, data, message):
    deployment = make_deployment(trained, people, tmp_path)
    other = promote(registered(trained, people["erin"], tmp_path, slug="other-router", name="other"), Stage.STAGING,
                    people["erin"], people["ann"])
    ids = {"stable": deployment.current_release.stable_id, "other": other.pk}
    candidate = deployment.model.versions.get(stage=Stage.STAGING)
    form = {"candidate": candidate.pk, "mode": "canary", "share": "10", **{k: ids.get(v, v) for k, v in data.items()}}
    as_user(client, people["erin"])
    before = counts()
    response = client.post(f"/deployments/{NAME}/releases/new", form)
    assert response.status_code == 400 and message in page_text(response)
    assert counts() == before


@pytest.mark.parametrize("share, message", [("150", "0 to 100"), ("100", "reaches 100 % by promotion"), ("", "0 to 100")])
def test_a_bad_share_is_refused_and_the_share_stays(client, canary, people, share, message):
    as_user(client, people["erin"])
    response = client.post(f"/deployments/{NAME}/releases/2/share", {"share": share})
    assert response.status_code == 400 and message in page_text(response)
    assert Release.objects.get(deployment=canary, number=2).share == 10.0


def test_promoting_a_canary_asks_the_registry_and_waits_for_approvals(client, canary, people):
    as_user(client, people["erin"])
    response = client.post(f"/deployments/{NAME}/releases/2/promote", {"reason": ""})
    assert response.status_code == 400 and "This field is required" in page_text(response)
    assert not PromotionRequest.objects.filter(to_stage=Stage.PRODUCTION, status="open").exists()
    response = client.post(f"/deployments/{NAME}/releases/2/promote", {"reason": "canary is healthy"})
    request = PromotionRequest.objects.get(version=canary.current_release.candidate, to_stage=Stage.PRODUCTION)
    assert response.status_code == 302 and Release.objects.get(pk=canary.current_release_id).status == "promoting"
    text = page_text(client.get(f"/deployments/{NAME}/"))
    assert f'href="/registry/requests/{request.pk}/"' in text and "waiting for approvals</strong> (0 of 2)" in text
    assert "promote-form" not in text  # one request at a time
    again = client.post(f"/deployments/{NAME}/releases/2/promote", {"reason": "again"})
    assert again.status_code == 400 and "already being promoted" in page_text(again)


# --- rollback ----------------------------------------------------------------------------------


def test_oncall_confirms_a_rollback_with_a_reason_and_sees_stable_at_100_with_its_time(
        client, canary, people, django_capture_on_commit_callbacks):
    as_user(client, people["ona"])
    page = page_text(client.get(f"/deployments/{NAME}/"))
    assert f'href="/deployments/{NAME}/releases/2/rollback"' in page and "90 %" in page
    confirm = client.get(f"/deployments/{NAME}/releases/2/rollback")
    assert "No serving process is live, so the rollback completes at once" in page_text(confirm)
    before = counts()
    missing = client.post(f"/deployments/{NAME}/releases/2/rollback", {"reason": "  "})
    assert missing.status_code == 400 and "Say why you roll back" in page_text(missing) and counts() == before
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/deployments/{NAME}/releases/2/rollback", {"reason": "p99 doubled"})
    rollback = Rollback.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/deployments/{NAME}/#rollback-{rollback.pk}"
    assert rollback.completed_at is not None and rollback.actor == people["ona"] and rollback.reason == "p99 doubled"
    deployment = Deployment.objects.get(name=NAME)
    assert deployment.routes()["candidate"] is None and deployment.current_release.stable_share == 100.0
    response = client.get(f"/deployments/{NAME}/")
    text = page_text(response)
    assert '<span id="stable-share">100 %</span>' in text
    assert f"time to rollback <span id=\"time-to-rollback\">{rollback.time_to_rollback_ms:.0f} ms</span>" in text
    assert 'id="rollback-button"' not in text and response.context["latest_rollback"] == rollback
    again = client.post(f"/deployments/{NAME}/releases/2/rollback", {"reason": "again"})
    assert again.status_code == 400 and "nothing to roll back" in page_text(again)
    assert Rollback.objects.count() == 1


def test_a_rollback_needs_the_csrf_token(canary, people):
    client = Client(enforce_csrf_checks=True)
    as_user(client, people["ona"])
    assert client.post(f"/deployments/{NAME}/releases/2/rollback", {"reason": "forged"}).status_code == 403
    assert not Rollback.objects.exists()


def test_rolling_back_a_release_that_is_no_longer_current_is_refused(client, canary, people):
    as_user(client, people["ona"])
    canary.current_release.rollback(people["erin"], "first")
    response = client.post(f"/deployments/{NAME}/releases/1/rollback", {"reason": "old page"})
    assert response.status_code == 400 and "no longer the current release" in page_text(response)
    assert Rollback.objects.count() == 1


def test_a_rollback_waiting_for_a_serving_process_says_so(client, canary, people):
    ServingProcess.beat("host:1:a", host="host", pid=1, port=8100, started_at=timezone.now(), loaded=[], notices_ok=True)
    as_user(client, people["ona"])
    assert "1 serving process is live" in page_text(client.get(f"/deployments/{NAME}/releases/2/rollback"))
    client.post(f"/deployments/{NAME}/releases/2/rollback", {"reason": "errors"})
    text = page_text(client.get(f"/deployments/{NAME}/"))
    assert "Waiting for the serving processes to apply it (1 live)" in text and 'data-completed="no"' in text
    assert "host:1:a" in text and "not yet" in text


# --- serving processes and Redis -------------------------------------------------------------------


def test_the_page_lists_serving_processes_and_what_they_applied(client, canary, people):
    now = timezone.now()
    ServingProcess.beat("a:1:x", host="a", pid=1, port=8100, started_at=now, loaded=[{"version": 7}], notices_ok=True)
    ServingProcess.beat("b:2:x", host="b", pid=2, port=8100, started_at=now, loaded=[], notices_ok=False)
    ServingProcess.applied("a:1:x", canary.pk, canary.generation, now)
    as_user(client, people["vic"])
    response = client.get(f"/deployments/{NAME}/")
    rows = {p["process"].pk: p for p in response.context["processes"]}
    assert rows["a:1:x"]["live"] and rows["a:1:x"]["current"] and not rows["b:2:x"]["current"]
    text = page_text(response)
    assert f"generation {canary.generation}" in text and "delayed: re-reads every" in text


def test_with_redis_down_the_page_says_routing_notices_are_delayed(client, canary, people):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user(client, people["ona"])
    assert "Routing notices are delayed" not in page_text(client.get(f"/deployments/{NAME}/"))
    dead = {name: {"URL": f"redis://127.0.0.1:{port}/0"} for name in ("default", "monitoring", "training")}
    with override_settings(RQ_QUEUES=dead):
        text = page_text(client.get(f"/deployments/{NAME}/"))
    assert "Routing notices are delayed" in text and "next re-read of the routes" in text


# --- the page's cost ---------------------------------------------------------------------------------


def test_the_deployment_page_costs_a_bounded_number_of_queries(client, canary, people, django_assert_max_num_queries):
    release = canary.current_release
    release.rollback(people["ona"], "one")
    candidate = release.candidate
    for n in range(6):
        deployment = Deployment.objects.get(pk=canary.pk)
        new = deployment.start_release(people["erin"], candidate=candidate, mode="canary", share=5, reason=f"try {n}")
        new.rollback(people["ona"], f"again {n}")
    for n in range(5):
        ServingProcess.beat(f"p{n}", host="h", pid=n, port=1, started_at=timezone.now(), loaded=[], notices_ok=True)
    as_user(client, people["erin"])
    with django_assert_max_num_queries(40):
        assert client.get(f"/deployments/{NAME}/").status_code == 200


# --- the start page ------------------------------------------------------------------------------


def test_the_start_page_tells_oncall_and_engineers_what_serves(client, canary, people):
    for who in ("ona", "erin"):
        as_user(client, people[who])
        text = page_text(client.get("/"))
        assert 'id="home-deployments"' in text and f'href="/deployments/{NAME}/">{NAME}</a>' in text
        assert "production: v1 90 %, v2 10 % (verdict pending)" in text
    as_user(client, people["vic"])
    assert 'id="home-deployments"' not in page_text(client.get("/"))


def test_a_labeler_finds_the_answers_to_review_from_the_start_page(client, canary, people):
    as_user(client, people["lee"])
    text = page_text(client.get("/"))
    assert 'id="home-review"' in text and 'href="/deployments/feedback"' in text and 'id="home-deployments"' not in text


# --- the verdict's numbers -----------------------------------------------------------------------

SEQUENTIAL_NUMBERS = {  # the shape verdicts.evaluate stores (a sequential verdict)
    "method": "sequential", "decision": "pending", "evaluated_at": "2026-01-01T10:00:00+00:00", "alpha_per_rule": 0.0167,
    "rules": {"alpha": 0.05, "min_requests": 200}, "routes": {"stable": "stable", "candidate": "canary"},
    "sides": {"stable": {"requests": 900, "errors": 9, "slow": 3, "error_rate": 0.01, "slow_rate": 0.0033, "p99_ms": 41.0},
              "candidate": {"requests": 100, "errors": 4, "slow": 2, "error_rate": 0.04, "slow_rate": 0.02, "p99_ms": 77.5}},
    "results": {"error_rate": {
        "title": "error rate", "decision": "pending", "fail_margin": 0.02, "pass_margin": 0.01, "alpha": 0.0167,
        "candidate": {"n": 100, "k": 4, "rate": 0.04, "low": 0.01, "high": 0.11},
        "stable": {"n": 900, "k": 9, "rate": 0.01, "low": 0.004, "high": 0.02},
        "worse_by": {"estimate": 0.03, "low": -0.01, "high": 0.106}}},
}
THRESHOLD_NUMBERS = {
    "method": "threshold", "decision": "pending", "checks": {"passed": 3, "failed": 1, "skipped": 2},
    "intervals": [{"start": "2026-01-01T10:01:00+00:00", "requests": 60, "errors": 2, "slow": 0, "outcome": "failed",
                   "why": "success rate 96.7% < 99.0%"}],
}


def test_the_verdicts_numbers_are_shown_per_side_and_rule(client, canary, people):
    release = canary.current_release
    Release.objects.filter(pk=release.pk).update(verdict_numbers=SEQUENTIAL_NUMBERS,
                                                 verdict_reason="Not decided yet: error rate.")
    as_user(client, people["vic"])
    text = page_text(client.get(f"/deployments/{NAME}/"))
    assert "Not decided yet: error rate." in text
    assert '<th scope="row">candidate</th><td>100</td><td>4</td><td>4.00 %</td><td>2</td><td>2.00 %</td><td>77.5</td>' in text
    assert "4.00 % [1.00 %, 11.00 %] of 100" in text and "3.00 % [-1.00 %, 10.60 %]" in text
    assert "fails above 2.00 %, passes below 1.00 %" in text and "alpha_per_rule" in text
    Release.objects.filter(pk=release.pk).update(verdict_numbers=THRESHOLD_NUMBERS)
    text = page_text(client.get(f"/deployments/{NAME}/"))
    assert "Interval checks: 3 passed, 1 failed, 2 skipped" in text
    assert "<td>10:01</td><td>60</td><td>2</td><td>0</td><td>failed: success rate 96.7% < 99.0%</td>" in text
