"""Registry pages. Thin views: a helper that fetches the object or 404s, a form, one model
method, a redirect."""
from django.http import HttpResponse

from lifecycle.core.roles import role_required

# webhooks
import json

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.core.roles import ML_ENGINEER
from lifecycle.lib.pagination import keyset_page
from lifecycle.registry.models import Webhook, WebhookAttempt, WebhookError
from lifecycle.registry.webhook_forms import DeliveryPageForm, WebhookForm

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
