import hashlib
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, HttpResponseBadRequest, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.core.charts import grouped_bars
from lifecycle.core.jobs import enqueue
from lifecycle.core.models import Job, canonical_json
from lifecycle.core.queues import QueueUnavailable
from lifecycle.core.roles import APPROVER, ML_ENGINEER, READ_ROLES, forbidden, has_role, role_required
from lifecycle.datasets import diff, splits, tasks, uploads
from lifecycle.datasets.forms import BrowseForm, DatasetForm, MappingForm, PolicyForm, ResplitForm, SignOffForm, UploadForm
from lifecycle.datasets.models import SPLIT_NAMES, Dataset, DatasetVersion, PiiSignOff, Upload
from lifecycle.lib import jsonapi
from lifecycle.lib.csvsafe import csv_lines
from lifecycle.lib.pagination import keyset_page
from lifecycle.lib.params import BadParameter, parse_id, parse_int, parse_optional_id

# Example texts can hold personal data: statistics are for every reader, rows are not.
ROW_ROLES = (ML_ENGINEER, APPROVER)
PAGE_SIZE = 50


def _get_version(slug, number):
    return get_object_or_404(DatasetVersion.objects.select_related("dataset", "parent", "created_by"),
                             dataset__slug=slug, number=number)


def _label_chart(version):
    counts = version.split_counts()
    labels = sorted({label for split in counts.values() for label in split})
    series = {split: [counts.get(split, {}).get(label, 0) for label in labels] for split in SPLIT_NAMES if split in counts}
    return grouped_bars(labels, series, title="Examples per label and split")


@role_required(*READ_ROLES)
@require_GET
def dataset_list(request):
    page = Paginator(Dataset.objects.with_latest().order_by("slug"), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "datasets/dataset_list.html", {"page": page})


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def dataset_create(request):
    form = DatasetForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        dataset = form.save_for(request.user)
        messages.success(request, f"Dataset “{dataset.name}” created. Upload its first file.")
        return redirect("datasets:upload_create", slug=dataset.slug)
    return render(request, "datasets/dataset_form.html", {"form": form}, status=400 if form.errors else 200)


@role_required(*READ_ROLES)
@require_GET
def dataset_detail(request, slug):
    dataset = get_object_or_404(Dataset, slug=slug)
    versions = dataset.versions.for_listing().order_by("-number")[:100]
    latest = versions[0] if versions else None
    return render(request, "datasets/dataset_detail.html", {
        "dataset": dataset, "versions": versions, "latest": latest, "chart": _label_chart(latest) if latest else None,
        "uploads": dataset.uploads.select_related("job", "version").order_by("-created_at")[:10],
        "policy_form": PolicyForm(initial={"pii_policy": dataset.pii_policy}),
        "can_see_rows": has_role(request.user, *ROW_ROLES),
    })


@role_required(ML_ENGINEER)
@require_POST
def dataset_policy(request, slug):
    dataset = get_object_or_404(Dataset, slug=slug)
    form = PolicyForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("unknown PII policy")
    dataset.set_policy(request.user, form.cleaned_data["pii_policy"])
    messages.success(request, f"PII policy is now “{dataset.get_pii_policy_display()}”.")
    return redirect(dataset)


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def upload_create(request, slug):
    dataset = get_object_or_404(Dataset, slug=slug)
    form = UploadForm(request.POST or None, request.FILES or None)
    error = getattr(request, "upload_refused", None)  # the size-limit handler stopped the upload
    status = 413 if error else 400 if form.errors else 200
    if error:
        form = UploadForm()
    elif request.method == "POST" and form.is_valid():
        uploaded = form.cleaned_data["file"]
        try:
            with uploads.local_path(uploaded) as path:
                upload = uploads.receive(dataset, path, uploaded.name, user=request.user, on_error=form.cleaned_data["on_error"])
            return redirect(upload)
        except uploads.FileFormatError as exc:
            error, status = str(exc), 400
    return render(request, "datasets/upload_form.html", {"dataset": dataset, "form": form, "error": error}, status=status)


@role_required(*READ_ROLES)
@require_http_methods(["GET", "POST"])
def upload_detail(request, upload_id):
    upload = get_object_or_404(Upload.objects.select_related("dataset", "job", "version"), pk=upload_id)
    form = None
    if not upload.job_id:
        form = MappingForm(request.POST or None, dataset=upload.dataset, columns=upload.columns,
                           initial_mapping=uploads.suggested_mapping(upload))
        if request.method == "POST":
            return _start_ingest(request, upload, form)
    elif request.method == "POST":
        return redirect(upload)
    return render(request, "datasets/upload_detail.html", {"upload": upload, "form": form})


@role_required(ML_ENGINEER)
def _start_ingest(request, upload, form):
    if not form.is_valid():
        return render(request, "datasets/upload_detail.html", {"upload": upload, "form": form}, status=400)
    try:
        uploads.start_ingest(upload, form.mapping(), request.user, split_by_time=form.cleaned_data["split_by_time"])
    except QueueUnavailable as exc:
        messages.error(request, str(exc))
    return redirect(upload)


def upload_status(upload):
    job = upload.job
    wait = job.wait_reason() if job else None
    return {
        "upload": upload.pk, "dataset": upload.dataset.slug, "filename": upload.filename, "status": upload.status,
        "progress": job.progress if job else {}, "error": job.error if job else "",
        # What a queued ingest waits for (its queue, its place, the job ahead, a missing worker).
        "wait": wait.sentence() if wait else "",
        "version": upload.version.number if upload.version_id else None,
        "version_url": upload.version.get_absolute_url() if upload.version_id else None,
        # The preview holds rows (maybe personal data): the mapping step shows it to engineers only.
        "report": {key: value for key, value in upload.report.items() if key != "preview"},
    }


@role_required(*READ_ROLES)
@require_GET
def version_detail(request, slug, number):
    version = _get_version(slug, number)
    form = BrowseForm(request.GET or None)
    can_see_rows = has_role(request.user, *ROW_ROLES)
    context = {"version": version, "dataset": version.dataset, "form": form, "can_see_rows": can_see_rows,
               "chart": _label_chart(version), "signoff_form": SignOffForm(),
               "resplit_form": ResplitForm(version=version, initial={"seed": version.split_options["seed"] + 1}),
               "ways_out": _ways_out(version)}
    if can_see_rows:
        if form.is_bound and not form.is_valid():
            return render(request, "datasets/version_detail.html", context, status=400)
        context.update(_browse(version, form))
    return render(request, "datasets/version_detail.html", context)


WAY_LABELS = {"groups_exact": "Treat near duplicates as separate rows",
              "groups": "Split by groups only (duplicates treated as separate rows)"}


def _ways_out(version):
    """Where a split falls short of its fractions: the splits again that may meet them, as
    (label, POST fields) for one button each."""
    if version.split_meets_fractions is not False:
        return []
    seed, keep = version.split_options["seed"], version.split_options["keep_together"]
    return ([(label, {"seed": seed, "keep_together": way}) for way, label in WAY_LABELS.items() if way != keep]
            + [(f"Split again with seed {seed + 1}", {"seed": seed + 1, "keep_together": keep})]
            + [(f"Take the splits from the column “{column}”", {"seed": 0, "column": column})
               for column in version.split_columns()])


def _browse(version, form):
    """A page of examples by keyset on `row`: after a row (Next) or before one (Previous)."""
    filters = form.filters() if form.is_bound else {"split": None, "label": None, "pii": None, "search": ""}
    data = form.cleaned_data if form.is_bound else {}
    after, before = data.get("after"), data.get("before")
    matching = version.examples.browse(**filters)
    fields = ("row", "text", "response", "label", "split", "group", "pii_kinds", "duplicate_cluster")
    if before is not None:
        rows = list(matching.filter(row__lt=before).order_by("-row").only(*fields)[: PAGE_SIZE + 1])[::-1]
        has_before, has_after, rows = len(rows) > PAGE_SIZE, True, rows[-PAGE_SIZE:]
    else:
        page = matching.filter(row__gt=after) if after is not None else matching
        rows = list(page.order_by("row").only(*fields)[: PAGE_SIZE + 1])
        has_after, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
        has_before = after is not None and rows and matching.filter(row__lt=rows[0].row).exists()
    query = {k: v for k, v in form.data.items() if k not in ("after", "before") and v}
    return {"examples": rows, "next_after": rows[-1].row if rows and has_after else None,
            "prev_before": rows[0].row if rows and has_before else None,
            "total": _matching_total(version, filters, matching), "query": query, "labels": version.label_set}


def _matching_total(version, filters, matching):
    """How many examples match: from the manifest's counts where they answer (no search, no
    PII filter), else a count (the PII filter has its partial index, search its GIN index)."""
    if filters["search"] or filters["pii"] is not None:
        return matching.count()
    counts = version.split_counts()
    names = SPLIT_NAMES if filters["split"] is None else [SPLIT_NAMES[filters["split"]]]
    per_split = [counts.get(name, {}) for name in names]
    if filters["label"] is None:
        return version.row_count if filters["split"] is None else sum(sum(c.values()) for c in per_split)
    return sum(c.get(filters["label"], 0) for c in per_split)


OPERATION_NOUNS = {"dedup": "removal of duplicates", "redact": "redaction", "resplit": "split"}


@role_required(ML_ENGINEER)
@require_POST
def version_action(request, slug, number, operation):
    version = _get_version(slug, number)
    if operation not in OPERATION_NOUNS:
        raise Http404("unknown operation")
    form = ResplitForm(request.POST, version=version) if operation == "resplit" else None
    if form and not form.is_valid():
        messages.error(request, form.error_text())
        return redirect(version)
    options = form.options() if form else splits.SplitOptions()
    existing = version.existing_child(operation, options)
    if existing is not None:
        how = f" — {options.describe()}" if form else ""
        messages.info(request, f"v{existing.number} already is this {OPERATION_NOUNS[operation]} of v{version.number}{how}: "
                               "nothing new was made.")
        return redirect(existing)
    try:
        with transaction.atomic():
            job = enqueue(tasks.derive_version, user=request.user, key=_derive_key(version, operation, options),
                          version_id=version.pk, operation=operation, user_id=request.user.pk,
                          **(options.as_dict() if operation == "resplit" else {"seed": None}))
    except QueueUnavailable as exc:
        messages.error(request, str(exc))
        return redirect(version)
    messages.success(request, f"Making a child version ({OPERATION_NOUNS[operation]}) as job {job.pk}.")
    return redirect("job_detail", job_id=job.pk)


def _derive_key(version, operation, options):
    """One job per child version asked for: a second click finds the first job; after a job
    that ended without a result (failed, cancelled, interrupted) the next click is a new try."""
    settings = "" if operation != "resplit" else hashlib.sha256(canonical_json(options.as_dict()).encode()).hexdigest()[:16]
    prefix = f"derive:{version.pk}:{operation}:{settings}:"
    ended = Job.objects.filter(key__startswith=prefix, status__in=[
        Job.Status.FAILED, Job.Status.CANCELLED, Job.Status.INTERRUPTED]).count()
    return f"{prefix}{ended}"


@role_required(APPROVER)
@require_POST
def version_signoff(request, slug, number):
    version = _get_version(slug, number)
    form = SignOffForm(request.POST)
    if not version.needs_pii_signoff or version.pii_signed_off:
        messages.error(request, "This version needs no PII sign-off.")
    elif not form.is_valid():
        messages.error(request, "Write the reason (at least 10 characters).")
    else:
        PiiSignOff.sign(version, request.user, form.cleaned_data["reason"])
        messages.success(request, "PII signed off; the version may be used for training.")
    return redirect(version)


@role_required(*ROW_ROLES)
@require_GET
def version_export(request, slug, number):
    version = _get_version(slug, number)
    header = ("row", "text", "response", "label", "split", "group", "timestamp", "pii_kinds")
    rows = version.examples.order_by("row").values_list(*header)
    named = ((r[0], r[1], r[2], r[3], SPLIT_NAMES[r[4]], r[5], r[6].isoformat() if r[6] else "", r[7]) for r in rows.iterator(chunk_size=5000))
    response = StreamingHttpResponse(csv_lines(header, named), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{version.dataset.slug}-v{version.number}.csv"'
    return response


@role_required(*ROW_ROLES)
@require_GET
def version_diff(request, slug):
    dataset = get_object_or_404(Dataset, slug=slug)
    try:
        a, b = parse_id(request.GET.get("a", ""), "a"), parse_id(request.GET.get("b", ""), "b")
    except BadParameter:
        return render(request, "datasets/diff.html", {"dataset": dataset, "error": "Choose two versions to compare."},
                      status=400 if request.GET else 200)
    try:  # {kind: page number} from ?edited=2&added=1&removed=3 (each 1 when not given)
        pages = {kind: parse_int(request.GET[kind], f"page of {kind} rows", low=1, high=diff.MAX_PAGE)
                 for kind in diff.KINDS if request.GET.get(kind, "") != ""}
    except BadParameter as exc:
        return render(request, "datasets/diff.html", {"dataset": dataset, "error": f"{exc}."}, status=400)
    old, new = _get_version(slug, a), _get_version(slug, b)
    result = diff.compare(old, new, pages)
    chart = grouped_bars(result["labels"], {f"v{old.number}": result["old_counts"], f"v{new.number}": result["new_counts"]},
                         title="Label distribution")
    return render(request, "datasets/diff.html", {"dataset": dataset, "old": old, "new": new, "diff": result, "chart": chart,
                                                  "sections": _diff_sections(result["pages"], a, b)})


def _diff_sections(pages, a, b):
    """Each kind's page with the links to its previous and next page (the other kinds stay
    on theirs)."""
    def link(kind, number):
        numbers = {k: page.number for k, page in pages.items()} | {kind: number}
        return "?" + urlencode({"a": a, "b": b, **numbers}) + f"#{kind}"

    return [{"page": page, "previous": link(kind, page.number - 1) if page.has_previous else None,
             "next": link(kind, page.number + 1) if page.has_next else None} for kind, page in pages.items()]


def _api_error(status, message, **extra):
    return JsonResponse({"error": message, **extra}, status=status)


api = jsonapi.api_view(())
API_PAGE_SIZE, API_MAX_PAGE_SIZE = 50, 200
TEXT_FIELDS = ("name", "slug", "description", "task", "pii_policy")
NUMBER_FIELDS = ("max_labels", "max_text_chars")


def dataset_data(dataset):
    """A dataset as the API and manage.py dataset_create answer with it."""
    return {
        "id": dataset.pk, "slug": dataset.slug, "name": dataset.name, "description": dataset.description,
        "task": dataset.task, "pii_policy": dataset.pii_policy, "label_set": dataset.label_set,
        "max_labels": dataset.max_labels, "max_text_chars": dataset.max_text_chars,
        "created_by": getattr(dataset.created_by, "username", None), "created_at": dataset.created_at,
        # versions_url: where its files go next (multipart POST, see api_version_create).
        "url": dataset.get_absolute_url(), "versions_url": reverse("datasets:api_version_create", args=[dataset.slug]),
    }


@role_required(*READ_ROLES)
@api("GET", "POST")
def api_datasets(request):
    """GET: the datasets, newest first (?before=id or ?after=id, and ?size= to page).
    POST {"task", "pii_policy", "name" and/or "slug", "description"?, "labels"?: [..],
    "max_labels"?, "max_text_chars"?} (engineers): 201 with the new dataset, checked by the
    web form's rules; 400 with every refused field."""
    if request.method == "POST":
        if not has_role(request.user, ML_ENGINEER):
            return forbidden(request, (ML_ENGINEER,))
        return _api_dataset_create(request)
    before = parse_optional_id(request.GET.get("before"), "before")
    after = parse_optional_id(request.GET.get("after"), "after")
    size = parse_int(request.GET.get("size", API_PAGE_SIZE), "size", 1, API_MAX_PAGE_SIZE)
    page = keyset_page(Dataset.objects.select_related("created_by"), "pk", before=before, after=after, size=size)
    link = reverse("datasets:api_datasets")
    return JsonResponse({
        "datasets": [dataset_data(dataset) for dataset in page.items],
        "older": f"{link}?before={page.older}&size={size}" if page.older is not None else None,
        "newer": f"{link}?after={page.newer}&size={size}" if page.newer is not None else None,
    })


def _api_dataset_create(request):
    data = jsonapi.body(request, (*TEXT_FIELDS, *NUMBER_FIELDS, "labels"), required=("task", "pii_policy"))
    values = {name: _typed(data, name, str, "text") for name in TEXT_FIELDS if name in data}
    values |= {name: _typed(data, name, int, "a whole number") for name in NUMBER_FIELDS if name in data}
    if "labels" in data:
        labels = data["labels"]
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise jsonapi.BadRequest("labels must be a list of texts")
        if any("," in label for label in labels):  # the form's field is comma-separated
            raise jsonapi.BadRequest("a label may not hold a comma")
        values["labels"] = ",".join(labels)
    values.setdefault("name", values.get("slug", ""))  # as on the command line: the slug names it
    form = DatasetForm.from_values(values)
    if not form.is_valid():
        return jsonapi.error(400, "bad_request", form.error_line(),
                             fields={name: list(errors) for name, errors in form.errors.items()})
    return JsonResponse(dataset_data(form.save_for(request.user)), status=201)


def _typed(data, name, kind, what):
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, kind):  # null must not read as "not given"
        raise jsonapi.BadRequest(f"{name} must be {what}")
    return value


@role_required(ML_ENGINEER)
@require_POST
def api_version_create(request, slug):
    """POST a file (multipart, field `file`) → 202 with the upload and job to poll.
    Optional fields: `mapping` ("text=body,label=intent"), `on_error` (reject|drop),
    `split_by_time` (true: train before validation before test by the timestamp column)."""
    dataset = Dataset.objects.filter(slug=slug).first()
    if dataset is None:
        return _api_error(404, f"no dataset {slug!r}")
    if getattr(request, "upload_refused", None):  # the size-limit handler stopped the upload
        return _api_error(413, request.upload_refused)
    uploaded = request.FILES.get("file")
    if uploaded is None:
        return _api_error(400, "send the file as multipart form field 'file'")
    on_error = request.POST.get("on_error", Upload.OnError.REJECT)
    if on_error not in Upload.OnError.values:
        return _api_error(400, "on_error must be 'reject' or 'drop'")
    try:
        mapping = uploads.parse_mapping_arg(request.POST.get("mapping", ""))
        with uploads.local_path(uploaded) as path:
            upload = uploads.receive(dataset, path, uploaded.name, user=request.user, on_error=on_error)
        by_time = request.POST.get("split_by_time", "").lower() in ("1", "true", "yes", "on")
        job = uploads.start_ingest(upload, mapping or uploads.suggested_mapping(upload), request.user, split_by_time=by_time)
    except (uploads.FileFormatError, ValueError) as exc:
        return _api_error(400, str(exc))
    except QueueUnavailable as exc:
        return _api_error(503, str(exc))
    upload.refresh_from_db()
    return JsonResponse({**upload_status(upload), "job": job.pk, "status_url": f"/api/v1/uploads/{upload.pk}"}, status=202)


@role_required(*READ_ROLES)
@require_GET
def api_upload_detail(request, upload_id):
    upload = get_object_or_404(Upload.objects.select_related("dataset", "job", "version"), pk=upload_id)
    return JsonResponse(upload_status(upload))


@role_required(*READ_ROLES)
@require_GET
def api_version_detail(request, slug, number):
    version = _get_version(slug, number)
    return JsonResponse({"dataset": slug, "version": version.number, "manifest": version.manifest,
                         "manifest_sha256": version.manifest_sha256, "pii_status": version.pii_status,
                         "has_leakage": version.has_leakage, "usable_for_training": version.usable_for_training,
                         "training_blockers": version.training_blockers(),
                         "split_meets_fractions": version.split_meets_fractions})
