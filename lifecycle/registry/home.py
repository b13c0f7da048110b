"""Start-page panels of the registry (core/home.py): for approvers the promotions waiting for
them; for engineers the models with what is in production and staging, and their own open requests."""
from django.urls import reverse

from lifecycle.core.home import Panel, panel
from lifecycle.core.roles import APPROVER, ML_ENGINEER
from lifecycle.registry.models import PromotionRequest, RegisteredModel, Stage
from lifecycle.registry.views import OPEN_STATUSES, holders_by_model

SHOWN = 5


def _open():
    return (PromotionRequest.objects.filter(status__in=OPEN_STATUSES).select_related("version__model", "requester")
            .order_by("created_at", "pk"))


def _row(request):
    detail = f"{request.from_stage} → {request.to_stage}, asked by {request.requester or 'system'} {request.created_at:%Y-%m-%d}"
    if request.status == PromotionRequest.Status.BLOCKED:
        detail += ", blocked by a failed gate"
    return (f"#{request.pk} {request.version}", request.get_absolute_url(), detail)


@panel(APPROVER, order=10)
def promotions(request):
    waiting = _open()
    count = waiting.count()
    note = f"{count} promotion request{'s' if count != 1 else ''} wait{'s' if count == 1 else ''} for a decision." if count else ""
    return Panel("Promotions waiting for approval", note=note, rows=[_row(r) for r in waiting[:SHOWN]],
                 empty="No promotion waits for approval.", links=[("Open the approvals inbox", reverse("registry:inbox"))],
                 id="home-promotions")


@panel(ML_ENGINEER, order=35)
def models(request):
    found = list(RegisteredModel.objects.order_by("-pk")[:SHOWN])
    holders = holders_by_model([m.pk for m in found])
    rows = []
    for model in found:
        held = holders.get(model.pk, {})
        stages = [f"{stage} v{held[stage].number}" for stage in (Stage.PRODUCTION, Stage.STAGING) if stage in held]
        rows.append((model.name, model.get_absolute_url(), ", ".join(stages) or "nothing in production or staging"))
    return Panel("Registered models", rows=rows, empty="No models are registered yet.", id="home-registry",
                 links=[("New model", reverse("registry:create")), ("The registry", reverse("registry:list"))])


@panel(ML_ENGINEER, order=36)
def my_requests(request):
    mine = _open().filter(requester=request.user)
    rows = [_row(r) for r in mine[:SHOWN]]
    if not rows:
        return None
    return Panel("Your open promotion requests", rows=rows, id="home-my-requests")
