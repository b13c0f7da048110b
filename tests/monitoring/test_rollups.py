"""Rollups: a batch's counts checked against numpy over the same log rows, exactly once under
double processing and racing workers, late batches, coarsening, and windows read back."""
import re
import threading
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import numpy as np
import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from lifecycle.datasets.models import Example
from lifecycle.deployments.models import PredictionBatch, PredictionLog, Route
from lifecycle.monitoring import features as F
from lifecycle.monitoring import reference, rollups
from lifecycle.monitoring.models import Resolution, Rollup
from tests.deployments.factories import make_deployment
from tests.monitoring.factories import log_rows, make_log, write_batch

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 3, 4, 10, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def deployment(trained, store_with_output, people, tmp_path, redis):
    return make_deployment(trained, people, tmp_path, mode="canary")


# --- the expected counts, straight from the log rows --------------------------------------------


def train_vocabulary(version):
    """The training split's words, counted here (the intents data has far fewer than VOCABULARY_SIZE)."""
    texts = Example.objects.filter(version_id=version.run.dataset_version_id, split=Example.TRAIN)
    return {w for t in texts.values_list("text", flat=True) for w in re.findall(r"\w+", t.lower())}


def direct_counts(rows, vocabulary):
    """{(route, minute): counts} from PredictionLog instances, one group at a time with np.digitize."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row.route, row.created_at.replace(second=0, microsecond=0))].append(row)
    return {key: _direct(group, vocabulary) for key, group in groups.items()}


def _hist(values, edges):
    return np.bincount(np.digitize(np.asarray(values, dtype=float), edges), minlength=len(edges) + 1).tolist()


def _oov(text, vocabulary):
    found = re.findall(r"\w+", text.lower())
    return sum(w not in vocabulary for w in found) / len(found) if found else 0.0


def _direct(rows, vocabulary):
    ok = [r for r in rows if r.status == "ok"]
    embedded = [r for r in ok if len(r.embedding) == 16]
    features = {"text_length": _hist([r.text_length for r in ok], F.FEATURES["text_length"]),
                "token_count": _hist([r.token_count for r in ok], F.FEATURES["token_count"]),
                "oov_rate": _hist([_oov(r.input_text, vocabulary) for r in ok], F.FEATURES["oov_rate"])}
    matrix = np.array([r.embedding for r in embedded]).reshape(-1, 16)
    for i in range(16):
        features[f"embedding_{i}"] = _hist(matrix[:, i], F.FEATURES[f"embedding_{i}"])
    by_hash = sorted((F.request_hash(r.request_id, r.position), r.embedding) for r in embedded)[:F.SAMPLE_SIZE]
    return {"requests": len(rows), "errors": len(rows) - len(ok),
            "latency_sum_ms": sum(r.latency_ms for r in rows), "latency": _hist([r.latency_ms for r in rows], F.LATENCY_EDGES_MS),
            "labels": dict(Counter(r.label for r in ok)),
            "confidence": _hist([r.confidence for r in ok], F.CONFIDENCE_EDGES),
            "features": features, "sample": [[h, *e] for h, e in by_hash]}


def stored_counts(**filters):
    out = {}
    for row in Rollup.objects.filter(resolution=Resolution.MINUTE, **filters):
        counts = rollups.counts_of_row(row)
        zeros = {name: [0] * (len(edges) + 1) for name, edges in F.FEATURES.items()}
        counts["features"] = {**zeros, **counts["features"]}
        out[(row.route, row.start)] = counts
    return out


def assert_same(stored, expected):
    assert set(stored) == set(expected)
    for key, want in expected.items():
        got = stored[key]
        assert got["latency_sum_ms"] == pytest.approx(want["latency_sum_ms"])
        for name in ("requests", "errors", "latency", "labels", "confidence", "features", "sample"):
            assert got[name] == want[name], (key, name)


def mixed_rows(deployment, n=400, seed=1, at=T0):
    """Stable and canary answers with errors and a shifted part, spread over three minutes."""
    return (log_rows(deployment, n, at=at, seed=seed, error_rate=0.05, spread_seconds=170)
            + log_rows(deployment, n // 2, at=at, route=Route.CANARY, seed=seed + 1, shift=0.6, spread_seconds=170))


# --- rolling up -----------------------------------------------------------------------------------


def test_a_batch_adds_exactly_what_numpy_counts_over_its_rows_and_only_once(deployment):
    release = deployment.current_release
    batch = write_batch(mixed_rows(deployment))
    assert rollups.roll_up_batch(batch.pk) is True
    rows = list(PredictionLog.objects.filter(batch_id=batch.pk))
    vocabulary = train_vocabulary(deployment.current_release.stable)
    assert vocabulary == train_vocabulary(deployment.current_release.candidate)  # the same data: one vocabulary
    assert reference.vocabulary(release.stable) == vocabulary  # fewer words than VOCABULARY_SIZE: all of them
    expected = direct_counts(rows, vocabulary)
    assert len(expected) >= 6  # two routes over at least three minutes
    assert any(e["errors"] for e in expected.values()) and any(sum(e["features"]["oov_rate"][1:]) for e in expected.values())
    assert_same(stored_counts(), expected)
    assert set(Rollup.objects.values_list("release_id", flat=True)) == {release.pk}
    assert dict(Rollup.objects.values_list("route", "version_id").distinct()) == {
        "stable": release.stable_id, "canary": release.candidate_id}
    # Processed again (a retry, a second worker later): claimed already, nothing added.
    assert rollups.roll_up_batch(batch.pk) is False
    assert_same(stored_counts(), expected)


def test_a_late_batch_adds_to_its_old_minute(deployment):
    first = make_log(deployment, 50, at=T0 + timedelta(seconds=59), spread_seconds=50, seed=1)
    make_log(deployment, 20, at=T0 + timedelta(hours=2), spread_seconds=1, seed=3)  # newer answers, rolled up first
    rollups.roll_up_pending()
    late = make_log(deployment, 30, at=T0 + timedelta(seconds=59), spread_seconds=50, seed=2)
    assert rollups.roll_up_pending() == 1
    row = Rollup.objects.get(start=T0)
    assert row.requests == 80 and Rollup.objects.count() == 2
    rows = PredictionLog.objects.filter(batch_id__in=[first.pk, late.pk])
    assert_same(stored_counts(start=T0), direct_counts(rows, train_vocabulary(deployment.current_release.stable)))


def test_roll_up_pending_takes_every_batch_once_oldest_first_within_its_budget(deployment):
    batches = [make_log(deployment, 20, at=T0 + timedelta(minutes=i), seed=i) for i in range(5)]
    assert rollups.roll_up_pending() == 5
    assert rollups.roll_up_pending() == 0
    assert not PredictionBatch.objects.filter(rolled_up_at=None).exists()
    times = list(PredictionBatch.objects.filter(pk__in=[b.pk for b in batches]).order_by("pk")
                 .values_list("rolled_up_at", flat=True))
    assert times == sorted(times)
    assert sum(Rollup.objects.values_list("requests", flat=True)) == 100
    for i in range(3):
        make_log(deployment, 10, at=T0, seed=i)
    assert rollups.roll_up_pending(max_seconds=0) == 1  # one batch at least, then the budget is spent
    assert PredictionBatch.objects.filter(rolled_up_at=None).count() == 2


@pytest.mark.django_db(transaction=True)
def test_workers_racing_on_one_batch_add_it_once_and_on_one_minute_add_both(deployment):
    same = write_batch(log_rows(deployment, 300, at=T0, seed=1, spread_seconds=50))
    results = race([same.pk, same.pk, same.pk])
    assert sorted(results) == [False, False, True]
    assert Rollup.objects.get().requests == 300
    # Two batches of one minute at once: both rows' inserts meet on one Rollup row.
    a = write_batch(log_rows(deployment, 200, at=T0 + timedelta(minutes=5), seed=2, spread_seconds=50))
    b = write_batch(log_rows(deployment, 100, at=T0 + timedelta(minutes=5), seed=3, spread_seconds=50))
    assert race([a.pk, b.pk]) == [True, True]
    assert Rollup.objects.get(start=T0 + timedelta(minutes=4)).requests == 300
    rows = PredictionLog.objects.filter(batch_id__in=[a.pk, b.pk])
    assert_same(stored_counts(start=T0 + timedelta(minutes=4)),
                direct_counts(rows, train_vocabulary(deployment.current_release.stable)))


def race(batch_ids):
    """roll_up_batch on each id, each in its own thread and connection, started together."""
    barrier = threading.Barrier(len(batch_ids))
    results = [None] * len(batch_ids)

    def work(i, batch_id):
        try:
            barrier.wait()
            results[i] = rollups.roll_up_batch(batch_id)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(i, b)) for i, b in enumerate(batch_ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


# --- coarsening -------------------------------------------------------------------------------------


def totals(deployment, start, end):
    w = rollups.window(deployment, start=start, end=end, routes=list(Route.values))
    return (w.requests, w.errors, round(w.latency_sum_ms, 6), w.latency, w.labels, w.confidence, w.features)


def test_coarsen_merges_old_minutes_into_hours_once(deployment, settings):
    now = T0 + timedelta(days=settings.MONITORING_MINUTE_ROLLUP_DAYS, minutes=30)  # the cutoff: T0 + 30 min, hour T0
    for i, minutes in enumerate((-90, -61, -20, 5, 40)):  # two old hours, one hour the cutoff falls in
        write_batch(mixed_rows(deployment, n=40, seed=i, at=T0 + timedelta(minutes=minutes)))
    rollups.roll_up_pending()
    span = (T0 - timedelta(hours=3), T0 + timedelta(hours=2))
    before = totals(deployment, *span)
    minute_rows = Rollup.objects.filter(start__lt=T0).count()
    assert rollups.coarsen(now=now) == minute_rows
    assert not Rollup.objects.filter(resolution=Resolution.MINUTE, start__lt=T0).exists()
    hours = Rollup.objects.filter(resolution=Resolution.HOUR)
    assert set(hours.values_list("start", flat=True)) == {T0 - timedelta(hours=2), T0 - timedelta(hours=1)}
    assert hours.count() == 4  # two routes in each
    assert Rollup.objects.filter(resolution=Resolution.MINUTE, start__gte=T0).exists()  # the cutoff's hour waits
    assert totals(deployment, *span) == before
    assert all(len(row.sample) == F.SAMPLE_SIZE for row in hours)
    again = list(Rollup.objects.order_by("pk").values())
    assert rollups.coarsen(now=now) == 0
    assert list(Rollup.objects.order_by("pk").values()) == again
    # A batch arriving late for a coarsened hour lands in a minute row, then joins its hour.
    write_batch(log_rows(deployment, 7, at=T0 - timedelta(minutes=80), spread_seconds=1, seed=9))
    rollups.roll_up_pending()
    assert rollups.coarsen(now=now) == 1
    assert totals(deployment, *span)[0] == before[0] + 7 and hours.count() == 4


# --- windows and series -------------------------------------------------------------------------------


def test_window_sums_the_rows_of_the_span_reading_only_its_parts_and_leaves_shadow_out(deployment):
    release = deployment.current_release
    write_batch(mixed_rows(deployment, n=300, seed=4) + log_rows(deployment, 50, at=T0, route=Route.SHADOW, seed=5))
    rollups.roll_up_pending()
    start, end = T0 - timedelta(minutes=2), T0  # two of the three minutes
    rows = Rollup.objects.filter(start__gte=start, start__lt=end)
    w = rollups.window(deployment, start=start, end=end)
    answered = [r for r in rows if r.route != Route.SHADOW]
    assert w.requests == sum(r.requests for r in answered) and w.buckets == len(answered) == 4
    assert w.errors == sum(r.errors for r in answered)
    assert w.latency == np.sum([r.latency for r in answered], axis=0).tolist()
    assert w.labels == dict(sum((Counter(r.labels) for r in answered), Counter()))
    for name, edges in F.FEATURES.items():  # PostgreSQL's text of the JSON, parsed by numpy
        want = np.sum([r.features.get(name, [0] * (len(edges) + 1)) for r in answered], axis=0).tolist()
        assert w.features[name] == want, name
    [(_, plain)] = rollups.series(deployment, start=start, end=end, step_minutes=2, parts=("features",))
    assert plain.features == w.features  # series() decodes the JSON itself: the same sums
    assert rollups._summed_text(["1.0, 2", "3, 4"], (0.5,)) == [4, 6]  # not as written: decoded the slow way
    assert (w.start, w.end) == (start, end)
    shadow = rollups.window(deployment.pk, start=start, end=end, routes=[Route.SHADOW])
    assert shadow.requests == sum(r.requests for r in rows if r.route == Route.SHADOW) > 0
    canary = rollups.window(deployment, start=start, end=end, version=release.candidate, route=Route.CANARY)
    assert canary.requests == sum(r.requests for r in rows if r.route == Route.CANARY)
    assert rollups.window(deployment, start=start, end=end, version=release.candidate_id).requests == canary.requests
    assert rollups.window(deployment, start=end, end=end + timedelta(minutes=5)).buckets == 0

    with CaptureQueriesContext(connection) as queries:
        counts = rollups.window(deployment, start=start, end=end, parts=("counts",))
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert len(queries) == 1 and '"requests"' in sql
    assert not any(f'"monitoring_rollup"."{c}"' in sql for c in ("features", "sample", "latency", "labels", "confidence"))
    assert counts.requests == w.requests and counts.features == {} and counts.latency == []
    with pytest.raises(ValueError, match="unknown parts"):
        rollups.window(deployment, start=start, end=end, parts=("count",))


def test_the_window_sample_is_the_smallest_hashes_of_all_its_rows(deployment):
    write_batch(mixed_rows(deployment, n=200, seed=6))
    rollups.roll_up_pending()
    w = rollups.window(deployment, start=T0 - timedelta(hours=1), end=T0 + timedelta(hours=1), sample_size=F.SAMPLE_SIZE)
    rows = PredictionLog.objects.filter(route__in=[Route.STABLE, Route.CANARY], status="ok")
    smallest = sorted((F.request_hash(r.request_id, r.position), r.embedding) for r in rows)[:F.SAMPLE_SIZE]
    assert w.sample == [e for _, e in smallest]
    big = rollups.window(deployment, start=T0 - timedelta(hours=1), end=T0 + timedelta(hours=1), sample_size=500)
    answered = Rollup.objects.filter(route__in=rollups.ANSWERED)
    assert len(big.sample) == sum(len(r.sample) for r in answered) < 500  # fewer than asked: every bucket's sample
    assert all(len(e) == 16 for e in big.sample)
    # series() merges samples in Python (window() lets PostgreSQL pick them): the same choice.
    [(_, whole)] = rollups.series(deployment, start=T0 - timedelta(hours=1), end=T0 + timedelta(hours=1), step_minutes=120,
                                  parts=("sample",))
    assert whole.sample[:F.SAMPLE_SIZE] == w.sample and sorted(map(tuple, whole.sample)) == sorted(map(tuple, big.sample))


def test_series_splits_the_span_into_steps_that_add_up_to_the_window(deployment):
    write_batch(mixed_rows(deployment, n=300, seed=7))
    rollups.roll_up_pending()
    start, end = T0 - timedelta(minutes=4), T0 + timedelta(minutes=1)
    buckets = rollups.series(deployment, start=start, end=end, step_minutes=2)
    assert [b for b, _ in buckets] == [start, start + timedelta(minutes=2), start + timedelta(minutes=4)]
    assert buckets[-1][1].end == end and buckets[-1][1].requests == 0  # an empty step is kept, as zero
    whole = rollups.window(deployment, start=start, end=end, parts=("counts", "latency"))
    assert sum(w.requests for _, w in buckets) == whole.requests > 0
    assert np.sum([w.latency for _, w in buckets], axis=0).tolist() == whole.latency
    for bucket_start, w in buckets:
        assert w.requests == sum(Rollup.objects.filter(start__gte=bucket_start, start__lt=w.end, route__in=rollups.ANSWERED)
                                 .values_list("requests", flat=True))
