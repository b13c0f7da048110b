"""SLOs through real rows: SLIs and budgets from Rollup rows and feedback, an outage in the
rollups paging and its recovery clearing the alert, the label-free estimate's SLI, the five
default SLOs, the maintenance step, and the SLO pages (make, change, refuse bad input)."""
import uuid
from datetime import timedelta

import numpy as np
import pytest
import yaml
from django.utils import timezone

from lifecycle.core.models import AuditEvent
from lifecycle.deployments.models import Deployment, Feedback
from lifecycle.monitoring import estimate
from lifecycle.monitoring import slo as slos
from lifecycle.monitoring.features import CONFIDENCE_EDGES, LATENCY_EDGES_MS, histogram
from lifecycle.monitoring.models import SLO, Alert, Reference, Rollup
from lifecycle.registry.models import Stage
from tests.deployments.factories import promote
from tests.registry.factories import registered

NOW = timezone.now().replace(second=0, microsecond=0) + timedelta(seconds=20)


@pytest.fixture
def deployment(trained, people, tmp_path, store_with_output):
    """A deployment serving one production version (the cheapest real one)."""
    version = registered(trained, people["erin"], tmp_path, slug="intent-router", name="lora minilm v1")
    promote(version, Stage.PRODUCTION, people["erin"], people["ann"], people["abe"])
    return Deployment.create(people["erin"], name="support-router", model=version.model, stable=version)


def rollups(deployment, minutes, *, requests=100, errors=0, latency_ms=20.0, slow=0, confidence=0.9, end=NOW,
            route="stable"):
    """One minute Rollup row per minute for the `minutes` minutes before `end` (whole minutes):
    `errors` failed and `slow` answers at 800 ms among `requests`."""
    release = deployment.current_release
    last = end.replace(second=0, microsecond=0)
    rows = []
    for i in range(1, minutes + 1):
        latencies = [latency_ms] * (requests - slow) + [800.0] * slow
        rows.append(Rollup(deployment=deployment, release=release, version_id=release.stable_id, route=route,
                           start=last - timedelta(minutes=i), requests=requests, errors=errors,
                           latency_sum_ms=sum(latencies), latency=histogram(latencies, LATENCY_EDGES_MS),
                           confidence=histogram([confidence] * (requests - errors), CONFIDENCE_EDGES)))
    Rollup.objects.bulk_create(rows)


def make(deployment, user, kind, target, **fields):
    return slos.create(user, deployment, name=f"{kind} {target}", kind=kind, target=target, **fields)


@pytest.mark.django_db
def test_latency_and_availability_slis_and_budgets_from_the_rollups(deployment, people):
    rollups(deployment, 120, requests=100, errors=1, slow=2)
    rollups(deployment, 10, requests=100, route="shadow", errors=100)  # a shadow's answers never count
    latency = make(deployment, people["erin"], SLO.Kind.LATENCY, 0.99, threshold_ms=500)
    available = make(deployment, people["erin"], SLO.Kind.AVAILABILITY, 0.999)
    state = slos.evaluate(latency, NOW)
    assert (state["good"], state["total"]) == (120 * 98, 120 * 100)
    assert state["sli"] == pytest.approx(0.98)
    assert state["budget_total"] == pytest.approx(120.0)  # 1 % of 12,000 answers may be slow
    assert state["budget_remaining"] == pytest.approx(-1.0)  # 240 were: twice the budget
    latency.refresh_from_db()
    assert latency.state == state and latency.evaluated_at == NOW and slos.budget_exhausted(latency)
    state = slos.evaluate(available, NOW)
    assert state["sli"] == pytest.approx(0.99) and state["budget_remaining"] == pytest.approx(1 - 120 / 12)
    # 1 % errors on a 99.9 % SLO burn 10x: the 6x page (6 h with 30 min) fires, the 14.4x one not.
    assert [b["firing"] for b in state["burn"]] == [False, True, True, True]
    assert state["burn"][0]["long_rate"] == pytest.approx(10.0)
    alert = Alert.objects.get(slo=available, severity="page")
    assert alert.status == "firing" and alert.kind == "slo"
    assert alert.evidence["window"] == {"long_minutes": 360, "short_minutes": 30,
                                        "start": (NOW.replace(second=0) - timedelta(hours=6)).isoformat(),
                                        "end": NOW.replace(second=0).isoformat()}
    assert alert.evidence["link"] == available.get_absolute_url() == f"/monitoring/slos/{available.pk}"
    assert alert.evidence["long_rate"] == pytest.approx(10.0) and alert.evidence["factor"] == 6.0
    assert Alert.objects.filter(slo=available, severity="ticket", status="firing").count() == 1


@pytest.mark.django_db
def test_an_outage_in_the_rollups_pages_and_the_recovery_clears_it(deployment, people):
    available = make(deployment, people["erin"], SLO.Kind.AVAILABILITY, 0.999)
    rollups(deployment, 90, end=NOW - timedelta(minutes=2))
    rollups(deployment, 2, errors=100)  # the last two minutes: every request failed
    state = slos.evaluate(available, NOW)
    assert state["burn"][0]["firing"] and state["burn"][0]["short_rate"] == pytest.approx(400.0)
    page = Alert.objects.get(slo=available, severity="page")
    assert page.status == "firing" and "400.0×" in page.title
    assert AuditEvent.objects.filter(action="alert.fired", object_id=str(page.pk)).count() == 1
    later = NOW + timedelta(minutes=31)
    rollups(deployment, 31, end=later)  # fine again
    slos.evaluate(available, later)
    page.refresh_from_db()
    assert (page.status, page.resolve_reason, page.resolved_by) == ("resolved", "condition cleared", None)
    assert AuditEvent.objects.filter(action="alert.resolved", object_id=str(page.pk)).count() == 1


@pytest.mark.django_db
def test_feedback_accuracy_and_override_slis(deployment, people):
    rollups(deployment, 60, requests=50)
    for i in range(20):  # 15 right, 5 overridden
        Feedback.objects.create(request_id=uuid.uuid4(), deployment=deployment, predicted_label="billing",
                                label="billing" if i < 15 else "tech", correct=i < 15, is_override=i >= 15)
    accuracy = make(deployment, people["erin"], SLO.Kind.FEEDBACK_ACCURACY, 0.9)
    overrides = make(deployment, people["erin"], SLO.Kind.OVERRIDE_RATE, 0.95)
    now = timezone.now() + timedelta(minutes=1)
    state = slos.evaluate(accuracy, now)
    assert (state["good"], state["total"], state["sli"]) == (15, 20, 0.75)
    state = slos.evaluate(overrides, now)
    assert (state["good"], state["total"]) == (3000 - 5, 3000)
    assert slos.evaluate(accuracy, now + timedelta(days=31))["note"] == "not checked: no feedback in the window"


@pytest.mark.django_db
def test_estimated_accuracy_reads_the_reference_and_says_when_there_is_none(deployment, people):
    rollups(deployment, 30, requests=40, confidence=0.85)
    estimated = make(deployment, people["erin"], SLO.Kind.ESTIMATED_ACCURACY, 0.9)
    state = slos.evaluate(estimated, NOW)
    assert state["sli"] is None and state["budget_remaining"] is None
    assert state["note"].startswith("not checked: no answers from a version with a ready reference")
    version = deployment.current_release.stable
    rng = np.random.default_rng(0)
    calibration = estimate.fit(np.full(200, 0.85), rng.random(200) < 0.8)  # as calibration_for fits one
    reference, _ = Reference.objects.update_or_create(version=version, defaults=dict(
        status=Reference.Status.READY, rows=200, accuracy=0.86, confidence=histogram([0.85] * 200, CONFIDENCE_EDGES),
        calibration=calibration))
    state = slos.evaluate(estimated, NOW)
    counts = histogram([0.85] * 1200, CONFIDENCE_EDGES)
    assert state["total"] == 1200
    assert state["good"] == pytest.approx(slos._expected_correct(reference, counts), rel=1e-6)
    assert 0 < state["sli"] < 1 and state["note"] == ""


@pytest.mark.django_db
def test_default_slos_and_the_maintenance_step(deployment, people, settings):
    made = slos.default_slos(people["erin"], deployment)
    assert sorted((s.kind, s.target, s.threshold_ms) for s in made) == [
        ("availability", 0.999, None), ("estimated_accuracy", 0.9, None), ("feedback_accuracy", 0.9, None),
        ("latency", 0.99, 500.0), ("override_rate", 0.95, None)]
    assert all(s.window_days == 30 and s.burn_windows == SLO._meta.get_field("burn_windows").default() for s in made)
    assert AuditEvent.objects.filter(action="slo.created").count() == 5
    assert slos.default_slos(people["erin"], deployment) == []  # it has them
    rollups(deployment, 10)
    assert slos.evaluate_due() == 5
    assert slos.evaluate_due() == 0  # evaluated less than MONITORING_SLO_EVERY_SECONDS ago
    SLO.objects.filter(pk=made[0].pk).update(evaluated_at=timezone.now() - timedelta(seconds=61))
    assert slos.evaluate_due() == 1
    assert SLO.objects.get(name="Availability").state["sli"] == 1.0


# --- pages ------------------------------------------------------------------------------------------


def _form(**changes):
    data = {"name": "Latency under 300 ms", "kind": "latency", "target_percent": "99.5", "threshold_ms": "300",
            "window_days": "28", "burn_windows": "page 60 5 14.4\nticket 1440 120 3"}
    return {**data, **changes}


@pytest.mark.django_db
def test_an_engineer_makes_and_changes_an_slo_on_its_pages(client, deployment, people):
    client.force_login(people["ona"])
    url = f"/monitoring/deployments/{deployment.name}/slos"
    response = client.post(url, _form())
    made = SLO.objects.get()
    assert response.status_code == 302 and response["Location"] == made.get_absolute_url()
    assert (made.target, made.threshold_ms, made.window_days) == (0.995, 300.0, 28)
    assert made.burn_windows == [{"severity": "page", "long_minutes": 60, "short_minutes": 5, "factor": 14.4},
                                 {"severity": "ticket", "long_minutes": 1440, "short_minutes": 120, "factor": 3.0}]
    rollups(deployment, 60, slow=1)
    slos.evaluate(made)
    page = client.get(made.get_absolute_url())
    text = page.content.decode()
    assert page.status_code == 200 and "99 %" in text and "slo-sli" in text and "slo-burn" in text
    assert "exhausted" not in text or made.state["budget_remaining"] <= 0
    response = client.post(made.get_absolute_url(), {**_form(target_percent="99.9", enabled="on"),
                                                     "name": "Fast answers"})
    assert response.status_code == 302
    made.refresh_from_db()
    assert (made.name, made.target) == ("Fast answers", 0.999)
    event = AuditEvent.objects.get(action="slo.changed")
    assert event.actor == "ona" and event.payload["before"]["target"] == 0.995
    listing = client.get(url).content.decode()
    assert "Fast answers" in listing and "99.9 %" in listing
    rules = client.get(f"/monitoring/prometheus-rules.yaml?deployment={deployment.name}")
    assert rules.status_code == 200 and rules["Content-Type"].startswith("application/yaml")
    assert "attachment" in rules["Content-Disposition"]
    # 300 ms is no bucket edge of the serving histogram: named and skipped, not a wrong rule.
    assert yaml.safe_load(rules.content)["groups"] == [] and b"Fast answers: 300 ms is not a bucket edge" in rules.content
    assert client.get("/monitoring/prometheus-rules.yaml?deployment=nowhere").status_code == 404


BAD = [
    ({"threshold_ms": "300.5"}, "300.5 ms is not an edge of the latency histogram"),
    ({"threshold_ms": ""}, "A latency SLO needs a threshold"),
    ({"target_percent": "100"}, "The target is a percentage of good events"),
    ({"kind": "vibes"}, "Select a valid choice"),
    ({"burn_windows": "page 5 60 14.4"}, "short span is shorter than its long one"),
    ({"burn_windows": "pager 60 5 14.4"}, "the severity is page or ticket"),
    ({"burn_windows": "page sixty 5 14.4"}, "is not “severity long-minutes short-minutes factor”"),
    ({"window_days": "0"}, "greater than or equal to 1"),
]


@pytest.mark.django_db
def test_a_bad_slo_is_refused_with_the_reason_and_nothing_is_written(client, deployment, people):
    client.force_login(people["erin"])
    for change, message in BAD:  # one deployment for every case: it is the slow part
        response = client.post(f"/monitoring/deployments/{deployment.name}/slos", _form(**change))
        assert response.status_code == 400, change
        assert message in response.content.decode(), change
        assert not SLO.objects.exists() and not AuditEvent.objects.filter(action__startswith="slo.").exists()


@pytest.mark.django_db
def test_readers_read_slos_strangers_are_refused_and_only_actors_change_them(client, deployment, people):
    made = make(deployment, people["erin"], SLO.Kind.AVAILABILITY, 0.999)
    client.force_login(people["vic"])
    assert client.get(made.get_absolute_url()).status_code == 200
    assert client.post(f"/monitoring/deployments/{deployment.name}/slos", _form()).status_code == 403
    assert client.post(made.get_absolute_url(), _form(target_percent="50")).status_code == 403
    for who in ("sam", "lee"):
        client.force_login(people[who])
        for url in (made.get_absolute_url(), f"/monitoring/deployments/{deployment.name}/slos",
                    "/monitoring/prometheus-rules.yaml"):
            assert client.get(url).status_code == 403, (who, url)
    made.refresh_from_db()
    assert made.target == 0.999 and SLO.objects.count() == 1
