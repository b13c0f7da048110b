"""What the monitoring dashboards read, as small functions a view calls once per page.

Every read here is a rollup (rollups.window / rollups.series), a small table (deployments,
releases, SLOs, alerts, drift checks, incidents, drafts, stage changes, rollbacks, jobs), or a
bounded look-up in the prediction log by indexed columns with a LIMIT. Nothing scans the raw
log: a dashboard costs the same at ten rows and ten million. The numbers of queries are
bounded per page (tests/monitoring/test_dashboards.py asserts them).

Something that was not measured is None here and "no answers yet" (or why) on the page,
never 0.
"""
import functools
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone

import numpy as np
from django.db.models import Avg, Count, OuterRef, Q, Subquery, Sum
from django.db.models.functions import TruncDate, TruncMonth
from django.urls import reverse
from django.utils import timezone

from lifecycle.core.models import Job
from lifecycle.deployments.models import Feedback, PredictionLog, Release, Rollback, Route
from lifecycle.deployments.serving.features import EMBEDDING_SIZE
from lifecycle.monitoring import estimate, features
from lifecycle.monitoring.models import (
    SLO, Alert, DriftCheck, Incident, Reference, Resolution, RetrainDraft, Rollup,
)
from lifecycle.monitoring.reference import load_sample
from lifecycle.monitoring.rollups import series, window
from lifecycle.registry.models import ModelVersion, Stage, StageChange
from lifecycle.runs.models import Run

LIVE_ROUTES = (Route.STABLE, Route.CANARY)  # the answers people got; the shadow's never reached anyone
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
TRAIN_TASK = "lifecycle.runs.tasks.train_run"
# How far back each part of the executive page looks.
QUALITY_DAYS = 30
MONTHS = 12
QUARTER_DAYS = 91
# The debug page's example lists look at the version's newest answers only, so a list of rare
# failures costs one bounded index walk, never a scan of a day of traffic.
RECENT_ANSWERS = 5_000
EXAMPLES_SHOWN = 10
NEAREST = 3


def now_utc():
    return timezone.now()


def url_or_none(name, *args):
    return reverse(name, args=args)


def _pk(value):
    return getattr(value, "pk", value)


def share(part, whole):
    """part / whole, or None when nothing was measured (never a fake 0)."""
    return None if not whole else part / whole


# --- histograms ------------------------------------------------------------------------------------


def percentile(counts, q, edges=features.LATENCY_EDGES_MS):
    """The q-quantile of a histogram over `edges`, linearly interpolated inside the bin that
    holds the rank (values spread evenly within a bin). The first bin starts at 0; the last
    one, [last edge, +inf), has no upper end, so a rank there reads as its lower edge ("at
    least"). None for an empty histogram."""
    total = sum(counts or [])
    if not total:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(edges):
                return float(edges[-1])
            lower = 0.0 if i == 0 else float(edges[i - 1])
            return lower + (float(edges[i]) - lower) * (rank - seen) / count
        seen += count
    return float(edges[-1])


def latency_percentiles(counts):
    return {name: percentile(counts, q) for name, q in PERCENTILES.items()}


def window_numbers(win):
    """Requests, error rate and latency percentiles of one rollups Window."""
    return {"requests": win.requests, "errors": win.errors, "error_rate": share(win.errors, win.requests),
            **latency_percentiles(win.latency)}


# --- estimates: from the rollups' confidence, else the drift checks' own estimate ----------------


def estimated_accuracy(reference, confidence_counts):
    """The label-free expected accuracy (B's CBPE-style estimate) of a window's confidence
    histogram against the version's ready reference; None when either is missing."""
    if reference is None or reference.status != Reference.Status.READY:
        return None
    if not sum(confidence_counts or []):
        return None
    return estimate.expected_accuracy(reference, confidence_counts)


def checked_estimate(deployment, version_id, since):
    """The newest drift check's estimate of the version since `since` (the same estimate,
    over the check's window): used where the rollups' confidence gave none."""
    check = (DriftCheck.objects.filter(deployment_id=_pk(deployment), version_id=version_id, created_at__gte=since,
                                       estimated_accuracy__isnull=False).order_by("-created_at").first())
    return check.estimated_accuracy if check else None


# --- the overview ------------------------------------------------------------------------------------


def traffic_by_deployment(deployment_ids, start, end):
    """{deployment id: {route: {"requests", "errors"}}} over [start, end), one grouped query over
    the rollups of a whole page of deployments (window() would be a query per deployment)."""
    # Both resolutions named, so rollup_deployment_idx (deployment, resolution, start) serves it.
    rows = (Rollup.objects.filter(deployment_id__in=deployment_ids, resolution__in=Resolution.values,
                                  start__gte=start, start__lt=end)
            .values("deployment_id", "route").annotate(requests=Sum("requests"), errors=Sum("errors")))
    found = {}
    for row in rows:
        found.setdefault(row["deployment_id"], {})[row["route"]] = {"requests": row["requests"], "errors": row["errors"]}
    return found


def live_totals(by_route):
    """Requests and error rate of the answers people got (stable + canary)."""
    requests = sum(by_route.get(r, {}).get("requests", 0) for r in LIVE_ROUTES)
    errors = sum(by_route.get(r, {}).get("errors", 0) for r in LIVE_ROUTES)
    return {"requests": requests, "errors": errors, "error_rate": share(errors, requests)}


def open_alert_counts(deployment_ids):
    """{deployment id: {"page": n, "ticket": n}} of alerts not resolved."""
    rows = (Alert.objects.filter(deployment_id__in=deployment_ids).exclude(status=Alert.Status.RESOLVED)
            .values("deployment_id", "severity").annotate(n=Count("pk")))
    found = {}
    for row in rows:
        found.setdefault(row["deployment_id"], {})[row["severity"]] = row["n"]
    return found


def slos_by_deployment(deployment_ids):
    found = {}
    for slo in SLO.objects.filter(deployment_id__in=deployment_ids, enabled=True).order_by("name"):
        found.setdefault(slo.deployment_id, []).append(slo)
    return found


def _last_check(version_field):
    checks = DriftCheck.objects.filter(deployment=OuterRef("pk"), version=OuterRef(version_field))
    return Subquery(checks.order_by("-created_at", "-pk").values("pk")[:1])


def with_last_checks(deployments):
    """The deployments queryset annotated with their stable's and candidate's newest drift
    check ids (two index look-ups per row on driftcheck_idx)."""
    return deployments.annotate(stable_check=_last_check("current_release__stable_id"),
                                candidate_check=_last_check("current_release__candidate_id"))


def attach_checks(rows):
    """Those checks, in one query, as `row.checks` {"stable", "candidate"}."""
    ids = {i for d in rows for i in (d.stable_check, d.candidate_check) if i}
    checks = DriftCheck.objects.in_bulk(ids) if ids else {}
    for d in rows:
        d.checks = {"stable": checks.get(d.stable_check),
                    "candidate": checks.get(d.candidate_check) if d.current_release.candidate_is_live else None}
    return rows


def open_incidents(model_ids):
    return {i.model_id: i for i in Incident.objects.filter(model_id__in=model_ids, lifted_at__isnull=True)}


def waiting_drafts(deployment_ids):
    waiting = (RetrainDraft.Status.PREPARING, RetrainDraft.Status.READY)
    return {d.deployment_id: d for d in RetrainDraft.objects.filter(deployment_id__in=deployment_ids, status__in=waiting)}


def overview(deployments, now=None):
    """One row per deployment of the page (annotated by with_last_checks): what it serves, its last hour, its open alerts and
    budgets, the last drift checks, an open incident and a waiting retrain draft."""
    now = now or now_utc()
    rows = attach_checks(list(deployments))
    ids = [d.pk for d in rows]
    traffic = traffic_by_deployment(ids, now - timedelta(hours=1), now)
    alerts, slos = open_alert_counts(ids), slos_by_deployment(ids)
    incidents, drafts = open_incidents({d.model_id for d in rows}), waiting_drafts(ids)
    return [{"deployment": d, "release": d.current_release, "hour": live_totals(traffic.get(d.pk, {})),
             "alerts": alerts.get(d.pk, {}), "slos": [slo_view(s) for s in slos.get(d.pk, [])],
             "checks": d.checks, "incident": incidents.get(d.model_id), "draft": drafts.get(d.pk)}
            for d in rows]


def slo_view(slo):
    """An SLO with its last evaluation (C's SLO.state) as numbers to show; an SLO never
    evaluated has no budget, and says so."""
    state = slo.state or {}
    burn = [b for b in state.get("burn") or [] if isinstance(b, dict)]
    return {"slo": slo, "evaluated": bool(state) and slo.evaluated_at is not None,
            "sli": state.get("sli"), "budget_remaining": state.get("budget_remaining"),
            "total": state.get("total"), "burn": burn, "firing": any(b.get("firing") for b in burn)}


# --- the executive page -------------------------------------------------------------------------------


def production_versions(limit=50):
    """Versions in production, each with `in_production_since` (its newest stage change to
    production: the registry's StageChange)."""
    since = StageChange.objects.filter(version=OuterRef("pk"), to_stage=Stage.PRODUCTION).order_by("-changed_at")
    rows = (ModelVersion.objects.filter(stage=Stage.PRODUCTION).select_related("model")
            .annotate(in_production_since=Subquery(since.values("changed_at")[:1])).order_by("model__name"))
    return list(rows[:limit])


def _days(since, until):
    start = since.date()
    return [start + timedelta(days=i) for i in range((until.date() - start).days + 1)]


def feedback_accuracy_by_day(deployment_ids, since):
    """{(deployment id, date): (right, with feedback)} from the feedback people gave (by the
    day it was last given), one grouped query on feedback_deployment_idx."""
    rows = (Feedback.objects.filter(deployment_id__in=deployment_ids, updated_at__gte=since, correct__isnull=False)
            .annotate(day=TruncDate("updated_at")).values("deployment_id", "day")
            .annotate(n=Count("pk"), right=Count("pk", filter=Q(correct=True))))
    return {(r["deployment_id"], r["day"]): (r["right"], r["n"]) for r in rows}


def estimated_accuracy_by_day(deployment_ids, version_ids, since):
    """{(deployment id, date): mean estimated accuracy} of the day's drift checks of the
    production versions (each check's label-free estimate over its window). The checks, not
    30 days of confidence histograms, keep this page to one small query."""
    rows = (DriftCheck.objects.filter(deployment_id__in=deployment_ids, version_id__in=version_ids, created_at__gte=since,
                                      estimated_accuracy__isnull=False, skipped="")
            .annotate(day=TruncDate("created_at")).values("deployment_id", "day")
            .annotate(mean=Avg("estimated_accuracy")))
    return {(r["deployment_id"], r["day"]): r["mean"] for r in rows}


def quality_trend(deployments, now=None, days=QUALITY_DAYS):
    """Per deployment and day: feedback accuracy (with its count) and the estimated accuracy."""
    now = now or now_utc()
    since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    ids = [d.pk for d in deployments]
    fed = feedback_accuracy_by_day(ids, since)
    est = estimated_accuracy_by_day(ids, [d.current_release.stable_id for d in deployments], since)
    out = []
    for d in deployments:
        points = [{"day": day, "feedback": share(*fed.get((d.pk, day), (0, 0))),
                   "feedback_n": fed.get((d.pk, day), (0, 0))[1], "estimated": est.get((d.pk, day))}
                  for day in _days(since, now)]
        out.append({"deployment": d, "points": points})
    return out


def feedback_by_route(release):
    """{route: (right, with feedback)} of a release's answers: each feedback's route read from
    its own log row (predlog_unique: request id, route, position), one query bounded by the
    release's feedback."""
    answered = (PredictionLog.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"))
                .exclude(route=Route.SHADOW).values("route")[:1])
    given = Feedback.objects.filter(deployment_id=release.deployment_id, updated_at__gte=release.started_at,
                                    release_id=release.pk, correct__isnull=False)  # on feedback_deployment_idx
    rows = (given.annotate(route=Subquery(answered))
            .values("route").annotate(n=Count("pk"), right=Count("pk", filter=Q(correct=True))))
    return {r["route"]: (r["right"], r["n"]) for r in rows}


def canary_deltas(deployments, now=None):
    """For each live canary: stable and canary side by side over the last hour (error rate,
    latency p95, estimated accuracy from the rollups' confidence histograms, feedback
    accuracy), and canary minus stable."""
    now = now or now_utc()
    canaries = [d for d in deployments if d.current_release.candidate_is_live
                and d.current_release.mode == Release.Mode.CANARY]
    versions = [v for d in canaries for v in (d.current_release.stable_id, d.current_release.candidate_id)]
    references = {r.version_id: r for r in Reference.objects.filter(version_id__in=versions)}
    return [_canary_delta(d, references, now) for d in canaries]


def _side(deployment, version_id, route, reference, feedback, now):
    win = window(deployment, start=now - timedelta(hours=1), end=now, version=version_id, route=route,
                 parts=("counts", "latency", "confidence"))
    right, n = feedback.get(route, (0, 0))
    estimated = estimated_accuracy(reference, win.confidence)
    if estimated is None and win.requests:
        estimated = checked_estimate(deployment, version_id, now - timedelta(hours=1))
    return {"requests": win.requests, "error_rate": share(win.errors, win.requests),
            "p95": percentile(win.latency, 0.95), "estimated": estimated, "feedback": share(right, n), "feedback_n": n}


def _canary_delta(deployment, references, now):
    release = deployment.current_release
    feedback = feedback_by_route(release)
    stable = _side(deployment, release.stable_id, Route.STABLE, references.get(release.stable_id), feedback, now)
    canary = _side(deployment, release.candidate_id, Route.CANARY, references.get(release.candidate_id), feedback, now)
    delta = {key: (None if stable[key] is None or canary[key] is None else canary[key] - stable[key])
             for key in ("error_rate", "p95", "estimated", "feedback")}
    return {"deployment": deployment, "release": release, "stable": stable, "canary": canary, "delta": delta}


def _month_starts(now, months=MONTHS):
    first = now.date().replace(day=1)
    out = []
    for _ in range(months):
        out.append(first)
        first = (first - timedelta(days=1)).replace(day=1)
    return out[::-1]


def _by_month(rows):
    return {row["month"].date() if isinstance(row["month"], datetime) else row["month"]: row["n"] for row in rows}


def retrains_and_promotions(now=None, months=MONTHS):
    """Per month: runs started from a retrain draft (RetrainDraft.run, by the run's creation)
    and stage changes to production (the registry's StageChange)."""
    now = now or now_utc()
    months_ = _month_starts(now, months)
    since = datetime.combine(months_[0], datetime.min.time(), tzinfo=dt_timezone.utc)
    retrains = _by_month(RetrainDraft.objects.filter(run__isnull=False, run__created_at__gte=since)
                         .annotate(month=TruncMonth("run__created_at")).values("month").annotate(n=Count("pk")))
    promotions = _by_month(StageChange.objects.filter(to_stage=Stage.PRODUCTION, changed_at__gte=since)
                           .annotate(month=TruncMonth("changed_at")).values("month").annotate(n=Count("pk")))
    return [{"month": m, "retrains": retrains.get(m, 0), "promotions": promotions.get(m, 0)} for m in months_]


def compute_hours(now=None, months=MONTHS, limit=10_000):
    """Training compute per month: each finished training attempt's wall clock (its Job's
    started_at to finished_at; a resume is an attempt of its own) times the processes it ran
    on (the run's environment "processes", the world size; 1 when not recorded), by the month
    it finished. Two queries: the jobs of the period (a small table), their runs."""
    now = now or now_utc()
    months_ = _month_starts(now, months)
    since = datetime.combine(months_[0], datetime.min.time(), tzinfo=dt_timezone.utc)
    # On job_status_created_idx: an attempt that finished in the period started at most a
    # month before it (a longer one counts only from there, which a run that long has not).
    jobs = list(Job.objects.filter(status__in=Job.TERMINAL, created_at__gte=since - timedelta(days=31), task=TRAIN_TASK,
                                   started_at__isnull=False, finished_at__gte=since)
                .values_list("kwargs", "started_at", "finished_at")[:limit])
    run_ids = {k.get("run_id") for k, _, _ in jobs if isinstance(k, dict)}
    processes = {pk: (env or {}).get("processes") or 1
                 for pk, env in Run.objects.filter(pk__in=run_ids).values_list("pk", "environment")}
    hours = dict.fromkeys(months_, 0.0)
    for kwargs, started, finished in jobs:
        month = finished.date().replace(day=1)
        if month in hours:
            world = processes.get((kwargs or {}).get("run_id"), 1)
            hours[month] += max(0.0, (finished - started).total_seconds()) / 3600 * world
    return [{"month": m, "hours": h} for m, h in hours.items()], bool(jobs)


def rollback_times(now=None, days=QUARTER_DAYS, limit=1_000):
    """The quarter's completed rollbacks (time from the confirmed click until every live
    serving process answered from stable), oldest first, and their median."""
    now = now or now_utc()
    rows = list(Rollback.objects.filter(clicked_at__gte=now - timedelta(days=days), time_to_rollback_ms__isnull=False)
                .select_related("release__deployment").order_by("clicked_at")[:limit])
    median = statistics.median([r.time_to_rollback_ms for r in rows]) if rows else None
    return rows, median


# --- the on-call page ---------------------------------------------------------------------------------


@dataclass
class RouteSeries:
    """A route's last six hours by five-minute buckets, and its last hour."""

    route: str
    buckets: list  # [(bucket start, Window)]
    hour: dict = field(default_factory=dict)


def _aligned_end(now, step_minutes):
    """The end of the bucket holding `now`, so every chart's buckets line up on the clock."""
    floor = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % step_minutes)
    return floor + timedelta(minutes=step_minutes)


def route_series(deployment, route, version_id, now, *, hours=6, step_minutes=5):
    """One rollups.series query gives both the chart and the last hour (its last 12 buckets)."""
    end = _aligned_end(now, step_minutes)
    buckets = series(deployment, start=end - timedelta(hours=hours), end=end, step_minutes=step_minutes,
                     version=version_id, route=route, parts=("counts", "latency"))
    recent = [w for start, w in buckets if start >= end - timedelta(hours=1)]
    hour = merge_windows(recent)
    return RouteSeries(route, buckets, {**window_numbers(hour), "since": end - timedelta(hours=1)})


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency: list = field(default_factory=list)


def merge_windows(windows):
    total = Totals()
    for w in windows:
        total.requests += w.requests
        total.errors += w.errors
        total.latency_sum_ms += w.latency_sum_ms
        total.latency = features.add_counts(total.latency, w.latency)
    return total


def live_routes(release):
    """(route, version id) of what answers now: stable, and a live canary (a shadow is not
    an answer anyone got, so on-call numbers leave it out)."""
    routes = [(Route.STABLE, release.stable_id)]
    if release.candidate_is_live and release.mode == Release.Mode.CANARY:
        routes.append((Route.CANARY, release.candidate_id))
    return routes


def override_rates(deployment_ids, now, hours=24):
    """{deployment id: {"overrides", "answers", "rate"}} over the last day: overrides people
    gave in it (Feedback.is_override, by when given) over the answers served in it (rollups,
    stable + canary, without errors). Two grouped queries for the page."""
    since = now - timedelta(hours=hours)
    given = dict(Feedback.objects.filter(deployment_id__in=deployment_ids, updated_at__gte=since, is_override=True)
                 .values("deployment_id").annotate(n=Count("pk")).values_list("deployment_id", "n"))
    traffic = traffic_by_deployment(deployment_ids, since, now)
    out = {}
    for pk in deployment_ids:
        totals = live_totals(traffic.get(pk, {}))
        answers = totals["requests"] - totals["errors"]
        out[pk] = {"overrides": given.get(pk, 0), "answers": answers, "rate": share(given.get(pk, 0), answers)}
    return out


def open_alerts(deployment_ids, limit=200):
    found = {}
    rows = (Alert.objects.filter(deployment_id__in=deployment_ids).exclude(status=Alert.Status.RESOLVED)
            .order_by("severity", "-last_fired_at")[:limit])  # "page" sorts before "ticket"
    for alert in rows:
        found.setdefault(alert.deployment_id, []).append(alert)
    return found


def recent_rollbacks(deployment_ids, now, days=7, limit=100):
    found = {}
    rows = (Rollback.objects.filter(release__deployment_id__in=deployment_ids, clicked_at__gte=now - timedelta(days=days))
            .select_related("release", "actor").order_by("-clicked_at")[:limit])
    for rollback in rows:
        found.setdefault(rollback.release.deployment_id, []).append(rollback)
    return found


def recent_releases(deployment_ids, per_deployment=5):
    """The newest releases of each deployment, in one query (a window function ranks them)."""
    from django.db.models import F, Window as SqlWindow
    from django.db.models.functions import RowNumber

    ranked = (Release.objects.filter(deployment_id__in=deployment_ids).select_related("stable", "candidate")
              .annotate(rank=SqlWindow(RowNumber(), partition_by=[F("deployment_id")], order_by=F("number").desc())))
    found = {}
    for release in ranked.filter(rank__lte=per_deployment).order_by("deployment_id", "-number"):
        found.setdefault(release.deployment_id, []).append(release)
    return found


def oncall(deployments, now=None):
    """Per deployment of the page: each live route's percentiles and error rate (last hour)
    and six-hour series, the override rate, SLO budgets and burn rates, open alerts, the recent
    releases and rollbacks."""
    now = now or now_utc()
    ids = [d.pk for d in deployments]
    overrides, alerts = override_rates(ids, now), open_alerts(ids)
    slos, releases, rollbacks = slos_by_deployment(ids), recent_releases(ids), recent_rollbacks(ids, now)
    return [{"deployment": d, "release": d.current_release,
             "routes": [route_series(d, route, version, now) for route, version in live_routes(d.current_release)],
             "overrides": overrides[d.pk], "slos": [slo_view(s) for s in slos.get(d.pk, [])],
             "alerts": alerts.get(d.pk, []), "releases": releases.get(d.pk, []), "rollbacks": rollbacks.get(d.pk, [])}
            for d in deployments]


# --- the debug page -----------------------------------------------------------------------------------


def serving_releases(version, since=None):
    """Releases that served `version` (since `since`, when given), newest first, each with the
    routes it answered on there."""
    releases = Release.objects.filter(Q(stable=version) | Q(candidate=version)).select_related("deployment")
    if since is not None:
        releases = releases.filter(Q(ended_at__isnull=True) | Q(ended_at__gte=since))
    return [(r, [Route.STABLE] if r.stable_id == version.pk else [Route.CANARY, Route.SHADOW])
            for r in releases.order_by("-started_at")[:10]]


def newest_answers(version, releases, since):
    """(pk, status, confidence, created_at) of the version's newest RECENT_ANSWERS answers since
    `since`: one query per (release, route), each a walk down predlog_release_idx that stops at
    the LIMIT, so a day of ten million answers costs what a quiet day does."""
    found = []
    for release, routes in releases:
        for route in routes:
            rows = (PredictionLog.objects.filter(release_id=release.pk, route=route, created_at__gte=since)
                    .order_by("-created_at").values_list("pk", "status", "confidence", "created_at"))
            found += rows[:RECENT_ANSWERS]
    found.sort(key=lambda row: row[3], reverse=True)
    return found[:RECENT_ANSWERS]


def recent_examples(version, releases, since):
    """The version's failing and lowest-confidence answers among its newest answers, read
    whole by primary key in one more query."""
    newest = newest_answers(version, releases, since)
    failing = [pk for pk, status, _, _ in newest if status == PredictionLog.Status.ERROR][:EXAMPLES_SHOWN]
    answered = sorted((c, -t.timestamp(), pk) for pk, status, c, t in newest
                      if status == PredictionLog.Status.OK and c is not None)
    low = [pk for _, _, pk in answered[:EXAMPLES_SHOWN]]
    rows = PredictionLog.objects.select_related("deployment").in_bulk(failing + low) if failing or low else {}
    return {"failing": [rows[pk] for pk in failing if pk in rows], "low_confidence": [rows[pk] for pk in low if pk in rows],
            "looked_at": len(newest)}


def overridden_examples(version, releases, since):
    """The newest overrides of the version's answers (feedback_deployment_idx walked newest
    first), each with its log row (one look-up by request id)."""
    if not releases:
        return []
    deployment_ids = {r.deployment_id for r, _ in releases}
    given = list(Feedback.objects.filter(deployment_id__in=deployment_ids, release_id__in=[r.pk for r, _ in releases],
                                         updated_at__gte=since, is_override=True).order_by("-updated_at")[:EXAMPLES_SHOWN * 3])
    rows = PredictionLog.objects.filter(request_id__in={f.request_id for f in given}, version_id=version.pk) \
        .exclude(route=Route.SHADOW).select_related("deployment")
    by_key = {(row.request_id, row.position): row for row in rows}
    found = [(f, by_key.get((f.request_id, f.position))) for f in given]
    return [{"feedback": f, "row": row} for f, row in found if row is not None][:EXAMPLES_SHOWN]


@functools.lru_cache(maxsize=4)
def _sample_index(sample_sha256, reference_id):
    """The reference sample's embeddings, unit-normalised, with their ids, texts and labels.
    Cached by the sample's content hash: an artifact never changes, so one load per process."""
    frame = load_sample(Reference.objects.get(pk=reference_id))
    columns = [f"embedding_{i}" for i in range(EMBEDDING_SIZE)]
    if frame is None or frame.empty or any(c not in frame.columns for c in columns):
        return None
    matrix = frame[columns].to_numpy(dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = matrix / np.where(norms > 0, norms, 1.0)
    keep = ("example_id", "text", "label", "split")
    return matrix, {c: frame[c].tolist() for c in keep if c in frame.columns}


def nearest_training(reference, embeddings, k=NEAREST):
    """For each embedding, the k reference-sample rows nearest it by cosine similarity (the
    embedding summary both sides share), as dicts with example_id, text, label and similarity;
    [] for an answer without an embedding. One matrix product for all of them."""
    index = _sample_index(reference.sample_sha256, reference.pk) if reference and reference.sample_sha256 else None
    usable = [i for i, e in enumerate(embeddings) if index and e and len(e) == EMBEDDING_SIZE and np.linalg.norm(e)]
    found = [[] for _ in embeddings]
    if not usable:
        return found
    matrix, columns = index
    queries = np.asarray([embeddings[i] for i in usable], dtype=np.float32)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ matrix.T
    k = min(k, scores.shape[1])
    # The k best of each row without sorting the whole sample (argpartition is linear).
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    for row, i in enumerate(usable):
        best = top[row][np.argsort(-scores[row, top[row]])]
        found[i] = [{**{c: values[j] for c, values in columns.items()}, "similarity": float(scores[row, j])}
                    for j in best]
    return found


def example_links(example_ids):
    """{example id: dataset version page URL at its row}: the training example in its version."""
    from lifecycle.datasets.models import Example

    ids = {int(i) for i in example_ids if isinstance(i, (int, np.integer)) or str(i).isdigit()}
    if not ids:
        return {}
    rows = Example.objects.filter(pk__in=ids).select_related("version__dataset").only(
        "pk", "row", "version__number", "version__dataset__slug")
    return {e.pk: reverse("datasets:version", args=[e.version.dataset.slug, e.version.number])
            + f"?after={e.row - 1}#examples" for e in rows}


def feature_window(deployment, version, start, end):
    """The version's rollups in `deployment` over [start, end), every route it answered on."""
    return window(deployment, start=start, end=end, version=version.pk, routes=list(Route.values),
                  parts=("counts", "labels", "confidence", "features"))
