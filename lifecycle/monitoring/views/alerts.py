"""Alert, silence and SLO pages, and the Prometheus rules download. Thin views: a helper that
fetches the object or 404s, a form, one function of alerts.py or slo.py, a redirect.

Who does what: on-call and engineers acknowledge, resolve and silence alerts and manage SLOs;
approvers and viewers read them; anyone else is refused.
"""
import re
from datetime import timedelta

import plotly.graph_objects as go
from django.contrib import messages
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.core.charts import LAYOUT, PALETTE, chart_json, plain, waiting
from lifecycle.core.roles import APPROVER, ML_ENGINEER, ONCALL, VIEWER, forbidden, has_role, role_required
from lifecycle.deployments.models import Deployment
from lifecycle.lib.pagination import keyset_page
from lifecycle.monitoring import alerts, prometheus, slo as slos_
from lifecycle.monitoring.forms import AlertFilterForm, ResolveForm, SilenceForm, SLOEditForm, SLOForm
from lifecycle.monitoring.models import SLO, Alert, MonitoringError, Silence

READ_ROLES = (ONCALL, ML_ENGINEER, APPROVER, VIEWER)
ACT_ROLES = (ONCALL, ML_ENGINEER)
PAGE_SIZE = 50
SILENCES_SHOWN = 50
CHART_STEP_MINUTES = 60  # the SLO page's charts: one point an hour over the SLO's window


DEPLOYMENT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # deployments.models.NAME_VALIDATOR


def _deployment(name):
    return get_object_or_404(Deployment.objects.select_related("model"), name=name)


def _alert(pk):
    related = ("deployment__model", "slo", "acknowledged_by", "resolved_by")
    return get_object_or_404(Alert.objects.select_related(*related), pk=pk)


def _bad_request(request, message):
    return render(request, "monitoring/alerts/_error.html", {"message": message}, status=400)


def _percent(value, digits=3):
    return "—" if value is None else f"{100 * value:.{digits}g} %"


def _budget(value):
    """Budget left as a plain percentage: "-1900.0 %", never an exponent."""
    return "—" if value is None else f"{100 * value:.1f} %"


# --- alerts ---------------------------------------------------------------------------------------


def _filtered(data):
    found = Alert.objects.select_related("deployment", "model", "slo", "acknowledged_by")
    status = data["status"] or "open"
    if status == "open":
        found = found.exclude(status=Alert.Status.RESOLVED)
    elif status != "all":
        found = found.filter(status=status)
    if data["severity"]:
        found = found.filter(severity=data["severity"])
    if data["deployment"]:
        found = found.filter(deployment__name=data["deployment"])
    return found


def _groups(items, silenced):
    """The page's alerts grouped by deployment, in the order their newest alert comes."""
    groups = {}
    for alert in items:
        alert.silenced = alert.pk in silenced
        groups.setdefault(alert.deployment, []).append(alert)
    return list(groups.items())


def _open_counts():
    rows = (Alert.objects.exclude(status=Alert.Status.RESOLVED).values("deployment__name", "severity")
            .annotate(n=Count("pk")))
    counts = {}
    for row in rows:
        counts.setdefault(row["deployment__name"], {})[row["severity"]] = row["n"]
    return counts


@role_required(*READ_ROLES)
@require_GET
def alert_list(request):
    form = AlertFilterForm(request.GET)
    if not form.is_valid():
        return _bad_request(request, " ".join(e for errors in form.errors.values() for e in errors))
    data = form.cleaned_data
    page = keyset_page(_filtered(data), "pk", size=PAGE_SIZE, before=data["before"], after=data["after"])
    query = urlencode({k: v for k, v in request.GET.items() if k not in ("before", "after") and v})
    return render(request, "monitoring/alerts/list.html", {
        "form": form, "page": page, "groups": _groups(page.items, alerts.silenced_ids(page.items)), "query": query,
        "open_counts": _open_counts(), "can_act": has_role(request.user, *ACT_ROLES)})


def _evidence_rows(evidence, prefix=""):
    rows = []
    for key, value in (evidence or {}).items():
        if isinstance(value, dict):
            rows += _evidence_rows(value, f"{prefix}{key} · ")
        elif key != "link":
            rows.append((f"{prefix}{key}", f"{value:.4g}" if isinstance(value, float) else value))
    return rows


def _alert_page(request, alert, resolve_form=None, status=200):
    can_act = has_role(request.user, *ACT_ROLES)
    return render(request, "monitoring/alerts/detail.html", {
        "alert": alert, "evidence": _evidence_rows(alert.evidence), "link": (alert.evidence or {}).get("link"),
        "silence": alerts.matching(alert), "can_act": can_act and alert.is_open,
        "resolve_form": resolve_form or ResolveForm()}, status=status)


@role_required(*READ_ROLES)
@require_GET
def alert_detail(request, pk):
    return _alert_page(request, _alert(pk))


@role_required(*ACT_ROLES)
@require_POST
def alert_ack(request, pk):
    alert = _alert(pk)
    try:
        alerts.acknowledge(request.user, alert)
    except MonitoringError as exc:
        messages.error(request, f"Nothing changed: {exc}")
    else:
        messages.success(request, f"Acknowledged: you have “{alert.title}”.")
    return redirect(alert)


@role_required(*ACT_ROLES)
@require_POST
def alert_resolve(request, pk):
    alert = _alert(pk)
    form = ResolveForm(request.POST)
    if not form.is_valid():
        return _alert_page(request, alert, form, status=400)
    try:
        alerts.resolve(request.user, alert, form.cleaned_data["reason"])
    except MonitoringError as exc:
        form.add_error(None, str(exc))
        return _alert_page(request, _alert(pk), form, status=400)
    messages.success(request, f"Resolved: “{alert.title}”.")
    return redirect(alert)


# --- silences --------------------------------------------------------------------------------------


def _silences_page(request, deployment, form, status=200):
    now = timezone.now()
    shown = list(Silence.objects.filter(deployment=deployment).select_related("created_by", "lifted_by")
                 .order_by("-created_at", "-pk")[:SILENCES_SHOWN])
    for item in shown:
        item.active = item.lifted_at is None and item.starts_at <= now < item.ends_at
    return render(request, "monitoring/alerts/silences.html", {
        "deployment": deployment, "silences": shown, "form": form, "can_act": has_role(request.user, *ACT_ROLES),
        "open_alerts": alerts.open_alerts(deployment=deployment).count()}, status=status)


@role_required(*READ_ROLES)
@require_http_methods(["GET", "POST"])
def silence_list(request, name):
    deployment = _deployment(name)
    if request.method == "GET":
        default_end = (timezone.now() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
        return _silences_page(request, deployment, SilenceForm(initial={"ends_at": default_end}))
    if not has_role(request.user, *ACT_ROLES):
        return forbidden(request, ACT_ROLES)
    form = SilenceForm(request.POST)
    if not form.is_valid():
        return _silences_page(request, deployment, form, status=400)
    data = form.cleaned_data
    try:
        made = alerts.silence(request.user, deployment, data["kind"], data["ends_at"], data["reason"])
    except MonitoringError as exc:
        form.add_error(None, str(exc))
        return _silences_page(request, deployment, form, status=400)
    messages.success(request, f"Silenced {made.kind or 'every'} alert of {deployment.name} until "
                     f"{made.ends_at:%Y-%m-%d %H:%M} UTC: they keep firing, and notify nobody.")
    return redirect("monitoring:silences", deployment.name)


@role_required(*ACT_ROLES)
@require_POST
def silence_lift(request, pk):
    item = get_object_or_404(Silence.objects.select_related("deployment"), pk=pk)
    try:
        alerts.lift(request.user, item)
    except MonitoringError as exc:
        messages.error(request, f"Nothing changed: {exc}")
    else:
        messages.success(request, "Lifted: matching alerts notify again.")
    return redirect("monitoring:silences", item.deployment.name)


# --- SLOs -------------------------------------------------------------------------------------------


def _slo_rows(deployment):
    rows = []
    for item in SLO.objects.filter(deployment=deployment).order_by("name"):
        state = item.state or {}
        rows.append({"slo": item, "sli": _percent(state.get("sli"), 5), "target": _percent(item.target, 6),
                     "remaining": _budget(state.get("budget_remaining")),
                     "exhausted": slos_.budget_exhausted(item), "note": state.get("note", ""),
                     "firing": sorted({b["severity"] for b in state.get("burn", []) if b.get("firing")})})
    return rows


@role_required(*READ_ROLES)
@require_http_methods(["GET", "POST"])
def slo_list(request, name):
    deployment = _deployment(name)
    can_act = has_role(request.user, *ACT_ROLES)
    form = SLOForm(request.POST or None) if can_act else None
    if request.method == "POST":
        if not can_act:
            return forbidden(request, ACT_ROLES)
        if form.is_valid():
            try:
                made = slos_.create(request.user, deployment, kind=form.cleaned_data["kind"], **form.fields_for_slo())
            except MonitoringError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"SLO “{made.name}” made: it is evaluated within a minute.")
                return redirect(made)
    return render(request, "monitoring/alerts/slos.html", {
        "deployment": deployment, "rows": _slo_rows(deployment), "form": form, "can_act": can_act},
        status=400 if form is not None and form.errors else 200)


def _burn_rows(state):
    return [{**b, "long": slos_._span(b["long_minutes"]), "short": slos_._span(b["short_minutes"]),
             "long_rate": "—" if b.get("long_rate") is None else f"{b['long_rate']:.2f}×",
             "short_rate": "—" if b.get("short_rate") is None else f"{b['short_rate']:.2f}×"}
            for b in state.get("burn", [])]


def _slo_context(item, form):
    state = item.state or {}
    return {"slo": item, "state": state, "form": form, "burn": _burn_rows(state),
            "sli": _percent(state.get("sli"), 5), "target": _percent(item.target, 6),
            "remaining": _budget(state.get("budget_remaining")), "exhausted": slos_.budget_exhausted(item),
            "charts": slo_charts(item),
            "alerts": Alert.objects.filter(slo=item).select_related("deployment").order_by("-pk")[:10]}


@role_required(*READ_ROLES)
@require_http_methods(["GET", "POST"])
def slo_detail(request, pk):
    item = get_object_or_404(SLO.objects.select_related("deployment__model", "created_by"), pk=pk)
    can_act = has_role(request.user, *ACT_ROLES)
    form = SLOEditForm(request.POST or None, slo=item) if can_act else None
    if request.method == "POST":
        if not can_act:
            return forbidden(request, ACT_ROLES)
        if form.is_valid():
            try:
                slos_.change(request.user, item, enabled=form.cleaned_data["enabled"], **form.fields_for_slo())
            except MonitoringError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, "Saved: the next evaluation uses the new settings.")
                return redirect(item)
    return render(request, "monitoring/alerts/slo.html", _slo_context(item, form),
                  status=400 if form is not None and form.errors else 200)


def slo_charts(item, now=None):
    """The SLI per hour against its target, and the hourly burn rate against 1× and the
    smallest page factor, over the SLO's window (from the rollups and feedback)."""
    end = (now or timezone.now()).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(days=item.window_days)
    steps = slos_.buckets(item, start, end, CHART_STEP_MINUTES)
    x = [(start + timedelta(minutes=CHART_STEP_MINUTES * i)).isoformat() for i in range(len(steps))]
    sli = [round(100 * good / total, 4) if total else None for good, total in steps]
    burn = [slos_.burn_rate(good, total, item.target) for good, total in steps]
    empty = not any(total for _, total in steps)
    return [("slo-sli", _line("SLI per hour", "%", x, sli, 100 * item.target, "target", empty)),
            ("slo-burn", _line("Burn rate per hour", "× budget", x, burn, 1.0, "1× (spends the budget in the window)",
                               empty))]


def _line(title, y_title, x, y, level, level_name, empty):
    # Markers too: an hour with events between idle ones is a point, which a bare line hides.
    fig = go.Figure([go.Scatter(name=plain(title), x=x, y=y, mode="lines+markers", marker={"size": 4},
                                line={"color": PALETTE[0]}, connectgaps=False),
                     go.Scatter(name=plain(level_name), x=[x[0], x[-1]], y=[level, level], mode="lines",
                                line={"color": PALETTE[3], "dash": "dash"})])
    fig.update_layout(title=plain(title), height=300, **LAYOUT)
    fig.update_xaxes(type="date", title_text="UTC")
    fig.update_yaxes(title_text=plain(y_title))
    if empty:
        waiting(fig, "no events in the window yet")
    return chart_json(fig)


# --- the Prometheus rules file ------------------------------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def prometheus_rules(request):
    found = SLO.objects.select_related("deployment").order_by("deployment__name", "name")
    name = request.GET.get("deployment", "")
    if name:
        # A name that cannot be a deployment's is unknown: never a query (or a header) built from it.
        if not DEPLOYMENT_NAME.fullmatch(name):
            raise Http404("No such deployment.")
        found = found.filter(deployment=_deployment(name))
    response = HttpResponse(prometheus.rules_yaml(found), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="lifecycle-slo-rules{"-" + name if name else ""}.yaml"'
    return response


urlpatterns = [
    path("monitoring/alerts/", alert_list, name="alerts"),
    path("monitoring/alerts/<int:pk>", alert_detail, name="alert"),
    path("monitoring/alerts/<int:pk>/acknowledge", alert_ack, name="alert_ack"),
    path("monitoring/alerts/<int:pk>/resolve", alert_resolve, name="alert_resolve"),
    path("monitoring/deployments/<slug:name>/silences", silence_list, name="silences"),
    path("monitoring/silences/<int:pk>/lift", silence_lift, name="silence_lift"),
    path("monitoring/deployments/<slug:name>/slos", slo_list, name="slos"),
    path("monitoring/slos/<int:pk>", slo_detail, name="slo"),
    path("monitoring/prometheus-rules.yaml", prometheus_rules, name="prometheus_rules"),
]
