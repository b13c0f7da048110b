"""The monitoring dashboards through the real URLs: who may open which (labelers and strangers
are refused), each page with data and with none ("no answers yet", never a made-up 0), the
numbers each section shows checked against what went in, bad query strings refused, and the
number of queries of every page bounded whatever the amount of data.

The rows the other monitoring parts write (rollups, references, drift checks, SLO states,
alerts, incidents, retrain drafts) are made here directly through the models."""
import html
import io
import re
import uuid
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from django.utils import timezone


from lifecycle.core.artifacts import get_store
from lifecycle.core.models import Job
from lifecycle.datasets.models import Example
from lifecycle.deployments.models import Feedback, PredictionLog, Rollback, Route
from lifecycle.monitoring import dashboards, features
from lifecycle.monitoring.models import SLO, Alert, DriftCheck, Incident, Reference, RetrainDraft, Rollup
from lifecycle.registry.models import StageChange
from lifecycle.runs.models import MetricPoint, Run
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import as_user
from tests.monitoring.factories import make_log

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]

NAME = "support-router"


def page_text(response, start=None):
    """What a reader sees (from the element with id `start` on): inline tags dropped, the
    others a space, entities decoded, white space collapsed."""
    content = response.content.decode()
    if start:
        content = content[content.index(f'id="{start}"'):]
    content = re.sub(r"</?(a|span|strong|code|em)\b[^>]*>", "", content)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", content)))


# --- rows the other parts would write ------------------------------------------------------------


def minute(ago_minutes=0):
    now = timezone.now().replace(second=0, microsecond=0)
    return now - timedelta(minutes=ago_minutes)


def add_rollup(deployment, route, start, *, latencies, errors=0, confidences=(), labels=None, version=None,
               feature_values=None):
    """One Rollup bucket holding these answers, histograms over features.py's bins."""
    release = deployment.current_release
    version = version or (release.stable if route == Route.STABLE else release.candidate)
    return Rollup.objects.create(
        deployment=deployment, release=release, version=version, route=route, start=start,
        requests=len(latencies), errors=errors, latency_sum_ms=float(sum(latencies)),
        latency=features.histogram(latencies, features.LATENCY_EDGES_MS),
        labels=labels or {}, confidence=features.histogram(confidences, features.CONFIDENCE_EDGES) if confidences else [],
        features={name: features.histogram(values, features.FEATURES[name]) for name, values in (feature_values or {}).items()})


def traffic(deployment, minutes=30, per_minute=20):
    """A steady stable route and a slower, failing canary for the last `minutes` minutes."""
    for m in range(1, minutes + 1):
        add_rollup(deployment, Route.STABLE, minute(m), latencies=[8.0 + i % 5 for i in range(per_minute)], errors=1,
                   confidences=[0.9] * per_minute, labels={"billing": per_minute})
        if deployment.current_release.candidate_is_live:
            add_rollup(deployment, Route.CANARY, minute(m), latencies=[40.0 + i for i in range(5)], errors=1,
                       confidences=[0.6] * 5, labels={"billing": 5})


def slo(deployment, name="availability", budget=0.42, firing=True):
    return SLO.objects.create(
        deployment=deployment, name=name, kind=SLO.Kind.AVAILABILITY, target=0.999, evaluated_at=timezone.now(),
        state={"sli": 0.9994, "good": 9994, "total": 10000, "target": 0.999, "budget_total": 10,
               "budget_remaining": budget, "window_days": 30,
               "burn": [{"severity": "page", "long_minutes": 60, "short_minutes": 5, "factor": 14.4,
                         "long_rate": 15.2, "short_rate": 16.0, "firing": firing}]})


def alert(deployment, severity=Alert.Severity.PAGE, title="availability burning 15x", status=Alert.Status.FIRING):
    now = timezone.now()
    return Alert.objects.create(fingerprint=uuid.uuid4().hex, deployment=deployment, model=deployment.model,
                                kind=Alert.Kind.SLO, severity=severity, title=title, status=status,
                                first_fired_at=now, last_fired_at=now)


def reference(version, **fields):
    # The release made a pending reference already (signals.py); this one is ready.
    found, _ = Reference.objects.update_or_create(version=version, defaults=dict(
        status=Reference.Status.READY, rows=200, splits=["validation", "test"], computed_at=timezone.now(), **fields))
    return found


def drift_check(deployment, version, ref, *, drifted=True, estimated=0.81, ago=timedelta(0)):
    check = DriftCheck.objects.create(
        deployment=deployment, version=version, reference=ref, window_start=timezone.now() - timedelta(hours=1),
        window_end=timezone.now(), requests=600, drifted=drifted, drifted_features=2 if drifted else 0,
        estimated_accuracy=estimated)
    DriftCheck.objects.filter(pk=check.pk).update(created_at=timezone.now() - ago)
    return check


@pytest.fixture
def canary(trained, people, tmp_path):
    return make_deployment(trained, people, tmp_path, mode="canary", share=20)


# --- who may open what --------------------------------------------------------------------------

PAGES = {"/monitoring/": {"erin", "ann", "ona", "vic"},
         "/monitoring/executive": {"erin", "ann", "ona", "vic"},
         "/monitoring/on-call": {"erin", "ona"},
         "/monitoring/debug": {"erin", "ona"}}


def test_each_role_opens_its_dashboards_and_labelers_and_strangers_are_refused(client, canary, people):
    pages = {**PAGES, f"/monitoring/debug/{canary.current_release.stable_id}": {"erin", "ona"}}
    for who in ("erin", "ann", "ona", "vic", "lee", "sam"):
        as_user(client, people[who])
        for url, allowed in pages.items():
            response = client.get(url)
            assert response.status_code == (200 if who in allowed else 403), (who, url)
    client.logout()
    assert client.get("/monitoring/").status_code == 302  # to the login page


def test_bad_query_strings_are_refused_with_a_clear_error(client, canary, people):
    as_user(client, people["erin"])
    stable = canary.current_release.stable_id
    for url, message in [("/monitoring/?before=abc", "does not exist"), ("/monitoring/on-call?after=-4", "does not exist"),
                         (f"/monitoring/debug/{stable}?window=week", "week"),
                         (f"/monitoring/debug/{stable}?deployment=elsewhere", "elsewhere has not served this version")]:
        response = client.get(url)
        assert response.status_code == 400, url
        assert message in page_text(response)
    assert client.get("/monitoring/debug/999999").status_code == 404


# --- the overview ---------------------------------------------------------------------------------


def test_the_overview_shows_each_deployments_versions_hour_alerts_budgets_drift_incident_and_draft(
        client, canary, people):
    release = canary.current_release
    traffic(canary, minutes=10)
    alert(canary)
    alert(canary, severity=Alert.Severity.TICKET, title="quality gap")
    alert(canary, title="old", status=Alert.Status.RESOLVED)
    slo(canary, budget=0.42)
    SLO.objects.create(deployment=canary, name="latency", kind=SLO.Kind.LATENCY, target=0.99, threshold_ms=500)
    ref = reference(release.stable)
    drift_check(canary, release.stable, ref, drifted=True)
    Incident.objects.create(model=canary.model, deployment=canary, title="bad answers since 9:00", reason="r",
                            window_start=timezone.now(), window_end=timezone.now(), opened_by=people["ona"])
    RetrainDraft.objects.create(model=canary.model, deployment=canary, reason="drift", source_version=release.stable,
                                base_dataset_version=release.stable.run.dataset_version, status=RetrainDraft.Status.READY)

    response = as_user(client, people["vic"]).get("/monitoring/")
    row = page_text(response, "deployment-support-router")
    assert f"v{release.stable.number} 80 %" in row and f"canary v{release.candidate.number} 20 %" in row
    assert "250 answers" in row and "errors 8.00 %" in row  # 10 × (20 + 5) answers, 20 errors
    assert "1 page" in row and "1 ticket" in row
    assert "availability: 42.0 %" in row and "latency: not evaluated yet" in row
    assert "stable: drift in 2 features" in row and "canary: not checked yet" in row
    assert "bad answers since 9:00" in row and "retrain draft ready" in row
    # On-call and debug are not offered to a viewer.
    raw = response.content.decode()
    assert "/monitoring/on-call#" not in raw and "/monitoring/debug/" not in raw
    assert "/monitoring/on-call#oncall-support-router" in as_user(client, people["ona"]).get("/monitoring/").content.decode()


# --- executive ----------------------------------------------------------------------------------


def test_the_executive_page_shows_age_quality_canary_deltas_retrains_compute_and_rollbacks(
        client, canary, people):
    release = canary.current_release
    stable, candidate = release.stable, release.candidate
    change = StageChange.objects.filter(version=stable, to_stage="production").get()
    StageChange.objects.filter(pk=change.pk).update(changed_at=timezone.now() - timedelta(days=10))
    traffic(canary, minutes=20)
    ref = reference(stable)
    drift_check(canary, stable, ref, estimated=0.8)
    drift_check(canary, stable, ref, estimated=0.9)
    drift_check(canary, candidate, reference(candidate), estimated=0.7)
    feedback_for(canary, right=3, wrong=1)
    run = Run.objects.filter(pk=stable.run_id).get()
    RetrainDraft.objects.create(model=canary.model, deployment=canary, reason="drift", source_version=stable,
                                base_dataset_version=run.dataset_version, status=RetrainDraft.Status.STARTED, run=run)
    now = timezone.now()
    Job.objects.create(task=dashboards.TRAIN_TASK, queue="training", kwargs={"run_id": run.pk}, key="t:1",
                       status=Job.Status.SUCCEEDED, started_at=now - timedelta(hours=3), finished_at=now - timedelta(hours=1))
    Run.objects.filter(pk=run.pk).update(environment={**run.environment, "processes": 2})
    for ms in (800.0, 1200.0, 4000.0):
        Rollback.objects.create(release=release, reason="test", generation=1, clicked_at=now - timedelta(days=3),
                                completed_at=now, time_to_rollback_ms=ms)

    response = as_user(client, people["ann"]).get("/monitoring/executive")
    text = page_text(response)
    versions = page_text(response, "production-versions")
    assert f"v{stable.number}" in versions and "10.0 days" in versions
    delta = page_text(response, "delta-support-router")
    # Stable: 20 errors in 400; canary 20 in 100. Estimates from the drift checks of the hour
    # (no estimate module in this build: the checks' own), feedback per route from the log.
    assert "5.00 %" in delta and "20.00 %" in delta and "+15.00 pt" in delta
    assert "90.00 %" in delta and "70.00 %" in delta and "-20.00 pt" in delta
    assert "75.00 % of 4" in delta
    assert "Median this quarter: 1200 ms over 3 rollbacks" in text
    assert "4.00 process-hours in 12 months" in text  # 2 hours on 2 processes
    figures = dict(response.context["charts"])
    quality = figures["executive-quality"]["data"]
    assert [t["name"] for t in quality] == ["support-router feedback", "support-router estimated"]
    assert quality[0]["y"][-1] == 0.75 and abs(quality[1]["y"][-1] - 0.85) < 1e-9
    retrains = {t["name"]: t["y"] for t in figures["executive-retrains"]["data"]}
    assert retrains["retrain runs"][-1] == 1  # the run was created this month
    assert sum(retrains["promotions to production"]) == 1 and len(retrains["retrain runs"]) == 12
    assert figures["executive-compute"]["data"][0]["y"][-1] == 4.0
    assert [t["y"] for t in figures["executive-rollbacks"]["data"]] == [[800.0, 1200.0, 4000.0], [1200.0, 1200.0]]


def feedback_for(deployment, *, right, wrong, route=Route.STABLE):
    """Answers on `route`, logged and rolled into no bucket, with feedback on each."""
    batch = make_log(deployment, right + wrong, route=route, seed=3)
    rows = list(PredictionLog.objects.filter(batch_id=batch.pk).exclude(status="error"))
    for i, row in enumerate(rows):
        ok = i < right
        Feedback.objects.create(request_id=row.request_id, position=row.position, deployment=deployment,
                                release_id=row.release_id, predicted_label=row.label, correct=ok,
                                label=row.label if ok else "other", is_override=not ok)
    return rows


# --- on-call ------------------------------------------------------------------------------------------


def test_oncall_sees_percentiles_errors_overrides_budgets_alerts_releases_and_the_rollback_button(
        client, canary, people):
    release = canary.current_release
    traffic(canary, minutes=30)
    feedback_for(canary, right=2, wrong=2)
    slo(canary, budget=-0.1)
    fired = alert(canary)
    Rollback.objects.create(release=release, reason="test", generation=1, clicked_at=timezone.now(),
                            completed_at=timezone.now(), time_to_rollback_ms=321.0)

    response = as_user(client, people["ona"]).get("/monitoring/on-call")
    section = page_text(response, "oncall-support-router")
    raw = response.content.decode()
    # Stable: latencies 8..12 ms evenly, the last hour is all 30 minutes: 600 answers, 30 errors.
    # Per minute 8 answers in [5, 10) ms and 12 in [10, 20): the median lies 60/360 into the
    # second bin, p95 330/360 and p99 354/360 into it.
    assert "stable 600 12 ms 19 ms 20 ms 5.00 %" in section
    assert "canary 150" in section and "20.00 %" in section
    # 2 overrides over the 690 answers of the day that did not fail (750 less 60 errors).
    assert "Override rate (24 h): 0.29 % (2 of 690 answers)" in section
    assert "-10.0 % of the budget left" in section and "15.20×" in section and "burning" in section
    assert fired.title in section
    assert f"/deployments/support-router/releases/{release.number}/rollback" in raw
    assert "321 ms" in section and f"Release {release.number}: v{release.stable.number} + canary" in section
    figures = [f for row in response.context["rows"] for f in row["charts"]]
    latency = dict(figures)[f"oncall-latency-{canary.pk}"]
    assert {t["name"] for t in latency["data"]} == {f"{r} {p}" for r in ("stable", "canary") for p in ("p50", "p95", "p99")}
    assert len(latency["data"][0]["x"]) == 72  # six hours of five-minute buckets
    assert "meta" not in latency["layout"]


def test_oncall_without_a_live_candidate_offers_no_rollback_and_says_no_answers_yet(client, trained, people, tmp_path):
    make_deployment(trained, people, tmp_path)
    response = as_user(client, people["erin"]).get("/monitoring/on-call")
    section = page_text(response, "oncall-support-router")
    assert "/rollback" not in response.content.decode() and "Roll back" not in section
    assert "stable no answers yet" in section and "Override rate (24 h): no answers yet" in section
    assert "No SLOs for this deployment." in section


# --- debug ---------------------------------------------------------------------------------------


def sample_reference(version, store):
    """A ready reference whose sample (the Parquet artifact A's job writes) holds a few of the
    run's dataset examples, with embeddings we choose."""
    examples = list(Example.objects.filter(version_id=version.run.dataset_version_id).order_by("row")[:4])
    embeddings = np.eye(4, 16)  # example i points along axis i
    frame = pd.DataFrame({"example_id": [e.pk for e in examples], "split": "test", "text": [e.text for e in examples],
                          "label": [e.label for e in examples],
                          **{f"embedding_{i}": embeddings[:, i] for i in range(16)}})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    sha = store.put_bytes(buffer.getvalue()).sha256
    counts = {name: {"counts": features.histogram(np.full(200, 30.0), edges), "n": 200}
              for name, edges in features.FEATURES.items()}
    return reference(version, sample_sha256=sha, features=counts, labels={"billing": 150, "tech": 50},
                     confidence=features.histogram(np.full(200, 0.85), features.CONFIDENCE_EDGES)), examples


def test_debug_shows_training_evaluation_inputs_against_reference_and_examples_with_their_nearest(
        client, canary, people):
    version = canary.current_release.stable
    MetricPoint.objects.bulk_create([MetricPoint(run_id=version.run_id, kind="train", step=s, values={"loss": 2.0 / s})
                                     for s in range(1, 6)] + [MetricPoint(run_id=version.run_id, kind="eval", step=5,
                                                                          values={"eval_loss": 0.9, "accuracy": 0.8})])
    ref, examples = sample_reference(version, get_store())
    add_rollup(canary, Route.STABLE, minute(5), latencies=[10.0] * 50, confidences=[0.55] * 50, labels={"tech": 50},
               feature_values={"text_length": [60.0] * 50, "token_count": [12.0] * 50, "oov_rate": [0.3] * 50})
    batch = make_log(canary, 30, error_rate=0.2, seed=1)
    rows = list(PredictionLog.objects.filter(batch_id=batch.pk))
    answered = [r for r in rows if r.status == "ok"]
    PredictionLog.objects.filter(pk=answered[0].pk).update(confidence=0.01, embedding=[0.0, 5.0] + [0.0] * 14)
    Feedback.objects.create(request_id=answered[1].request_id, position=0, deployment=canary,
                            release_id=answered[1].release_id, predicted_label=answered[1].label, label="other",
                            correct=False, is_override=True)

    response = as_user(client, people["erin"]).get(f"/monitoring/debug/{version.pk}?window=day")
    text = page_text(response)
    chart_ids = [c for group in ("curve_charts", "evaluation_charts", "feature_charts") for c, _ in response.context[group]]
    assert chart_ids == ["debug-loss", "debug-eval-metrics", "debug-confusion", "debug-reliability",
                         "debug-feature-text_length", "debug-feature-token_count", "debug-feature-oov_rate",
                         "debug-confidence", "debug-labels"]
    feature = dict(response.context["feature_charts"])["debug-feature-text_length"]
    assert [t["name"] for t in feature["data"]] == ["reference", "the last day"]
    sections = {key: items for key, _, items in response.context["sections"]["lists"]}
    failing = [r.pk for r in rows if r.status == "error"]
    assert {i["row"].pk for i in sections["failing"]} == set(failing) and failing
    lowest = sections["low-confidence"][0]
    assert lowest["row"].pk == answered[0].pk
    assert lowest["link"] == f"/deployments/feedback?deployment=support-router&route=stable&before={answered[0].pk + 1}#answer-{answered[0].pk}"
    nearest = lowest["nearest"][0]  # its embedding points along axis 1: the second example
    assert nearest["example_id"] == examples[1].pk and nearest["similarity"] == pytest.approx(1.0)
    version_url = f"/datasets/{examples[1].version.dataset.slug}/v{examples[1].version.number}/"
    assert nearest["link"] == f"{version_url}?after={examples[1].row - 1}#examples"
    assert [i["row"].pk for i in sections["overridden"]] == [answered[1].pk]
    assert examples[1].text[:40] in text  # an engineer sees the training text
    oncall_text = page_text(as_user(client, people["ona"]).get(f"/monitoring/debug/{version.pk}?window=day"))
    assert examples[1].text[:40] not in oncall_text and f"example {examples[1].pk}" in oncall_text


def test_with_no_data_every_page_says_so_and_shows_no_zero(client, canary, people):
    """A canary released a moment ago: nothing answered, nothing checked, nothing evaluated."""
    row = page_text(as_user(client, people["ann"]).get("/monitoring/"), "deployment-support-router")
    assert "no answers yet" in row and "0.00 %" not in row
    assert "no SLOs" in row and "not checked yet" in row

    response = client.get("/monitoring/executive")
    delta = page_text(response, "delta-support-router")
    assert "0.00 %" not in delta and delta.count("—") >= 8
    assert "Median this quarter" not in page_text(response)
    figures = dict(response.context["charts"])
    for chart_id in ("executive-quality", "executive-rollbacks"):
        assert figures[chart_id]["layout"]["meta"] == {"waiting": True}, chart_id

    response = as_user(client, people["ona"]).get(f"/monitoring/debug/{canary.current_release.candidate_id}")
    text = page_text(response)
    assert "Reference being computed" in text and "No answers in the last hour yet" in text
    assert text.count("None in the last hour.") == 3
    for chart_id, figure in response.context["feature_charts"]:
        assert figure["layout"]["meta"] == {"waiting": True}, chart_id


# --- pieces ---------------------------------------------------------------------------------------


def test_percentiles_interpolate_inside_the_bin_and_read_the_open_top_bin_as_its_edge():
    edges = features.LATENCY_EDGES_MS
    counts = features.histogram([15.0] * 50 + [25.0] * 50, edges)  # half in [10, 20), half in [20, 30)
    assert dashboards.percentile(counts, 0.5) == pytest.approx(20.0)
    assert dashboards.percentile(counts, 0.25) == pytest.approx(15.0)
    assert dashboards.percentile(counts, 0.99) == pytest.approx(29.8)
    assert dashboards.percentile(features.histogram([0.5] * 10, edges), 0.5) == pytest.approx(0.5)
    assert dashboards.percentile(features.histogram([60_000.0] * 3, edges), 0.99) == 10_000.0
    assert dashboards.percentile([], 0.5) is None
    # Against numpy on spread data: within one bin's width.
    values = np.random.default_rng(0).lognormal(np.log(40), 0.5, 5000)
    hist = features.histogram(values, edges)
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q))
        i = int(np.searchsorted(edges, exact, side="right"))
        assert edges[i - 1] <= dashboards.percentile(hist, q) <= edges[i], q


# --- queries bounded by the page, never by the data ---------------------------------------------------

# Measured on 2026-12-04 (the session, user and role reads included); the data below adds at
# most a few bounded look-ups (the drift checks' rows, the examples' rows and links).
LIMITS = {"/monitoring/": 12, "/monitoring/executive": 18, "/monitoring/on-call": 14, "/monitoring/debug": 5}


def test_every_dashboard_is_a_handful_of_queries_whatever_the_data(client, canary, people, django_assert_max_num_queries):
    version = canary.current_release.stable
    as_user(client, people["erin"])
    pages = {**LIMITS, f"/monitoring/debug/{version.pk}?window=day": 16}

    def measure():
        for url, limit in pages.items():
            with django_assert_max_num_queries(limit, info=url):
                assert client.get(url).status_code == 200

    measure()  # no data at all
    traffic(canary, minutes=60)
    ref = reference(version)
    for i in range(5):
        drift_check(canary, version, ref, ago=timedelta(days=i))
        alert(canary, title=f"alert {i}")
        slo(canary, name=f"slo {i}")
    feedback_for(canary, right=20, wrong=10)
    make_log(canary, 200, error_rate=0.1, seed=2)
    measure()  # an hour of traffic, checks, alerts, SLOs, feedback and log rows: the same queries
