"""Automatic verdicts on a release's candidate against its stable version, on the same
release's traffic (docs/verdicts.md has the math, the settings and their defaults).

Two methods, chosen by the release's `rules["method"]`:

- "sequential" (the default): every rule (error rate, slow-request rate, feedback accuracy,
  and for a shadow the disagreement rate) is decided by anytime-valid confidence sequences,
  one per side, with α split over sides and rules by a union bound. The verdict may be read
  after every request: the chance that a candidate no worse than stable is ever rolled back
  stays at most α, however often it is checked.
- "threshold" (Flagger's form): per interval the candidate's success rate and p99 against
  fixed limits; rolled back after `max_failed_checks` failed intervals. No stated error rate.

The math is in pure functions (confidence intervals, per-rule decisions) tested on simulated
streams; `evaluate(release)` reads a few aggregates from the prediction log and feedback and
hands them to those functions.
"""
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection
from django.db.models import Count, F, Max, OuterRef, Q, Subquery
from django.db.models.functions import TruncMinute
from django.utils import timezone

from lifecycle.deployments.models import DeploymentError, Feedback, PredictionLog, Route

SEQUENTIAL, THRESHOLD = "sequential", "threshold"
BETA_BINOMIAL, SUB_GAUSSIAN = "beta_binomial", "sub_gaussian"
PENDING, PASSED, FAILED = "pending", "passed", "failed"  # Release.Verdict's values
WAITING = "waiting"  # a rule (not a verdict) that has too little data to be read yet

# --- settings -----------------------------------------------------------------------------------

COMMON_DEFAULTS = {"min_requests": 200}
SEQUENTIAL_DEFAULTS = {
    "alpha": 0.05,  # bound on the chance of rolling back a candidate no worse than stable
    "boundary": BETA_BINOMIAL,
    "fail_margin": 0.0,  # roll back once the candidate is shown worse by more than this (a rate, 0–1)
    "pass_margin": 0.01,  # ready to promote once shown worse by less than this on every rule
    "latency_target_ms": 500.0,  # a request slower than this counts as slow
    "max_disagreement": 0.1,  # shadow: the largest share of labels the candidate may answer differently
    "min_feedback": 30,  # per side, before the accuracy rule is read
    "require_feedback": False,  # True: no pass until the accuracy rule passes too
}
THRESHOLD_DEFAULTS = {
    "interval_minutes": 1,
    "min_success_rate": 0.99,
    "max_p99_ms": 500.0,
    "max_failed_checks": 5,  # failed intervals (in all, as Flagger counts them) before rolling back
    "pass_checks": 10,  # passed intervals before the candidate is ready to promote
    "min_interval_requests": 10,  # an interval with fewer candidate requests is skipped, not judged
}
DEFAULT_RULES = {"method": SEQUENTIAL, **COMMON_DEFAULTS, **SEQUENTIAL_DEFAULTS}

_METHOD_DEFAULTS = {SEQUENTIAL: SEQUENTIAL_DEFAULTS, THRESHOLD: THRESHOLD_DEFAULTS}


@dataclass(frozen=True)
class _Setting:
    kind: type  # float, int, bool or str
    low: float = None
    high: float = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    says: str = ""  # the rule, as the error message states it


_SETTINGS = {
    "min_requests": _Setting(int, 1, says="a whole number of requests, at least 1"),
    "alpha": _Setting(float, 0.0, 0.5, open_low=True, open_high=True,
                      says="the false-rollback rate, a number between 0 and 0.5 (exclusive)"),
    "boundary": _Setting(str, choices=(BETA_BINOMIAL, SUB_GAUSSIAN), says=f"{BETA_BINOMIAL} or {SUB_GAUSSIAN}"),
    "fail_margin": _Setting(float, 0.0, 1.0, says="a difference of rates, 0 to 1 (0.01 is one point)"),
    "pass_margin": _Setting(float, 0.0, 1.0, says="a difference of rates, 0 to 1 (0.01 is one point)"),
    "latency_target_ms": _Setting(float, 0.0, open_low=True, says="a number of milliseconds above 0"),
    "max_disagreement": _Setting(float, 0.0, 1.0, says="a share of answers, 0 to 1"),
    "min_feedback": _Setting(int, 1, says="a whole number of feedback answers, at least 1"),
    "require_feedback": _Setting(bool, says="true or false"),
    "interval_minutes": _Setting(int, 1, 60, says="a whole number of minutes, 1 to 60"),
    "min_success_rate": _Setting(float, 0.0, 1.0, says="a share of requests, 0 to 1"),
    "max_p99_ms": _Setting(float, 0.0, open_low=True, says="a number of milliseconds above 0"),
    "max_failed_checks": _Setting(int, 1, says="a whole number of intervals, at least 1"),
    "pass_checks": _Setting(int, 1, says="a whole number of intervals, at least 1"),
    "min_interval_requests": _Setting(int, 1, says="a whole number of requests, at least 1"),
}


def clean_rules(rules):
    """The verdict settings a release stores: `rules` checked and every default filled in.
    Raises DeploymentError naming the setting and what it takes."""
    if rules is None:
        rules = {}
    if not isinstance(rules, dict):
        raise DeploymentError("The verdict rules are an object of settings, e.g. {\"alpha\": 0.05}.")
    method = rules.get("method", SEQUENTIAL)
    if method not in _METHOD_DEFAULTS:
        raise DeploymentError(f"A verdict's method is {SEQUENTIAL} or {THRESHOLD}, not {method!r}.")
    defaults = {**COMMON_DEFAULTS, **_METHOD_DEFAULTS[method]}
    other = THRESHOLD if method == SEQUENTIAL else SEQUENTIAL
    out = {"method": method}
    for name, value in rules.items():
        if name == "method":
            continue
        if name in _METHOD_DEFAULTS[other]:
            raise DeploymentError(f"{name} is a setting of the {other} method; these rules use the {method} one.")
        if name not in defaults:
            raise DeploymentError(f"Unknown verdict setting {name!r}; the {method} method takes "
                                  f"{', '.join(sorted(defaults))}.")
        out[name] = _clean_setting(name, value)
    for name, value in defaults.items():
        out.setdefault(name, value)
    return out


def _clean_setting(name, value):
    spec = _SETTINGS[name]
    problem = f"{name} is {spec.says}"
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise DeploymentError(f"{problem}, not {value!r}.")
        return value
    if spec.kind is str:
        if value not in spec.choices:
            raise DeploymentError(f"{problem}, not {value!r}.")
        return value
    # bool is an int to Python; a JSON true is never a number here.
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or not math.isfinite(value) or (spec.kind is int and value != int(value)):
        raise DeploymentError(f"{problem}, not {value!r}.")
    value = spec.kind(value)
    too_low = spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low)
    too_high = spec.high is not None and (value >= spec.high if spec.open_high else value > spec.high)
    if too_low or too_high:
        raise DeploymentError(f"{problem}, not {value!r}.")
    return value


# --- confidence sequences (pure) -----------------------------------------------------------------

# The mixing prior of the beta-binomial boundary: Jeffreys' Beta(1/2, 1/2), which puts more
# weight near 0 and 1 than a flat prior, where error rates and accuracies live.
PRIOR_A = PRIOR_B = 0.5
# Bounds are found to this relative precision (of p, or of 1 - p near 1: a rate of 1e-6
# needs its own digits), far below anything shown or compared.
_TOLERANCE = 1e-9


def _log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def bernoulli_interval(k, n, alpha):
    """The beta-binomial mixture confidence sequence for a Bernoulli rate after `k` ones in
    `n` observations: the p whose likelihood ratio against the mixture stays under 1/α.

    M_n(p) = B(k+a, n-k+b) / B(a, b) / (p^k (1-p)^(n-k)) is a nonnegative martingale with
    mean 1 when p is the true rate, so by Ville's inequality P(∃n: M_n(p) ≥ 1/α) ≤ α: the
    intervals cover p at every n at once with probability ≥ 1 - α."""
    if n == 0:
        return 0.0, 1.0
    # p is inside while log p^k (1-p)^(n-k) stays above this floor. The estimate always is
    # (the mixture never beats the best fit), and the log-likelihood is concave in p.
    floor = _log_beta(k + PRIOR_A, n - k + PRIOR_B) - _log_beta(PRIOR_A, PRIOR_B) + math.log(alpha)
    estimate = k / n
    low = 0.0 if k == 0 else _edge(k, n, floor, estimate)
    high = 1.0 if k == n else 1 - _edge(n - k, n, floor, 1 - estimate)
    return low, high


def _log_likelihood(k, n, p):
    return k * math.log(p) + (n - k) * math.log1p(-p)


def _edge(k, n, floor, estimate):
    """The root below the estimate of log-likelihood(p) = floor (0 < k ≤ n): the upper end is
    the same problem for the count of zeros, mirrored. Newton's method from a point outside
    the interval: on a concave function its steps approach the root from outside, never past it."""
    p = estimate / 2
    while _log_likelihood(k, n, p) >= floor:  # still inside: go further out
        p /= 2
    for _ in range(100):
        value = _log_likelihood(k, n, p) - floor
        slope = k / p - (n - k) / (1 - p)
        step = value / slope  # value < 0 < slope: the step moves p up, towards the root
        p -= step
        if abs(step) <= _TOLERANCE * p:
            break
    return p


SUB_GAUSSIAN_VARIANCE = 0.25  # any observation in [0, 1] is sub-Gaussian with σ² ≤ 1/4


def lambert_w_lower(z):
    """W₋₁(z) for -1/e ≤ z < 0: the solution w ≤ -1 of w·e^w = z (Halley's iteration)."""
    if not -1 / math.e <= z < 0:
        raise ValueError("W₋₁ is defined on [-1/e, 0).")
    if z == -1 / math.e:
        return -1.0
    w = math.log(-z) - math.log(-math.log(-z)) if z > -0.25 else -1.0 - math.sqrt(2 * (1 + math.e * z))
    for _ in range(50):
        ew = math.exp(w)
        f = w * ew - z
        step = f / (ew * (w + 1) - (w + 2) * f / (2 * w + 2))
        w -= step
        if abs(step) <= 1e-14 * abs(w):
            break
    return w


def mixture_rho(n_opt, alpha):
    """The normal mixture's ρ that makes its boundary tightest after `n_opt` observations
    (Howard et al. 2021, section 3.5: ρ = m / (-W₋₁(-α²/e) - 1), m = σ²·n_opt)."""
    return SUB_GAUSSIAN_VARIANCE * n_opt / (-lambert_w_lower(-alpha**2 / math.e) - 1)


def sub_gaussian_radius(n, alpha, rho):
    """Half-width on the mean after `n` observations in [0, 1] of the two-sided normal mixture
    (Robbins) boundary: |S_n| < sqrt((v + ρ) log((v + ρ) / (ρ α²))), v = σ² n, uniformly in n
    with probability ≥ 1 - α. Valid for any [0, 1] stream, its mean may even drift (it then
    covers the running mean), at the price of treating every rate as if its variance were 1/4."""
    if n == 0:
        return math.inf
    v = SUB_GAUSSIAN_VARIANCE * n
    return math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha**2))) / n


def interval(k, n, alpha, boundary=BETA_BINOMIAL, n_opt=200):
    """A (1 - α) confidence sequence's interval for a rate after `k` ones in `n`; `n_opt`
    tunes the sub-Gaussian boundary (where it is tightest)."""
    if boundary == BETA_BINOMIAL:
        return bernoulli_interval(k, n, alpha)
    radius = sub_gaussian_radius(n, alpha, mixture_rho(n_opt, alpha))
    estimate = k / n if n else 0.5
    return max(0.0, estimate - radius), min(1.0, estimate + radius)


# --- per-rule decisions (pure) -------------------------------------------------------------------


def worse_by(candidate, stable, higher_is_worse=True):
    """Bounds on how much worse the candidate's rate is than stable's, from each side's
    interval: (low, high) of candidate - stable (or stable - candidate for an accuracy)."""
    (c_low, c_high), (s_low, s_high) = candidate, stable
    if higher_is_worse:
        return c_low - s_high, c_high - s_low
    return s_low - c_high, s_high - c_low


def decide(low, high, fail_margin, pass_margin):
    """failed when shown worse by more than `fail_margin`; passed when shown worse by less
    than `pass_margin`; else pending. Failing wins when both hold."""
    if low > fail_margin:
        return FAILED
    if high < pass_margin:
        return PASSED
    return PENDING


def two_sample_rule(candidate, stable, *, alpha, higher_is_worse, fail_margin, pass_margin, min_n,
                    boundary=BETA_BINOMIAL, n_opt=200):
    """One rule on two sides, each given as (k, n): the candidate against stable with α/2 per
    side. Returns the numbers the page shows, with the decision."""
    sides = {}
    for name, (k, n) in (("candidate", candidate), ("stable", stable)):
        low, high = interval(k, n, alpha / 2, boundary, n_opt)
        sides[name] = {"n": n, "k": k, "rate": k / n if n else None, "low": low, "high": high}
    low, high = worse_by((sides["candidate"]["low"], sides["candidate"]["high"]),
                         (sides["stable"]["low"], sides["stable"]["high"]), higher_is_worse)
    enough = candidate[1] >= min_n and stable[1] >= min_n
    estimate = None
    if candidate[1] and stable[1]:
        estimate = (sides["candidate"]["rate"] - sides["stable"]["rate"]) * (1 if higher_is_worse else -1)
    return {**sides, "worse_by": {"estimate": estimate, "low": low, "high": high}, "alpha": alpha,
            "higher_is_worse": higher_is_worse, "fail_margin": fail_margin, "pass_margin": pass_margin,
            "min_n": min_n, "decision": decide(low, high, fail_margin, pass_margin) if enough else WAITING}


def limit_rule(observed, *, alpha, limit, min_n, boundary=BETA_BINOMIAL, n_opt=200):
    """One rate, given as (k, n), against a fixed limit (a shadow's disagreement): failed once
    shown above the limit, passed once shown below it."""
    k, n = observed
    low, high = interval(k, n, alpha, boundary, n_opt)
    decision = WAITING
    if n >= min_n:
        decision = FAILED if low > limit else PASSED if high < limit else PENDING
    return {"candidate": {"n": n, "k": k, "rate": k / n if n else None, "low": low, "high": high},
            "alpha": alpha, "limit": limit, "min_n": min_n, "decision": decision}


def p99_within(requests, slow):
    """Whether the p99 of `requests` latencies is within the target when `slow` of them are
    over it: the p99 (the value at rank ceil(0.99 n)) is within iff at most n - ceil(0.99 n) are over."""
    return slow <= requests - math.ceil(0.99 * requests)


def threshold_check(requests, errors, slow, *, min_success_rate, min_requests):
    """One interval of the fixed-threshold form: passed, failed (with why) or skipped."""
    if requests < min_requests:
        return PENDING, "too few requests"
    problems = []
    success = 1 - errors / requests
    if success < min_success_rate:
        problems.append(f"success rate {success:.1%} < {min_success_rate:.1%}")
    if not p99_within(requests, slow):
        problems.append(f"p99 over target ({slow} of {requests} requests slower)")
    return (FAILED, "; ".join(problems)) if problems else (PASSED, "")


# --- evaluation on a release ---------------------------------------------------------------------


@dataclass
class Result:
    verdict: str  # "pending" | "passed" | "failed"
    reason: str = ""
    numbers: dict = field(default_factory=dict)


def candidate_route(release):
    return Route.SHADOW if release.mode == "shadow" else Route.CANARY


def evaluate(release, now=None):
    """The verdict on `release`'s candidate now, with the numbers behind it. Reads aggregates
    only (a handful of queries), never the log's rows."""
    if not release.candidate_id:
        return Result(PENDING, "This release serves only its stable version.")
    try:
        rules = clean_rules(release.rules)
    except DeploymentError as exc:
        return Result(PENDING, f"The release's verdict rules are not valid: {exc}")
    now = now or timezone.now()
    target = rules["latency_target_ms"] if rules["method"] == SEQUENTIAL else rules["max_p99_ms"]
    sides = side_counts(release, target)
    numbers = {"method": rules["method"], "rules": rules, "evaluated_at": now.isoformat(),
               "routes": {"stable": Route.STABLE, "candidate": candidate_route(release)}, "sides": sides}
    # The fixed-threshold form looks at the candidate alone; the sequential one compares.
    needed = ("candidate", "stable") if rules["method"] == SEQUENTIAL else ("candidate",)
    short = [f"{name} {sides[name]['requests']:,}" for name in needed
             if sides[name]["requests"] < rules["min_requests"]]
    if short:
        numbers["decision"] = WAITING
        where = "each side" if len(needed) == 2 else "the candidate"
        return Result(PENDING, f"Waiting for {rules['min_requests']:,} requests on {where} "
                               f"({', '.join(short)} so far).", numbers)
    if rules["method"] == THRESHOLD:
        return _threshold_verdict(release, rules, numbers, now)
    return _sequential_verdict(release, rules, numbers)


def side_counts(release, latency_target_ms):
    """Per side: requests, requests with an error, requests slower than the target, and the
    measured p99 latency. One observation per request: its inputs share a batch and a latency,
    so counting inputs would count one event several times. Two queries."""
    stable, candidate = Route.STABLE, candidate_route(release)
    rows = (PredictionLog.objects.filter(release_id=release.pk, route__in=[stable, candidate])
            .values("route").order_by("route")
            .annotate(requests=Count("request_id", distinct=True),
                      errors=Count("request_id", distinct=True, filter=Q(status=PredictionLog.Status.ERROR)),
                      slow=Count("request_id", distinct=True, filter=Q(latency_ms__gt=latency_target_ms))))
    by_route = {row["route"]: row for row in rows}
    p99s = request_p99s(release, {route: by_route[route]["requests"] for route in by_route})
    sides = {}
    for name, route in (("stable", stable), ("candidate", candidate)):
        row = by_route.get(route, {"requests": 0, "errors": 0, "slow": 0})
        sides[name] = {"requests": row["requests"], "errors": row["errors"], "slow": row["slow"],
                       "error_rate": row["errors"] / row["requests"] if row["requests"] else None,
                       "slow_rate": row["slow"] / row["requests"] if row["requests"] else None,
                       "p99_ms": p99s.get(route)}
    return sides


def _request_latencies(release, routes):
    """A request's latency is its slowest input's (the answer waits for all of them)."""
    return (PredictionLog.objects.filter(release_id=release.pk, route__in=routes)
            .values("route", "request_id").annotate(latency=Max("latency_ms")).order_by())


def request_p99s(release, counts):
    """{route: p99 of its requests' latencies} for the routes in `counts` ({route: requests}).
    percentile_disc on PostgreSQL (one query); elsewhere an ordered query with an offset per
    route. Both give the value at rank ceil(0.99 n), never an interpolation."""
    routes = [route for route, n in counts.items() if n]
    if not routes:
        return {}
    if connection.vendor == "postgresql":
        sql, params = _request_latencies(release, routes).query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("SELECT route, percentile_disc(0.99) WITHIN GROUP (ORDER BY latency) "
                           f"FROM ({sql}) AS requests GROUP BY route", params)
            return dict(cursor.fetchall())
    return {route: p99_by_offset(release, route, counts[route]) for route in routes}


def p99_by_offset(release, route, requests):
    """The p99 of one route's request latencies by an ordered query: the row at rank
    ceil(0.99 n) (the same float arithmetic as PostgreSQL's percentile_disc)."""
    if not requests:
        return None
    offset = max(math.ceil(0.99 * requests) - 1, 0)
    latencies = _request_latencies(release, [route]).order_by("latency").values_list("latency", flat=True)
    return latencies[offset]


# --- the sequential verdict ----------------------------------------------------------------------

RULE_TITLES = {"error_rate": "error rate", "slow_rate": "slow requests", "accuracy": "feedback accuracy",
               "disagreement": "disagreement with stable"}


def applicable_rules(release):
    """The rules this release is judged on, fixed when it starts (α is split over them): the
    accuracy of a shadow and its disagreement compare labels, so they need a classifier."""
    names = ["error_rate", "slow_rate"]
    is_classifier = bool(release.candidate.labels)
    if release.mode != "shadow" or is_classifier:
        names.append("accuracy")
    if release.mode == "shadow" and is_classifier:
        names.append("disagreement")
    return names


def _sequential_verdict(release, rules, numbers):
    names = applicable_rules(release)
    alpha_rule = rules["alpha"] / len(names)
    sides = numbers["sides"]
    common = dict(alpha=alpha_rule, fail_margin=rules["fail_margin"], pass_margin=rules["pass_margin"],
                  boundary=rules["boundary"], n_opt=rules["min_requests"])
    results = {}
    for name, key in (("error_rate", "errors"), ("slow_rate", "slow")):
        results[name] = two_sample_rule((sides["candidate"][key], sides["candidate"]["requests"]),
                                        (sides["stable"][key], sides["stable"]["requests"]), higher_is_worse=True,
                                        min_n=rules["min_requests"], **common)
    if "accuracy" in names:
        feedback = feedback_counts(release)
        results["accuracy"] = two_sample_rule(feedback["candidate"], feedback["stable"], higher_is_worse=False,
                                              min_n=rules["min_feedback"], **{**common, "n_opt": rules["min_feedback"]})
        results["accuracy"]["left_out"] = feedback["left_out"]
    if "disagreement" in names:
        results["disagreement"] = limit_rule(disagreement_counts(release), alpha=alpha_rule,
                                             limit=rules["max_disagreement"], min_n=rules["min_requests"],
                                             boundary=rules["boundary"], n_opt=rules["min_requests"])
    for name, result in results.items():
        result["title"] = RULE_TITLES[name]
    results["slow_rate"]["latency_target_ms"] = rules["latency_target_ms"]
    for side in ("stable", "candidate"):
        results["slow_rate"][side]["p99_ms"] = sides[side]["p99_ms"]
    numbers.update(results=results, alpha_per_rule=alpha_rule)
    return _combine(results, rules, sides, numbers)


def _combine(results, rules, sides, numbers):
    """Any failed rule fails the release; it passes when every rule has passed (the accuracy
    rule may still wait for feedback unless `require_feedback`)."""
    failed = [name for name, r in results.items() if r["decision"] == FAILED]
    if failed:
        numbers["decision"] = FAILED
        return Result(FAILED, "; ".join(_failure(name, results[name]) for name in failed) +
                      f" (α = {rules['alpha']}).", numbers)
    needed = [name for name in results
              if not (name == "accuracy" and results[name]["decision"] == WAITING and not rules["require_feedback"])]
    if all(results[name]["decision"] == PASSED for name in needed):
        numbers["decision"] = PASSED
        passed = ", ".join(RULE_TITLES[name] for name in needed)
        note = "" if "accuracy" in needed or "accuracy" not in results else "; no feedback verdict yet"
        return Result(PASSED, f"Ready to promote: after {sides['candidate']['requests']:,} candidate and "
                              f"{sides['stable']['requests']:,} stable requests the candidate is shown no worse "
                              f"than allowed on {passed}{note} (α = {rules['alpha']}).", numbers)
    numbers["decision"] = PENDING
    open_rules = [_open(name, results[name]) for name in needed if results[name]["decision"] != PASSED]
    return Result(PENDING, "Not decided yet: " + "; ".join(open_rules) + ".", numbers)


def _points(rate):
    return f"{rate * 100:.1f} points"


def _failure(name, r):
    if name == "disagreement":
        return (f"{RULE_TITLES[name]}: {r['candidate']['rate']:.1%} of answers differ, shown above the "
                f"{r['limit']:.1%} limit (at least {r['candidate']['low']:.1%})")
    return (f"{RULE_TITLES[name]}: candidate {r['candidate']['rate']:.1%} vs stable {r['stable']['rate']:.1%}, "
            f"worse by at least {_points(r['worse_by']['low'])} (margin {_points(r['fail_margin'])})")


def _open(name, r):
    if r["decision"] == WAITING:
        return f"{RULE_TITLES[name]} waits for {r['min_n']} on each side"
    if name == "disagreement":
        return (f"{RULE_TITLES[name]} {r['candidate']['rate']:.1%}, between {r['candidate']['low']:.1%} and "
                f"{r['candidate']['high']:.1%} against the {r['limit']:.1%} limit")
    return (f"{RULE_TITLES[name]} could be worse by up to {_points(r['worse_by']['high'])} "
            f"(passes below {_points(r['pass_margin'])})")


def feedback_counts(release):
    """(correct, judged) per side from the feedback on this release's answers. A canary's
    feedback belongs to the side that answered (its log row's route). A shadow's answers are
    never returned, so it is judged on the same feedback as stable: against the corrected label,
    or stable's when stable was confirmed right. When stable was marked wrong without a label,
    a shadow that answered the same is wrong too; one that answered otherwise cannot be judged
    and is left out of both sides (counted in `left_out`)."""
    feedback = Feedback.objects.filter(release_id=release.pk, correct__isnull=False)
    if release.mode != "shadow":
        answered = (PredictionLog.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"))
                    .exclude(route=Route.SHADOW).values("route")[:1])
        rows = (feedback.annotate(route=Subquery(answered)).values("route").order_by("route")
                .annotate(n=Count("id"), k=Count("id", filter=Q(correct=True))))
        by_route = {row["route"]: (row["k"], row["n"]) for row in rows}
        return {"stable": by_route.get(Route.STABLE, (0, 0)), "candidate": by_route.get(Route.CANARY, (0, 0)),
                "left_out": 0}
    shadow = (PredictionLog.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"),
                                           route=Route.SHADOW, status=PredictionLog.Status.OK).values("label")[:1])
    with_shadow = Q(shadow_label__isnull=False)
    judged = with_shadow & (~Q(label="") | Q(correct=True) | Q(shadow_label=F("predicted_label")))
    shadow_right = judged & ((~Q(label="") & Q(shadow_label=F("label")))
                             | (Q(label="") & Q(correct=True) & Q(shadow_label=F("predicted_label"))))
    row = feedback.annotate(shadow_label=Subquery(shadow)).aggregate(
        n=Count("id", filter=judged), stable_k=Count("id", filter=judged & Q(correct=True)),
        shadow_k=Count("id", filter=shadow_right), with_shadow=Count("id", filter=with_shadow))
    return {"stable": (row["stable_k"], row["n"]), "candidate": (row["shadow_k"], row["n"]),
            "left_out": row["with_shadow"] - row["n"]}


def disagreement_counts(release):
    """(disagreeing, pairs): the shadow's answers whose label differs from stable's on the same
    input (request id and position), both answered without an error. One query."""
    stable = (PredictionLog.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"),
                                           route=Route.STABLE, status=PredictionLog.Status.OK).values("label")[:1])
    paired = Q(stable_label__isnull=False)
    row = (PredictionLog.objects.filter(release_id=release.pk, route=Route.SHADOW, status=PredictionLog.Status.OK)
           .annotate(stable_label=Subquery(stable))
           .aggregate(pairs=Count("id", filter=paired), differ=Count("id", filter=paired & ~Q(label=F("stable_label")))))
    return row["differ"], row["pairs"]


# --- the fixed-threshold verdict -----------------------------------------------------------------

SHOWN_INTERVALS = 30  # the page shows the latest intervals; the counts cover all of them


def _threshold_verdict(release, rules, numbers, now):
    intervals = interval_counts(release, rules, now)
    checks = {PASSED: 0, FAILED: 0, PENDING: 0}
    shown = []
    for start, counts in intervals:
        outcome, why = threshold_check(counts["requests"], counts["errors"], counts["slow"],
                                       min_success_rate=rules["min_success_rate"],
                                       min_requests=rules["min_interval_requests"])
        checks[outcome] += 1
        shown.append({"start": start.isoformat(), **counts, "outcome": outcome, "why": why})
    numbers.update(checks={"passed": checks[PASSED], "failed": checks[FAILED], "skipped": checks[PENDING]},
                   intervals=shown[-SHOWN_INTERVALS:])
    failed, passed = checks[FAILED], checks[PASSED]
    limits = (f"success rate ≥ {rules['min_success_rate']:.1%}, p99 ≤ {rules['max_p99_ms']:g} ms "
              f"per {rules['interval_minutes']}-minute interval")
    if failed >= rules["max_failed_checks"]:
        numbers["decision"] = FAILED
        last = next(i["why"] for i in reversed(shown) if i["outcome"] == FAILED)
        return Result(FAILED, f"{failed} interval checks failed ({limits}); the limit is "
                              f"{rules['max_failed_checks']}. Last: {last}.", numbers)
    if passed >= rules["pass_checks"]:
        numbers["decision"] = PASSED
        return Result(PASSED, f"Ready to promote: {passed} interval checks passed ({limits}), "
                              f"{failed} failed.", numbers)
    numbers["decision"] = PENDING
    return Result(PENDING, f"{passed} of {rules['pass_checks']} interval checks passed, {failed} of at most "
                           f"{rules['max_failed_checks'] - 1} failed ({limits}).", numbers)


def interval_counts(release, rules, now):
    """[(interval start, {"requests", "errors", "slow"})] for the candidate's complete intervals,
    oldest first, from per-minute counts (one query; the interval still running is left out)."""
    width = rules["interval_minutes"]
    epoch = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
    current = int((now - epoch).total_seconds() // 60) // width
    rows = (PredictionLog.objects
            .filter(release_id=release.pk, route=candidate_route(release),
                    created_at__lt=epoch + timedelta(minutes=current * width))
            .annotate(minute=TruncMinute("created_at")).values("minute").order_by("minute")
            .annotate(requests=Count("request_id", distinct=True),
                      errors=Count("request_id", distinct=True, filter=Q(status=PredictionLog.Status.ERROR)),
                      slow=Count("request_id", distinct=True, filter=Q(latency_ms__gt=rules["max_p99_ms"]))))
    intervals = {}
    for row in rows:
        index = int((row["minute"] - epoch).total_seconds() // 60) // width
        counts = intervals.setdefault(index, {"requests": 0, "errors": 0, "slow": 0})
        for key in counts:
            counts[key] += row[key]
    return [(epoch + timedelta(minutes=index * width), counts) for index, counts in sorted(intervals.items())]
