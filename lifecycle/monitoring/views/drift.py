"""Drift pages: a deployment's latest check per live version, one feature's histograms and its
statistic over time, one check, and the full Evidently reports (start, status, download).

Engineers and on-call run checks and reports; approvers and viewers read too.
"""
from datetime import timedelta

import plotly.graph_objects as go
from django import forms
from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from lifecycle.core.charts import LAYOUT, PALETTE, chart_json, plain, waiting
from lifecycle.core.jobs import QueueUnavailable, outcome_of
from lifecycle.core.roles import APPROVER, ML_ENGINEER, ONCALL, VIEWER, has_role, role_required
from lifecycle.deployments.models import Deployment
from lifecycle.monitoring import drift, features, report
from lifecycle.monitoring.models import DriftCheck, DriftReport, MonitoringError

READ_ROLES = (ML_ENGINEER, ONCALL, APPROVER, VIEWER)
RUN_ROLES = (ML_ENGINEER, ONCALL)
FEATURE_NAMES = (*features.FEATURES, features.LABEL_FEATURE, "embedding")
SERIES_DAYS = 7  # the statistic-over-time chart's span
REPORTS_SHOWN = 10
REPORT_WINDOWS = {"1": 1, "6": 6, "24": 24}  # hours a report may look back


class VersionForm(forms.Form):
    version = forms.IntegerField(min_value=1, error_messages={"required": "Say which version to check."})


class ReportForm(VersionForm):
    hours = forms.ChoiceField(choices=[(k, f"last {k} h") for k in REPORT_WINDOWS], initial="1")


# --- helpers ------------------------------------------------------------------------------------------


def _get_deployment(name):
    return get_object_or_404(Deployment.objects.select_related("model", "current_release"), name=name)


def _live(deployment):
    """[(version, route)] answering on this deployment now."""
    return [(version, route) for found, version, route in drift.live_versions() if found.pk == deployment.pk]


def _live_version(deployment, data):
    """The live version a form names, or None."""
    return next(((v, r) for v, r in _live(deployment) if v.pk == data.get("version")), None)


def _latest(deployment, version):
    found = (DriftCheck.objects.filter(deployment=deployment, version=version).select_related("created_by")
             .order_by("-created_at", "-pk").first())
    return _with_gap(found) if found else None


def _with_gap(found):
    """The check with `gap` (estimated minus feedback accuracy) for the page, None if either is missing."""
    both = found.estimated_accuracy is not None and found.feedback_accuracy is not None
    found.gap = found.estimated_accuracy - found.feedback_accuracy if both else None
    return found


def show(value, digits=4):
    return "—" if value is None else f"{value:.{digits}g}"


def rows_of(found):
    """The check's results as table rows, p-values and PSI formatted."""
    return [{**r, "statistic_shown": show(r["statistic"]), "p_shown": show(r["p_value"]),
             "p_adjusted_shown": show(r["p_adjusted"]), "psi_shown": show(r["psi"], 3)} for r in found.results]


# --- charts (core/charts.py helpers, rendered by static/js/charts.js) -----------------------------------


def _bin_labels(entry):
    if entry["kind"] == features.CATEGORICAL:
        return [plain(name) for name in entry["edges"]]
    edges = entry["edges"]
    return [f"< {edges[0]:g}", *[f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:])], f"≥ {edges[-1]:g}"]


def histogram_chart(entry):
    """Reference and window shares per bin, overlaid."""
    labels = _bin_labels(entry)
    fig = go.Figure()
    for name, counts, colour in (("reference", entry["reference"], PALETTE[0]), ("window", entry["current"], PALETTE[1])):
        total = sum(counts) or 1
        fig.add_trace(go.Bar(name=name, x=labels, y=[round(c / total, 5) for c in counts], marker_color=colour,
                             opacity=0.6))
    fig.update_layout(barmode="overlay", height=340, title=plain(f"{entry['feature']}: share of answers per bin"),
                      **LAYOUT)
    fig.update_yaxes(title_text="share", rangemode="tozero")
    return chart_json(fig)


def series_chart(feature, points):
    """The compared value of each check over time, with the threshold line."""
    fig = go.Figure()
    fig.update_layout(height=300, title=plain(f"{feature} over the last {SERIES_DAYS} days"), **LAYOUT)
    if not points:
        return chart_json(waiting(fig, "no check of this feature yet"))
    x = [p[0].isoformat() for p in points]
    fig.add_trace(go.Scatter(name="value", x=x, y=[p[1] for p in points], mode="lines+markers",
                             marker={"color": [PALETTE[3] if p[3] else PALETTE[0] for p in points]}))
    fig.add_trace(go.Scatter(name="threshold", x=x, y=[p[2] for p in points], mode="lines",
                             line={"dash": "dash", "color": PALETTE[3]}))
    fig.update_xaxes(type="date", title_text="UTC")
    return chart_json(fig)


# --- pages ---------------------------------------------------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def drift_page(request, name):
    deployment = _get_deployment(name)
    job = _own_job(request)
    versions = [{"version": v, "route": r, "check": _latest(deployment, v)} for v, r in _live(deployment)]
    for item in versions:
        item["rows"] = rows_of(item["check"]) if item["check"] else []
    reports = DriftReport.objects.filter(deployment=deployment).select_related("version", "job")[:REPORTS_SHOWN]
    return render(request, "monitoring/drift/deployment.html", {
        "deployment": deployment, "versions": versions, "reports": reports, "can_run": has_role(request.user, *RUN_ROLES),
        "report_form": ReportForm(), "window_minutes": _window_minutes(),
        "job": job, "job_outcome": outcome_of(job) if job else None})


def _window_minutes():
    from django.conf import settings

    return settings.MONITORING_DRIFT_WINDOW_MINUTES


def _own_job(request):
    """The check job this person just started (?job=), to watch on the page."""
    from lifecycle.core.models import Job

    raw = request.GET.get("job", "")
    if not raw.isdigit():
        return None
    return Job.objects.filter(pk=int(raw), task=drift.run_check.task_name, created_by=request.user).first()


@role_required(*READ_ROLES)
@require_GET
def drift_feature(request, name, feature):
    deployment = _get_deployment(name)
    if feature not in FEATURE_NAMES:
        raise Http404("No such drift feature.")
    live = _live(deployment)
    raw = request.GET.get("version", "")
    chosen = next((v for v, _ in live if str(v.pk) == raw), None) if raw else (live[0][0] if live else None)
    if chosen is None:
        raise Http404("That version does not answer on this deployment now.")
    found = _latest(deployment, chosen)
    entry = next((r for r in (found.results if found else []) if r["feature"] == feature), None)
    since = timezone.now() - timedelta(days=SERIES_DAYS)
    points = drift.series_of(deployment, chosen, feature, since=since)
    return render(request, "monitoring/drift/feature.html", {
        "deployment": deployment, "version": chosen, "feature": feature, "check": found, "entry": entry,
        "histogram": histogram_chart(entry) if entry else None, "series": series_chart(feature, points),
        "live": live})


@role_required(*READ_ROLES)
@require_GET
def drift_check(request, pk):
    found = get_object_or_404(DriftCheck.objects.select_related("deployment", "version", "created_by"), pk=pk)
    return render(request, "monitoring/drift/check.html", {"check": _with_gap(found), "rows": rows_of(found),
                                                           "deployment": found.deployment})


@role_required(*RUN_ROLES)
@require_POST
def drift_run(request, name):
    deployment = _get_deployment(name)
    form = VersionForm(request.POST)
    chosen = _live_version(deployment, form.cleaned_data) if form.is_valid() else None
    if chosen is None:
        messages.error(request, "Nothing was checked: choose a version that answers on this deployment now.")
        return redirect("monitoring:drift", name=deployment.name)
    try:
        job = drift.request_check(request.user, deployment, chosen[0], route=chosen[1])
    except QueueUnavailable as exc:
        messages.error(request, f"Nothing was checked: the job queue is unavailable ({exc}).")
        return redirect("monitoring:drift", name=deployment.name)
    messages.success(request, f"Checking v{chosen[0].number} over the last {_window_minutes()} minutes (job {job.pk}).")
    return redirect(reverse("monitoring:drift", args=[deployment.name]) + f"?job={job.pk}")


@role_required(*RUN_ROLES)
@require_POST
def drift_report_start(request, name):
    deployment = _get_deployment(name)
    form = ReportForm(request.POST)
    chosen = _live_version(deployment, form.cleaned_data) if form.is_valid() else None
    if chosen is None:
        messages.error(request, "No report was started: choose a live version and one of the windows offered.")
        return redirect("monitoring:drift", name=deployment.name)
    end = timezone.now()
    start = end - timedelta(hours=REPORT_WINDOWS[form.cleaned_data["hours"]])
    try:
        made = report.start_report(request.user, deployment, chosen[0], start, end)
    except (MonitoringError, QueueUnavailable) as exc:
        messages.error(request, f"No report was started: {exc}")
        return redirect("monitoring:drift", name=deployment.name)
    return redirect(made)


@role_required(*READ_ROLES)
@require_GET
def drift_report(request, pk):
    made = get_object_or_404(DriftReport.objects.select_related("deployment", "version", "job", "created_by"), pk=pk)
    columns = sorted((made.summary.get("columns") or {}).items())
    return render(request, "monitoring/drift/report.html", {
        "report": made, "deployment": made.deployment, "columns": columns, "text_note": made.summary.get("text", ""),
        "outcome": outcome_of(made.job) if made.job else None})


@role_required(*READ_ROLES)
@require_GET
def drift_report_html(request, pk):
    """Evidently's HTML, as a download that no page of ours runs: its scripts are Evidently's
    own bundle and the data are logged inputs, so it gets no access to this origin. The
    attachment is never rendered here; a sandbox CSP guards a browser that renders it anyway."""
    made = get_object_or_404(DriftReport, pk=pk)
    if not made.html_sha256:
        raise Http404("This report is not ready.")
    response = HttpResponse(report.artifact_text(made.html_sha256), content_type="text/html; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="drift-report-{made.pk}.html"'
    response["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response["X-Content-Type-Options"] = "nosniff"
    return response


urlpatterns = [
    path("monitoring/deployments/<slug:name>/drift/", drift_page, name="drift"),
    path("monitoring/deployments/<slug:name>/drift/run", drift_run, name="drift_run"),
    path("monitoring/deployments/<slug:name>/drift/report", drift_report_start, name="drift_report_start"),
    path("monitoring/deployments/<slug:name>/drift/<slug:feature>", drift_feature, name="drift_feature"),
    path("monitoring/drift/<int:pk>", drift_check, name="drift_check"),
    path("monitoring/reports/<int:pk>", drift_report, name="drift_report"),
    path("monitoring/reports/<int:pk>/html", drift_report_html, name="drift_report_html"),
]
