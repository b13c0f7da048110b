"""Registry pages. Thin views: a helper that fetches the object or 404s, a form, one model
method, a redirect."""
import json
from datetime import timedelta

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Prefetch, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.core.models import AuditEvent, Job
from lifecycle.core.roles import APPROVER, ML_ENGINEER, has_role, role_required
from lifecycle.lib.pagination import keyset_page
from lifecycle.lib.params import BadParameter, parse_optional_id
from lifecycle.registry import cards, charts, export
from lifecycle.registry import lineage as registry_lineage
from lifecycle.registry.forms import (
    ApproveForm, CardForm, HeldAtForm, ModelForm, PromoteForm, RegisterForm, RejectForm, SettingsForm,
)
from lifecycle.registry.models import (
    MOVES, SINGLE_STAGES, Approval, ApprovalDenied, EvidenceChanged, ModelVersion, PromotionRequest, RegisteredModel,
    RegistryError, Stage, StageChange, Webhook, WebhookAttempt, WebhookError, check_registrable,
)
from lifecycle.registry.webhook_forms import DeliveryPageForm, WebhookForm
from lifecycle.runs.models import Run

# Who reads the registry: on-call too (what is in production, and since when). One tuple for
# the pages, the API and the export.
READ_ROLES = export.READERS
OPEN_STATUSES = (PromotionRequest.Status.OPEN, PromotionRequest.Status.BLOCKED)
PAGE_SIZE = 50
INBOX_PAGE_SIZE = 10  # each request in the inbox carries its comparison with production
AUDIT_PAGE_SIZE = 25
TIMELINE_SHOWN = 100  # moves listed on the model page; the chart reads up to TIMELINE_CHARTED
TIMELINE_CHARTED = 1000
REGISTRABLE_RUNS_OFFERED = 100
# Metrics shown first, in this order; lower is better for these (a delta's sign says worse).
LEADING_METRICS = ("accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall", "ece", "loss",
                   "perplexity", "exact_match")
LOWER_IS_BETTER = {"ece", "loss", "eval_loss", "perplexity"}
NOT_COMPARED = {"count"}  # the test split's size, not a score

# --- helpers ---------------------------------------------------------------------------------


def _get_model(slug):
    return get_object_or_404(RegisteredModel.objects.select_related("created_by"), slug=slug)


def _get_version(slug, number):
    return get_object_or_404(ModelVersion.objects.for_listing(), model__slug=slug, number=number)


def _get_request(request_id):
    related = ("version__model", "version__run__dataset_version__dataset", "version__registered_by", "requester",
               "decided_by")
    return get_object_or_404(PromotionRequest.objects.select_related(*related), pk=request_id)


def holders_by_model(model_ids):
    """{model id: {stage: version}} for production and staging, in one query."""
    found = {}
    for version in ModelVersion.objects.filter(model_id__in=model_ids, stage__in=SINGLE_STAGES).select_related("model"):
        found.setdefault(version.model_id, {})[version.stage] = version
    return found


def _keys(request):
    """?before= / ?after= of a keyset page; BadParameter when either is not a key."""
    return {"before": parse_optional_id(request.GET.get("before"), "before"),
            "after": parse_optional_id(request.GET.get("after"), "after")}


def _bad_request(request, message):
    return render(request, "registry/_error.html", {"message": message}, status=400)


def _query(request, drop=("before", "after")):
    return urlencode({k: v for k, v in request.GET.items() if k not in drop and v})


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric_order(name):
    return (LEADING_METRICS.index(name) if name in LEADING_METRICS else len(LEADING_METRICS), name)


def metric_rows(candidate, production):
    """[{name, candidate, production, delta, worse}] over the numeric metrics either has;
    `worse` says the delta goes the wrong way for that metric."""
    names = sorted({k for m in (candidate, production or {}) for k, v in m.items() if _number(v) and k not in NOT_COMPARED},
                   key=_metric_order)
    rows = []
    for name in names:
        mine, theirs = candidate.get(name), (production or {}).get(name)
        mine, theirs = (mine if _number(mine) else None), (theirs if _number(theirs) else None)
        delta = mine - theirs if mine is not None and theirs is not None else None
        worse = delta is not None and (delta > 0 if name in LOWER_IS_BETTER else delta < 0)
        rows.append({"name": name, "candidate": mine, "production": theirs, "delta": delta, "worse": worse})
    return rows


def per_class_rows(candidate, production):
    """Per-class scores of both versions, row by label (the candidate's labels first)."""
    mine = {str(c["label"]): c for c in candidate.evaluation.get("per_class") or []}
    theirs = {str(c["label"]): c for c in (production.evaluation.get("per_class") or [] if production else [])}
    rows = []
    for label in list(mine) + [label for label in theirs if label not in mine]:
        a, b = mine.get(label, {}), theirs.get(label, {})
        delta = a["f1"] - b["f1"] if _number(a.get("f1")) and _number(b.get("f1")) else None
        rows.append({"label": label, "candidate": a, "production": b, "delta": delta, "worse": delta is not None and delta < 0})
    return rows


def lineage_steps(version):
    """The version's stored lineage as a chain, oldest first: each labeling project beside the
    dataset version it made, the dataset versions from the upload to the one trained on, the
    run, this version."""
    stored = version.lineage or {}
    steps = []
    datasets = [*reversed(stored.get("ancestors") or []), *([stored["dataset_version"]] if "dataset_version" in stored else [])]
    for i, data in enumerate(datasets):
        for made in data.get("made_by") or []:
            steps.append(_made_by_step(made))
        trained_on = i == len(datasets) - 1
        steps.append({"kind": "Dataset version, trained on" if trained_on else "Dataset version",
                      "name": f"{data['dataset']} v{data['number']}", "url": data.get("url", ""),
                      "detail": f"{data.get('operation', '')} · {data.get('rows')} rows · PII {data.get('pii_status')}"
                                f"{' · leakage found' if data.get('has_leakage') else ''}",
                      "bad": bool(data.get("has_leakage"))})
    if "run" in stored:
        run = stored["run"]
        steps.append({"kind": "Training run", "name": f"#{run['id']} {run['name']}", "url": run.get("url", ""),
                      "detail": f"{run['method']} on {run['base_model']}, seed {run['seed']}, by {run.get('started_by') or 'system'}"})
    steps.append({"kind": "Model version", "name": str(version), "url": "", "detail": f"{version.stage}", "current": True})
    return steps + registry_lineage.reached(version)


def _made_by_step(made):
    qc = made.get("qc") or {}
    override = made.get("qc_override") or {}
    detail = "QC passed" if qc.get("passes") else "QC not passed"
    if override:
        detail += f"; frozen under an override by {override.get('approver')}: {override.get('reason')}"
    return {"kind": made.get("kind", "source").replace("_", " ").capitalize(), "name": made.get("name", ""),
            "url": made.get("url", ""), "detail": detail, "bad": not qc.get("passes")}


def _may_approve(user, promotion):
    """(True, "") when `user` may approve now, else (False, the reason)."""
    if not promotion.is_open:
        return False, f"This request is {promotion.status}."
    try:
        promotion.check_may_approve(user)
    except ApprovalDenied as denied:
        return False, str(denied)
    if promotion.approvals.filter(approver=user, void=False).exists():
        return False, "You have already approved this request."
    return True, ""


# --- the list, new models, registering -------------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def model_list(request):
    try:
        page = keyset_page(RegisteredModel.objects.for_listing(), "pk", size=PAGE_SIZE, **_keys(request))
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    ids = [model.pk for model in page.items]
    holders = holders_by_model(ids)
    waiting = dict(PromotionRequest.objects.filter(status__in=OPEN_STATUSES, version__model_id__in=ids)
                   .values_list("version__model_id").annotate(n=Count("pk")))
    rows = [{"model": model, "production": holders.get(model.pk, {}).get(Stage.PRODUCTION),
             "staging": holders.get(model.pk, {}).get(Stage.STAGING), "open": waiting.get(model.pk, 0)}
            for model in page.items]
    open_requests = PromotionRequest.objects.for_inbox()[:10]
    return render(request, "registry/model_list.html", {"page": page, "rows": rows, "open_requests": open_requests,
                                                         "open_count": PromotionRequest.objects.for_inbox().count()})


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def model_create(request):
    form = ModelForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            model = RegisteredModel.create(request.user, **form.cleaned_data)
        except RegistryError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"The model {model.name} is registered; register a run's output as its first version.")
            return redirect(model)
    return render(request, "registry/model_form.html", {"form": form}, status=400 if form.errors else 200)


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def register(request):
    asked = Run.objects.for_listing().filter(pk=_id_or_none(request.GET.get("run"))).first()
    form = RegisterForm(request.POST or None, initial={"run": asked.pk if asked else "", "model": request.GET.get("model", "")},
                        run_choices=_registrable_runs(asked))
    if request.method == "POST" and form.is_valid():
        try:
            version = _register(request.user, form.cleaned_data)
        except RegistryError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"{version} is registered and signed. Check its card, then request a promotion.")
            return redirect(version)
    run = form.cleaned_data.get("run") if form.is_bound else asked  # is_valid() ran for a POST
    return render(request, "registry/register.html", {
        "form": form, "run": run, "problem": _registration_problem(run) if run and not form.is_bound else "",
        "existing": ModelVersion.objects.filter(run=run).select_related("model") if run else [],
    }, status=400 if form.errors else 200)


def _registrable_runs(asked=None):
    """The newest succeeded runs with an output, as choices; a run the page was asked about
    (?run=) is offered even when it is older or not registrable (the page says why)."""
    runs = list(Run.objects.for_listing().filter(job__status=Job.Status.SUCCEEDED).exclude(output_sha256="")
                .order_by("-pk")[:REGISTRABLE_RUNS_OFFERED])
    if asked is not None and asked not in runs:
        runs.insert(0, asked)
    return [(str(run.pk), f"#{run.pk} {run.name} ({run.dataset_version})") for run in runs]


def _registration_problem(run):
    try:
        check_registrable(None, run)
    except RegistryError as exc:
        return str(exc)
    return ""


def _id_or_none(value):
    try:
        return parse_optional_id(value)
    except BadParameter:
        return None


def _register(user, data):
    """Register the run under the chosen model, or under a new one made in the same
    transaction: a refused registration leaves no empty model behind."""
    run, model = data["run"], data["model"]
    check_registrable(model, run)  # the run's own problems first, before anything is written
    if model is not None:
        return ModelVersion.register(user, model, run)
    with transaction.atomic():
        model = RegisteredModel.create(user, name=data["new_model_name"])
        return ModelVersion.register(user, model, run)


# --- the approvals inbox and a request's page ------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def inbox(request):
    page = Paginator(PromotionRequest.objects.for_inbox(), INBOX_PAGE_SIZE).get_page(request.GET.get("page"))
    holders = holders_by_model({pr.version.model_id for pr in page.object_list})
    items = []
    for pr in page.object_list:
        production = holders.get(pr.version.model_id, {}).get(Stage.PRODUCTION)
        production = production if production and production.pk != pr.version_id else None
        items.append({"request": pr, "production": production, "failed": pr.failed_gates,
                      "metrics": metric_rows(pr.version.metrics, production.metrics if production else None)[:6]})
    return render(request, "registry/inbox.html", {"page": page, "items": items,
                                                    "is_approver": has_role(request.user, APPROVER)})


def _neighbours(promotion):
    """The open requests before and after this one in the inbox's order (oldest first)."""
    queue = PromotionRequest.objects.filter(status__in=OPEN_STATUSES).exclude(pk=promotion.pk)
    after = Q(created_at__gt=promotion.created_at) | Q(created_at=promotion.created_at, pk__gt=promotion.pk)
    following = queue.filter(after).order_by("created_at", "pk").values_list("pk", flat=True).first()
    previous = queue.exclude(after).order_by("-created_at", "-pk").values_list("pk", flat=True).first()
    return previous, following


def _request_context(request, promotion, *, approve_form=None, reject_form=None, error="", changed=None):
    version = promotion.version
    production = version.model.versions.filter(stage=Stage.PRODUCTION).exclude(pk=version.pk).select_related(
        "run__dataset_version__dataset").first()
    production_request = (production.requests.filter(status=PromotionRequest.Status.APPROVED, to_stage=Stage.PRODUCTION)
                          .order_by("-closed_at").first() if production else None)
    may_approve, refusal = _may_approve(request.user, promotion)
    rows = metric_rows(version.metrics, production.metrics if production else None)
    evaluation_charts = [(f"request-{name}", figure) for name, figure in (
        ("metrics", charts.metric_comparison(rows, version, production)),
        ("per-class", charts.per_class_f1(version, production) if version.evaluation.get("per_class") else None),
        ("confusion-candidate", charts.confusion(version, "candidate")),
        ("confusion-production", charts.confusion(production, "production") if production else None),
        ("reliability-candidate", charts.reliability(version, "candidate")),
        ("reliability-production", charts.reliability(production, "production") if production else None),
    ) if figure is not None]
    previous, following = _neighbours(promotion)
    approvals = list(promotion.approvals.select_related("approver"))
    return {
        "promotion": promotion, "version": version, "production": production, "production_request": production_request,
        "metric_rows": rows, "per_class_rows": per_class_rows(version, production), "charts": evaluation_charts,
        "data": [("candidate", version, version.lineage.get("dataset_version") or {}),
                 *([("production", production, production.lineage.get("dataset_version") or {})] if production else [])],
        "gates": promotion.gate_results, "overridden": {o["gate"]: o for o in promotion.overrides},
        "production_gates": production_request.gate_results if production_request else [],
        "production_overridden": {o["gate"]: o for o in production_request.overrides} if production_request else {},
        "approvals": approvals, "valid_count": sum(not a.void for a in approvals),
        "void_count": sum(a.void for a in approvals),
        "is_approver": has_role(request.user, APPROVER), "may_approve": may_approve, "refusal": refusal,
        "approve_form": approve_form or ApproveForm(initial={"evidence_sha256": promotion.evidence_sha256},
                                                    failed_gates=promotion.failed_gates, auto_id="approve_%s"),
        "reject_form": reject_form or RejectForm(auto_id="reject_%s"), "error": error, "changed": changed,
        "previous": previous, "next": following,
    }


@role_required(*READ_ROLES)
@require_GET
def request_detail(request, request_id):
    promotion = _get_request(request_id)
    return render(request, "registry/request_detail.html", _request_context(request, promotion))


def _answer(request, promotion, status, **context):
    promotion = _get_request(promotion.pk)  # as it stands now (evidence replaced, approvals voided)
    return render(request, "registry/request_detail.html", _request_context(request, promotion, **context), status=status)


@role_required(APPROVER)
@require_POST
def request_approve(request, request_id):
    promotion = _get_request(request_id)
    form = ApproveForm(request.POST, failed_gates=promotion.failed_gates, auto_id="approve_%s")
    if not form.is_valid():
        return _answer(request, promotion, 400, approve_form=form)
    try:
        promotion.approve(request.user, form.cleaned_data["comment"], seen_sha256=form.cleaned_data["evidence_sha256"],
                          overrides=form.overrides())
    except ApprovalDenied as exc:
        return _answer(request, promotion, 403, error=str(exc))
    except EvidenceChanged as exc:
        return _answer(request, promotion, 409, error=str(exc), changed=exc.changed or ["evidence"])
    except RegistryError as exc:
        return _answer(request, promotion, 400, approve_form=form, error=str(exc))
    promotion.refresh_from_db()
    version = promotion.version
    if promotion.status == PromotionRequest.Status.APPROVED:
        version.refresh_from_db()
        messages.success(request, f"Approved: {version} is {version.stage} now.")
    else:
        count = promotion.valid_approvals().count()
        messages.success(request, f"Approved ({count} of {promotion.approvals_required}); it waits for another approver.")
    return redirect(promotion)


@role_required(APPROVER)
@require_POST
def request_reject(request, request_id):
    promotion = _get_request(request_id)
    form = RejectForm(request.POST, auto_id="reject_%s")
    if not form.is_valid():
        return _answer(request, promotion, 400, reject_form=form)
    try:
        promotion.reject(request.user, form.cleaned_data["comment"])
    except ApprovalDenied as exc:
        return _answer(request, promotion, 403, error=str(exc))
    except RegistryError as exc:
        return _answer(request, promotion, 400, reject_form=form, error=str(exc))
    messages.success(request, f"Rejected: {promotion.version} stays {promotion.version.stage}.")
    return redirect(promotion)


# --- a model: its versions, timeline and settings --------------------------------------------


def _held_at(request, model):
    """The timeline's question and its answer: (form, answer or None)."""
    if "at" not in request.GET:
        # Now, rounded up to the second the field shows: a move made a moment ago is included.
        now = (timezone.now() + timedelta(seconds=1)).replace(microsecond=0, tzinfo=None)
        return HeldAtForm(initial={"at": now}), None
    form = HeldAtForm(request.GET)
    if not form.is_valid():
        return form, None
    stage, when = form.cleaned_data["stage"], form.cleaned_data["at"]
    return form, {"stage": stage, "at": when, "version": model.held_at(stage, when)}


@role_required(*READ_ROLES)
@require_GET
def model_detail(request, slug):
    model = _get_model(slug)
    try:
        page = keyset_page(model.versions.for_listing(), "number", size=PAGE_SIZE, **_keys(request))
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    held_form, held = _held_at(request, model)
    moves = list(StageChange.objects.filter(version__model=model).select_related("version", "actor", "request")
                 .order_by("-changed_at", "-pk")[:TIMELINE_CHARTED])
    context = {
        "model": model, "page": page, "holders": holders_by_model([model.pk]).get(model.pk, {}),
        "open_requests": PromotionRequest.objects.for_inbox().filter(version__model=model),
        "history_chart": charts.metric_history(list(reversed(page.items))),
        "timeline_chart": charts.stage_timeline(list(reversed(moves)), timezone.now()),
        "moves": moves[:TIMELINE_SHOWN], "more_moves": len(moves) > TIMELINE_SHOWN,
        "held_form": held_form, "held": held, "query": _query(request),
        "gate_settings": [(stage, model.gate_settings.get(str(stage)) or {}, model.approvals_for(stage))
                          for stage in (Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED)],
        "is_engineer": has_role(request.user, ML_ENGINEER),
    }
    return render(request, "registry/model_detail.html", context, status=400 if held_form.errors else 200)


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def model_settings(request, slug):
    model = _get_model(slug)
    form = SettingsForm(request.POST or None, model=model)
    if request.method == "POST" and form.is_valid():
        try:
            changed = model.update_settings(request.user, form.gate_settings(), form.approvals())
        except RegistryError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Settings saved; open requests run the new gates at their next approval."
                             if changed else "Nothing changed.")
            return redirect(model)
    return render(request, "registry/model_settings.html", {"model": model, "form": form},
                  status=400 if form.errors else 200)


# --- a version: lineage, card, gates, approvals, audit ---------------------------------------


def _version_events(version, requests, keys):
    """This version's audit events and its requests', newest first, one keyset page."""
    events = AuditEvent.objects.filter(
        Q(object_type=ModelVersion._meta.label_lower, object_id=str(version.pk))
        | Q(object_type=PromotionRequest._meta.label_lower, object_id__in=[str(r.pk) for r in requests]))
    return keyset_page(events, "seq", size=AUDIT_PAGE_SIZE, **keys)


def _version_context(request, version, keys, *, promote_form=None):
    approvals = Prefetch("approvals", queryset=Approval.objects.select_related("approver"))
    requests = list(version.requests.select_related("requester", "decided_by").prefetch_related(approvals)
                    .order_by("-created_at", "-pk"))
    latest = requests[0] if requests else None
    is_engineer = has_role(request.user, ML_ENGINEER)
    open_request = next((r for r in requests if r.is_open), None)
    can_promote = is_engineer and open_request is None and bool(MOVES[Stage(version.stage)]) and version.is_signed_valid
    return {
        "version": version, "model": version.model, "lineage": lineage_steps(version),
        "card_html": cards.render(version.card), "missing_sections": cards.missing_sections(version.card),
        "requests": requests, "latest": latest, "open_request": open_request,
        "overridden": {o["gate"]: o for o in latest.overrides} if latest else {},
        "moves": version.timeline(), "events": _version_events(version, requests, keys),
        "is_engineer": is_engineer, "can_verify": has_role(request.user, ML_ENGINEER, APPROVER),
        # The export's own @role_required decides; the link is offered only to those it lets in.
        "can_export": has_role(request.user, *getattr(export_html, "lifecycle_roles", ())),
        "promote_form": promote_form or (PromoteForm(version=version) if can_promote else None),
    }


@role_required(*READ_ROLES)
@require_GET
def version_detail(request, slug, number):
    version = _get_version(slug, number)
    try:
        keys = _keys(request)
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    context = {**_version_context(request, version, keys), "query": _query(request)}
    return render(request, "registry/version_detail.html", context)


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def card_edit(request, slug, number):
    version = _get_version(slug, number)
    form = CardForm(request.POST or None, initial={"card": version.card})
    preview = None
    if request.method == "POST" and form.is_valid():
        text = form.cleaned_data["card"]
        if "preview" in request.POST:
            preview = cards.render(text)
        else:
            try:
                changed = version.edit_card(request.user, text)
            except RegistryError as exc:
                form.add_error("card", str(exc))
            else:
                missing = cards.missing_sections(version.card)
                note = f" Still to write: {', '.join(missing)}." if missing else ""
                messages.success(request, ("Card saved." if changed else "The card is unchanged.") + note)
                return redirect(version)
    return render(request, "registry/card_form.html", {
        "version": version, "model": version.model, "form": form, "preview": preview,
        "missing_sections": cards.missing_sections(form.data.get("card", version.card) if form.is_bound else version.card),
    }, status=400 if form.errors else 200)


@role_required(ML_ENGINEER)
@require_POST
def promote(request, slug, number):
    version = _get_version(slug, number)
    form = PromoteForm(request.POST, version=version)
    if form.is_valid():
        try:
            promotion = version.request_promotion(request.user, form.cleaned_data["to_stage"], form.cleaned_data["reason"])
        except RegistryError as exc:
            form.add_error(None, str(exc))
        else:
            if promotion.status == PromotionRequest.Status.APPROVED:
                messages.success(request, f"{version} is {promotion.to_stage} now (that move needs no approval).")
            elif promotion.status == PromotionRequest.Status.BLOCKED:
                messages.error(request, "Requested, but failed gates block it until an approver overrides them with a reason.")
            else:
                messages.success(request, f"Requested: {promotion.approvals_required} approval(s) move it to {promotion.to_stage}.")
            return redirect(promotion)
    context = {**_version_context(request, version, {}, promote_form=form), "query": ""}
    return render(request, "registry/version_detail.html", context, status=400)


@role_required(ML_ENGINEER, APPROVER)
@require_POST
def verify(request, slug, number):
    version = _get_version(slug, number)
    result = version.verify(actor=request.user)
    if result.ok:
        messages.success(request, f"Signature checked: {result.message}.")
    else:
        messages.error(request, f"{version} failed its signature check and will not be loaded: {result.message}.")
    return redirect(version)


def _exported_version(slug, number):
    return get_object_or_404(ModelVersion.objects.for_listing(), model__slug=slug, number=number)


@role_required(*export.READERS)
@require_GET
def export_html(request, slug, number):
    """The version's governance export as a page to print (A4) and file."""
    doc = export.build(_exported_version(slug, number), request.user)
    return HttpResponse(export.html(doc))


@role_required(*export.READERS)
@require_GET
def export_json(request, slug, number):
    """The same export as a JSON file to keep, and to check with docs/verify_export.py."""
    version = _exported_version(slug, number)
    response = HttpResponse(export.dumps(export.build(version, request.user)), content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export.filename(version, "json")}"'
    return response


# --- webhooks ---------------------------------------------------------------------------------
# Engineers only, readers included: a webhook URL often carries the receiver's own token, and
# the log shows what each receiver answered. Approvers and viewers see events on the pages of
# the models and requests themselves.

WEBHOOKS_PER_PAGE = 50
DELIVERIES_PER_PAGE = 25


def _get_webhook(webhook_id):
    return get_object_or_404(Webhook.objects.select_related("created_by", "disabled_by"), pk=webhook_id)


def _delivery_log(hook, form):
    attempts = Prefetch("attempt_log", queryset=WebhookAttempt.objects.order_by("number"))
    deliveries = hook.deliveries.prefetch_related(attempts)
    page = keyset_page(deliveries, "pk", before=form.cleaned_data.get("before"), after=form.cleaned_data.get("after"),
                       size=DELIVERIES_PER_PAGE)
    for delivery in page.items:
        delivery.payload_shown = json.dumps(json.loads(delivery.payload), indent=2, sort_keys=True)
    return page


def _detail(request, hook, *, secret=None, status=200):
    form = DeliveryPageForm(request.GET)
    if not form.is_valid():
        return render(request, "registry/webhook_detail.html", {"hook": hook, "page_errors": form.errors}, status=400)
    context = {"hook": hook, "page": _delivery_log(hook, form), "secret": secret}
    response = render(request, "registry/webhook_detail.html", context, status=status)
    if secret:
        response["Cache-Control"] = "no-store"  # the one page with the secret: no copy in any cache
    return response


@role_required(ML_ENGINEER)
@require_GET
def webhook_list(request, **kwargs):
    hooks = Webhook.objects.for_listing().order_by("-active", "name", "pk")
    page = Paginator(hooks, WEBHOOKS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "registry/webhook_list.html", {"page": page})


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def webhook_create(request, **kwargs):
    form = WebhookForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            hook = form.save(request.user)
        except WebhookError as exc:  # the name resolved differently between the form and the save
            form.add_error(None, str(exc))
        else:
            # Rendered, not redirected: the secret goes out in this response only.
            return _detail(request, hook, secret=hook.secret, status=201)
    return render(request, "registry/webhook_form.html", {"form": form}, status=400 if form.errors else 200)


@role_required(ML_ENGINEER)
@require_GET
def webhook_detail(request, webhook_id, **kwargs):
    return _detail(request, _get_webhook(webhook_id))


@role_required(ML_ENGINEER)
@require_POST
def webhook_disable(request, webhook_id, **kwargs):
    hook = _get_webhook(webhook_id)
    if hook.disable(request.user):
        messages.success(request, f"Webhook “{hook.name}” disabled: nothing more is sent to it.")
    else:
        messages.error(request, f"Webhook “{hook.name}” was already disabled.")
    return redirect(hook)
