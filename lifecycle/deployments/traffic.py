"""What the deployment pages read from the prediction log, aggregated in the database.

The log grows by one row per input served, so nothing here loads it whole: the per-minute
figures are a GROUP BY over the (deployment, created_at) index, the shadow comparison a join
on (request_id, position). PostgreSQL computes the latency percentiles itself
(percentile_disc); SQLite has no percentile function, so there they come from a bounded
sample of the newest requests (`SQLITE_SAMPLE`), and the result says it is sampled.
"""
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from datetime import timezone as dt_timezone

from django.db import connection
from django.db.models import Count, F, Max, OuterRef, Q, Subquery
from django.db.models.functions import TruncMinute
from django.utils import timezone

from lifecycle.deployments.models import PredictionLog, Route

WINDOW_MINUTES = 60
SQLITE_SAMPLE = 20_000  # requests read to estimate percentiles where the database cannot
PERCENTILES = (0.5, 0.95, 0.99)
LIVE_ROUTES = (Route.STABLE, Route.CANARY)
TABLE = PredictionLog._meta.db_table


def percentile_disc(ordered, p):
    """The smallest value whose cumulative share reaches `p` (PostgreSQL's percentile_disc)
    of an ascending list; None for an empty one."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def _postgres():
    return connection.vendor == "postgresql"


# --- per minute and route ---------------------------------------------------------------------
# One observation per request, as the verdicts count them (verdicts.side_counts): a request's
# inputs share a batch and an answer time, so its latency is its slowest input's and it failed
# if any input failed. A request's rows carry one created_at, so it falls in one minute.


@dataclass
class Minutes:
    """The last hour of one deployment, minute by minute and route by route."""

    since: object
    until: object
    # {route: [{"minute", "requests", "inputs", "errors", "p50", "p95", "p99"}, ...]} oldest first;
    # errors are requests with an error, the percentiles over requests' latencies (ms)
    routes: dict = field(default_factory=dict)
    sampled: bool = False  # percentiles from a sample of the newest requests (SQLite)

    @property
    def empty(self):
        return not any(self.routes.values())

    def totals(self):
        """{route: {"requests", "inputs", "errors", "error_rate"}} over the whole window."""
        out = {}
        for route, rows in self.routes.items():
            requests, errors = sum(r["requests"] for r in rows), sum(r["errors"] for r in rows)
            out[route] = {"requests": requests, "inputs": sum(r["inputs"] for r in rows), "errors": errors,
                          "error_rate": errors / requests if requests else None}
        return out


def per_minute(deployment_id, *, minutes=WINDOW_MINUTES, now=None):
    """Requests, inputs, failed requests and p50/p95/p99 request latency (ms) per minute and
    route over the last `minutes` (the minute now running included)."""
    until = (now or timezone.now()).replace(second=0, microsecond=0) + timedelta(minutes=1)
    since = until - timedelta(minutes=minutes)
    window = PredictionLog.objects.filter(deployment_id=deployment_id, created_at__gte=since, created_at__lt=until)
    latencies, sampled = (_percentiles_postgres if _postgres() else _percentiles_sampled)(window)
    result = Minutes(since=since, until=until, sampled=sampled)
    for row in sorted(_counts(window), key=lambda r: (r["route"], r["minute"])):
        found = latencies.get((row["minute"], row["route"]), {})
        result.routes.setdefault(row.pop("route"), []).append({**row, **{k: found.get(k) for k in ("p50", "p95", "p99")}})
    return result


def _counts(window):
    """One GROUP BY over the (deployment, created_at) index."""
    failed = Q(status=PredictionLog.Status.ERROR)
    return (window.annotate(minute=TruncMinute("created_at")).values("minute", "route").order_by()
            .annotate(requests=Count("request_id", distinct=True), inputs=Count("id"),
                      errors=Count("request_id", distinct=True, filter=failed)))


def _requests(window):
    """Each request once: its minute, route and latency (its slowest input's)."""
    return (window.annotate(minute=TruncMinute("created_at")).values("minute", "route", "request_id").order_by()
            .annotate(latency=Max("latency_ms")))


def _percentiles_postgres(window):
    sql, params = _requests(window).query.sql_with_params()
    wanted = ", ".join(map(str, PERCENTILES))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT minute, route, percentile_disc(ARRAY[{wanted}]) WITHIN GROUP (ORDER BY latency) "
                       f"FROM ({sql}) AS requests GROUP BY minute, route", params)
        found = cursor.fetchall()
    return {(_aware(minute), route): dict(zip(("p50", "p95", "p99"), values)) for minute, route, values in found}, False


def _aware(moment):
    """A raw query's minute (TruncMinute gives a UTC wall time there) as the ORM gives it."""
    return timezone.make_aware(moment, dt_timezone.utc) if timezone.is_naive(moment) else moment


def _percentiles_sampled(window):
    """Where the database has no percentile function: over the newest SQLITE_SAMPLE requests."""
    newest = list(_requests(window).order_by("-minute").values_list("minute", "route", "latency")[:SQLITE_SAMPLE + 1])
    sampled, newest = len(newest) > SQLITE_SAMPLE, newest[:SQLITE_SAMPLE]
    grouped = defaultdict(list)
    for minute, route, latency in newest:
        grouped[(minute, route)].append(latency)
    return {key: {f"p{round(p * 100)}": percentile_disc(sorted(values), p) for p in PERCENTILES}
            for key, values in grouped.items()}, sampled


# --- shadow against live ----------------------------------------------------------------------


@dataclass
class ShadowSummary:
    pairs: int = 0  # inputs both sides answered without an error
    agreed: int = 0
    flips: list = field(default_factory=list)  # [(live label, shadow label, count)], most first
    latency: dict = field(default_factory=dict)  # {"live": {"p50", "p95"}, "shadow": {...}} over requests
    sampled: bool = False

    @property
    def agreement(self):
        return self.agreed / self.pairs if self.pairs else None

    def latency_difference(self):
        """{"p50", "p95"}: shadow minus live, in ms (positive: the shadow is slower)."""
        live, shadow = self.latency.get("live", {}), self.latency.get("shadow", {})
        return {k: shadow[k] - live[k] if live.get(k) is not None and shadow.get(k) is not None else None
                for k in ("p50", "p95")}


FLIPS_SHOWN = 50
PAIRS_FROM = f"""
    FROM {TABLE} s JOIN {TABLE} l
      ON l.request_id = s.request_id AND l.position = s.position AND l.route <> 'shadow' AND l.status = 'ok'
    WHERE s.release_id = %s AND s.route = 'shadow' AND s.status = 'ok'
"""


def shadow_summary(release_id):
    """The shadow's answers beside the live ones on the same inputs of one release."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), coalesce(sum(CASE WHEN l.label = s.label THEN 1 ELSE 0 END), 0) {PAIRS_FROM}",
                       [release_id])
        pairs, agreed = cursor.fetchone()
        cursor.execute(f"SELECT l.label, s.label, count(*) {PAIRS_FROM} AND l.label <> s.label "
                       f"GROUP BY l.label, s.label ORDER BY count(*) DESC, l.label, s.label LIMIT {FLIPS_SHOWN}",
                       [release_id])
        flips = [tuple(row) for row in cursor.fetchall()]
    summary = ShadowSummary(pairs=pairs, agreed=agreed, flips=flips)
    if pairs:
        summary.latency, summary.sampled = (_pair_latency_postgres if _postgres() else _pair_latency_sampled)(release_id)
    return summary


# Each request once, as on the charts: a side's latency is its slowest input's.
PAIRED_REQUESTS = f"SELECT max(l.latency_ms) AS live, max(s.latency_ms) AS shadow {PAIRS_FROM} GROUP BY s.request_id"


def _pair_latency_postgres(release_id):
    sql = ("SELECT percentile_disc(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY live), "
           f"percentile_disc(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY shadow) FROM ({PAIRED_REQUESTS}) AS requests")
    with connection.cursor() as cursor:
        cursor.execute(sql, [release_id])
        live, shadow = cursor.fetchone()
    return {"live": dict(zip(("p50", "p95"), live)), "shadow": dict(zip(("p50", "p95"), shadow))}, False


def _pair_latency_sampled(release_id):
    sql = f"{PAIRED_REQUESTS} ORDER BY max(s.id) DESC LIMIT {SQLITE_SAMPLE + 1}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [release_id])
        rows = cursor.fetchall()
    sampled, rows = len(rows) > SQLITE_SAMPLE, rows[:SQLITE_SAMPLE]
    live, shadow = sorted(r[0] for r in rows), sorted(r[1] for r in rows)
    return {"live": {"p50": percentile_disc(live, 0.5), "p95": percentile_disc(live, 0.95)},
            "shadow": {"p50": percentile_disc(shadow, 0.5), "p95": percentile_disc(shadow, 0.95)}}, sampled


def _live_answer(field_name):
    answer = (PredictionLog.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"),
                                           status=PredictionLog.Status.OK)
              .exclude(route=Route.SHADOW))
    return Subquery(answer.values(field_name)[:1])


def disagreements(release_id, *, live_label=None, shadow_label=None):
    """The release's shadow rows whose live answer differs, with that answer annotated
    (`live_label`, `live_confidence`, `live_latency_ms`); optionally one flip only."""
    rows = (PredictionLog.objects.filter(release_id=release_id, route=Route.SHADOW, status=PredictionLog.Status.OK)
            .annotate(live_label=_live_answer("label"), live_confidence=_live_answer("confidence"),
                      live_latency_ms=_live_answer("latency_ms"))
            .filter(live_label__isnull=False).exclude(live_label=F("label")))
    if live_label is not None:
        rows = rows.filter(live_label=live_label)
    if shadow_label is not None:
        rows = rows.filter(label=shadow_label)
    return rows


# --- the feedback review ----------------------------------------------------------------------


def shadow_answer(field_name="label"):
    """The shadow's answer to the same input, for annotating live rows (None without one)."""
    answer = PredictionLog.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"),
                                          route=Route.SHADOW)
    return Subquery(answer.values(field_name)[:1])


def reviewable(*, deployment=None, route=None, label=None, confidence_min=None, confidence_max=None,
               disagreeing=False):
    """Answers people may correct (never the shadow's), filtered as the review page asks."""
    rows = (PredictionLog.objects.exclude(route=Route.SHADOW).select_related("deployment", "version__model")
            .annotate(shadow_label=shadow_answer()))
    if deployment is not None:
        rows = rows.filter(deployment=deployment)
    if route:
        rows = rows.filter(route=route)
    if label:
        rows = rows.filter(label=label)
    if confidence_min is not None:
        rows = rows.filter(confidence__gte=confidence_min)
    if confidence_max is not None:
        rows = rows.filter(confidence__lte=confidence_max)
    if disagreeing:
        rows = rows.filter(shadow_label__isnull=False).exclude(shadow_label=F("label"))
    return rows
