"""The monitoring dashboards: the overview (every deployment at a glance), the executive page
(what is in production, how it does, what it costs), the on-call page (latency, errors,
overrides, budgets, alerts, releases and the rollback button) and the debug page (one
version: its training, its evaluation, its inputs now against its reference, its worst
recent answers beside the training examples nearest them).

Thin views: a form for the query string, one dashboards.py function per section, the charts.
Every read is a rollup, a small table, or a bounded look-up (lifecycle/monitoring/dashboards.py).
"""
from datetime import timedelta

from django import forms
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from lifecycle.core.roles import APPROVER, ML_ENGINEER, ONCALL, VIEWER, has_role, role_required
from lifecycle.deployments.models import Deployment, Route
from lifecycle.deployments.views import ROLLBACK_ROLES
from lifecycle.lib.pagination import keyset_page
from lifecycle.lib.params import BadParameter, parse_optional_id
from lifecycle.monitoring import charts, dashboards, features
from lifecycle.monitoring.models import Incident, Reference
from lifecycle.registry import charts as registry_charts
from lifecycle.registry.models import ModelVersion, Stage
from lifecycle.runs.views import CURVE_CHARTS

OVERVIEW_ROLES = (ML_ENGINEER, APPROVER, ONCALL, VIEWER)  # everyone but labelers
EXECUTIVE_ROLES = (APPROVER, VIEWER, ML_ENGINEER, ONCALL)
ONCALL_ROLES = (ONCALL, ML_ENGINEER)
DEBUG_ROLES = (ML_ENGINEER, ONCALL)
# Training texts are dataset rows: shown to whom the datasets app shows rows.
ROW_ROLES = (ML_ENGINEER, APPROVER)
OVERVIEW_PAGE = 25
ONCALL_PAGE = 5  # each deployment brings two charts
EXECUTIVE_DEPLOYMENTS = 20
WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
NUMERIC_SHOWN = ("text_length", "token_count", "oov_rate")  # the rest: the drift page, feature by feature


def _keys(request):
    return {"before": parse_optional_id(request.GET.get("before"), "before"),
            "after": parse_optional_id(request.GET.get("after"), "after")}


def percent(value, digits=2):
    """A share as "1.25 %", or "—" for what was not measured."""
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def ms(value):
    return "—" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _bad_request(request, message):
    return render(request, "monitoring/dashboards/error.html", {"message": message}, status=400)


def _deployments():
    return Deployment.objects.for_listing().filter(current_release__isnull=False)


# --- the overview ---------------------------------------------------------------------------------


@role_required(*OVERVIEW_ROLES)
@require_GET
def overview(request):
    try:
        page = keyset_page(dashboards.with_last_checks(_deployments()), "pk", size=OVERVIEW_PAGE, **_keys(request))
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    return render(request, "monitoring/dashboards/overview.html", {
        "page": page, "rows": [_overview_row(row) for row in dashboards.overview(page.items)], "links": _links(),
        "can_oncall": has_role(request.user, *ONCALL_ROLES), "can_debug": has_role(request.user, *DEBUG_ROLES),
        "can_executive": has_role(request.user, *EXECUTIVE_ROLES),
    })


def _overview_row(row):
    row["hour"]["error_text"] = percent(row["hour"]["error_rate"])
    row["slos"] = [_slo_shown(s) for s in row["slos"]]
    routes = [("stable", row["checks"]["stable"])]
    if row["release"].candidate_is_live:
        routes.append((row["release"].mode, row["checks"]["candidate"]))
    row["check_rows"] = [(route, _check_shown(check)) for route, check in routes]
    row["incident_url"] = row["incident"] and dashboards.url_or_none("monitoring:incident", row["incident"].pk)
    row["draft_url"] = row["draft"] and dashboards.url_or_none("monitoring:retrain", row["draft"].pk)
    return row


def _slo_shown(s):
    budget = s["budget_remaining"]
    s["budget_text"] = "—" if budget is None else f"{100 * budget:.1f} %"
    s["exhausted"] = budget is not None and budget <= 0
    s["url"] = dashboards.url_or_none("monitoring:slo", s["slo"].pk)
    s["burn_rows"] = [{**b, "long_text": _rate(b.get("long_rate")), "short_text": _rate(b.get("short_rate"))}
                      for b in s["burn"]]
    return s


def _rate(value):
    return "—" if value is None else f"{value:.2f}×"


def _check_shown(check):
    """A drift check's result in a few words: it never reads as "no drift" when it was skipped."""
    if check is None:
        return {"text": "not checked yet", "url": None}
    if check.skipped:
        text = f"not checked: {check.skipped}"
    elif check.drifted:
        text = f"drift in {check.drifted_features} feature{'s' if check.drifted_features != 1 else ''}"
    else:
        text = "no drift"
    when = check.created_at.strftime("%H:%M")
    return {"text": f"{text} ({when} UTC)", "url": dashboards.url_or_none("monitoring:drift_check", check.pk),
            "drifted": check.drifted}


def _links():
    """The other areas' pages, where this build has them."""
    return {"alerts": dashboards.url_or_none("monitoring:alerts"),
            "incidents": dashboards.url_or_none("monitoring:incidents"),
            "retrain": dashboards.url_or_none("monitoring:retrain_list")}


# --- executive ----------------------------------------------------------------------------------


@role_required(*EXECUTIVE_ROLES)
@require_GET
def executive(request):
    now = dashboards.now_utc()
    deployments = list(_deployments().order_by("name")[:EXECUTIVE_DEPLOYMENTS])
    trend = dashboards.quality_trend(deployments, now)
    months = dashboards.retrains_and_promotions(now)
    hours, any_jobs = dashboards.compute_hours(now)
    rollbacks, median = dashboards.rollback_times(now)
    return render(request, "monitoring/dashboards/executive.html", {
        "versions": _with_age(dashboards.production_versions(), deployments, now),
        "deltas": [_delta_shown(d) for d in dashboards.canary_deltas(deployments, now)],
        "months": months, "hours": hours, "total_hours": sum(m["hours"] for m in hours) if any_jobs else None,
        "rollbacks": rollbacks, "median_ms": median,
        "charts": [("executive-quality", charts.quality_trend(trend)),
                   ("executive-retrains", charts.retrains_and_promotions(months)),
                   ("executive-compute", charts.compute_hours(hours, any_jobs)),
                   ("executive-rollbacks", charts.rollback_times(rollbacks, median))],
    })


DELTA_ROWS = (("error_rate", "Error rate", percent), ("p95", "Latency p95", ms),
              ("estimated", "Estimated accuracy", percent), ("feedback", "Feedback accuracy", percent))


def _signed(key, value):
    if value is None:
        return "—"
    if key == "p95":
        return f"{value:+.0f} ms"
    return f"{100 * value:+.2f} pt"


def _delta_shown(delta):
    """Canary against stable, one row per measure; "—" where either side has no number."""
    stable, canary = delta["stable"], delta["canary"]
    delta["rows"] = [{"name": name, "stable": shown(stable[key]), "canary": shown(canary[key]),
                      "delta": _signed(key, delta["delta"][key])} for key, name, shown in DELTA_ROWS]
    delta["rows"][3]["stable"] += f" of {stable['feedback_n']}" if stable["feedback_n"] else ""
    delta["rows"][3]["canary"] += f" of {canary['feedback_n']}" if canary["feedback_n"] else ""
    return delta


def _with_age(versions, deployments, now):
    serving = {}
    for d in deployments:
        serving.setdefault(d.current_release.stable_id, []).append(d)
    return [{"version": v, "since": v.in_production_since,
             "age_days": (now - v.in_production_since).total_seconds() / 86400 if v.in_production_since else None,
             "deployments": serving.get(v.pk, [])} for v in versions]


# --- on-call ------------------------------------------------------------------------------------------


@role_required(*ONCALL_ROLES)
@require_GET
def oncall(request):
    try:
        page = keyset_page(_deployments(), "pk", size=ONCALL_PAGE, **_keys(request))
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    rows = dashboards.oncall(page.items)
    can_rollback = has_role(request.user, *ROLLBACK_ROLES)
    incidents = {i.model_id: i for i in Incident.objects.filter(
        model_id__in=[row["deployment"].model_id for row in rows], lifted_at__isnull=True)}
    for row in rows:
        row["rollback_url"] = _rollback_url(row["release"]) if can_rollback else None
        row["incident"] = incidents.get(row["deployment"].model_id)
        row["incident_url"] = (row["incident"].get_absolute_url() if row["incident"]
                               else reverse("monitoring:incident_open", args=[row["deployment"].model.slug]))
        row["charts"] = [(f"oncall-latency-{row['deployment'].pk}", charts.latency_series(row["routes"])),
                         (f"oncall-errors-{row['deployment'].pk}", charts.error_series(row["routes"]))]
        row["alert_links"] = [(a, dashboards.url_or_none("monitoring:alert", a.pk)) for a in row["alerts"]]
        row["route_rows"] = [_route_shown(rs) for rs in row["routes"]]
        row["slos"] = [_slo_shown(s) for s in row["slos"]]
        row["overrides"]["text"] = percent(row["overrides"]["rate"])
    return render(request, "monitoring/dashboards/oncall.html", {"page": page, "rows": rows})


def _route_shown(rs):
    hour = rs.hour
    return {"route": rs.route, "requests": hour["requests"], "error_rate": percent(hour["error_rate"]),
            **{name: ms(hour[name]) for name in dashboards.PERCENTILES}}


def _rollback_url(release):
    """The deployment's own confirm step, only while there is a candidate to roll back."""
    if not release.candidate_is_live:
        return None
    return reverse("deployments:release_rollback", args=[release.deployment.name, release.number])


# --- debug ------------------------------------------------------------------------------------------


@role_required(*DEBUG_ROLES)
@require_GET
def debug(request):
    """Pick a version: those answering now in a deployment, then the rest in staging or production."""
    live_ids = set()
    for d in _deployments()[:200]:
        live_ids.update(v for v in (d.current_release.stable_id, d.current_release.candidate_id) if v)
    versions = (ModelVersion.objects.filter(stage__in=(Stage.STAGING, Stage.PRODUCTION)) | ModelVersion.objects.filter(
        pk__in=live_ids)).select_related("model").order_by("model__name", "-number")[:100]
    return render(request, "monitoring/dashboards/debug_index.html",
                  {"versions": [(v, v.pk in live_ids) for v in versions]})


class DebugForm(forms.Form):
    window = forms.ChoiceField(choices=[("hour", "the last hour"), ("day", "the last day")], required=False)
    deployment = forms.CharField(max_length=63, required=False)

    def __init__(self, *args, deployments, **kwargs):
        super().__init__(*args, **kwargs)
        self.deployments = {d.name: d for d in deployments}

    def clean_deployment(self):
        name = self.cleaned_data["deployment"]
        if name and name not in self.deployments:
            raise forms.ValidationError(f"{name} has not served this version.")
        return self.deployments.get(name) if name else next(iter(self.deployments.values()), None)

    def clean_window(self):
        return self.cleaned_data["window"] or "hour"


@role_required(*DEBUG_ROLES)
@require_GET
def debug_version(request, version_id):
    version = get_object_or_404(ModelVersion.objects.select_related("model", "run__dataset_version__dataset"),
                                pk=version_id)
    releases = dashboards.serving_releases(version)
    form = DebugForm(request.GET, deployments=list(dict.fromkeys(r.deployment for r, _ in releases)))
    if not form.is_valid():
        return _bad_request(request, " ".join(e for errors in form.errors.values() for e in errors))
    now, span = dashboards.now_utc(), form.cleaned_data["window"]
    since = now - WINDOWS[span]
    reference = Reference.objects.filter(version=version).first()
    deployment = form.cleaned_data["deployment"]
    win = dashboards.feature_window(deployment, version, since, now) if deployment else None
    recent = dashboards.serving_releases(version, since)
    examples = dashboards.recent_examples(version, recent, since)
    context = {"version": version, "run": version.run, "reference": reference, "deployment": deployment,
               "deployments": form.deployments, "span": span, "window": win, "releases": releases,
               "looked_at": examples["looked_at"], "form": form,
               "curve_charts": charts.run_curves(version.run, CURVE_CHARTS),
               "evaluation_charts": _evaluation_charts(version),
               "feature_charts": _feature_charts(reference, win, span),
               "sections": _example_sections(request, version, reference, examples, recent, since)}
    return render(request, "monitoring/dashboards/debug.html", context)


def _evaluation_charts(version):
    found = [("debug-confusion", registry_charts.confusion(version, "this version")),
             ("debug-reliability", registry_charts.reliability(version, "this version"))]
    return [(chart_id, figure) for chart_id, figure in found if figure is not None]


def _feature_charts(reference, win, span):
    """Each shown feature's histogram now (the window's rollups) against the reference's."""
    ref = reference if reference is not None and reference.status == Reference.Status.READY else None
    name = f"the last {span}"
    ref_features = (ref.features if ref else {}) or {}
    now_features = win.features if win else {}
    shown = [(f"debug-feature-{feature}", charts.histogram_vs_reference(
        feature.replace("_", " ").capitalize(), features.FEATURES[feature],
        (ref_features.get(feature) or {}).get("counts"), now_features.get(feature), name)) for feature in NUMERIC_SHOWN]
    shown.append(("debug-confidence", charts.confidence_vs_reference(ref.confidence if ref else None,
                                                                     win.confidence if win else None, name)))
    shown.append(("debug-labels", charts.labels_vs_reference(ref.labels if ref else None, win.labels if win else None,
                                                             name)))
    return shown


def _example_sections(request, version, reference, examples, releases, since):
    """The three lists, each answer with its link and its nearest training examples."""
    overridden = dashboards.overridden_examples(version, releases, since)
    lists = [("failing", "Failing answers", [{"row": r} for r in examples["failing"]]),
             ("low-confidence", "Lowest confidence", [{"row": r} for r in examples["low_confidence"]]),
             ("overridden", "Overridden by people", overridden)]
    numbers = {release.pk: release.number for release, _ in releases}
    everything = [item for _, _, items in lists for item in items]
    nearest = dashboards.nearest_training(reference, [item["row"].embedding for item in everything])
    for item, near in zip(everything, nearest):
        item["link"] = _answer_link(item["row"], numbers)
        item["nearest"] = near
    links = dashboards.example_links(n["example_id"] for _, _, items in lists for i in items for n in i["nearest"]
                                     if "example_id" in n)
    for _, _, items in lists:
        for item in items:
            for near in item["nearest"]:
                near["link"] = links.get(_as_int(near.get("example_id")))
    return {"lists": lists, "can_see_rows": has_role(request.user, *ROW_ROLES)}


def _as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _answer_link(row, numbers):
    """Where a logged answer is shown: the review page at that answer (keyset: the page that
    starts with it), or the release's shadow page for a shadow answer."""
    if row.route == Route.SHADOW:
        number = numbers.get(row.release_id)
        return reverse("deployments:shadow", args=[row.deployment.name, number]) if number else None
    query = urlencode({"deployment": row.deployment.name, "route": row.route, "before": row.pk + 1})
    return f"{reverse('deployments:review')}?{query}#answer-{row.pk}"


urlpatterns = [
    path("monitoring/", overview, name="overview"),
    path("monitoring/executive", executive, name="executive"),
    path("monitoring/on-call", oncall, name="oncall"),
    path("monitoring/debug", debug, name="debug"),
    path("monitoring/debug/<int:version_id>", debug_version, name="debug_version"),
]
