"""Registry pages. Thin views: a helper that fetches the object or 404s, a form, one model
method, a redirect."""
from django.http import HttpResponse

from lifecycle.core.roles import role_required


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


@role_required("ml_engineer")
def export_html(request, **kwargs):
    return HttpResponse("not built yet", status=501)


@role_required("ml_engineer")
def export_json(request, **kwargs):
    return HttpResponse("not built yet", status=501)


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

