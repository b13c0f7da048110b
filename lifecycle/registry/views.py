"""Registry pages. Thin views: a helper that fetches the object or 404s, a form, one model
method, a redirect."""
from django.http import HttpResponse

from lifecycle.core.roles import role_required

# export
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from lifecycle.registry import export
from lifecycle.registry.models import ModelVersion


@role_required("ml_engineer")
def model_list(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def model_create(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def register(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def inbox(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def request_detail(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def request_approve(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def request_reject(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def model_detail(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def model_settings(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def version_detail(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def card_edit(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def promote(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def verify(request, **kwargs):
    return HttpResponse("not built yet", status=501)


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


@role_required("ml_engineer")
def webhook_list(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def webhook_create(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def webhook_detail(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def webhook_disable(request, **kwargs):
    return HttpResponse("not built yet", status=501)

