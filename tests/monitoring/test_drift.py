"""Drift checks end to end: a Reference and Rollup rows as the reference job and the rollups
would have written them (drawn from one seeded synthetic model), then drift.check() — drift
found on a shifted window and not on a same-distribution one, skipped with its reason when it
cannot run, the false-alarm rate over many same-distribution windows, the schedule and the jobs
run by a real burst worker."""
import io
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from django.utils import timezone

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import AuditEvent, Job
from lifecycle.deployments.models import Feedback, PredictionLog
from lifecycle.monitoring import drift, features
from lifecycle.monitoring.models import DriftCheck, Reference, Rollup
from tests.deployments.factories import make_deployment
from tests.monitoring.factories import WORDS
from tests.workers import run_burst

LABELS = ("billing", "refund", "tech")
EMBEDDINGS = [f"embedding_{i}" for i in range(features.EMBEDDING_SIZE)]


# --- a synthetic model: inputs, answers and how often they are right ------------------------------


def right_chance(confidence):
    """The synthetic model is over-confident in a known way: right with probability c**1.5."""
    return np.asarray(confidence) ** 1.5


def draw(rng, n, shift=0.0, text=True):
    """n answered inputs as a frame; `shift` moves every feature and the label mix."""
    length = np.round(rng.lognormal(np.log(60) + 0.4 * shift, 0.5, n))
    label_p = np.array([0.5, 0.3, 0.2]) * (1 - shift) + np.array([0.2, 0.3, 0.5]) * shift
    confidence = np.clip(rng.beta(8, 2, n) - 0.1 * shift, 0.01, 0.999)
    frame = pd.DataFrame({
        "text": [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))) for _ in range(n)] if text else "",
        "text_length": length, "token_count": np.round(length / 5 + rng.normal(0, 1, n)).clip(1),
        "oov_rate": np.clip(rng.beta(1, 20, n) + 0.05 * shift, 0, 1),
        "predicted": rng.choice(LABELS, size=n, p=label_p / label_p.sum()), "confidence": confidence,
        **{name: np.round(rng.normal(0.5 * shift, 1, n), 4) for name in EMBEDDINGS}})
    frame["correct"] = rng.random(n) < right_chance(confidence)
    return frame


def histograms(frame):
    return {name: features.histogram(frame[name].to_numpy(), edges) for name, edges in features.FEATURES.items()}


def label_counts(frame):
    return {k: int(v) for k, v in frame["predicted"].value_counts().items()}


def make_reference(version, rows=5000, seed=1, status=Reference.Status.READY):
    """The version's Reference as compute_reference would leave it, with its Parquet sample."""
    frame = draw(np.random.default_rng(seed), rows)
    frame.insert(0, "example_id", range(rows))
    frame.insert(1, "split", "validation")
    frame["label"] = frame["predicted"]
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    stats = {name: {"counts": counts, "n": rows, "mean": float(frame[name].mean()), "std": float(frame[name].std(ddof=0)),
                    "min": float(frame[name].min()), "max": float(frame[name].max())}
             for name, counts in histograms(frame).items()}
    reference, _ = Reference.objects.update_or_create(version=version, defaults=dict(
        status=status, rows=rows, splits=["validation", "test"], features=stats, labels=label_counts(frame),
        true_labels=label_counts(frame), confidence=features.histogram(frame["confidence"], features.CONFIDENCE_EDGES),
        accuracy=float(frame["correct"].mean()), sample_sha256=get_store().put_bytes(buffer.getvalue()).sha256,
        computed_at=timezone.now()))
    return reference


def bucket(frame, rng):
    """One rollup bucket's counts of `frame`'s rows."""
    hashes = rng.integers(0, 2**62, len(frame))
    order = np.argsort(hashes)[: features.SAMPLE_SIZE]
    sample = [[int(hashes[i]), *frame[EMBEDDINGS].iloc[i].tolist()] for i in order]
    return dict(requests=len(frame), labels=label_counts(frame), sample=sample, features=histograms(frame),
                confidence=features.histogram(frame["confidence"], features.CONFIDENCE_EDGES),
                latency=[0] * (len(features.LATENCY_EDGES_MS) + 1), latency_sum_ms=20.0 * len(frame))


def make_rollups(deployment, version, frame, *, end=None, minutes=30, route="stable", seed=0):
    """`frame`'s rows spread over the `minutes` minute buckets before `end`, as Rollup rows."""
    rng = np.random.default_rng(seed)
    end = (end or timezone.now()).replace(second=0, microsecond=0)
    for i, part in enumerate(np.array_split(frame, minutes)):
        Rollup.objects.create(deployment=deployment, release=deployment.current_release, version=version, route=route,
                              start=end - timedelta(minutes=i + 1), **bucket(part, rng))
    return end - timedelta(minutes=minutes), end


def in_memory_window(frame, rng, k=drift.MMD_SAMPLE):
    """What rollups.window would sum for `frame`, without the database (for many windows): the
    buckets' histograms add up to the whole frame's, their bottom-k samples to its bottom-k."""
    hashes = rng.integers(0, 2**62, len(frame))
    order = np.argsort(hashes)[:k]
    return SimpleNamespace(features=histograms(frame), labels=label_counts(frame),
                           sample=frame[EMBEDDINGS].to_numpy()[order].tolist())


# --- checks against the database -------------------------------------------------------------------

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(trained, people, tmp_path, store_with_output):
    return make_deployment(trained, people, tmp_path)


def run(deployment, start, end, **kwargs):
    return drift.check(deployment, deployment.current_release.stable, start=start, end=end, **kwargs)


def test_a_shifted_window_drifts_and_a_same_distribution_window_does_not(deployment):
    version = deployment.current_release.stable
    make_reference(version)
    now = timezone.now()
    start, end = make_rollups(deployment, version, draw(np.random.default_rng(2), 3000), end=now - timedelta(hours=2))
    calm = run(deployment, start, end)
    start, end = make_rollups(deployment, version, draw(np.random.default_rng(3), 3000, shift=0.5), end=now, seed=1)
    shifted = run(deployment, start, end)

    assert calm.skipped == "" and not calm.drifted and calm.drifted_features == 0, [
        (r["feature"], r["statistic"]) for r in calm.results if r["drifted"]]
    assert calm.embedding["drifted"] is False and calm.correction == "benjamini-hochberg"
    assert shifted.drifted and shifted.embedding["drifted"]
    by_name = {r["feature"]: r for r in shifted.results}
    assert len(by_name) == len(features.FEATURES) + 1
    assert {r["method"] for r in shifted.results} == {"wasserstein", "jensenshannon"}  # 5,000 reference rows
    for name in ("text_length", "embedding_0", "embedding_15", features.LABEL_FEATURE):
        assert by_name[name]["drifted"] and by_name[name]["statistic"] >= 0.1, by_name[name]
    entry = by_name["embedding_0"]
    assert entry["p_value"] is None and entry["psi"] > 0.05 and len(entry["reference"]) == len(entry["edges"]) + 1
    assert sum(entry["current"]) == 3000 and shifted.requests == 3000
    assert DriftCheck.objects.count() == 2 and not AuditEvent.objects.filter(action="drift.checked").exists()


def test_a_small_reference_uses_ks_and_chi_squared_with_adjusted_p_values(deployment):
    version = deployment.current_release.stable
    make_reference(version, rows=800)
    start, end = make_rollups(deployment, version, draw(np.random.default_rng(4), 1500, shift=0.3))
    found = run(deployment, start, end)
    methods = {r["feature"]: r["method"] for r in found.results}
    assert set(methods.values()) == {"ks", "chisquare"}
    for entry in found.results:
        assert entry["p_adjusted"] >= entry["p_value"] and entry["drifted"] == (entry["p_adjusted"] <= 0.05)
    assert found.drifted and found.embedding["p_adjusted"] >= found.embedding["p_value"]


def test_too_few_answers_or_no_ready_reference_is_skipped_with_the_reason_and_no_numbers(deployment, settings):
    version = deployment.current_release.stable
    reference = make_reference(version, status=Reference.Status.PENDING)
    start, end = make_rollups(deployment, version, draw(np.random.default_rng(5), 500))
    pending = run(deployment, start, end)
    assert pending.skipped.startswith("not checked: the reference statistics are pending")
    reference.status = Reference.Status.READY
    reference.save()
    settings.MONITORING_DRIFT_MIN_REQUESTS = 1000
    few = run(deployment, start, end)
    assert few.skipped == "not checked: 500 answers in the window, 1000 needed (MONITORING_DRIFT_MIN_REQUESTS)"
    for found in (pending, few):
        found.refresh_from_db()
        assert found.results == [] and found.estimated_accuracy is None and not found.drifted


def test_estimated_and_feedback_accuracy_of_the_window_are_stored(deployment):
    version = deployment.current_release.stable
    make_reference(version)
    frame = draw(np.random.default_rng(6), 2000)
    start, end = make_rollups(deployment, version, frame)
    rows = list(PredictionLog.objects.filter(pk__in=[]))  # none yet: no feedback means None, not 0
    found = run(deployment, start, end)
    assert found.feedback_accuracy is None and found.feedback_count == 0 and rows == []
    assert found.estimated_accuracy == pytest.approx(float(right_chance(frame["confidence"]).mean()), abs=0.03)

    from tests.monitoring.factories import make_log

    make_log(deployment, 40, at=end - timedelta(minutes=5), spread_seconds=60, seed=3)
    logged = list(PredictionLog.objects.filter(deployment=deployment).order_by("pk"))
    for i, row in enumerate(logged):
        Feedback.objects.create(request_id=row.request_id, position=row.position, deployment=deployment,
                                predicted_label=row.label, correct=i % 4 != 0)
    found = run(deployment, start, end)
    assert found.feedback_count == 40 and found.feedback_accuracy == pytest.approx(0.75)


def test_many_same_distribution_windows_raise_a_false_alarm_at_most_about_the_fdr_level():
    """200 windows of 300 answers, each drawn from its reference's own distribution (10
    references of 800 rows: KS, chi-squared and MMD on 200 embeddings a side, 21 p-values per
    window). Under no drift at
    all, BH's false discovery rate is the chance of any alarm, so about MONITORING_DRIFT_FDR."""
    rng = np.random.default_rng(2024)
    alarms = 0
    for r in range(10):
        frame = draw(rng, 800, text=False)
        reference = SimpleNamespace(labels=label_counts(frame), features={
            name: {"counts": counts, "n": 800, "std": float(frame[name].std(ddof=0))}
            for name, counts in histograms(frame).items()})
        sample = frame[EMBEDDINGS].to_numpy()[:200]  # 200 a side keeps 200 MMD tests to seconds
        for w in range(20):
            results, embedding = drift.evaluate(reference, in_memory_window(draw(rng, 300, text=False), rng, k=200), sample)
            assert len([x for x in results if x.p_value is not None]) == 20 and "p_value" in embedding
            alarms += any(x.drifted for x in results) or embedding["drifted"]
    rate = alarms / 200
    print(f"windows with any false alarm: {alarms} of 200 ({rate:.1%})")
    assert rate <= 0.08  # 0.05 plus two standard errors of a share over 200 windows (0.015 each)


@pytest.mark.django_db(transaction=True)
def test_the_schedule_enqueues_once_per_slot_and_a_real_worker_checks_every_live_version(
        trained, people, tmp_path, store_with_output, redis):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=20)
    stable, candidate = deployment.current_release.stable, deployment.current_release.candidate
    assert [(v, r) for _, v, r in drift.live_versions()] == [(stable, "stable"), (candidate, "canary")]
    make_reference(stable)
    make_rollups(deployment, stable, draw(np.random.default_rng(7), 1000))
    now = timezone.now()
    assert drift.schedule_checks(now) == 1
    assert drift.schedule_checks(now + timedelta(seconds=1)) == 0  # the same slot: enqueued already
    log = run_burst(tmp_path, "monitoring")
    job = Job.objects.get(task=drift.run_scheduled_checks.task_name)
    assert job.status == Job.Status.SUCCEEDED, log[-3000:]
    checks = {c.version_id: c for c in DriftCheck.objects.all()}
    assert checks[stable.pk].skipped == "" and checks[stable.pk].route == "stable"
    assert checks[candidate.pk].skipped.startswith("not checked: the reference statistics are pending")
    assert not AuditEvent.objects.filter(action="drift.checked").exists()  # the system's, not a person's

    job = drift.request_check(people["ona"], deployment, stable)
    log = run_burst(tmp_path, "monitoring")
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, log[-3000:]
    found = DriftCheck.objects.get(pk=job.result["check"])
    assert found.trigger == "demand" and found.created_by == people["ona"] and found.requests == 1000
    event = AuditEvent.objects.get(action="drift.checked")
    assert event.actor == "ona" and event.object_id == str(found.pk)


# --- the pages -----------------------------------------------------------------------------------------

READERS = {"erin", "ann", "ona", "vic"}
RUNNERS = {"erin", "ona"}


@pytest.fixture
def checked(deployment):
    version = deployment.current_release.stable
    make_reference(version)
    start, end = make_rollups(deployment, version, draw(np.random.default_rng(9), 1500, shift=0.5))
    return run(deployment, start, end)


@pytest.mark.parametrize("who", ["erin", "ann", "ona", "vic", "lee", "sam"])
def test_each_role_reads_the_drift_pages_and_a_stranger_is_refused(client, checked, people, who):
    client.force_login(people[who])
    name = checked.deployment.name
    for url in (f"/monitoring/deployments/{name}/drift/", f"/monitoring/deployments/{name}/drift/text_length",
                f"/monitoring/drift/{checked.pk}"):
        status = client.get(url).status_code
        assert status == (200 if who in READERS else 403), (who, url, status)
    status = client.post(f"/monitoring/deployments/{name}/drift/run", {"version": checked.version_id}).status_code
    assert status == (302 if who in RUNNERS else 403), (who, status)


def test_the_drift_page_shows_each_feature_with_its_method_threshold_and_p_values(client, checked, people):
    client.force_login(people["vic"])
    page = client.get(f"/monitoring/deployments/{checked.deployment.name}/drift/").content.decode()
    assert f"Check {checked.pk}" in page and "drift in" in page and 'data-feature="embedding"' in page
    for entry in checked.results:
        assert f'data-feature="{entry["feature"]}"' in page
    assert "wasserstein" in page and "jensenshannon" in page and "≥ 0.1" in page
    assert "Check now" not in page  # a viewer reads, does not run
    feature = client.get(f"/monitoring/deployments/{checked.deployment.name}/drift/embedding_0").content.decode()
    assert 'id="drift-histogram"' in feature and 'id="drift-series"' in feature and "window" in feature


def test_bad_feature_version_or_check_answers_404_and_a_bad_run_writes_nothing(client, checked, people, redis):
    client.force_login(people["erin"])
    name = checked.deployment.name
    assert client.get(f"/monitoring/deployments/{name}/drift/nothing").status_code == 404
    assert client.get(f"/monitoring/deployments/{name}/drift/label?version=999999").status_code == 404
    assert client.get("/monitoring/drift/999999").status_code == 404
    assert client.get("/monitoring/deployments/nowhere/drift/").status_code == 404
    jobs, events = Job.objects.count(), AuditEvent.objects.count()
    for data in ({}, {"version": "x"}, {"version": "999999"}):
        response = client.post(f"/monitoring/deployments/{name}/drift/run", data, follow=True)
        assert "Nothing was checked" in response.content.decode()
    assert (Job.objects.count(), AuditEvent.objects.count()) == (jobs, events)
    assert client.get(f"/monitoring/deployments/{name}/drift/run").status_code == 405


def test_running_a_check_needs_the_csrf_token(checked, people, redis):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(people["erin"])
    response = strict.post(f"/monitoring/deployments/{checked.deployment.name}/drift/run", {"version": checked.version_id})
    assert response.status_code == 403 and not Job.objects.filter(task=drift.run_check.task_name).exists()


def test_a_skipped_check_shows_why_and_no_numbers(client, deployment, people):
    version = deployment.current_release.stable
    make_reference(version, status=Reference.Status.PENDING)
    found = run(deployment, timezone.now() - timedelta(hours=1), timezone.now())
    client.force_login(people["ona"])
    page = client.get(f"/monitoring/deployments/{deployment.name}/drift/").content.decode()
    assert "not checked: the reference statistics are pending" in page and "drift-results" not in page
    assert "Estimated accuracy" not in page and found.estimated_accuracy is None
