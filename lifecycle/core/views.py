import json

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.db import connection, transaction
from django.http import FileResponse, Http404, HttpResponseBadRequest, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from lifecycle.core.artifacts import ArtifactNotFound, InvalidArtifactKey, get_store, validate_key
from lifecycle.core.forms import ApiTokenForm, AuditFilterForm
from lifecycle.core.home import panels_for
from lifecycle.core.models import ApiToken, AuditEvent, Job
from lifecycle.core.jobs import enqueue, job_status, outcome_of
from lifecycle.core.queues import QueueUnavailable, redis_status
from lifecycle.core.tasks import verify_audit_chain
from lifecycle.core.roles import (
    APPROVER,
    AUDIT_ROLES,
    ML_ENGINEER,
    ROLE_DESCRIPTIONS,
    ROLES,
    forbidden,
    has_role,
    role_required,
    user_roles,
)
from lifecycle.lib.csvsafe import csv_lines
from lifecycle.lib.pagination import keyset_page
from lifecycle.lib.params import BadParameter, parse_optional_id

ARTIFACT_ROLES = (ML_ENGINEER, APPROVER)
AUDIT_COLUMNS = ("seq", "created_at", "actor", "action", "object_type", "object_id", "payload", "prev_hash", "hash")


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True


def permission_denied(request, exception=None):
    return render(request, "403.html", {"message": str(exception or "")}, status=403)


def page_not_found(request, exception=None):
    """Our 404 page (handler404, and NotFoundPageMiddleware when DEBUG is on): never a list of routes."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "not_found", "detail": "There is nothing at this address."}, status=404)
    return render(request, "404.html", status=404)


@require_GET
def home(request):
    roles = user_roles(request.user)
    descriptions = [(role, ROLE_DESCRIPTIONS[role]) for role in ROLES if role in roles]
    return render(request, "core/home.html", {"role_descriptions": descriptions, "panels": panels_for(request)})


@login_not_required
@never_cache
@require_GET
def healthz(request):
    """For load balancers: 200 when the database and Redis answer, 503 otherwise."""
    checks = {"database": _database_status(), "redis": redis_status()}
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503)


def _database_status():
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:  # any driver error means "not healthy", reported by class name only
        return f"unavailable ({type(exc).__name__})"


def _audit_events(form):
    return AuditEvent.objects.filtered(**form.filters())


@role_required(*AUDIT_ROLES)
@require_GET
def audit_list(request):
    form = AuditFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return render(request, "core/audit_list.html", {"form": form, "page": None}, status=400)
    if not form.is_bound:
        form = AuditFilterForm({})
        form.is_valid()
    page = keyset_page(
        _audit_events(form), "seq", before=form.cleaned_data.get("before"), after=form.cleaned_data.get("after")
    )
    query = {k: v for k, v in request.GET.items() if k not in ("before", "after") and v}
    return render(
        request,
        "core/audit_list.html",
        {"form": form, "page": page, "query": urlencode(query), "query_dict": query},
    )


@role_required(*AUDIT_ROLES)
@require_GET
def audit_export(request, fmt):
    if fmt not in ("csv", "json"):
        raise Http404("unknown export format")
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return HttpResponseBadRequest("invalid filter: " + "; ".join(e for errs in form.errors.values() for e in errs))
    events = _audit_events(form).order_by("seq").iterator(chunk_size=2000)
    if fmt == "csv":
        rows = ([getattr(e, c) if c != "payload" else json.dumps(e.payload, sort_keys=True) for c in AUDIT_COLUMNS] for e in events)
        body, content_type = csv_lines(AUDIT_COLUMNS, rows), "text/csv; charset=utf-8"
    else:
        body, content_type = _json_lines(events), "application/json"
    response = StreamingHttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="audit.{fmt}"'
    return response


def _json_lines(events):
    """A JSON array streamed one event at a time, so exports of any size use flat memory."""
    yield "["
    for index, event in enumerate(events):
        record = event.canonical_fields() | {"hash": event.hash}
        yield ("," if index else "") + "\n" + json.dumps(record, sort_keys=True)
    yield "\n]\n"


@require_GET
def token_list(request):
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "core/token_list.html", {"tokens": tokens, "form": ApiTokenForm()})


@require_POST
def token_create(request):
    form = ApiTokenForm(request.POST)
    if not form.is_valid():
        tokens = ApiToken.objects.filter(user=request.user)
        return render(request, "core/token_list.html", {"tokens": tokens, "form": form}, status=400)
    token, key = form.save(request.user)
    return render(request, "core/token_created.html", {"token": token, "key": key}, status=201)


@require_POST
def token_revoke(request, token_id):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    if token.revoke(request.user):
        messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("tokens")


def _get_job_for_user(request, job_id):
    # 404, not 403, for a job the user may not read: its id says nothing about it.
    return get_object_or_404(Job.objects.visible_to(request.user), pk=job_id)


@role_required(*ROLES)
@require_GET
def job_list(request):
    try:
        before = parse_optional_id(request.GET.get("before"), "before")
    except BadParameter as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain; charset=utf-8")
    page = keyset_page(Job.objects.visible_to(request.user).select_related("created_by"), "id", before=before)
    return render(request, "core/job_list.html", {"page": page, "can_start": has_role(request.user, *AUDIT_ROLES)})


@role_required(*AUDIT_ROLES)
@require_POST
def job_verify_audit(request):
    try:
        with transaction.atomic():
            job = enqueue(verify_audit_chain, user=request.user)
    except QueueUnavailable as exc:
        messages.error(request, str(exc))
        return redirect("jobs")
    messages.success(request, f"Audit chain verification queued as job {job.pk}.")
    return redirect("job_detail", job_id=job.pk)


@role_required(*ROLES)
@require_POST
def job_cancel(request, job_id):
    job = _get_job_for_user(request, job_id)
    if job.created_by_id != request.user.pk and not has_role(request.user, ML_ENGINEER):
        return forbidden(request, (ML_ENGINEER,))
    if job.request_cancel(request.user):
        messages.success(request, "Cancel requested.")
    else:
        messages.error(request, f"Job {job.pk} is already {job.status}; nothing to cancel.")
    return redirect("job_detail", job_id=job.pk)


@role_required(*ROLES)
@require_GET
def job_detail(request, job_id):
    job = _get_job_for_user(request, job_id)
    return render(request, "core/job_detail.html", {"job": job, "outcome": outcome_of(job)})


@require_GET
def api_me(request):
    return JsonResponse({"username": request.user.username, "roles": sorted(user_roles(request.user))})


@role_required(*ROLES)
@require_GET
def api_job(request, job_id):
    """The job as a page watching it needs it (static/js/job-watch.js): status, progress, ETA,
    what it waits for, and once finished its outcome with links."""
    job = _get_job_for_user(request, job_id)
    return JsonResponse(job_status(job))


@role_required(*ARTIFACT_ROLES)
@require_GET
def artifact_download(request, sha256):
    """Stream an artifact by its digest. The reader verifies the hash as it goes and breaks
    the download off on a mismatch; the ETag lets a client check the bytes it got."""
    try:
        validate_key(sha256)
    except InvalidArtifactKey:
        return HttpResponseBadRequest("not an artifact id: expected a sha256 hex digest", content_type="text/plain")
    store = get_store()
    try:
        reader = store.open(sha256)
    except ArtifactNotFound:
        raise Http404("no such artifact") from None
    response = FileResponse(reader, as_attachment=True, filename=f"{sha256}.bin", content_type="application/octet-stream")
    response["ETag"] = f'"{sha256}"'
    return response
