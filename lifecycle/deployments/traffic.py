"""What the deployment pages read from the prediction log, aggregated in the database.

The log grows by one row per input served, so nothing here loads it whole: the per-minute
figures are a GROUP BY over the (deployment, created_at) index, the shadow comparison a join
on (request_id, position). PostgreSQL computes the latency percentiles itself
(percentile_disc); SQLite has no percentile function, so there they come from a bounded
sample of the newest rows (`SQLITE_SAMPLE`), and the result says it is sampled.
"""
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.db.models.functions import TruncMinute
from django.utils import timezone

from lifecycle.deployments.models import PredictionLog, Route

WINDOW_MINUTES = 60
SQLITE_SAMPLE = 20_000  # rows read to estimate percentiles where the database cannot
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


@dataclass
class Minutes:
    """The last hour of one deployment, minute by minute and route by route."""

    since: object
    until: object
    # {route: [{"minute", "requests", "inputs", "errors", "p50", "p95", "p99"}, ...]} oldest first
    routes: dict = field(default_factory=dict)
    sampled: bool = False  # percentiles from a sample of the newest rows (SQLite)

    @property
    def empty(self):
        return not any(self.routes.values())

    def totals(self):
        """{route: {"requests", "inputs", "errors", "error_rate"}} over the whole window."""
        out = {}
        for route, rows in self.routes.items():
            inputs, errors = sum(r["inputs"] for r in rows), sum(r["errors"] for r in rows)
            out[route] = {"requests": sum(r["requests"] for r in rows), "inputs": inputs, "errors": errors,
                          "error_rate": errors / inputs if inputs else None}
        return out


def per_minute(deployment_id, *, minutes=WINDOW_MINUTES, now=None):
    """Requests, inputs, errors and p50/p95/p99 latency (ms) per minute and route over the last
    `minutes` (the minute now running included)."""
    until = (now or timezone.now()).replace(second=0, microsecond=0) + timedelta(minutes=1)
    since = until - timedelta(minutes=minutes)
    rows, sampled = (_minutes_postgres if _postgres() else _minutes_sampled)(deployment_id, since, until)
    result = Minutes(since=since, until=until, sampled=sampled)
    for row in sorted(rows, key=lambda r: (r["route"], r["minute"])):
        result.routes.setdefault(row.pop("route"), []).append(row)
    return result


MINUTES_SQL = f"""
    SELECT date_trunc('minute', created_at) AS minute, route,
           count(DISTINCT request_id) AS requests, count(*) AS inputs,
           count(*) FILTER (WHERE status = 'error') AS errors,
           percentile_disc(ARRAY[{", ".join(map(str, PERCENTILES))}]) WITHIN GROUP (ORDER BY latency_ms) AS latency
    FROM {TABLE}
    WHERE deployment_id = %s AND created_at >= %s AND created_at < %s
    GROUP BY 1, 2
"""


def _minutes_postgres(deployment_id, since, until):
    with connection.cursor() as cursor:
        cursor.execute(MINUTES_SQL, [deployment_id, since, until])
        found = cursor.fetchall()
    return [{"minute": minute, "route": route, "requests": requests, "inputs": inputs, "errors": errors,
             **dict(zip(("p50", "p95", "p99"), latency))}
            for minute, route, requests, inputs, errors, latency in found], False


def _minutes_sampled(deployment_id, since, until):
    """Counts by the database's GROUP BY; percentiles over the newest SQLITE_SAMPLE rows."""
    window = PredictionLog.objects.filter(deployment_id=deployment_id, created_at__gte=since, created_at__lt=until)
    counts = (window.annotate(minute=TruncMinute("created_at")).values("minute", "route").order_by()
              .annotate(requests=Count("request_id", distinct=True), inputs=Count("id"),
                        errors=Count("id", filter=Q(status=PredictionLog.Status.ERROR))))
    latencies = defaultdict(list)
    sample = window.order_by("-created_at").values_list("created_at", "route", "latency_ms")[:SQLITE_SAMPLE]
    for created_at, route, latency in sample:
        latencies[(created_at.replace(second=0, microsecond=0), route)].append(latency)
    rows = []
    for row in counts:
        ordered = sorted(latencies.get((row["minute"], row["route"]), ()))
        rows.append({**row, **{f"p{round(p * 100)}": percentile_disc(ordered, p) for p in PERCENTILES}})
    return rows, sum(row["inputs"] for row in rows) > SQLITE_SAMPLE


# --- shadow against live ----------------------------------------------------------------------


@dataclass
class ShadowSummary:
    pairs: int = 0  # inputs both sides answered without an error
    agreed: int = 0
    flips: list = field(default_factory=list)  # [(live label, shadow label, count)], most first
    latency: dict = field(default_factory=dict)  # {"live": {"p50", "p95"}, "shadow": {...}}
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


def _pair_latency_postgres(release_id):
    sql = (f"SELECT percentile_disc(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY l.latency_ms), "
           f"percentile_disc(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY s.latency_ms) {PAIRS_FROM}")
    with connection.cursor() as cursor:
        cursor.execute(sql, [release_id])
        live, shadow = cursor.fetchone()
    return {"live": dict(zip(("p50", "p95"), live)), "shadow": dict(zip(("p50", "p95"), shadow))}, False


def _pair_latency_sampled(release_id):
    sql = f"SELECT l.latency_ms, s.latency_ms {PAIRS_FROM} ORDER BY s.id DESC LIMIT {SQLITE_SAMPLE + 1}"
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
