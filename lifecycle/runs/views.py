import json
import math

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.core.models import Job
from lifecycle.core.queues import QueueUnavailable
from lifecycle.core.roles import APPROVER, ML_ENGINEER, READ_ROLES, has_role, role_required
from lifecycle.datasets.models import Example
from lifecycle.lib import jsonbody
from lifecycle.runs import charts, launch
from lifecycle.runs.actions import run_actions
from lifecycle.runs.config import ConfigError, RunConfig
from lifecycle.runs.forms import CompareForm, RunFilterForm, RunForm, SinceForm
from lifecycle.runs.models import Run, RunError

# Example texts can hold personal data: as in datasets, rows are for engineers and approvers.
ROW_ROLES = (ML_ENGINEER, APPROVER)
PAGE_SIZE = 50
# Items shown per list of the debug page; the evaluation keeps a few dozen at most.
WORST_SHOWN = 50
TEST_SPLIT = "test"

# Curve charts of the run page: (id, title, y axis, [(trace name, point kind, metric key)]).
# runs.js appends polled points to the traces in this order.
CURVE_CHARTS = (
    ("loss", "Loss", "loss", [("training loss", "train", "loss"), ("validation loss", "eval", "eval_loss")]),
    ("lr", "Learning rate", "learning rate", [("learning rate", "train", "lr")]),
    ("eval-metrics", "Validation metrics", "score", [("accuracy", "eval", "accuracy"), ("macro F1", "eval", "macro_f1")]),
)
# Shown first in metric tables, in this order; the rest follow alphabetically.
LEADING_METRICS = ("accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall", "ece",
                   "loss", "perplexity", "exact_match", "count")


def _get_run(run_id):
    return get_object_or_404(Run.objects.for_listing(), pk=run_id)


def _headline(run):
    """(name, value) of the metric the list shows: perplexity for causal LM, else accuracy."""
    name = "perplexity" if run.task == "causal_lm" else "accuracy"
    return name, (run.test_metrics or {}).get(name)


def _scalar_metrics(metrics):
    scalars = {k: v for k, v in (metrics or {}).items() if v is None or isinstance(v, (int, float))}
    return sorted(scalars.items(), key=lambda kv: (LEADING_METRICS.index(kv[0]) if kv[0] in LEADING_METRICS
                                                   else len(LEADING_METRICS), kv[0]))


def _duration(seconds):
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return ""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _progress(run):
    progress = run.progress or {}
    step, total = progress.get("step"), progress.get("total_steps")
    numbers = isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0
    return {**progress, "percent": min(100.0, 100.0 * step / total) if numbers else 0.0,
            "eta": _duration(progress.get("eta_seconds"))}


def _failure(run):
    """The job's error, for a run that failed or was interrupted (a cancel is no failure)."""
    if run.job_id and run.status in (Job.Status.FAILED, Job.Status.INTERRUPTED):
        return run.job.error or f"the run {run.status} without an error message"
    return ""


def _display(value):
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "—" if value is None or value == "" else value


def _config_keys(configs):
    known = RunConfig.field_names()
    extra = sorted({key for config in configs for key in config} - set(known))
    return [key for key in known if any(key in config for config in configs)] + extra


def _curves(run, kind, since=None):
    """{metric: {"steps": [...], "values": [...]}}, only points after `since` when given."""
    series = run.curves(kind, since)
    return {key: {"steps": steps, "values": values} for key, (steps, values) in series.items()}


def _last_step(curves):
    return max((s["steps"][-1] for s in curves.values() if s["steps"]), default=-1)


# --- pages -----------------------------------------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def run_list(request):
    form = RunFilterForm(request.GET)
    runs = Run.objects.for_listing().order_by("-created_at", "-pk")
    valid = form.is_valid()
    page = Paginator(form.filter(runs) if valid else runs.none(), PAGE_SIZE).get_page(request.GET.get("page"))
    for run in page.object_list:
        run.headline = _headline(run)
    query = urlencode({k: v for k, v in request.GET.items() if k != "page" and v})
    return render(request, "runs/run_list.html", {"page": page, "form": form, "query": query},
                  status=200 if valid else 400)


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def run_create(request):
    # GET parameters prefill the form (e.g. ?dataset_version=12 from a version's page).
    form = RunForm(request.POST or None, initial=request.GET.dict())
    if request.method == "POST" and form.is_valid():
        try:
            run = launch.start(request.user, form.config_data(), name=form.cleaned_data["name"])
        except ConfigError as exc:
            form.add_config_errors(exc.errors)
        except QueueUnavailable as exc:
            return render(request, "runs/run_form.html", {"form": form, "error": str(exc)}, status=503)
        else:
            messages.success(request, f"Run {run.pk} is queued.")
            return redirect(run)
    return render(request, "runs/run_form.html", {"form": form}, status=400 if form.errors else 200)


def _curve_charts(run, train, evals):
    """The run page's curve charts: those with points, and while the run is active the ones
    it will fill (classification metrics only for classification)."""
    found, shown = {"train": train, "eval": evals}, []
    for chart_id, title, y_title, traces in CURVE_CHARTS:
        series = {name: (found[kind].get(key, {}).get("steps", []), found[kind].get(key, {}).get("values", []))
                  for name, kind, key in traces}
        has_points = any(steps for steps, _ in series.values())
        expected = run.is_active and (chart_id != "eval-metrics" or run.task == "classification")
        if has_points or expected:
            shown.append({"id": f"run-chart-{chart_id}", "traces": [[kind, key] for _, kind, key in traces],
                          "figure": charts.curves(series, title=title, y_title=y_title)})
    return shown


def _report_charts(run, report):
    if report is None or run.task != "classification":
        return []
    shown = []
    if report.confusion.get("labels"):
        shown.append(("run-confusion", charts.confusion_heatmap(report.confusion["labels"], report.confusion["matrix"])))
    if (report.calibration or {}).get("bins"):
        shown.append(("run-reliability", charts.reliability_diagram(report.calibration["bins"])))
    return shown


@role_required(*READ_ROLES)
@require_GET
def run_detail(request, run_id):
    run = _get_run(run_id)
    train, evals = _curves(run, "train"), _curves(run, "eval")
    curve_charts = _curve_charts(run, train, evals)
    report = run.reports.filter(split=TEST_SPLIT).first()
    live = {"url": reverse("runs:live", args=[run.pk]), "status": run.status,
            "since": _last_step(train), "eval_since": _last_step(evals),
            "charts": {chart["id"]: chart["traces"] for chart in curve_charts}}
    context = {
        "run": run, "progress": _progress(run), "failure": _failure(run), "curve_charts": curve_charts, "live": live if run.is_active else None,
        "config_rows": [(key, _display(run.config.get(key))) for key in _config_keys([run.config])],
        "environment_rows": [(key, _display(value)) for key, value in sorted((run.environment or {}).items())],
        "report": report, "report_metrics": _scalar_metrics(report.metrics) if report else [],
        "report_charts": _report_charts(run, report),
        "checkpoints": run.checkpoints.order_by("-step")[:50],
        "can_act": has_role(request.user, ML_ENGINEER), "can_debug": has_role(request.user, *ROW_ROLES),
        "run_actions": run_actions(run, request.user),
    }
    return render(request, "runs/run_detail.html", context)


@role_required(ML_ENGINEER)
@require_POST
def run_cancel(request, run_id):
    run = _get_run(run_id)
    try:
        asked = run.cancel(request.user)
    except RunError as exc:
        messages.error(request, f"Cannot cancel: {exc}.")
    else:
        if asked:
            messages.success(request, "Cancel requested; the run stops within a few seconds.")
        else:
            messages.error(request, "A cancel was already requested; the run is stopping.")
    return redirect(run)


@role_required(ML_ENGINEER)
@require_POST
def run_resume(request, run_id):
    run = _get_run(run_id)
    try:
        checkpoint = run.resume(request.user)
    except RunError as exc:
        messages.error(request, f"Cannot resume: {exc}.")
    except QueueUnavailable as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Resuming from the checkpoint at step {checkpoint.step} (attempt {run.attempt}).")
    return redirect(run)


@role_required(*READ_ROLES)
@require_GET
def run_live(request, run_id):
    run = _get_run(run_id)
    form = SinceForm(request.GET)
    if not form.is_valid():
        return _api_error(400, "since and eval_since must be whole numbers (a step)")
    since, eval_since = form.steps()
    return JsonResponse({
        "status": run.status, "progress": run.progress, "error": run.job.error if run.job_id else "",
        "finished": not run.is_active,
        "curves": {"train": _curves(run, "train", since), "eval": _curves(run, "eval", eval_since)},
    })


def _worst_examples(run, worst):
    """The report's worst lists with each example's text, read in one query."""
    lists = [("confident_mistakes", "Confident mistakes"), ("highest_loss", "Highest loss")]
    items = {key: [i for i in (worst or {}).get(key) or [] if isinstance(i, dict)][:WORST_SHOWN] for key, _ in lists}
    rows = {i["row"] for found in items.values() for i in found if isinstance(i.get("row"), int)}
    examples = Example.objects.filter(version_id=run.dataset_version_id, row__in=rows).only("row", "text", "response")
    by_row = {example.row: example for example in examples}
    return [{"key": key, "title": title, "items": [{**i, "example": by_row.get(i.get("row"))} for i in items[key]]}
            for key, title in lists]


@role_required(*ROW_ROLES)
@require_GET
def run_debug(request, run_id):
    run = _get_run(run_id)
    report = run.reports.filter(split=TEST_SPLIT).first()
    sections = _worst_examples(run, report.worst) if report else []
    return render(request, "runs/run_debug.html", {"run": run, "report": report, "sections": sections})


def _compare_charts(runs):
    curves = {run.pk: (run.curves("train"), run.curves("eval")) for run in runs}
    loss = {f"run {run.pk}": curves[run.pk][0].get("loss", ([], [])) for run in runs}
    eval_loss = {f"run {run.pk}": curves[run.pk][1].get("eval_loss", ([], [])) for run in runs}
    return [("compare-loss", charts.curves(loss, title="Training loss", y_title="loss")),
            ("compare-eval-loss", charts.curves(eval_loss, title="Validation loss", y_title="loss"))]


def _compare_rows(runs):
    configs = [run.config for run in runs]
    config_rows = []
    for key in _config_keys(configs):
        values = [config.get(key) for config in configs]
        config_rows.append({"key": key, "values": [_display(v) for v in values],
                            "differs": any(v != values[0] for v in values[1:])})
    metric_keys = sorted({key for run in runs for key, _ in _scalar_metrics(run.test_metrics)},
                         key=lambda k: (LEADING_METRICS.index(k) if k in LEADING_METRICS else len(LEADING_METRICS), k))
    metric_rows = [{"key": key, "values": [(run.test_metrics or {}).get(key) for run in runs]} for key in metric_keys]
    return config_rows, metric_rows


@role_required(*READ_ROLES)
@require_GET
def run_compare(request):
    form = CompareForm(request.GET)
    if not form.is_valid():
        return render(request, "runs/run_compare.html", {"error": " ".join(form.errors["runs"])}, status=400)
    ids = form.cleaned_data["runs"]
    found = Run.objects.for_listing().in_bulk(ids)
    missing = [str(i) for i in ids if i not in found]
    if missing:
        return render(request, "runs/run_compare.html", {"error": f"There is no run {', '.join(missing)}."}, status=400)
    runs = [found[i] for i in ids]
    config_rows, metric_rows = _compare_rows(runs)
    return render(request, "runs/run_compare.html", {"runs": runs, "charts": _compare_charts(runs),
                                                     "config_rows": config_rows, "metric_rows": metric_rows})


# --- JSON API --------------------------------------------------------------------------------


def _api_error(status, message, **extra):
    return JsonResponse({"error": message, **extra}, status=status)


def _config_errors(errors):
    return JsonResponse({"errors": errors}, status=400)


def run_status(run):
    return {
        "id": run.pk, "name": run.name, "status": run.status, "url": run.get_absolute_url(),
        "dataset_version": run.dataset_version_id, "dataset": str(run.dataset_version), "base_model": run.base_model,
        "task": run.task, "method": run.method, "attempt": run.attempt, "config": run.config,
        "progress": run.progress, "test_metrics": run.test_metrics, "output_sha256": run.output_sha256,
        "environment": run.environment, "warnings": run.warnings, "error": run.job.error if run.job_id else "",
        "created_at": run.created_at,
    }


@role_required(ML_ENGINEER)
@require_POST
def api_create(request):
    """POST a JSON object of RunConfig settings (plus an optional "name") → 201 with the run."""
    try:
        data = jsonbody.read_object(request, "a JSON object of run settings")
    except jsonbody.JsonBodyError as exc:
        # Both shapes: the API's {"error", "detail"} and the config's {"errors": {field: [...]}}.
        return exc.response(errors={"": [exc.detail]})
    name = data.pop("name", "") or ""
    if not isinstance(name, str) or len(name) > Run._meta.get_field("name").max_length:
        return _config_errors({"name": ["must be text of at most 200 characters"]})
    try:
        run = launch.start(request.user, data, name=name.strip())
    except ConfigError as exc:
        return _config_errors(exc.errors)
    except QueueUnavailable as exc:
        return _api_error(503, str(exc))
    return JsonResponse({"id": run.pk, "status": run.status, "url": run.get_absolute_url(),
                         "api_url": reverse("runs:api_detail", args=[run.pk])}, status=201)


@role_required(*READ_ROLES)
@require_GET
def api_detail(request, run_id):
    return JsonResponse(run_status(_get_run(run_id)))


@role_required(*READ_ROLES)
@require_GET
def api_metrics(request, run_id):
    run = _get_run(run_id)
    form = SinceForm(request.GET)
    if not form.is_valid():
        return _api_error(400, "since and eval_since must be whole numbers (a step)")
    since, eval_since = form.steps()
    return JsonResponse({"run": run.pk, "train": _curves(run, "train", since), "eval": _curves(run, "eval", eval_since)})
