"""Automatic canary and shadow verdicts: the confidence sequences and per-rule decisions on
simulated streams with a fixed seed (fires on a clearly worse candidate, not on an equal one,
and the false-rollback rate over many equal releases checked after every observation stays
within α), then evaluate() on real prediction-log and feedback rows and the maintenance step
that rolls a failed candidate back or marks a passed one ready to promote."""
import math
import random
import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone
from scipy import stats
from scipy.special import betaln, lambertw

from lifecycle.core.models import AuditEvent
from lifecycle.deployments import verdicts
from lifecycle.deployments.models import DeploymentError, Feedback, PredictionLog, Release, Rollback
from lifecycle.deployments.tasks import evaluate_verdicts
from lifecycle.registry.models import ModelVersion
from tests.deployments.factories import make_deployment

SEED = 20240518


# --- the confidence sequences against references -------------------------------------------------


def test_lambert_w_lower_branch_matches_scipy():
    for z in (-0.36, -0.3, -0.1, -1e-3, -(0.05 / 6) ** 2 / math.e, -1e-12):
        assert verdicts.lambert_w_lower(z) == pytest.approx(lambertw(z, -1).real, rel=1e-12)
    with pytest.raises(ValueError):
        verdicts.lambert_w_lower(0.1)


@pytest.mark.parametrize("k, n", [(0, 1), (0, 50), (3, 50), (20, 1000), (990, 1000), (1000, 1000), (1, 200000)])
def test_the_beta_binomial_interval_ends_where_the_mixture_martingale_reaches_one_over_alpha(k, n):
    """Checked against scipy's log-beta: at each finite end (strictly inside (0, 1)) the
    mixture's likelihood ratio equals 1/α; the estimate is inside."""
    alpha = 0.01
    low, high = verdicts.bernoulli_interval(k, n, alpha)
    assert low <= k / n <= high

    def log_ratio(p):
        return betaln(k + 0.5, n - k + 0.5) - betaln(0.5, 0.5) - k * math.log(p) - (n - k) * math.log1p(-p)

    for end in (low, high):
        if 0 < end < 1:
            assert log_ratio(end) == pytest.approx(math.log(1 / alpha), abs=1e-6)
    assert (low == 0.0) == (k == 0) and (high == 1.0) == (k == n)


def test_the_normal_mixture_radius_is_tightest_where_rho_was_tuned_and_shrinks_like_sqrt_log_n_over_n():
    alpha = 0.05
    rho = verdicts.mixture_rho(500, alpha)
    # Howard et al.'s closed form: ρ = m / (-W₋₁(-α²/e) - 1) minimises the boundary at v = m.
    boundary = lambda r: math.sqrt((125 + r) * math.log((125 + r) / (r * alpha**2)))  # noqa: E731
    assert all(boundary(rho) <= boundary(rho * f) for f in (0.5, 0.9, 1.1, 2.0))
    radii = [verdicts.sub_gaussian_radius(n, alpha, rho) for n in (100, 1000, 10_000, 100_000)]
    assert radii == sorted(radii, reverse=True)
    assert verdicts.sub_gaussian_radius(0, alpha, rho) == math.inf
    # Valid for any [0, 1] stream, so wider than the Bernoulli-exact one near small rates.
    low, high = verdicts.interval(10, 1000, alpha, verdicts.SUB_GAUSSIAN, 500)
    b_low, b_high = verdicts.interval(10, 1000, alpha)
    assert high - low > 2 * (b_high - b_low)


@pytest.mark.parametrize("boundary", [verdicts.BETA_BINOMIAL, verdicts.SUB_GAUSSIAN])
@pytest.mark.parametrize("rate", [0.01, 0.3])
def test_each_sides_interval_covers_the_true_rate_at_every_step_at_once(boundary, rate):
    """Time-uniform coverage: over 1,000 streams of 3,000 observations, the share whose
    interval ever misses the true rate is within α (and a binomial allowance)."""
    alpha, streams, steps = 0.05, 1000, 3000
    rng = np.random.default_rng(SEED)
    k = np.cumsum(rng.random((streams, steps)) < rate, axis=1)
    n = np.broadcast_to(np.arange(1, steps + 1), k.shape)
    low, high = _interval_table(k, n, alpha, boundary)
    missed = ((low > rate) | (high < rate)).any(axis=1).sum()
    assert missed <= stats.binom.ppf(0.999, streams, alpha), missed


def _interval_table(k, n, alpha, boundary, n_opt=200):
    """verdicts.interval for every (k, n) in the arrays, computed once per distinct pair."""
    width = int(n.max()) + 1
    keys, inverse = np.unique(k.astype(np.int64) * width + n, return_inverse=True)
    ends = np.array([verdicts.interval(int(key // width), int(key % width), alpha, boundary, n_opt) for key in keys])
    inverse = inverse.reshape(k.shape)
    return ends[inverse, 0], ends[inverse, 1]


# --- per-rule decisions on simulated releases ----------------------------------------------------


def _simulate(candidate_rate, stable_rate, *, share, steps, releases, seed):
    """Cumulative (k, n) per side after each request of `releases` simulated canaries."""
    rng = np.random.default_rng(seed)
    to_candidate = rng.random((releases, steps)) < share
    bad = rng.random((releases, steps)) < np.where(to_candidate, candidate_rate, stable_rate)
    nc = np.cumsum(to_candidate, axis=1)
    kc = np.cumsum(bad & to_candidate, axis=1)
    ns = np.cumsum(~to_candidate, axis=1)
    ks = np.cumsum(bad & ~to_candidate, axis=1)
    return kc, nc, ks, ns


def _first_failure(kc, nc, ks, ns, *, alpha, min_n, fail_margin=0.0, boundary=verdicts.BETA_BINOMIAL):
    """Per release, whether the rule ever failed, checking after every request (the same
    interval and worse_by/decide as verdicts.two_sample_rule, vectorised over the steps)."""
    c_low, _ = _interval_table(kc, nc, alpha / 2, boundary, min_n)
    _, s_high = _interval_table(ks, ns, alpha / 2, boundary, min_n)
    low = c_low - s_high  # verdicts.worse_by's lower end, higher is worse
    checked = (nc >= min_n) & (ns >= min_n)
    return ((low > fail_margin) & checked).any(axis=1)


def test_worse_by_and_decide():
    assert verdicts.worse_by((0.04, 0.06), (0.01, 0.02)) == pytest.approx((0.02, 0.05))
    assert verdicts.worse_by((0.80, 0.85), (0.90, 0.92), higher_is_worse=False) == pytest.approx((0.05, 0.12))
    assert verdicts.decide(0.02, 0.05, fail_margin=0.0, pass_margin=0.01) == "failed"
    assert verdicts.decide(-0.03, 0.005, fail_margin=0.0, pass_margin=0.01) == "passed"
    assert verdicts.decide(-0.01, 0.02, fail_margin=0.0, pass_margin=0.01) == "pending"
    assert verdicts.decide(0.02, 0.03, fail_margin=0.01, pass_margin=0.04) == "failed"  # failing wins


def test_a_clearly_worse_candidate_is_rolled_back_within_a_few_hundred_canary_requests():
    """5 % errors against stable's 1 %, a 10 % canary, α 0.05 split over three rules: the rule
    fires in every one of 50 simulated releases, checked after every request."""
    alpha_rule = 0.05 / 3
    kc, nc, ks, ns = _simulate(0.05, 0.01, share=0.10, steps=15_000, releases=50, seed=SEED)
    c_low, _ = _interval_table(kc, nc, alpha_rule / 2, verdicts.BETA_BINOMIAL)
    _, s_high = _interval_table(ks, ns, alpha_rule / 2, verdicts.BETA_BINOMIAL)
    fired = (c_low - s_high > 0) & (nc >= 200) & (ns >= 200)
    assert fired.any(axis=1).all()
    canary_requests_at_firing = nc[np.arange(50), fired.argmax(axis=1)]
    assert np.median(canary_requests_at_firing) < 600 and canary_requests_at_firing.max() < 1500


def test_one_stream_through_the_rule_fails_the_worse_candidate_and_passes_the_equal_one():
    """verdicts.two_sample_rule itself, after every request of one seeded stream each."""
    def run(candidate_rate, stable_rate):
        rng = random.Random(SEED)
        kc = nc = ks = ns = 0
        for _ in range(200_000):
            if rng.random() < 0.10:
                nc += 1
                kc += rng.random() < candidate_rate
            else:
                ns += 1
                ks += rng.random() < stable_rate
            rule = verdicts.two_sample_rule((kc, nc), (ks, ns), alpha=0.05 / 3, higher_is_worse=True,
                                            fail_margin=0.0, pass_margin=0.01, min_n=200)
            if rule["decision"] in ("failed", "passed"):
                return rule
        return rule

    worse = run(0.05, 0.01)
    assert worse["decision"] == "failed" and worse["candidate"]["n"] < 1500
    assert worse["worse_by"]["low"] > 0 and worse["candidate"]["rate"] > worse["stable"]["rate"]
    equal = run(0.01, 0.01)
    assert equal["decision"] == "passed" and equal["worse_by"]["high"] < 0.01
    assert equal["candidate"]["n"] < 20_000  # a few hours of a 10 % canary at a few requests a second


@pytest.mark.parametrize("boundary, rate", [(verdicts.BETA_BINOMIAL, 0.01), (verdicts.BETA_BINOMIAL, 0.2),
                                            (verdicts.SUB_GAUSSIAN, 0.2)])
def test_the_false_rollback_rate_over_1000_equal_releases_checked_after_every_request_is_within_alpha(boundary, rate):
    """The stated guarantee: a candidate equal to stable is rolled back with probability ≤ α,
    however often the verdict is read. One rule at the whole α (the sharpest case; a release's
    rules share α by a union bound), checked from the 20th request on each side."""
    alpha, releases = 0.05, 1000
    kc, nc, ks, ns = _simulate(rate, rate, share=0.5, steps=4000, releases=releases, seed=SEED)
    rolled_back = _first_failure(kc, nc, ks, ns, alpha=alpha, min_n=20, boundary=boundary).sum()
    assert rolled_back <= stats.binom.ppf(0.999, releases, alpha), rolled_back


def test_the_same_harness_catches_a_test_that_is_not_anytime_valid():
    """Peeking at a fixed-sample z-test after every request (what a dashboard alert does)
    rolls back far more than 5 % of equal candidates: the check above can fail."""
    alpha, releases = 0.05, 1000
    kc, nc, ks, ns = _simulate(0.2, 0.2, share=0.5, steps=4000, releases=releases, seed=SEED)
    pc, ps = kc / np.maximum(nc, 1), ks / np.maximum(ns, 1)
    pooled = (kc + ks) / (nc + ns)
    se = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(nc, 1) + 1 / np.maximum(ns, 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (pc - ps) / se, 0.0)
    checked = (nc >= 20) & (ns >= 20)
    peeked = ((z > stats.norm.ppf(1 - alpha)) & checked).any(axis=1).sum()
    assert peeked > 3 * alpha * releases, peeked


def test_an_accuracy_rule_fails_a_candidate_shown_less_accurate():
    rule = verdicts.two_sample_rule((120, 200), (190, 200), alpha=0.05 / 3, higher_is_worse=False,
                                    fail_margin=0.0, pass_margin=0.01, min_n=30)
    assert rule["decision"] == "failed" and rule["worse_by"]["estimate"] == pytest.approx(0.35)
    too_few = verdicts.two_sample_rule((12, 20), (19, 20), alpha=0.05 / 3, higher_is_worse=False,
                                       fail_margin=0.0, pass_margin=0.01, min_n=30)
    assert too_few["decision"] == "waiting"


def test_the_disagreement_limit_rule():
    assert verdicts.limit_rule((300, 1000), alpha=0.0125, limit=0.1, min_n=200)["decision"] == "failed"
    assert verdicts.limit_rule((20, 1000), alpha=0.0125, limit=0.1, min_n=200)["decision"] == "passed"
    assert verdicts.limit_rule((90, 1000), alpha=0.0125, limit=0.1, min_n=200)["decision"] == "pending"
    assert verdicts.limit_rule((90, 100), alpha=0.0125, limit=0.1, min_n=200)["decision"] == "waiting"


def test_the_p99_rule_of_the_threshold_form_is_the_share_of_slow_requests():
    """p99 ≤ target ⇔ at most n - ceil(0.99 n) requests are over it; checked against numpy's
    'inverted_cdf' percentile (the same rank as percentile_disc) on random latencies."""
    rng = np.random.default_rng(SEED)
    for n in (1, 50, 99, 100, 101, 250, 1000):
        for _ in range(20):
            latencies = rng.lognormal(5.5, 0.6, n)
            target = float(rng.choice(latencies))
            p99 = np.percentile(latencies, 99, method="inverted_cdf")
            assert verdicts.p99_within(n, int((latencies > target).sum())) == (p99 <= target)


def test_a_threshold_interval_check():
    assert verdicts.threshold_check(100, 0, 1, min_success_rate=0.99, min_requests=10) == ("passed", "")
    outcome, why = verdicts.threshold_check(100, 2, 0, min_success_rate=0.99, min_requests=10)
    assert outcome == "failed" and "success rate 98.0%" in why
    outcome, why = verdicts.threshold_check(100, 0, 2, min_success_rate=0.99, min_requests=10)
    assert outcome == "failed" and "p99" in why
    assert verdicts.threshold_check(5, 5, 5, min_success_rate=0.99, min_requests=10)[0] == "pending"


def test_the_fixed_threshold_form_rolls_back_an_equal_candidate_when_stable_itself_is_near_the_limit():
    """Why the sequential test is the default: with both sides at 0.8 % errors and 100 requests
    a minute, most equal candidates collect 5 failed one-minute checks within an hour."""
    rng = np.random.default_rng(SEED)
    rolled_back = 0
    for _ in range(200):
        errors = rng.binomial(100, 0.008, size=60)
        failed = sum(verdicts.threshold_check(100, int(e), 0, min_success_rate=0.99, min_requests=10)[0] == "failed"
                     for e in errors)
        rolled_back += failed >= 5
    assert rolled_back > 100


# --- the settings ------------------------------------------------------------------------------


def test_clean_rules_fills_the_defaults_of_each_method():
    assert verdicts.clean_rules({}) == verdicts.DEFAULT_RULES
    assert verdicts.clean_rules(None)["alpha"] == 0.05
    rules = verdicts.clean_rules({"alpha": 0.01, "min_requests": 500, "pass_margin": 0.02})
    assert (rules["alpha"], rules["min_requests"], rules["pass_margin"], rules["fail_margin"]) == (0.01, 500, 0.02, 0.0)
    threshold = verdicts.clean_rules({"method": "threshold", "max_failed_checks": 3})
    assert threshold == {"method": "threshold", "min_requests": 200, "interval_minutes": 1, "min_success_rate": 0.99,
                         "max_p99_ms": 500.0, "max_failed_checks": 3, "pass_checks": 10, "min_interval_requests": 10}
    assert isinstance(verdicts.clean_rules({"latency_target_ms": 300})["latency_target_ms"], float)
    assert verdicts.clean_rules({"min_requests": 300.0})["min_requests"] == 300


@pytest.mark.parametrize("rules, message", [
    ({"method": "bayes"}, "method is sequential or threshold"),
    ({"alhpa": 0.05}, "Unknown verdict setting 'alhpa'"),
    ({"max_failed_checks": 3}, "max_failed_checks is a setting of the threshold method"),
    ({"method": "threshold", "alpha": 0.05}, "alpha is a setting of the sequential method"),
    ({"alpha": "0.05"}, "alpha is the false-rollback rate"),
    ({"alpha": 0}, "between 0 and 0.5"),
    ({"alpha": 0.5}, "between 0 and 0.5"),
    ({"alpha": 0.7}, "between 0 and 0.5"),
    ({"alpha": float("nan")}, "between 0 and 0.5"),
    ({"fail_margin": -0.1}, "fail_margin is a difference of rates, 0 to 1"),
    ({"pass_margin": 1.5}, "pass_margin is a difference of rates, 0 to 1"),
    ({"min_requests": 0}, "min_requests is a whole number of requests, at least 1"),
    ({"min_requests": 2.5}, "min_requests is a whole number"),
    ({"min_requests": True}, "min_requests is a whole number"),
    ({"require_feedback": "yes"}, "require_feedback is true or false"),
    ({"boundary": "hoeffding"}, "boundary is beta_binomial or sub_gaussian"),
    ({"latency_target_ms": 0}, "latency_target_ms is a number of milliseconds above 0"),
    ({"method": "threshold", "interval_minutes": 0}, "interval_minutes is a whole number of minutes, 1 to 60"),
    ({"method": "threshold", "min_success_rate": 99}, "min_success_rate is a share of requests, 0 to 1"),
    (["alpha", 0.05], "an object of settings"),
])
def test_clean_rules_refuses_bad_settings_with_a_clear_message(rules, message):
    with pytest.raises(DeploymentError, match=message):
        verdicts.clean_rules(rules)


@pytest.mark.django_db
def test_a_release_with_bad_rules_is_refused_and_nothing_is_written(trained, store_with_output, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path)
    candidate = ModelVersion.objects.filter(model=deployment.model).exclude(pk=deployment.current_release.stable_id).get()
    events = AuditEvent.objects.count()
    with pytest.raises(DeploymentError, match="alpha"):
        deployment.start_release(people["erin"], candidate=candidate, mode="canary", share=10, rules={"alpha": 0.9})
    deployment.refresh_from_db()
    assert Release.objects.filter(deployment=deployment).count() == 1 and deployment.generation == 1
    assert AuditEvent.objects.count() == events
    release = deployment.start_release(people["erin"], candidate=candidate, mode="canary", share=10,
                                       rules={"alpha": 0.01})
    assert release.rules == {**verdicts.DEFAULT_RULES, "alpha": 0.01}


# --- evaluate() on real rows ---------------------------------------------------------------------


def _log(release, route, count, *, errors=0, slow=0, labels=None, inputs=1, start=None, spacing=timedelta(0),
         request_ids=None, latencies=None):
    """`count` requests of `inputs` inputs each on `route`, the first `errors` failed and the
    next `slow` slower than 500 ms (the others take 40 ms plus 1 ms per input position, or
    `latencies[request][position]`), written with bulk_create as the serving process's log
    batches arrive. Returns the request ids."""
    version = release.candidate_id if route != "stable" else release.stable_id
    start = start or timezone.now() - timedelta(minutes=5)
    request_ids = request_ids or [uuid.uuid4() for _ in range(count)]
    rows = []
    for i, request_id in enumerate(request_ids):
        error = i < errors
        for position in range(inputs):
            label = (labels[i] if labels else "billing") if not error else ""
            rows.append(PredictionLog(
                request_id=request_id, position=position, deployment_id=release.deployment_id, release_id=release.pk,
                version_id=version, route=route, input_text=f"ticket {i}", output={"label": label}, label=label,
                confidence=0.9, latency_ms=_latency(i, position, errors, slow, latencies),
                status="error" if error else "ok", error="model failed" if error else "",
                created_at=start + spacing * i))
    PredictionLog.objects.bulk_create(rows, batch_size=2000)
    return request_ids


def _latency(i, position, errors, slow, latencies):
    if latencies is not None:
        return float(latencies[i][position])
    return 900.0 if errors <= i < errors + slow else 40.0 + position


def _feedback(release, request_ids, *, correct):
    """Feedback rows on these requests: the first `correct` judged right, the rest wrong."""
    rows = [Feedback(request_id=rid, position=0, deployment_id=release.deployment_id, release_id=release.pk,
                     predicted_label="billing", correct=i < correct, is_override=i >= correct)
            for i, rid in enumerate(request_ids)]
    Feedback.objects.bulk_create(rows)


@pytest.fixture
def canary(trained, store_with_output, people, tmp_path):
    return make_deployment(trained, people, tmp_path, mode="canary", share=10).current_release


@pytest.fixture
def shadow(trained, store_with_output, people, tmp_path):
    return make_deployment(trained, people, tmp_path, mode="shadow").current_release


@pytest.mark.django_db
def test_nothing_is_decided_before_min_requests_on_each_side(canary):
    _log(canary, "stable", 1000)
    _log(canary, "canary", 150, errors=150)  # every request failed, but too few yet
    result = verdicts.evaluate(canary)
    assert result.verdict == "pending" and "Waiting for 200 requests on each side (candidate 150 so far)" in result.reason
    assert result.numbers["sides"]["candidate"]["errors"] == 150
    assert evaluate_verdicts() == 0
    canary.refresh_from_db()
    assert canary.verdict == "pending" and canary.verdict_numbers["decision"] == "waiting" and canary.verdict_at


@pytest.mark.django_db
def test_a_candidate_with_more_errors_is_rolled_back_by_the_maintenance_step_and_says_why(canary, django_capture_on_commit_callbacks):
    _log(canary, "stable", 3000, errors=30)  # 1 %
    _log(canary, "canary", 400, errors=32)  # 8 %
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate_verdicts() == 1
    canary.refresh_from_db()
    assert (canary.verdict, canary.status) == ("failed", "rolled_back")
    assert canary.verdict_reason.startswith("error rate: candidate 8.0% vs stable 1.0%, worse by at least")
    rule = canary.verdict_numbers["results"]["error_rate"]
    assert rule["decision"] == "failed" and rule["worse_by"]["low"] > 0
    assert (rule["candidate"]["n"], rule["candidate"]["k"], rule["stable"]["n"], rule["stable"]["k"]) == (400, 32, 3000, 30)
    assert canary.verdict_numbers["results"]["slow_rate"]["decision"] != "failed"
    rollback = Rollback.objects.get(release=canary)
    assert rollback.automatic and rollback.actor is None and "automatic verdict: error rate" in rollback.reason
    event = AuditEvent.objects.get(action="release.rolled_back")
    assert event.payload["automatic"] and event.payload["reason"] == rollback.reason
    canary.deployment.refresh_from_db()
    assert canary.deployment.routes()["candidate"] is None
    assert evaluate_verdicts() == 0  # decided once


@pytest.mark.django_db
def test_an_equal_candidate_is_marked_ready_to_promote_once_enough_traffic_is_in(canary):
    _log(canary, "stable", 2000)
    _log(canary, "canary", 300)
    assert evaluate_verdicts() == 0  # in, but not yet enough to show it no worse by a point
    canary.refresh_from_db()
    assert canary.verdict == "pending" and canary.verdict_reason.startswith("Not decided yet: error rate could be worse")
    _log(canary, "stable", 4000)
    _log(canary, "canary", 1200)
    assert evaluate_verdicts() == 1
    canary.refresh_from_db()
    assert (canary.verdict, canary.status) == ("passed", "active")
    assert canary.verdict_reason.startswith("Ready to promote: after 1,500 candidate and 6,000 stable requests")
    assert "no feedback verdict yet" in canary.verdict_reason
    checked = canary.verdict_numbers["results"]
    assert {name: r["decision"] for name, r in checked.items()} == {
        "error_rate": "passed", "slow_rate": "passed", "accuracy": "waiting"}
    assert canary.verdict_numbers["alpha_per_rule"] == pytest.approx(0.05 / 3)
    assert AuditEvent.objects.filter(action="release.verdict_passed").count() == 1
    assert not Rollback.objects.exists()


@pytest.mark.django_db
def test_require_feedback_holds_the_pass_until_the_accuracy_rule_passes(trained, store_with_output, people, tmp_path):
    release = make_deployment(trained, people, tmp_path, mode="canary",
                              rules={"require_feedback": True, "pass_margin": 0.1}).current_release
    _log(release, "stable", 2000)
    canary_ids = _log(release, "canary", 1500)
    assert verdicts.evaluate(release).verdict == "pending"
    stable_ids = list(PredictionLog.objects.filter(release_id=release.pk, route="stable")
                      .values_list("request_id", flat=True)[:600])
    _feedback(release, stable_ids, correct=600)
    _feedback(release, canary_ids[:600], correct=600)
    result = verdicts.evaluate(release)
    assert result.verdict == "passed", result.reason
    accuracy = result.numbers["results"]["accuracy"]
    assert (accuracy["candidate"]["k"], accuracy["candidate"]["n"], accuracy["stable"]["n"]) == (600, 600, 600)


@pytest.mark.django_db
def test_a_candidate_whose_answers_feedback_marks_wrong_is_rolled_back(canary, django_capture_on_commit_callbacks):
    stable_ids = _log(canary, "stable", 2000)
    canary_ids = _log(canary, "canary", 400)
    _feedback(canary, stable_ids[:200], correct=190)  # 95 %
    _feedback(canary, canary_ids[:200], correct=120)  # 60 %
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate_verdicts() == 1
    canary.refresh_from_db()
    assert canary.verdict == "failed" and canary.status == "rolled_back"
    assert canary.verdict_reason.startswith("feedback accuracy: candidate 60.0% vs stable 95.0%")
    accuracy = canary.verdict_numbers["results"]["accuracy"]
    assert (accuracy["candidate"]["k"], accuracy["candidate"]["n"], accuracy["stable"]["k"]) == (120, 200, 190)


@pytest.mark.django_db
def test_a_slow_candidate_fails_the_latency_rule_and_each_sides_p99_is_reported(canary, django_capture_on_commit_callbacks):
    _log(canary, "stable", 3000, slow=15, inputs=2)  # 0.5 % over 500 ms
    _log(canary, "canary", 500, slow=40, inputs=2)  # 8 %
    result = verdicts.evaluate(canary)
    assert result.verdict == "failed" and result.reason.startswith("slow requests: candidate 8.0% vs stable 0.5%")
    slow = result.numbers["results"]["slow_rate"]
    assert slow["candidate"]["p99_ms"] == 900.0 and slow["stable"]["p99_ms"] == 41.0  # a request's slowest input
    assert (slow["candidate"]["n"], slow["candidate"]["k"]) == (500, 40)  # requests, not inputs
    assert slow["latency_target_ms"] == 500.0


@pytest.mark.django_db
def test_p99_by_percentile_disc_and_by_an_ordered_offset_agree_with_numpy(canary):
    latencies = np.random.default_rng(SEED).lognormal(4, 0.8, (537, 3)).round(3)
    _log(canary, "canary", 537, inputs=3, latencies=latencies)
    expected = float(np.percentile(latencies.max(axis=1), 99, method="inverted_cdf"))
    assert verdicts.p99_by_offset(canary, "canary", 537) == pytest.approx(expected)
    if connection.vendor == "postgresql":
        assert verdicts.request_p99s(canary, {"canary": 537}) == {"canary": pytest.approx(expected)}


@pytest.mark.django_db
def test_a_shadow_that_disagrees_with_stable_too_often_is_rolled_back(shadow, django_capture_on_commit_callbacks):
    ids = _log(shadow, "stable", 600, labels=["billing"] * 600)
    _log(shadow, "shadow", 600, labels=["billing", "refund", "refund"] * 200, request_ids=ids)
    assert verdicts.disagreement_counts(shadow) == (400, 600)
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate_verdicts() == 1
    shadow.refresh_from_db()
    assert shadow.verdict == "failed" and shadow.status == "rolled_back"
    assert shadow.verdict_reason.startswith("disagreement with stable: 66.7% of answers differ, shown above the 10.0% limit")
    assert shadow.verdict_numbers["routes"]["candidate"] == "shadow"


@pytest.mark.django_db
def test_a_shadow_that_agrees_passes(shadow):
    ids = _log(shadow, "stable", 1500, labels=["billing", "refund"] * 750)
    _log(shadow, "shadow", 1500, labels=["billing", "refund"] * 750, request_ids=ids)
    result = verdicts.evaluate(shadow)
    assert result.verdict == "passed", result.reason
    assert {n: r["decision"] for n, r in result.numbers["results"].items()} == {
        "error_rate": "passed", "slow_rate": "passed", "accuracy": "waiting", "disagreement": "passed"}
    assert result.numbers["alpha_per_rule"] == pytest.approx(0.05 / 4)


@pytest.mark.django_db
def test_a_shadow_is_judged_on_the_feedback_given_to_stables_answers(shadow):
    """The shadow's label against the corrected label, or stable's when stable was confirmed;
    stable marked wrong without a label: a shadow that answered the same is wrong too, one that
    answered otherwise cannot be judged and is left out."""
    ids = _log(shadow, "stable", 4, labels=["billing"] * 4)
    _log(shadow, "shadow", 4, labels=["billing", "refund", "billing", "refund"], request_ids=ids)
    Feedback.objects.bulk_create([
        Feedback(request_id=ids[0], deployment_id=shadow.deployment_id, release_id=shadow.pk,
                 predicted_label="billing", correct=True),  # both right
        Feedback(request_id=ids[1], deployment_id=shadow.deployment_id, release_id=shadow.pk,
                 predicted_label="billing", label="refund", correct=False, is_override=True),  # shadow right
        Feedback(request_id=ids[2], deployment_id=shadow.deployment_id, release_id=shadow.pk,
                 predicted_label="billing", correct=False, is_override=True),  # both wrong
        Feedback(request_id=ids[3], deployment_id=shadow.deployment_id, release_id=shadow.pk,
                 predicted_label="billing", correct=False, is_override=True),  # shadow unknown
    ])
    assert verdicts.feedback_counts(shadow) == {"stable": (1, 3), "candidate": (2, 3), "left_out": 1}


@pytest.mark.django_db
def test_the_threshold_form_counts_failed_one_minute_checks_and_rolls_back_at_the_limit(
        trained, store_with_output, people, tmp_path, django_capture_on_commit_callbacks):
    release = make_deployment(trained, people, tmp_path, mode="canary",
                              rules={"method": "threshold", "max_failed_checks": 3, "min_requests": 100}).current_release
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=10)
    _log(release, "stable", 400, start=minute, spacing=timedelta(seconds=1))
    every_half_second = timedelta(milliseconds=500)
    for i in range(4):  # four good minutes (in one, 1 of 100 requests is slow: p99 still within)
        _log(release, "canary", 100, slow=int(i == 0), start=minute + timedelta(minutes=i), spacing=every_half_second)
    _log(release, "canary", 5, errors=5, start=minute + timedelta(minutes=4))  # too few: skipped
    for i in (5, 6):  # two minutes at 97 % success
        _log(release, "canary", 100, errors=3, start=minute + timedelta(minutes=i), spacing=every_half_second)
    _log(release, "canary", 100, errors=50, start=minute + timedelta(minutes=8))
    result = verdicts.evaluate(release, now=minute + timedelta(minutes=8, seconds=30))  # minute 8 still running
    assert result.verdict == "pending", result.reason
    assert result.numbers["checks"] == {"passed": 4, "failed": 2, "skipped": 1}
    assert [i["outcome"] for i in result.numbers["intervals"]] == ["passed"] * 4 + ["pending", "failed", "failed"]
    assert result.numbers["intervals"][-1]["why"] == "success rate 97.0% < 99.0%"
    _log(release, "canary", 100, slow=3, start=minute + timedelta(minutes=7), spacing=every_half_second)
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate_verdicts() == 1  # now: minutes 7 (p99) and 8 (errors) complete and failed too
    release.refresh_from_db()
    assert release.verdict == "failed" and release.status == "rolled_back"
    assert release.verdict_reason == ("4 interval checks failed (success rate ≥ 99.0%, p99 ≤ 500 ms per 1-minute "
                                      "interval); the limit is 3. Last: success rate 50.0% < 99.0%.")
    assert Rollback.objects.get(release=release).automatic


@pytest.mark.django_db
def test_the_threshold_form_passes_after_its_passed_checks(trained, store_with_output, people, tmp_path):
    release = make_deployment(trained, people, tmp_path, mode="canary",
                              rules={"method": "threshold", "pass_checks": 3}).current_release
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=4)
    _log(release, "stable", 500, start=start)
    for i in range(3):
        _log(release, "canary", 100, start=start + timedelta(minutes=i), spacing=timedelta(milliseconds=500))
    result = verdicts.evaluate(release)
    assert result.verdict == "passed" and result.reason.startswith("Ready to promote: 3 interval checks passed")
    assert result.numbers["sides"]["candidate"]["p99_ms"] == 40.0


@pytest.mark.django_db
def test_stored_rules_that_no_longer_clean_leave_the_verdict_pending(canary):
    Release.objects.filter(pk=canary.pk).update(rules={"alpha": 3})
    canary.refresh_from_db()
    result = verdicts.evaluate(canary)
    assert result.verdict == "pending" and "not valid" in result.reason


@pytest.mark.django_db
def test_a_passed_candidate_that_gets_worse_is_still_rolled_back(trained, store_with_output, people, tmp_path):
    verdicts_module = verdicts
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=50)
    release = deployment.current_release
    release.record_verdict(verdicts_module.Result("passed", "no worse by a point", {}))
    release.refresh_from_db()
    assert release.verdict == "passed"
    release.record_verdict(verdicts_module.Result("pending", "", {"n": 1}))
    release.refresh_from_db()
    assert release.verdict == "passed" and release.verdict_reason == "no worse by a point"
    rollback = release.record_verdict(verdicts_module.Result("failed", "error rate worse", {}))
    release.refresh_from_db()
    assert rollback is not None and release.verdict == "failed" and release.status == "rolled_back"
