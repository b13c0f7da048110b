from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.core.queues import QueueUnavailable
from lifecycle.core.roles import APPROVER, LABELER, ML_ENGINEER, VIEWER, has_role, role_required
from lifecycle.labeling import charts
from lifecycle.labeling.forms import (AnswerForm, DecisionForm, FreezeForm, ItemForm, ProjectForm, SuggestForm,
                                      TableFilterForm)
from lifecycle.labeling.models import FreezeRefused, Item, LabelingError, LabelingProject, NotInQueue

# Labelers see the list, their project's progress and their own queue; statistics are for
# everyone else who reads; answers next to example texts only for engineers and approvers.
LIST_ROLES = (LABELER, ML_ENGINEER, APPROVER, VIEWER)
STATS_ROLES = (ML_ENGINEER, APPROVER, VIEWER)
ROW_ROLES = (ML_ENGINEER, APPROVER)
PAGE_SIZE = 50
ADJUDICATION_PAGE = 20


def _get_project(project_id):
    return get_object_or_404(LabelingProject.objects.for_listing(), pk=project_id)


def _error(message, status):
    return JsonResponse({"error": message}, status=status)


# --- projects -----------------------------------------------------------------------------------


@role_required(*LIST_ROLES)
@require_GET
def project_list(request):
    page = Paginator(LabelingProject.objects.for_listing(), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "labeling/project_list.html", {"page": page})


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def project_create(request):
    form = ProjectForm(request.POST or None, initial={"version": request.GET.get("version")})
    if request.method == "POST" and form.is_valid():
        fields = {k: v for k, v in form.cleaned_data.items() if k not in ("version", "labels")}
        try:
            project = LabelingProject.create(request.user, form.cleaned_data["version"], **fields)
        except LabelingError as exc:
            form.add_error(None, str(exc))
        else:
            n = project.item_count
            messages.success(request, f"Project created with {n} example{pluralize(n)}, {project.gold_count} of them gold.")
            return redirect(project)
    return render(request, "labeling/project_form.html", {"form": form})


@role_required(*LIST_ROLES)
@require_GET
def project_detail(request, project_id):
    project = _get_project(project_id)
    context = {"project": project, "progress": project.progress(), "label_counts": project.label_counts(),
               "can_stats": has_role(request.user, *STATS_ROLES)}
    if context["can_stats"]:
        report = project.latest_qc()
        context.update(report=report, stale=report is not None and not project.qc_is_current(report),
                       freeze_form=FreezeForm())
    if has_role(request.user, ML_ENGINEER) and project.is_open:
        context["suggest_form"] = SuggestForm(project=project)
    if has_role(request.user, LABELER):
        context["my_answers"] = _answered_by(project, request.user)
    return render(request, "labeling/project_detail.html", context)


# --- the review page and its JSON endpoints ----------------------------------------------------


@role_required(LABELER)
@require_GET
def review(request, project_id):
    project = _get_project(project_id)
    return render(request, "labeling/review.html", {"project": project})


def _item_json(project, user, assignment):
    """What a labeler may see of their current item: never its gold status or others' answers."""
    if assignment is None:
        return {"item": None, "done": _answered_by(project, user),
                "message": "Your queue is empty: every example has all the answers it needs. Thank you!"}
    item = assignment.item
    suggestion = ({"label": item.suggested_label, "confidence": item.suggested_confidence}
                  if item.suggested_label else None)
    return {"item": item.pk, "text": item.example.text, "suggestion": suggestion, "done": _answered_by(project, user)}


def _answered_by(project, user):
    return project.assignments.filter(annotator=user, state="answered").count()


def _next(project, user):
    try:
        return JsonResponse(_item_json(project, user, project.next_for(user)))
    except LabelingError as exc:
        return _error(str(exc), 409)


@role_required(LABELER)
@require_GET
def next_item(request, project_id):
    return _next(_get_project(project_id), request.user)


@role_required(LABELER)
@require_POST
def answer(request, project_id):
    project = _get_project(project_id)
    form = AnswerForm(request.POST, label_set=project.label_set)
    if not form.is_valid():
        return _error(" ".join(m for errors in form.errors.values() for m in errors), 400)
    data = form.cleaned_data
    try:
        assignment = project.assignment_for(request.user, data["item"])
        assignment.answer(label=data["label"], flagged=data["flag"], note=data["note"] if data["flag"] else "")
    except NotInQueue as exc:
        return _error(str(exc), 403)
    except LabelingError as exc:
        return _error(str(exc), 409)
    _schedule_qc(project)
    return _next(project, request.user)


def _schedule_qc(project):
    """QC follows the answers by itself, at most once per LABELING_QC_INTERVAL seconds."""
    try:
        project.schedule_qc(min_interval=settings.LABELING_QC_INTERVAL)
    except QueueUnavailable:
        pass  # the answer is saved; QC catches up with the next one, or the Recompute button


@role_required(LABELER)
@require_POST
def skip(request, project_id):
    project = _get_project(project_id)
    form = ItemForm(request.POST)
    if not form.is_valid():
        return _error("Say which example to skip.", 400)
    try:
        project.assignment_for(request.user, form.cleaned_data["item"]).skip()
    except NotInQueue as exc:
        return _error(str(exc), 403)
    except LabelingError as exc:
        return _error(str(exc), 409)
    return _next(project, request.user)


@role_required(LABELER)
@require_POST
def undo(request, project_id):
    project = _get_project(project_id)
    try:
        project.undo_last(request.user)
    except LabelingError as exc:
        return _error(str(exc), 409)
    _schedule_qc(project)
    return _next(project, request.user)


# --- table mode and adjudication ----------------------------------------------------------------


@role_required(*ROW_ROLES)
@require_GET
def table(request, project_id):
    project = _get_project(project_id)
    form = TableFilterForm(request.GET or None, project=project)
    show, annotator = (form.cleaned_data["show"], form.cleaned_data["annotator"]) if form.is_valid() else ("", None)
    # Page through ids alone (an OFFSET over a narrow index), then load the page's rows with
    # their example and answers: deep pages cost what the first one does.
    page = Paginator(Item.objects.table_ids(project, show=show, annotator=annotator), PAGE_SIZE) \
        .get_page(request.GET.get("page"))
    rows = list(Item.objects.filter(pk__in=list(page.object_list)).for_table().order_by("position"))
    query = urlencode({k: v for k, v in request.GET.items() if k != "page" and v})
    return render(request, "labeling/table.html", {"project": project, "form": form, "page": page, "rows": rows,
                                                   "query": query})


@role_required(ML_ENGINEER, APPROVER)
@require_GET
def adjudication(request, project_id):
    project = _get_project(project_id)
    items = Item.objects.filter(project=project, state__in=Item.ADJUDICATION).for_table().order_by("position")
    page = Paginator(items, ADJUDICATION_PAGE).get_page(request.GET.get("page"))
    return render(request, "labeling/adjudication.html", {"project": project, "page": page,
                                                          "can_decide": has_role(request.user, ML_ENGINEER)})


@role_required(ML_ENGINEER)
@require_POST
def decide(request, project_id, item_id):
    project = _get_project(project_id)
    item = get_object_or_404(Item, project=project, pk=item_id)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Pick a label for the decision.")
    else:
        try:
            item.decide(request.user, form.cleaned_data["label"], form.cleaned_data["note"])
        except LabelingError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Example {item.position}: decided {form.cleaned_data['label']!r}.")
            _schedule_qc(project)
    return redirect("labeling:adjudication", project.pk)


@role_required(ML_ENGINEER)
@require_POST
def suggest(request, project_id):
    project = _get_project(project_id)
    form = SuggestForm(request.POST, project=project)
    if not form.is_valid():
        messages.error(request, "Pick a trained classification run of this dataset.")
        return redirect(project)
    try:
        job = project.request_suggestions(request.user, form.cleaned_data["run"])
    except (LabelingError, QueueUnavailable) as exc:
        messages.error(request, f"No suggestions: {exc}")
    else:
        messages.success(request, f"Run #{form.cleaned_data['run'].pk} is predicting every example (job {job.pk}).")
    return redirect(project)


# --- QC and freezing ----------------------------------------------------------------------------


@role_required(*STATS_ROLES)
@require_GET
def qc_page(request, project_id):
    project = _get_project(project_id)
    report = project.latest_qc()
    # A computation still to come is shown live; the page reloads itself once it is done.
    pending = project.qc_job if project.qc_job_id and not project.qc_job.is_terminal else None
    context = {"project": project, "report": report, "qc_job": pending}
    if report is not None:
        context.update(stale=not project.qc_is_current(report), figures=charts.qc_figures(project, report.data))
    return render(request, "labeling/qc.html", context)


@role_required(ML_ENGINEER, APPROVER)
@require_POST
def qc_run(request, project_id):
    project = _get_project(project_id)
    try:
        # No flash on success: the QC page shows the job itself, live, and drops it when done.
        project.schedule_qc(request.user)
    except QueueUnavailable:
        messages.error(request, "The job queue does not answer; try again in a moment.")
    return redirect("labeling:qc", project.pk)


@role_required(ML_ENGINEER, APPROVER)
@require_POST
def freeze(request, project_id):
    project = _get_project(project_id)
    form = FreezeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The override reason is too long.")
        return redirect(project)
    try:
        # No atomic() around it: a refusal for stale QC must still keep the QC job it queued.
        project.request_freeze(request.user, override_reason=form.cleaned_data["override_reason"])
    except FreezeRefused as exc:
        messages.error(request, "Not frozen: " + " ".join(exc.reasons))
    except (LabelingError, QueueUnavailable) as exc:
        messages.error(request, f"Not frozen: {exc}")
    else:
        messages.success(request, "The new version is being written; this page links it when it is ready.")
    return redirect(project)
