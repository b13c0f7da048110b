"""The registry's JSON API (/api/v1/registry/...).

Reads are open to the registry's readers (governance.READERS); engineers create models, register
versions and ask for promotions; approvers approve and reject. Bodies are read by
lib/jsonbody.py and checked here field by field (an unknown field is refused, not ignored).
Errors have the API's shape, {"error", "detail"}: RegistryError 400, ApprovalDenied 403,
EvidenceChanged 409 (with "changed"), an unknown model, version, run or request 404.
"""
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.http import JsonResponse
from django.urls import reverse

from lifecycle.core.roles import APPROVER, ML_ENGINEER, forbidden, has_role, role_required
from lifecycle.lib import jsonapi
from lifecycle.lib.pagination import keyset_page
from lifecycle.lib.params import parse_id, parse_int, parse_optional_id
from lifecycle.registry import export as governance  # `export` is a view's name here
from lifecycle.registry.models import (
    HEX64, ApprovalDenied, EvidenceChanged, ModelVersion, PromotionRequest, RegisteredModel, RegistryError, Stage,
)
from lifecycle.registry.signing import SigningError
from lifecycle.runs.models import Run
from lifecycle.runs.outputs import OutputError

PAGE_SIZE, MAX_PAGE_SIZE = 50, 200
MAX_TEXT = 10_000  # descriptions, reasons and comments


NotFound, BadRequest, _error, _body = jsonapi.NotFound, jsonapi.BadRequest, jsonapi.error, jsonapi.body
api = jsonapi.api_view((
    (EvidenceChanged, 409, "evidence_changed", lambda exc: {"changed": exc.changed}),
    (ApprovalDenied, 403, "forbidden"),
    (RegistryError, 400, "refused"), (OutputError, 400, "refused"),
    (SigningError, 503, "signing_unavailable"),
))


def _may_write(request, *roles):
    """None when the user holds one of `roles`, else the 403 the decorator would give."""
    return None if has_role(request.user, *roles) else forbidden(request, roles)


# --- reading a body ----------------------------------------------------------------------------


def _text(data, name, *, default="", limit=MAX_TEXT):
    value = data.get(name, default)
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be text")
    if len(value) > limit:
        raise BadRequest(f"{name} holds at most {limit} characters")
    return value


# --- finding objects ---------------------------------------------------------------------------


def _model(slug):
    model = RegisteredModel.objects.filter(slug=slug).first()
    if model is None:
        raise NotFound(f"no registered model {slug!r}")
    return model


def _version(slug, number):
    version = ModelVersion.objects.for_listing().filter(model__slug=slug, number=number).first()
    if version is None:
        _model(slug)
        raise NotFound(f"{slug!r} has no version {number}")
    return version


def _request(request_id):
    found = PromotionRequest.objects.select_related("version__model", "version__run", "requester", "decided_by").filter(pk=request_id).first()
    if found is None:
        raise NotFound(f"no promotion request {request_id}")
    return found


# --- what the API answers with -------------------------------------------------------------------


def _holders(models):
    """{model id: {stage: number}} of the production and staging versions, in one query."""
    found = {model.pk: {} for model in models}
    rows = ModelVersion.objects.filter(model__in=models, stage__in=[Stage.PRODUCTION, Stage.STAGING])
    for model_id, stage, number in rows.values_list("model_id", "stage", "number"):
        found[model_id][stage] = number
    return found


def model_data(model, holders=None):
    holders = _holders([model])[model.pk] if holders is None else holders
    return {
        "id": model.pk, "slug": model.slug, "name": model.name, "description": model.description,
        "created_by": getattr(model.created_by, "username", None), "created_at": model.created_at,
        "last_number": model.last_number, "production": holders.get(Stage.PRODUCTION), "staging": holders.get(Stage.STAGING),
        "gate_settings": model.gate_settings, "approvals_required": model.approvals_required,
        "url": model.get_absolute_url(), "api_url": reverse("registry:api_model", args=[model.slug]),
        "versions_url": reverse("registry:api_versions", args=[model.slug]),
    }


def version_summary(version):
    return {
        "number": version.number, "stage": version.stage, "run": version.run_id, "output_sha256": version.output_sha256,
        "metrics": version.metrics, "signature_status": version.signature_status,
        "registered_by": getattr(version.registered_by, "username", None), "created_at": version.created_at,
        "api_url": reverse("registry:api_version", args=[version.model.slug, version.number]),
    }


def version_data(version):
    slug, number = version.model.slug, version.number
    return {
        **governance.version_record(version),
        "lineage": version.lineage,
        "signature": {"sha256": version.signature_sha256, "status": version.signature_status,
                      "checked_at": version.signature_checked_at, "error": version.signature_error},
        "card": version.card, "card_sha256": version.card_sha256,
        "requests": [{"id": r.pk, "to_stage": r.to_stage, "status": r.status,
                      "api_url": reverse("registry:api_request", args=[r.pk])}
                     for r in version.requests.order_by("created_at", "pk")],
        "stage_changes": [governance.stage_change_record(change) for change in version.timeline()],
        "api_url": reverse("registry:api_version", args=[slug, number]),
        "export_url": reverse("registry:api_export", args=[slug, number]),
        "requests_url": reverse("registry:api_request_create", args=[slug, number]),
    }


def request_data(request):
    request = PromotionRequest.objects.select_related("requester", "decided_by", "version__model").get(pk=request.pk)
    version = request.version
    return {
        **governance.request_record(request),
        "version": {"model": version.model.slug, "number": version.number, "stage": version.stage,
                    "api_url": reverse("registry:api_version", args=[version.model.slug, version.number])},
        "api_url": reverse("registry:api_request", args=[request.pk]),
    }


# --- models ------------------------------------------------------------------------------------


@role_required(*governance.READERS)
@api("GET", "POST")
def models_(request):
    """GET: every registered model. POST {"name", "slug"?, "description"?} (engineers): a new one."""
    if request.method == "GET":
        models = list(RegisteredModel.objects.select_related("created_by").order_by("name"))
        holders = _holders(models)
        return JsonResponse({"models": [model_data(model, holders[model.pk]) for model in models]})
    if refused := _may_write(request, ML_ENGINEER):
        return refused
    data = _body(request, ("name", "slug", "description"), required=("name",))
    name = _text(data, "name", limit=RegisteredModel._meta.get_field("name").max_length).strip()
    slug = _text(data, "slug", limit=RegisteredModel._meta.get_field("slug").max_length).strip()
    if not name:
        raise BadRequest("name must not be empty")
    if slug:
        try:
            validate_slug(slug)
        except ValidationError:
            raise BadRequest("slug may hold only letters, digits, hyphens and underscores") from None
    model = RegisteredModel.create(request.user, name=name, slug=slug, description=_text(data, "description").strip())
    return JsonResponse(model_data(model), status=201)


@role_required(*governance.READERS)
@api("GET")
def model(request, slug):
    return JsonResponse(model_data(_model(slug)))


# --- versions ----------------------------------------------------------------------------------


@role_required(*governance.READERS)
@api("GET", "POST")
def versions(request, slug):
    """GET: the model's versions, newest first, ?before=N (or ?after=N) and ?size= to page.
    POST {"run": id, "artifact"?: key} (engineers): register that run's output as the next version."""
    if request.method == "POST":
        if refused := _may_write(request, ML_ENGINEER):
            return refused
        return _register(request, _model(slug))
    model = _model(slug)
    before = parse_optional_id(request.GET.get("before"), "before")
    after = parse_optional_id(request.GET.get("after"), "after")
    size = parse_int(request.GET.get("size", PAGE_SIZE), "size", 1, MAX_PAGE_SIZE)
    page = keyset_page(model.versions.for_listing(), "number", before=before, after=after, size=size)
    link = reverse("registry:api_versions", args=[slug])
    return JsonResponse({
        "model": slug, "versions": [version_summary(version) for version in page.items],
        "older": f"{link}?before={page.older}&size={size}" if page.older is not None else None,
        "newer": f"{link}?after={page.newer}&size={size}" if page.newer is not None else None,
    })


def _register(request, model):
    data = _body(request, ("run", "artifact"), required=("run",))
    run_id = data["run"]
    if isinstance(run_id, bool) or not isinstance(run_id, int):
        raise BadRequest("run must be a run's id, a whole number")
    run = Run.objects.select_related("job", "dataset_version").filter(pk=parse_id(run_id, "run")).first()
    if run is None:
        raise NotFound(f"no run {run_id}")
    artifact = data.get("artifact")
    if "artifact" in data and not isinstance(artifact, str):  # null must not read as "not given"
        raise BadRequest("artifact, when given, is the run output's 64-hex key in Lifecycle's artifact store; "
                         "paths and URLs are not accepted")
    version = ModelVersion.register(request.user, model, run, artifact=artifact)
    return JsonResponse(version_data(version), status=201)


@role_required(*governance.READERS)
@api("GET")
def version(request, slug, number):
    return JsonResponse(version_data(_version(slug, number)))


@role_required(*governance.READERS)
@api("GET")
def export(request, slug, number):
    """The governance export (registry/export.py) of one version."""
    return JsonResponse(governance.build(_version(slug, number), request.user), json_dumps_params={"ensure_ascii": False})


# --- promotion requests ------------------------------------------------------------------------


@role_required(ML_ENGINEER)
@api("POST")
def request_create(request, slug, number):
    """POST {"to_stage", "reason"}: ask for the version to move; 201 with the request."""
    version = _version(slug, number)
    data = _body(request, ("to_stage", "reason"), required=("to_stage", "reason"))
    to_stage, reason = _text(data, "to_stage", limit=20), _text(data, "reason")
    created = version.request_promotion(request.user, to_stage, reason)
    return JsonResponse(request_data(created), status=201)


@role_required(*governance.READERS)
@api("GET")
def request_detail(request, request_id):
    return JsonResponse(request_data(_request(request_id)))


@role_required(APPROVER)
@api("POST")
def request_approve(request, request_id):
    """POST {"evidence_sha256", "comment"?, "overrides"?: {gate: reason}}. The evidence hash is
    the evidence the approver read (GET the request first); anything else answers 409."""
    found = _request(request_id)
    data = _body(request, ("comment", "evidence_sha256", "overrides"), required=("evidence_sha256",))
    seen = data["evidence_sha256"]
    if not isinstance(seen, str) or not HEX64.match(seen):
        raise BadRequest("evidence_sha256 must be the 64-hex evidence hash of the request you reviewed")
    overrides = data.get("overrides", {})
    if not isinstance(overrides, dict) or not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in overrides.values()):
        raise BadRequest("overrides must map failed gate names to the written reason for letting each through")
    found.approve(request.user, _text(data, "comment"), seen_sha256=seen, overrides=overrides)
    return JsonResponse(request_data(found))


@role_required(APPROVER)
@api("POST")
def request_reject(request, request_id):
    """POST {"comment"}: reject the request, saying why."""
    found = _request(request_id)
    data = _body(request, ("comment",), required=("comment",))
    found.reject(request.user, _text(data, "comment"))
    return JsonResponse(request_data(found))
