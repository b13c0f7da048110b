"""Incident mode and retrain drafts. Thin views: fetch or 404, a form, one function of
incidents.py or retrain.py, a redirect.

Who does what: on-call and engineers open and lift incident mode; engineers start and dismiss
retrain drafts and set the rules; approvers and viewers read (and on-call reads drafts).
"""
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.core.jobs import QueueUnavailable
from lifecycle.core.roles import APPROVER, ML_ENGINEER, ONCALL, VIEWER, has_role, role_required
from lifecycle.deployments.models import Deployment
from lifecycle.lib.pagination import keyset_page
from lifecycle.lib.params import BadParameter, parse_optional_id
from lifecycle.monitoring import incidents, policy, retrain
from lifecycle.monitoring.models import Incident, MonitoringError, RetrainDraft, RetrainRule
from lifecycle.monitoring.policy_forms import DismissForm, IncidentOpenForm, LiftForm, RuleForm, RuleToggleForm
from lifecycle.registry.models import RegisteredModel
from lifecycle.runs.config import ConfigError

READ_ROLES = (ONCALL, ML_ENGINEER, APPROVER, VIEWER)
INCIDENT_ROLES = incidents.INCIDENT_ROLES
PAGE_SIZE = 25


def _keys(request):
    return {"before": parse_optional_id(request.GET.get("before"), "before"),
            "after": parse_optional_id(request.GET.get("after"), "after")}


def _bad_request(request, message):
    return render(request, "deployments/_error.html", {"message": message}, status=400)


def _get_incident(pk):
    related = ("model", "deployment", "opened_by", "lifted_by", "capture_job", "captured_version__dataset")
    return get_object_or_404(Incident.objects.select_related(*related), pk=pk)


def _get_draft(pk):
    related = ("model", "deployment", "rule", "source_version__run", "base_dataset_version__dataset",
               "dataset_version__dataset", "job", "run", "decided_by")
    return get_object_or_404(RetrainDraft.objects.select_related(*related), pk=pk)


# --- incidents -------------------------------------------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def incident_list(request):
    show_all = request.GET.get("show") == "all"
    rows = Incident.objects.select_related("model", "deployment", "opened_by", "lifted_by")
    if not show_all:
        rows = rows.filter(lifted_at__isnull=True)
    try:
        page = keyset_page(rows, "pk", size=PAGE_SIZE, **_keys(request))
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    return render(request, "monitoring/policy/incidents.html", {
        "page": page, "show_all": show_all, "query": "show=all" if show_all else "",
        "can_open": has_role(request.user, *INCIDENT_ROLES),
        "models": RegisteredModel.objects.filter(deployments__isnull=False).distinct().order_by("name")[:100]})


def _incident_context(request, incident, lift_form=None, error=""):
    upload = incidents.capture_upload(incident)
    return {"incident": incident, "events": incidents.timeline(incident), "upload": upload,
            "captured": incident.captured_version or (upload.version if upload else None),
            "frozen": policy.frozen(incident.model) if incident.is_open else [],
            "lift_form": lift_form or (LiftForm() if incident.is_open and has_role(request.user, *INCIDENT_ROLES) else None),
            "error": error}


@role_required(*READ_ROLES)
@require_GET
def incident_detail(request, pk):
    incident = _get_incident(pk)
    return render(request, "monitoring/policy/incident.html", _incident_context(request, incident))


@role_required(*INCIDENT_ROLES)
@require_POST
def incident_lift(request, pk):
    incident = _get_incident(pk)
    form = LiftForm(request.POST)
    if form.is_valid():
        try:
            incidents.lift(request.user, incident, form.cleaned_data["reason"])
        except MonitoringError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Incident mode for {incident.model.name} is lifted: promotions and retrain "
                             "triggers go on.")
            return redirect(incident)
    incident = _get_incident(pk)
    return render(request, "monitoring/policy/incident.html", _incident_context(request, incident, lift_form=form),
                  status=400)


@role_required(*INCIDENT_ROLES)
@require_http_methods(["GET", "POST"])
def incident_open(request, slug):
    """The confirm step (GET) and the opening itself (POST, with a reason and the window)."""
    model = get_object_or_404(RegisteredModel, slug=slug)
    form = IncidentOpenForm(request.POST or None, model=model)
    current = policy.open_incident_of(model)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            incident = incidents.open_incident(request.user, model, deployment=data["deployment"], reason=data["reason"],
                                               window_start=data["window_start"], window_end=data["window_end"])
        except MonitoringError as exc:
            form.add_error(None, str(exc))
        except QueueUnavailable as exc:
            form.add_error(None, f"Nothing was opened: the job queue does not answer ({exc}).")
        else:
            messages.success(request, f"{model.name} is in incident mode: promotions and retrain triggers are frozen, "
                             "and the window's inputs are being captured.")
            return redirect(incident)
    status = 400 if request.method == "POST" else 200
    return render(request, "monitoring/policy/incident_open.html", {
        "model": model, "form": form, "current": current,
        "deployments": list(model.deployments.order_by("name").values_list("name", flat=True))}, status=status)


# --- retrain drafts --------------------------------------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def retrain_list(request):
    status = request.GET.get("status", "")
    if status and status not in RetrainDraft.Status.values:
        return _bad_request(request, f"There is no draft status {status!r}.")
    rows = RetrainDraft.objects.select_related("model", "deployment", "source_version", "rule")
    if status:
        rows = rows.filter(status=status)
    try:
        page = keyset_page(rows, "pk", size=PAGE_SIZE, **_keys(request))
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    return render(request, "monitoring/policy/drafts.html", {
        "page": page, "status": status, "statuses": RetrainDraft.Status.values,
        "query": f"status={status}" if status else ""})


def config_diff(draft):
    """(setting, production run's value, draft's value) for each setting that differs."""
    before, after = draft.source_version.run.config or {}, draft.config or {}
    return [(name, before.get(name), after.get(name)) for name in sorted(set(before) | set(after))
            if before.get(name) != after.get(name)]


def _draft_context(request, draft, dismiss_form=None, error=""):
    waiting = draft.status in retrain.WAITING
    is_engineer = has_role(request.user, ML_ENGINEER)
    child = draft.dataset_version
    return {
        "draft": draft, "firings": list(reversed(draft.evidence.get("firings", []))), "diff": config_diff(draft),
        "feedback": (child.manifest.get("reports", {}).get("feedback") if child else None) or {},
        "diff_url": (reverse("datasets:diff", args=[child.dataset.slug]) +
                     f"?a={draft.base_dataset_version.number}&b={child.number}") if child else "",
        "can_start": is_engineer and draft.status == RetrainDraft.Status.READY,
        "dismiss_form": dismiss_form or (DismissForm() if is_engineer and waiting else None), "error": error,
        "incident": policy.open_incident_of(draft.model),
    }


@role_required(*READ_ROLES)
@require_GET
def retrain_detail(request, pk):
    draft = _get_draft(pk)
    return render(request, "monitoring/policy/draft.html", _draft_context(request, draft))


@role_required(ML_ENGINEER)
@require_POST
def retrain_start(request, pk):
    draft = _get_draft(pk)
    try:
        run = retrain.start_draft(request.user, draft)
    except (MonitoringError, ConfigError) as exc:
        error = str(exc)
    except QueueUnavailable as exc:
        error = f"the job queue does not answer ({exc})"
    else:
        messages.success(request, f"Started run {run.pk} from draft {draft.pk}; it is queued for a training worker.")
        return redirect(run)
    return render(request, "monitoring/policy/draft.html", _draft_context(request, _get_draft(pk), error=error),
                  status=400)


@role_required(ML_ENGINEER)
@require_POST
def retrain_dismiss(request, pk):
    draft = _get_draft(pk)
    form = DismissForm(request.POST)
    if form.is_valid():
        try:
            retrain.dismiss(request.user, draft, form.cleaned_data["reason"])
        except MonitoringError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Draft {draft.pk} is dismissed.")
            return redirect(draft)
    return render(request, "monitoring/policy/draft.html", _draft_context(request, _get_draft(pk), dismiss_form=form),
                  status=400)


# --- retrain rules ---------------------------------------------------------------------------------


def _rules_page(request, deployment, form=None, status=200):
    rules = {r.kind: r for r in RetrainRule.objects.filter(deployment=deployment)}
    rows = [{"kind": kind, "label": label, "rule": rules.get(kind)} for kind, label in RetrainRule.Kind.choices]
    count, since = retrain.feedback_since(deployment)
    return render(request, "monitoring/policy/rules.html", {
        "deployment": deployment, "rows": rows, "is_engineer": has_role(request.user, ML_ENGINEER),
        "form": form or RuleForm(), "feedback_count": count, "feedback_since": since,
        "drafts": RetrainDraft.objects.filter(deployment=deployment).order_by("-pk")[:10]}, status=status)


@role_required(*READ_ROLES)
@require_http_methods(["GET", "POST"])
def retrain_rules(request, name):
    deployment = get_object_or_404(Deployment.objects.select_related("model", "current_release"), name=name)
    if request.method == "GET":
        return _rules_page(request, deployment)
    if not has_role(request.user, ML_ENGINEER):
        from lifecycle.core.roles import forbidden

        return forbidden(request, (ML_ENGINEER,))
    toggling = "toggle" in request.POST
    form = (RuleToggleForm if toggling else RuleForm)(request.POST)
    if not form.is_valid():
        return _rules_page(request, deployment, form=None if toggling else form, status=400)
    return _save_rule(request, deployment, form.cleaned_data, toggling)


def _save_rule(request, deployment, data, toggling):
    existing = RetrainRule.objects.filter(deployment=deployment, kind=data["kind"]).first()
    if toggling and existing is None:
        return _bad_request(request, f"{deployment.name} has no {data['kind']} rule to switch.")
    values = ({"consecutive": existing.consecutive, "min_feedback": existing.min_feedback} if toggling else
              {"consecutive": data["consecutive"], "min_feedback": data["min_feedback"]})
    rule = retrain.save_rule(request.user, deployment, kind=data["kind"], enabled=data["enabled"], **values)
    messages.success(request, f"The {rule.kind} rule of {deployment.name} is {'on' if rule.enabled else 'off'}.")
    return redirect(reverse("monitoring:retrain_rules", args=[deployment.name]))


urlpatterns = [
    path("monitoring/incidents", incident_list, name="incidents"),
    path("monitoring/incidents/<int:pk>", incident_detail, name="incident"),
    path("monitoring/incidents/<int:pk>/lift", incident_lift, name="incident_lift"),
    path("monitoring/models/<slug:slug>/incident", incident_open, name="incident_open"),
    path("monitoring/retrain", retrain_list, name="retrain_list"),
    path("monitoring/retrain/<int:pk>", retrain_detail, name="retrain"),
    path("monitoring/retrain/<int:pk>/start", retrain_start, name="retrain_start"),
    path("monitoring/retrain/<int:pk>/dismiss", retrain_dismiss, name="retrain_dismiss"),
    path("monitoring/deployments/<slug:name>/retrain-rules", retrain_rules, name="retrain_rules"),
]
