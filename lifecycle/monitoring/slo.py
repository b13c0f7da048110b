"""SLOs: a target share of good events over a window (30 days unless set), its error budget,
and multi-window, multi-burn-rate alerts (the SRE Workbook, chapter 5).

An SLI is good events / events, read from the rollups (never the raw log) and the feedback:

    latency             answers faster than threshold_ms (an edge of features.LATENCY_EDGES_MS, so
                        the count is whole histogram bins) / answers in the latency histogram
    availability        requests without a server error / requests
    feedback_accuracy   feedback saying the answer was right / feedback with a right-or-wrong word
    override_rate       answers nobody overrode / answers (1 - overrides/answers; an override
                        counts in the minute the feedback was given)
    estimated_accuracy  expected right answers from the calibrated confidence (estimate.py,
                        CBPE-style) / answers of versions with a ready reference

The error budget is the bad events the target allows: (1 - target) x events over the window;
what is left is 1 - bad / budget (below 0: exhausted). The burn rate over a span is its error
ratio / (1 - target): 1 spends the budget exactly over the window. An alert severity fires when
BOTH the long and the short window of one of its burn windows burn faster than the factor: the
long window keeps a blip from paging, the short one makes the alert reset soon after recovery.

The arithmetic (burn_rate, Timeline, detect, replay) is pure and works on per-minute counts;
evaluate() feeds it the SLO's last days, minute by minute, and fires or clears the alerts.
"""
import logging
import math
import time
from datetime import timedelta
from itertools import accumulate

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from lifecycle.core.jobs import maintenance_step
from lifecycle.core.models import AuditEvent
from lifecycle.deployments.models import Feedback, Route
from lifecycle.monitoring import alerts
from lifecycle.monitoring.features import LATENCY_EDGES_MS
from lifecycle.monitoring.models import SLO, Alert, MonitoringError, Reference, Rollup, default_burn_windows

log = logging.getLogger(__name__)

SEVERITIES = ("page", "ticket")
LIVE_ROUTES = (Route.STABLE, Route.CANARY)  # the answers people got; a shadow's are never returned
EVALUATE_BATCH = 200  # SLOs one maintenance pass looks at, at most
MAX_TARGET = 0.99999  # beyond this the budget is a handful of events a month: no rate means anything


# --- the arithmetic --------------------------------------------------------------------------


def burn_rate(good, total, target):
    """How fast a span spends the error budget: its error ratio over (1 - target); None
    when the span has no events (nothing to judge, which is not the same as 0)."""
    if not total:
        return None
    return (1 - good / total) / (1 - target)


def budget(good, total, target):
    """(allowed bad events, share of them left): the share is None with no events, and
    goes below 0 once more went bad than the target allows."""
    allowed = (1 - target) * total
    if not total or allowed <= 0:
        return allowed, None
    return allowed, 1 - (total - good) / allowed


class Timeline:
    """Per-minute good and total counts, oldest first; the sum of any trailing span in O(1)
    (prefix sums), so a replay over days of minutes stays fast."""

    def __init__(self, good, total):
        self._good = list(accumulate(good, initial=0))
        self._total = list(accumulate(total, initial=0))
        self.minutes = len(self._good) - 1

    @classmethod
    def of(cls, pairs):
        pairs = list(pairs)
        return cls([g for g, _ in pairs], [t for _, t in pairs])

    def counts(self, end, minutes):
        """(good, total) over the `minutes` before minute index `end` (what exists of them)."""
        start = max(0, end - minutes)
        return self._good[end] - self._good[start], self._total[end] - self._total[start]


def detect(timeline, windows, target, end=None):
    """Each burn window's long and short burn rates at minute `end` (default: the last),
    and whether both exceed its factor."""
    end = timeline.minutes if end is None else end
    found = []
    for window in windows:
        long_rate = burn_rate(*timeline.counts(end, window["long_minutes"]), target)
        short_rate = burn_rate(*timeline.counts(end, window["short_minutes"]), target)
        firing = (long_rate is not None and short_rate is not None
                  and long_rate > window["factor"] and short_rate > window["factor"])
        found.append({**window, "long_rate": long_rate, "short_rate": short_rate, "firing": firing})
    return found


def firing_severities(burn):
    return {entry["severity"] for entry in burn if entry["firing"]}


def replay(timeline, windows, target):
    """The severities firing after each minute (index i: after minute i+1), as an evaluation
    every minute would have seen them."""
    return [firing_severities(detect(timeline, windows, target, end)) for end in range(1, timeline.minutes + 1)]


# --- reading the SLIs ---------------------------------------------------------------------------------
# Each kind turns a span into (good, total): `measure` for one span (the budget), `per_minute`
# for the burn rates' timeline and the charts' buckets.


def _rollups():
    from lifecycle.monitoring import rollups  # imported late: rollups imports the reference module

    return rollups


def _slots(start, end, step_minutes):
    return max(1, math.ceil((end - start) / timedelta(minutes=step_minutes)))


def _slot(at, start, step_minutes, count):
    return min(max(int((at - start) // timedelta(minutes=step_minutes)), 0), count - 1)


def _latency_judge(slo, window):
    edge = LATENCY_EDGES_MS.index(slo.threshold_ms)
    counts = list(window.latency or [])
    return sum(counts[:edge + 1]), sum(counts)  # bins 0..edge hold everything faster than the edge


def _availability_judge(slo, window):
    return window.requests - window.errors, window.requests


ROLLUP_KINDS = {SLO.Kind.LATENCY: (("latency",), _latency_judge),
                SLO.Kind.AVAILABILITY: (("counts",), _availability_judge)}


def _rollup_buckets(slo, start, end, step_minutes, parts, judge):
    count = _slots(start, end, step_minutes)
    out = [[0, 0] for _ in range(count)]
    for at, window in _rollups().series(slo.deployment, start=start, end=end, step_minutes=step_minutes,
                                        routes=LIVE_ROUTES, parts=parts):
        good, total = judge(slo, window)
        slot = out[_slot(at, start, step_minutes, count)]
        slot[0], slot[1] = slot[0] + good, slot[1] + total
    return out


def _feedback_buckets(deployment, start, end, step_minutes):
    """[right, given, overrides] per bucket, from feedback given in the span (per minute in SQL)."""
    count = _slots(start, end, step_minutes)
    out = [[0, 0, 0] for _ in range(count)]
    rows = (Feedback.objects.filter(deployment=deployment, updated_at__gte=start, updated_at__lt=end)
            .annotate(minute=TruncMinute("updated_at")).values("minute")
            .annotate(right=Count("pk", filter=Q(correct=True)), given=Count("pk", filter=Q(correct__isnull=False)),
                      overrides=Count("pk", filter=Q(is_override=True))))
    for row in rows:
        slot = out[_slot(row["minute"], start, step_minutes, count)]
        slot[0], slot[1], slot[2] = slot[0] + row["right"], slot[1] + row["given"], slot[2] + row["overrides"]
    return out


def _override_buckets(slo, start, end, step_minutes):
    answers = _rollup_buckets(slo, start, end, step_minutes, ("counts",), _availability_judge)
    feedback = _feedback_buckets(slo.deployment, start, end, step_minutes)
    return [[max(ok - fb[2], 0), ok] for (ok, _), fb in zip(answers, feedback)]


def _expected_correct(reference, counts):
    from lifecycle.monitoring.estimate import expected_correct

    return expected_correct(reference, counts)


def references_in(deployment, start, end):
    """The ready, calibrated references of the versions that answered in the span: answers of a
    version without one are left out of the estimate (evaluate's note says so when none is left)."""
    ids = (Rollup.objects.filter(deployment=deployment, start__gte=start, start__lt=end, route__in=LIVE_ROUTES)
           .values_list("version_id", flat=True).distinct())
    from lifecycle.monitoring.estimate import calibration_for

    # Without a calibration the estimate does not exist: such a version's answers are left out,
    # never counted as expected wrong.
    found = Reference.objects.filter(version_id__in=list(ids), status=Reference.Status.READY)
    return [reference for reference in found if calibration_for(reference)]


def _estimated_buckets(slo, start, end, step_minutes):
    count = _slots(start, end, step_minutes)
    out = [[0.0, 0] for _ in range(count)]
    for reference in references_in(slo.deployment, start, end):
        for at, window in _rollups().series(slo.deployment, start=start, end=end, step_minutes=step_minutes,
                                            version=reference.version_id, routes=LIVE_ROUTES, parts=("confidence",)):
            answered = sum(window.confidence or [])
            if answered:
                slot = out[_slot(at, start, step_minutes, count)]
                slot[0] += float(_expected_correct(reference, window.confidence))  # numpy floats are not JSON
                slot[1] += answered
    return out


def buckets(slo, start, end, step_minutes):
    """[(good, total)] per step over [start, end), oldest first, every step present."""
    if slo.kind in ROLLUP_KINDS:
        parts, judge = ROLLUP_KINDS[slo.kind]
        return [tuple(b) for b in _rollup_buckets(slo, start, end, step_minutes, parts, judge)]
    if slo.kind == SLO.Kind.FEEDBACK_ACCURACY:
        return [(right, given) for right, given, _ in _feedback_buckets(slo.deployment, start, end, step_minutes)]
    if slo.kind == SLO.Kind.OVERRIDE_RATE:
        return [tuple(b) for b in _override_buckets(slo, start, end, step_minutes)]
    if slo.kind == SLO.Kind.ESTIMATED_ACCURACY:
        return [tuple(b) for b in _estimated_buckets(slo, start, end, step_minutes)]
    raise MonitoringError(f"Unknown SLO kind {slo.kind!r}.")


def measure(slo, start, end):
    """(good, total) over the whole span."""
    if slo.kind in ROLLUP_KINDS:
        parts, judge = ROLLUP_KINDS[slo.kind]
        return judge(slo, _rollups().window(slo.deployment, start=start, end=end, routes=LIVE_ROUTES, parts=parts))
    steps = math.ceil((end - start) / timedelta(minutes=1))
    found = buckets(slo, start, end, steps)  # one bucket: the span
    return found[0]


# --- evaluating ------------------------------------------------------------------------------------


def evaluate(slo, now=None):
    """Measure the SLO now: the SLI and budget over its window, the burn rates of its burn
    windows from the last days minute by minute; write SLO.state; fire or clear its alerts."""
    now = now or timezone.now()
    end = now.replace(second=0, microsecond=0)  # whole minutes: the current one is still filling
    longest = max(w["long_minutes"] for w in slo.burn_windows)
    timeline = Timeline.of(buckets(slo, end - timedelta(minutes=longest), end, 1))
    burn = detect(timeline, slo.burn_windows, slo.target)
    good, total = measure(slo, end - timedelta(days=slo.window_days), end)
    allowed, remaining = budget(good, total, slo.target)
    state = {"sli": good / total if total else None, "good": good, "total": total, "target": slo.target,
             "budget_total": allowed, "budget_remaining": remaining, "burn": burn, "window_days": slo.window_days,
             "window_start": (end - timedelta(days=slo.window_days)).isoformat(), "window_end": end.isoformat(),
             "note": _note(slo, total)}
    with transaction.atomic():
        SLO.objects.filter(pk=slo.pk).update(state=state, evaluated_at=now)
        slo.state, slo.evaluated_at = state, now
        _fire_or_clear(slo, burn, end)
    _after_evaluation(slo)
    return state


def _note(slo, total):
    """Why there is no SLI (a check that did not run is said so, never shown as 0)."""
    if total:
        return ""
    if slo.kind == SLO.Kind.ESTIMATED_ACCURACY:
        return "not checked: no answers from a version with a ready reference in the window"
    if slo.kind == SLO.Kind.FEEDBACK_ACCURACY:
        return "not checked: no feedback in the window"
    return "not checked: no answers in the window"


def _fire_or_clear(slo, burn, end):
    key = f"slo:{slo.pk}"
    for severity in SEVERITIES:
        firing = [entry for entry in burn if entry["severity"] == severity and entry["firing"]]
        if not firing:
            alerts.clear(slo.deployment, kind=Alert.Kind.SLO, key=key, severity=severity)
            continue
        worst = max(firing, key=lambda entry: entry["short_rate"])
        alerts.fire(slo.deployment, kind=Alert.Kind.SLO, severity=severity, key=key, title=_title(slo, worst),
                    evidence=_evidence(slo, worst, end), slo=slo)


def _title(slo, entry):
    return (f"{slo.deployment.name}: {slo.name} burns its error budget {entry['short_rate']:.1f}× "
            f"(over {_span(entry['long_minutes'])} and {_span(entry['short_minutes'])}; alert above {entry['factor']:g}×)")


def _span(minutes):
    if minutes % 1440 == 0:
        return f"{minutes // 1440} d"
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def _evidence(slo, entry, end):
    state = slo.state
    return {"slo": slo.pk, "slo_name": slo.name, "sli_kind": slo.kind, "target": slo.target,
            "sli": state["sli"], "good": state["good"], "total": state["total"],
            "budget_remaining": state["budget_remaining"], "factor": entry["factor"],
            "long_rate": entry["long_rate"], "short_rate": entry["short_rate"],
            "window": {"long_minutes": entry["long_minutes"], "short_minutes": entry["short_minutes"],
                       "start": (end - timedelta(minutes=entry["long_minutes"])).isoformat(), "end": end.isoformat()},
            "link": slo.get_absolute_url()}


def _after_evaluation(slo):
    """The retrain rules see a quality SLO burning."""
    from lifecycle.monitoring.retrain import after_slo_evaluation

    after_slo_evaluation(slo)


def budget_exhausted(slo):
    remaining = (slo.state or {}).get("budget_remaining")
    return remaining is not None and remaining <= 0


@maintenance_step("monitoring_slos")
def evaluate_due(max_seconds=2.0):
    """Evaluate the enabled SLOs not evaluated for MONITORING_SLO_EVERY_SECONDS, oldest
    first, until none are due or max_seconds passed. Each is claimed by a conditional update
    of evaluated_at, so two workers' passes never evaluate one SLO twice."""
    now = timezone.now()
    due = (SLO.objects.filter(enabled=True)
           .filter(Q(evaluated_at__isnull=True) | Q(evaluated_at__lte=now - timedelta(seconds=settings.MONITORING_SLO_EVERY_SECONDS)))
           .order_by(F("evaluated_at").asc(nulls_first=True), "pk").values_list("pk", "evaluated_at")[:EVALUATE_BATCH])
    started, done = time.monotonic(), 0
    for pk, last in due:
        if time.monotonic() - started > max_seconds:
            break
        seen = Q(evaluated_at=last) if last else Q(evaluated_at__isnull=True)
        if not SLO.objects.filter(Q(pk=pk) & seen).update(evaluated_at=now):
            continue  # another worker took it
        try:
            evaluate(SLO.objects.select_related("deployment__model").get(pk=pk), now)
        except Exception:  # one broken SLO must not stop the others; retried at its next interval
            log.exception("SLO %s could not be evaluated", pk)
        done += 1
    return done


# --- making and changing SLOs -------------------------------------------------------------------------


def check_fields(kind, target, threshold_ms, window_days, burn_windows):
    """The fields as they will be stored, or MonitoringError saying what is wrong."""
    if kind not in SLO.Kind.values:
        raise MonitoringError(f"Unknown SLO kind {kind!r}; choose one of {', '.join(SLO.Kind.values)}.")
    if not (0 < target <= MAX_TARGET):
        raise MonitoringError(f"The target is a share of good events above 0 and at most {MAX_TARGET}.")
    if kind == SLO.Kind.LATENCY:
        if threshold_ms not in LATENCY_EDGES_MS:
            raise MonitoringError("The latency threshold must be one of the histogram's edges (ms): "
                                  + ", ".join(f"{e:g}" for e in LATENCY_EDGES_MS) + ".")
        threshold_ms = float(threshold_ms)
    else:
        threshold_ms = None
    if not (1 <= window_days <= 366):
        raise MonitoringError("The window is 1 to 366 days.")
    return threshold_ms, check_burn_windows(burn_windows, window_days)


def check_burn_windows(windows, window_days):
    if not windows:
        raise MonitoringError("Give at least one burn window.")
    longest = settings.MONITORING_MINUTE_ROLLUP_DAYS * 1440  # burn rates read minute rollups
    for w in windows:
        if w.get("severity") not in SEVERITIES:
            raise MonitoringError(f"A burn window's severity is page or ticket, not {w.get('severity')!r}.")
        if not (1 <= w["short_minutes"] < w["long_minutes"] <= min(longest, window_days * 1440)):
            raise MonitoringError(f"A burn window's short span is shorter than its long one, and the long one at most "
                                  f"{min(longest, window_days * 1440)} minutes (minute rollups are kept "
                                  f"{settings.MONITORING_MINUTE_ROLLUP_DAYS} days).")
        if not (0 < w["factor"] <= 1000):
            raise MonitoringError("A burn window's factor is above 0 (1 spends the budget exactly over the window).")
    return [{"severity": w["severity"], "long_minutes": int(w["long_minutes"]), "short_minutes": int(w["short_minutes"]),
             "factor": float(w["factor"])} for w in windows]


def create(user, deployment, *, name, kind, target, threshold_ms=None, window_days=30, burn_windows=None):
    threshold_ms, windows = check_fields(kind, target, threshold_ms, window_days, burn_windows or default_burn_windows())
    with transaction.atomic():
        if SLO.objects.filter(deployment=deployment, name=name).exists():
            raise MonitoringError(f"{deployment.name} has an SLO named {name!r} already.")
        slo = SLO.objects.create(deployment=deployment, name=name, kind=kind, target=target, threshold_ms=threshold_ms,
                                 window_days=window_days, burn_windows=windows, created_by=user)
        AuditEvent.record(user, "slo.created", slo, _audit_fields(slo))
    return slo


def change(user, slo, *, name, target, threshold_ms=None, window_days=30, burn_windows=None, enabled=True):
    """Change an SLO's target, threshold, window or burn windows (its kind stays)."""
    threshold_ms, windows = check_fields(slo.kind, target, threshold_ms, window_days, burn_windows or slo.burn_windows)
    with transaction.atomic():
        locked = SLO.objects.select_for_update().get(pk=slo.pk)
        if name != locked.name and SLO.objects.filter(deployment=locked.deployment, name=name).exists():
            raise MonitoringError(f"{locked.deployment.name} has an SLO named {name!r} already.")
        before = _audit_fields(locked)
        locked.name, locked.target, locked.threshold_ms, locked.window_days = name, target, threshold_ms, window_days
        locked.burn_windows, locked.enabled = windows, enabled
        locked.save(update_fields=["name", "target", "threshold_ms", "window_days", "burn_windows", "enabled"])
        AuditEvent.record(user, "slo.changed", locked, {"before": before, "after": _audit_fields(locked)})
    return locked


def _audit_fields(slo):
    return {"deployment": slo.deployment.name, "name": slo.name, "kind": slo.kind, "target": slo.target,
            "threshold_ms": slo.threshold_ms, "window_days": slo.window_days, "burn_windows": slo.burn_windows,
            "enabled": slo.enabled}


DEFAULTS = (
    ("Latency under 500 ms", SLO.Kind.LATENCY, 0.99, 500),
    ("Availability", SLO.Kind.AVAILABILITY, 0.999, None),
    ("Feedback accuracy", SLO.Kind.FEEDBACK_ACCURACY, 0.90, None),
    ("Not overridden", SLO.Kind.OVERRIDE_RATE, 0.95, None),  # an override rate of at most 5 %
    ("Estimated accuracy", SLO.Kind.ESTIMATED_ACCURACY, 0.90, None),
)


def default_slos(user, deployment):
    """The five SLOs a deployment starts with (those it lacks by name), each audited."""
    have = set(SLO.objects.filter(deployment=deployment).values_list("name", flat=True))
    with transaction.atomic():
        return [create(user, deployment, name=name, kind=kind, target=target, threshold_ms=threshold)
                for name, kind, target, threshold in DEFAULTS if name not in have]
