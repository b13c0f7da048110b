"""Drift checks: a window of one version's answers against its reference, from the rollups.

Per feature the statistic Evidently 0.7 would choose for that column (its registry.py
`_get_default_stattest`: above 1,000 reference rows normed Wasserstein for numeric and
Jensen–Shannon for categorical columns, drift at >= 0.1; at or below, KS for numeric and
chi-squared — or the z-test for two categories — for categorical, drift at p < 0.05), computed
from the fixed-bin histograms of monitoring/features.py instead of the raw rows, PSI beside it;
the embedding summaries by MMD with a permutation test; Benjamini–Hochberg over every test that
has a p-value. See docs/monitoring.md for each choice and its source.
"""
import functools
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from threadpoolctl import threadpool_limits

from lifecycle.core.jobs import enqueue, maintenance_step, task
from lifecycle.core.models import AuditEvent, Job
from lifecycle.core.roles import ML_ENGINEER, ONCALL
from lifecycle.deployments.models import Deployment, Feedback, PredictionLog, Route
from lifecycle.monitoring import estimate, features
from lifecycle.monitoring.models import DriftCheck, Reference

log = logging.getLogger(__name__)

# Evidently 0.7.23, legacy/calculations/stattests/registry.py: "reference_data.shape[0] <= 1000".
SMALL_REFERENCE_ROWS = 1000
DISTANCE_THRESHOLD = 0.1  # wasserstein_distance_norm.py and jensenshannon.py: default_threshold=0.1
P_THRESHOLD = 0.05  # ks_stattest.py, chisquare_stattest.py, z_stattest.py: StatTest.default_threshold
STD_FLOOR = 0.001  # wasserstein_distance_norm.py: norm = max(np.std(reference), 0.001)
PSI_EPSILON = 0.0001  # utils.get_binned_data(feel_zeroes=True): an empty bin's share
# The embedding test: at most this many summaries from each side (the window's bottom-k sample,
# a seeded draw of the reference's), permutations for its p-value, and the fewest it runs on.
MMD_SAMPLE = 500
MMD_PERMUTATIONS = 200
MMD_MIN_SAMPLE = 30
MMD_SEED = 0
# A quality gap (estimated vs feedback accuracy) is only judged on this much feedback.
QUALITY_GAP_MIN_FEEDBACK = 30
CORRECTION = "benjamini-hochberg"
CHECK_ROLES = (ML_ENGINEER, ONCALL)
READ_ROLES = (ML_ENGINEER, ONCALL, "approver", "viewer")


@dataclass
class Result:
    """One feature's entry in DriftCheck.results. For the categorical label `edges` holds the
    category names and `reference`/`current` their counts in that order."""

    feature: str
    kind: str  # features.NUMERIC or features.CATEGORICAL
    method: str  # wasserstein | ks | jensenshannon | chisquare | z
    statistic: float
    threshold: float
    p_value: float | None  # None for the distance methods
    p_adjusted: float | None
    psi: float
    drifted: bool
    reference: list
    current: list
    edges: list


# --- statistics from histograms ------------------------------------------------------------------


def _shares(counts):
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total else counts


def _cdf_at_edges(counts):
    """The share of values below each edge (bin i holds [edge i-1, edge i))."""
    return np.cumsum(_shares(counts))[:-1]


def wasserstein_normed(reference, current, edges, reference_std):
    """W1 between two histograms over `edges`, divided by the reference's std (Evidently's
    normed Wasserstein). Values spread evenly within a bin, the open outer bins sit at the
    first and last edge: the integral of |F_ref - F_cur| is then exact per bin."""
    d = _cdf_at_edges(reference) - _cdf_at_edges(current)
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    a, b = d[:-1], d[1:]
    total = np.abs(a) + np.abs(b)
    crossing = (a * b) < 0  # the CDFs cross inside the bin: two triangles, not a trapezoid
    with np.errstate(invalid="ignore", divide="ignore"):
        area = np.where(crossing, widths * (a * a + b * b) / (2 * total), widths * total / 2)
    return float(area.sum()) / max(float(reference_std), STD_FLOOR)


def ks_statistic(reference, current):
    """The KS distance of the two histograms: the largest CDF gap at a bin edge (a lower bound
    of the raw rows' D; at most the largest bin share above it)."""
    return float(np.max(np.abs(_cdf_at_edges(reference) - _cdf_at_edges(current)), initial=0.0))


def ks_p_value(d, n, m):
    """Two-sided p-value of D for samples of n and m, as scipy's ks_2samp(method="auto")
    computes it: exact below 10,000 rows a side, Smirnov's asymptotic formula above."""
    # scipy is imported where it is used, not with the app: every worker process (the
    # dataset ingest's included) would otherwise carry it. _attempt_exact_2kssamp is scipy's
    # own exact two-sample KS distribution, as ks_2samp's method="auto" uses it; private, so
    # an upgrade that moves it fails here, loudly, and the statistics tests say what changed.
    from scipy import stats
    from scipy.stats._stats_py import _attempt_exact_2kssamp

    if max(n, m) <= 10_000:
        ok, _, prob = _attempt_exact_2kssamp(n, m, math.gcd(n, m), d, "two-sided")
        if ok:
            return float(np.clip(prob, 0, 1))
    big, small = sorted([float(n), float(m)], reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(big * small / (big + small))), 0, 1))


def jensen_shannon(reference, current):
    """Jensen–Shannon distance of two count vectors, natural log (Evidently calls scipy's
    jensenshannon with base=None; utils.get_binned_data with feel_zeroes=False)."""
    from scipy.spatial import distance

    return float(distance.jensenshannon(_shares(reference), _shares(current)))


def chi_squared_p(reference, current):
    """Evidently's chisquare_stattest: observed current counts against the reference's
    scaled to the current total."""
    from scipy import stats

    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    expected = reference * current.sum() / reference.sum()
    return float(stats.chisquare(current, expected)[1])


def z_test_p(reference, current):
    """Evidently's z_stattest (two categories): the two-proportion z-test, two-sided."""
    from scipy import stats

    n1, n2 = float(sum(reference)), float(sum(current))
    p1, p2 = reference[1] / n1, current[1] / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    if pooled in (0.0, 1.0):
        return 1.0  # one value on both sides: Evidently's "nunique() == 1" case
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(2 * (1 - stats.norm.cdf(abs(z))))


def psi(reference, current):
    """Population stability index over the bins, an empty bin's share replaced as Evidently's
    utils.get_binned_data(feel_zeroes=True) does."""
    r, c = _fill_zeros(_shares(reference)), _fill_zeros(_shares(current))
    return float(np.sum((r - c) * np.log(r / c)))


def _fill_zeros(shares):
    shares = shares.copy()
    nonzero = shares[shares != 0]
    if len(nonzero) == 0:
        return np.full_like(shares, PSI_EPSILON)
    smallest = nonzero.min()
    shares[shares == 0] = smallest / 10**6 if smallest <= PSI_EPSILON else PSI_EPSILON
    return shares


# --- the embedding test ----------------------------------------------------------------------------


def mmd_test(reference, current, *, permutations=MMD_PERMUTATIONS, seed=MMD_SEED):
    """Unbiased MMD^2 with an RBF kernel whose width is the median pairwise distance (as
    Evidently's MMDDriftMethod), and its p-value from `permutations` relabellings of the pooled
    rows: (1 + #{permuted >= observed}) / (1 + permutations)."""
    # One BLAS thread: at these sizes (about 1,000 rows) threads cost more than they save, and
    # on a busy worker host they made it ten times slower.
    with threadpool_limits(limits=1, user_api="blas"):
        return _mmd_test(reference, current, permutations, seed)


def _mmd_test(reference, current, permutations, seed):
    x, y = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    pooled = np.vstack([x, y])
    squared = np.maximum(np.sum(pooled**2, 1)[:, None] + np.sum(pooled**2, 1)[None, :] - 2 * pooled @ pooled.T, 0)
    sigma2 = float(np.median(squared[: len(x), len(x):])) or 1.0  # cross distances, as Evidently
    kernel = np.exp(-squared / sigma2)
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out each row with itself
    rng = np.random.default_rng(seed)
    first = np.zeros((permutations + 1, len(pooled)), dtype=bool)
    first[0, : len(x)] = True
    for i in range(1, permutations + 1):
        first[i, rng.permutation(len(pooled))[: len(x)]] = True
    values = _mmd2u(kernel, first, len(x), len(y))
    p_value = (1 + int(np.sum(values[1:] >= values[0]))) / (1 + permutations)
    return {"method": "mmd", "kernel": "rbf, median heuristic", "statistic": float(values[0]), "p_value": p_value,
            "reference_rows": len(x), "current_rows": len(y), "permutations": permutations, "seed": seed}


def _mmd2u(kernel, first, m, n):
    """MMD^2_u for each row of `first` (which pooled rows form the first sample), by matrix
    products instead of a Python loop over the permutations."""
    a = first.astype(np.float64)
    b = 1.0 - a
    ka, kb = a @ kernel, b @ kernel
    return (np.sum(ka * a, 1) / (m * (m - 1)) + np.sum(kb * b, 1) / (n * (n - 1))
            - 2 * np.sum(ka * b, 1) / (m * n))


# --- many features at once ---------------------------------------------------------------------------


def benjamini_hochberg(p_values):
    """BH-adjusted p-values (None stays None): p_(i) * m / i, made monotone from the largest."""
    found = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted = [None] * len(p_values)
    if not found:
        return adjusted
    found.sort()
    m = len(found)
    running = 1.0
    for rank in range(m, 0, -1):
        p, index = found[rank - 1]
        running = min(running, p * m / rank)
        adjusted[index] = running
    return adjusted


# --- one check -----------------------------------------------------------------------------------------


def numeric_result(name, stored, current):
    """Evidently's choice for a numeric column: normed Wasserstein above 1,000 reference
    rows, KS at or below (p-value adjusted later)."""
    edges = features.FEATURES[name]
    reference = stored["counts"]
    common = dict(feature=name, kind=features.NUMERIC, p_adjusted=None, psi=psi(reference, current),
                  reference=list(reference), current=list(current), edges=list(edges))
    if stored["n"] > SMALL_REFERENCE_ROWS:
        value = wasserstein_normed(reference, current, edges, stored["std"])
        return Result(method="wasserstein", statistic=value, threshold=DISTANCE_THRESHOLD, p_value=None,
                      drifted=value >= DISTANCE_THRESHOLD, **common)
    d = ks_statistic(reference, current)
    p = ks_p_value(d, int(sum(reference)), int(sum(current)))
    return Result(method="ks", statistic=d, threshold=settings.MONITORING_DRIFT_FDR, p_value=p, drifted=False,
                  **common)


def label_result(reference_labels, current_labels):
    """Evidently's choice for the categorical predicted label: Jensen–Shannon above 1,000
    reference rows; chi-squared at or below, the z-test when there are only two labels."""
    names = sorted(set(reference_labels) | set(current_labels))
    reference = [int(reference_labels.get(k, 0)) for k in names]
    current = [int(current_labels.get(k, 0)) for k in names]
    common = dict(feature=features.LABEL_FEATURE, kind=features.CATEGORICAL, p_adjusted=None,
                  psi=psi(reference, current), reference=reference, current=current, edges=names)
    if sum(reference) > SMALL_REFERENCE_ROWS:
        value = jensen_shannon(reference, current)
        return Result(method="jensenshannon", statistic=value, threshold=DISTANCE_THRESHOLD, p_value=None,
                      drifted=value >= DISTANCE_THRESHOLD, **common)
    if len(names) <= 2:
        padded = (reference + [0, 0])[:2], (current + [0, 0])[:2]
        p, method = z_test_p(*padded), "z"
    else:
        p, method = chi_squared_p(reference, current), "chisquare"
    return Result(method=method, statistic=p, threshold=settings.MONITORING_DRIFT_FDR, p_value=p, drifted=False,
                  **common)


def feature_results(reference, window):
    """One Result per drift feature both sides have, and the label's."""
    results = []
    for name in features.FEATURES:
        stored, current = reference.features.get(name), window.features.get(name)
        if stored and stored.get("n") and current and sum(current):
            results.append(numeric_result(name, stored, current))
    if reference.labels and window.labels:
        results.append(label_result(reference.labels, window.labels))
    return results


def embedding_result(reference_sample, window_sample):
    """The MMD test on the window's embedding sample against the reference's (reference_embeddings)."""
    current = [row for row in window_sample if len(row) == features.EMBEDDING_SIZE][:MMD_SAMPLE]
    if len(current) < MMD_MIN_SAMPLE or len(reference_sample) < MMD_MIN_SAMPLE:
        return {"method": "mmd", "skipped": f"not checked: too few embedding summaries ({len(reference_sample)} in "
                f"the reference's sample, {len(current)} in the window's; {MMD_MIN_SAMPLE} needed on each side)"}
    return mmd_test(reference_sample, current)


def evaluate(reference, window, reference_sample):
    """The window's Results and embedding test, corrected for their number; no database."""
    results = feature_results(reference, window)
    embedding = embedding_result(reference_sample, window.sample)
    correct(results, embedding)
    return results, embedding


def reference_embeddings(reference):
    """MMD_SAMPLE rows of the reference sample's embedding columns, the same seeded draw every time."""
    if not reference.sample_sha256:
        return np.empty((0, features.EMBEDDING_SIZE))
    return _embeddings_of(reference.pk, reference.sample_sha256)


@functools.lru_cache(maxsize=64)
def _embeddings_of(reference_id, sample_sha256):
    # Keyed by the artifact's hash: a sample never changes under its name, so a cached copy is never stale.
    from lifecycle.monitoring import reference as references

    columns = [f"embedding_{i}" for i in range(features.EMBEDDING_SIZE)]
    frame = references.load_sample(Reference.objects.get(pk=reference_id), columns=columns)
    if not set(columns) <= set(frame.columns):
        return np.empty((0, features.EMBEDDING_SIZE))
    frame = frame[columns].dropna()
    if len(frame) > MMD_SAMPLE:
        frame = frame.sample(n=MMD_SAMPLE, random_state=MMD_SEED)
    return frame.to_numpy(dtype=np.float64)


P_DRIFTS = {"ks": lambda p, q: p <= q, "chisquare": lambda p, q: p < q, "z": lambda p, q: p < q,
            "mmd": lambda p, q: p <= q}  # Evidently's own comparison per test (mmd: as KS)


def correct(results, embedding):
    """Benjamini–Hochberg over the tests that have a p-value (KS, chi-squared, z, MMD) at
    MONITORING_DRIFT_FDR; the distances are compared with their thresholds only."""
    tests = [r for r in results if r.p_value is not None]
    has_mmd = embedding.get("p_value") is not None
    adjusted = benjamini_hochberg([r.p_value for r in tests] + ([embedding["p_value"]] if has_mmd else []))
    q = settings.MONITORING_DRIFT_FDR
    for result, p in zip(tests, adjusted):
        result.p_adjusted = p
        result.drifted = P_DRIFTS[result.method](p, q)
    if has_mmd:
        embedding.update(p_adjusted=adjusted[-1], threshold=q, drifted=P_DRIFTS["mmd"](adjusted[-1], q))
    return len(adjusted)


def feedback_accuracy(deployment, version, start, end, route=""):
    """(share right, how many) of the feedback on this version's answers logged in the window."""
    answers = PredictionLog.objects.filter(deployment=deployment, version=version, created_at__gte=start,
                                           created_at__lt=end)
    answers = answers.filter(route=route) if route else answers.exclude(route=Route.SHADOW)
    given = Feedback.objects.filter(deployment=deployment, correct__isnull=False,
                                    request_id__in=answers.values("request_id"))
    # request_id narrows by the index; the (request, position) pair is matched here.
    pairs = set(answers.filter(request_id__in=given.values("request_id")).values_list("request_id", "position"))
    verdicts = [ok for rid, pos, ok in given.values_list("request_id", "position", "correct") if (rid, pos) in pairs]
    return (sum(verdicts) / len(verdicts) if verdicts else None), len(verdicts)


def _skip_reason(reference, window):
    if reference.status != Reference.Status.READY:
        return f"not checked: the reference statistics are {reference.status}" + (
            f" ({reference.error})" if reference.error else "; they are computed once the version is released")
    answered = window.requests - window.errors
    if answered < settings.MONITORING_DRIFT_MIN_REQUESTS:
        return (f"not checked: {answered} answers in the window, {settings.MONITORING_DRIFT_MIN_REQUESTS} needed "
                "(MONITORING_DRIFT_MIN_REQUESTS)")
    return ""


def _reference_for(version):
    """The version's Reference; made (and its computation enqueued) if the release signal missed it."""
    found = Reference.objects.filter(version=version).first()
    if found is not None:
        return found
    from lifecycle.monitoring import reference as references

    return references.ensure_reference(version)


def check(deployment, version, *, start, end, route="", trigger=DriftCheck.Trigger.SCHEDULE, user=None):
    """Check one version's window [start, end) against its reference; returns the saved DriftCheck."""
    from lifecycle.monitoring import rollups

    began = time.monotonic()
    reference = _reference_for(version)
    window = rollups.window(deployment, start=start, end=end, version=version, route=route or None,
                            sample_size=MMD_SAMPLE)
    found = DriftCheck(deployment=deployment, version=version, reference=reference, route=route, trigger=trigger,
                       window_start=start, window_end=end, requests=window.requests, created_by=user)
    found.skipped = _skip_reason(reference, window)
    if not found.skipped:
        _evaluate(found, reference, window)
    found.seconds = time.monotonic() - began
    _save(found, user)
    if not found.skipped:
        _notify(found)
    return found


def _evaluate(found, reference, window):
    results, embedding = evaluate(reference, window, reference_embeddings(reference))
    found.results = [asdict(r) for r in results]
    found.embedding = embedding
    found.correction = CORRECTION
    found.drifted_features = sum(r.drifted for r in results)
    found.drifted = bool(found.drifted_features or embedding.get("drifted"))
    found.estimated_accuracy = estimate.expected_accuracy(reference, window.confidence)
    found.feedback_accuracy, found.feedback_count = feedback_accuracy(
        found.deployment, found.version, found.window_start, found.window_end, found.route)


def _save(found, user):
    """Saved; an on-demand check is audited as its person's act (scheduled ones are the system's)."""
    with transaction.atomic():
        found.save()
        if found.trigger == DriftCheck.Trigger.DEMAND:
            AuditEvent.record(user, "drift.checked", found, {
                "deployment": found.deployment.name, "version": found.version_id, "route": found.route,
                "window_start": found.window_start.isoformat(), "window_end": found.window_end.isoformat(),
                "drifted": found.drifted, "drifted_features": found.drifted_features, "skipped": found.skipped})


# --- what a check sets off ------------------------------------------------------------------------------


def _notify(found):
    """Fire or clear the drift and quality-gap alerts, then let the retrain rules see the check."""
    from lifecycle.monitoring import alerts, retrain  # they read drift checks: imported late

    _drift_alert(alerts, found)
    _quality_alert(alerts, found)
    retrain.after_drift_check(found)


def _evidence(found, **numbers):
    return {"check": found.pk, "url": found.get_absolute_url(), "version": found.version_id, "route": found.route,
            "window_start": found.window_start.isoformat(), "window_end": found.window_end.isoformat(),
            "requests": found.requests, **numbers}


def _drift_alert(alerts, found):
    key = f"drift:{found.version_id}:{found.route}"
    if not found.drifted:
        alerts.clear(found.deployment, kind="drift", key=key)
        return
    drifted = [r["feature"] for r in found.results if r["drifted"]] + (
        ["embedding"] if found.embedding.get("drifted") else [])
    alerts.fire(found.deployment, kind="drift", severity="ticket", key=key, drift_check=found,
                title=f"Drift on {found.deployment.name} v{found.version.number}: {', '.join(drifted)}",
                evidence=_evidence(found, drifted=drifted, results=[
                    {k: r[k] for k in ("feature", "method", "statistic", "threshold", "p_adjusted")}
                    for r in found.results if r["drifted"]]))


def _quality_alert(alerts, found):
    key = f"quality_gap:{found.version_id}:{found.route}"
    if found.feedback_count < QUALITY_GAP_MIN_FEEDBACK or found.estimated_accuracy is None:
        return  # too little feedback to say either way: the alert stays as it is
    gap = found.estimated_accuracy - found.feedback_accuracy
    if abs(gap) <= settings.MONITORING_QUALITY_GAP:
        alerts.clear(found.deployment, kind="quality_gap", key=key)
        return
    alerts.fire(found.deployment, kind="quality_gap", severity="ticket", key=key, drift_check=found,
                title=(f"{found.deployment.name} v{found.version.number}: estimated accuracy "
                       f"{found.estimated_accuracy:.1%}, feedback says {found.feedback_accuracy:.1%}"),
                evidence=_evidence(found, estimated_accuracy=found.estimated_accuracy, gap=gap,
                                   feedback_accuracy=found.feedback_accuracy, feedback_count=found.feedback_count))


# --- the schedule and the jobs -------------------------------------------------------------------------


def live_versions():
    """(deployment, version, route) for every version answering now: each stable, a live
    canary, and a shadow candidate (its answers are logged, never returned)."""
    out = []
    deployments = Deployment.objects.filter(current_release__isnull=False).select_related(
        "current_release__stable", "current_release__candidate").order_by("name")
    for deployment in deployments:
        release = deployment.current_release
        out.append((deployment, release.stable, Route.STABLE))
        if release.candidate_is_live:
            out.append((deployment, release.candidate, Route.SHADOW if release.mode == "shadow" else Route.CANARY))
    return out


def _slot_key(now):
    every = settings.MONITORING_DRIFT_EVERY_MINUTES * 60
    return f"monitoring:drift-schedule:{int(now.timestamp() // every)}"


@maintenance_step("monitoring_drift_schedule")
def schedule_checks(now=None):
    """Enqueue one run_scheduled_checks per MONITORING_DRIFT_EVERY_MINUTES slot. The job key
    names the slot, so many workers' maintenance passes enqueue it once between them."""
    key = _slot_key(now or timezone.now())
    if Job.objects.filter(key=key).exists():  # the common case costs one indexed query, no Redis
        return 0
    with transaction.atomic():
        enqueue(run_scheduled_checks, key=key)
    return 1


def _outcome(job):
    from lifecycle.core.jobs import Outcome

    result = job.result or {}
    if "check" in result:
        found = DriftCheck.objects.get(pk=result["check"])
        text = found.skipped or (f"{found.drifted_features} drifted feature(s)" if found.drifted else "No drift found.")
        return Outcome(text, (("the check", found.get_absolute_url()),))
    return Outcome(f"Checked {result.get('checks', 0)} live version(s).")


@task(queue="monitoring", roles=READ_ROLES, outcome=_outcome)
def run_scheduled_checks(job):
    """One check per live version over the last MONITORING_DRIFT_WINDOW_MINUTES."""
    end = timezone.now()
    start = end - timedelta(minutes=settings.MONITORING_DRIFT_WINDOW_MINUTES)
    done = 0
    for deployment, version, route in live_versions():
        job.check_cancelled()
        check(deployment, version, start=start, end=end, route=route)
        done += 1
    return {"checks": done}


@task(queue="monitoring", roles=READ_ROLES, outcome=_outcome)
def run_check(job, deployment_id, version_id, start, end, route=""):
    """An on-demand check, as the person who asked for it."""
    from lifecycle.registry.models import ModelVersion

    deployment = Deployment.objects.get(pk=deployment_id)
    version = ModelVersion.objects.get(pk=version_id)
    found = check(deployment, version, start=datetime.fromisoformat(start), end=datetime.fromisoformat(end),
                  route=route, trigger=DriftCheck.Trigger.DEMAND, user=job.row.created_by)
    return {"check": found.pk}


def request_check(user, deployment, version, route=""):
    """Enqueue an on-demand check of the last MONITORING_DRIFT_WINDOW_MINUTES (the page's button)."""
    end = timezone.now()
    start = end - timedelta(minutes=settings.MONITORING_DRIFT_WINDOW_MINUTES)
    with transaction.atomic():
        return enqueue(run_check, user=user, deployment_id=deployment.pk, version_id=version.pk,
                       start=start.isoformat(), end=end.isoformat(), route=route)


def compared_value(entry):
    """What a result compares with its threshold: the distance, or the adjusted p-value."""
    return entry["statistic"] if entry["p_value"] is None else entry["p_adjusted"]


def series_of(deployment, version, feature, *, since, limit=500):
    """[(created_at, value, threshold, drifted)] of one feature over the checks since `since`,
    oldest first; `value` is what was compared with the threshold (compared_value)."""
    rows = (DriftCheck.objects.filter(deployment=deployment, version=version, created_at__gte=since, skipped="")
            .order_by("-created_at").values_list("created_at", "results", "embedding")[:limit])
    out = []
    for created_at, results, embedding in reversed(rows):
        if feature == "embedding" and embedding.get("p_adjusted") is not None:
            out.append((created_at, embedding["p_adjusted"], embedding["threshold"], embedding["drifted"]))
        for entry in results:
            if entry["feature"] == feature:
                out.append((created_at, compared_value(entry), entry["threshold"], entry["drifted"]))
    return out
