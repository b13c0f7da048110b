"""The deployments' JSON API (/api/v1/deployments/...), for scripts and for the deployment page,
which polls a rollback's status and the last hour's charts from here.

Reads are open to the deployment readers (views.READ_ROLES); on-call and engineers roll back.
Token auth is core's ApiToken (`Authorization: Bearer lc_…`, core/middleware.py). Bodies are
read by lib/jsonbody.py and an unknown field is refused. Errors have the API's shape,
{"error", "detail"}: a refused change 400, an unknown deployment, release or rollback 404.
"""

from django.http import JsonResponse
from django.urls import reverse

from lifecycle.core.roles import role_required
from lifecycle.deployments import charts, notices, traffic
from lifecycle.deployments.models import Deployment, DeploymentError, Release, Rollback, RouteAck, ServingProcess
from lifecycle.deployments.views import READ_ROLES, ROLLBACK_ROLES
from lifecycle.lib import jsonapi
from lifecycle.lib.pagination import keyset_page
from lifecycle.lib.params import parse_int, parse_optional_id

MAX_REASON = 2000
PAGE_SIZE, MAX_PAGE_SIZE = 50, 200
MAX_MINUTES = 24 * 60


NotFound, BadRequest, _error, _body = jsonapi.NotFound, jsonapi.BadRequest, jsonapi.error, jsonapi.body
api = jsonapi.api_view(((DeploymentError, 400, "refused"),))


def _listed():
    return Deployment.objects.for_listing().select_related("current_release__stable__model",
                                                            "current_release__candidate__model")


def _deployment(name):
    found = _listed().filter(name=name).first()
    if found is None:
        raise NotFound(f"no deployment {name!r}")
    return found


def _version(version):
    if version is None:
        return None
    return {"id": version.pk, "model": version.model.slug, "number": version.number, "stage": version.stage,
            "api_url": reverse("registry:api_version", args=[version.model.slug, version.number])}


def release_data(release):
    live = release.candidate_is_live
    return {
        "number": release.number, "status": release.status, "mode": release.mode if release.candidate_id else "",
        "stable": _version(release.stable), "stable_share": release.stable_share,
        "candidate": _version(release.candidate), "candidate_live": live,
        "share": release.share if live and release.mode == Release.Mode.CANARY else 0.0,
        "verdict": release.verdict, "verdict_reason": release.verdict_reason, "verdict_numbers": release.verdict_numbers,
        "verdict_at": release.verdict_at, "promotion_request": release.promotion_request_id,
        "reason": release.reason, "started_at": release.started_at, "ended_at": release.ended_at,
    }


def rollback_data(rollback):
    return {
        "id": rollback.pk, "release": rollback.release.number, "reason": rollback.reason,
        "actor": getattr(rollback.actor, "username", None), "automatic": rollback.automatic,
        "generation": rollback.generation, "clicked_at": rollback.clicked_at, "completed": rollback.completed_at is not None,
        "completed_at": rollback.completed_at, "time_to_rollback_ms": rollback.time_to_rollback_ms,
        "processes": rollback.processes,
        "api_url": reverse("deployments:api_rollback", args=[rollback.release.deployment.name, rollback.pk]),
    }


def deployment_data(deployment):
    live = list(ServingProcess.objects.live())
    applied = _applied(deployment, live)
    latest = (Rollback.objects.filter(release__deployment=deployment).select_related("release__deployment", "actor")
              .order_by("-clicked_at").first())
    return {
        "name": deployment.name, "environment": deployment.environment, "description": deployment.description,
        "model": deployment.model.slug, "generation": deployment.generation,
        "release": release_data(deployment.current_release),
        "serving": {"live_processes": len(live), "applied": len(list(applied)),
                    "notices_ok": notices.redis_ok() and all(p.notices_ok for p in live)},
        "latest_rollback": rollback_data(latest) if latest else None,
        "url": deployment.get_absolute_url(),
        "api_url": reverse("deployments:api_deployment", args=[deployment.name]),
        "rollback_url": reverse("deployments:api_rollback_create", args=[deployment.name]),
        "metrics_url": reverse("deployments:api_metrics", args=[deployment.name]),
    }


def _applied(deployment, live):
    """The live processes that route this deployment by its current generation."""
    return RouteAck.objects.filter(deployment=deployment, process__in=live,
                                   generation__gte=deployment.generation).values_list("process_id", flat=True)


# --- endpoints ---------------------------------------------------------------------------------


@role_required(*READ_ROLES)
@api("GET")
def deployments(request):
    """Every deployment, ?before= / ?after= (ids) and ?size= to page."""
    size = parse_int(request.GET.get("size", PAGE_SIZE), "size", 1, MAX_PAGE_SIZE)
    page = keyset_page(_listed(), "pk", size=size,
                       before=parse_optional_id(request.GET.get("before"), "before"),
                       after=parse_optional_id(request.GET.get("after"), "after"))
    link = reverse("deployments:api_list")
    return JsonResponse({
        "deployments": [{"name": d.name, "environment": d.environment, "model": d.model.slug,
                         "release": release_data(d.current_release),
                         "api_url": reverse("deployments:api_deployment", args=[d.name])} for d in page.items],
        "older": f"{link}?before={page.older}&size={size}" if page.older is not None else None,
        "newer": f"{link}?after={page.newer}&size={size}" if page.newer is not None else None,
    })


@role_required(*READ_ROLES)
@api("GET")
def deployment(request, name):
    """What serves now, whether the serving processes follow, and the latest rollback."""
    return JsonResponse(deployment_data(_deployment(name)))


@role_required(*ROLLBACK_ROLES)
@api("POST")
def rollback_create(request, name):
    """POST {"reason", "release"?}: all traffic back to stable. `release` (its number) guards
    against rolling back a release other than the one the caller looked at."""
    found = _deployment(name)
    data = _body(request, ("reason", "release"), required=("reason",))
    reason = data["reason"]
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise BadRequest(f"reason must be text of at most {MAX_REASON} characters")
    number = data.get("release", found.current_release.number)
    if isinstance(number, bool) or not isinstance(number, int):
        raise BadRequest("release must be a release's number, a whole number")
    release = Release.objects.filter(deployment=found, number=number).first()
    if release is None:
        raise NotFound(f"{name} has no release {number}")
    rollback = release.rollback(request.user, reason)
    rollback = Rollback.objects.select_related("release__deployment", "actor").get(pk=rollback.pk)
    return JsonResponse(rollback_data(rollback), status=201)


@role_required(*READ_ROLES)
@api("GET")
def rollback(request, name, rollback_id):
    """One rollback; while it waits, this read also settles it if every live process has
    reported (or the last one it waited for stopped reporting)."""
    found = (Rollback.objects.select_related("release__deployment", "actor")
             .filter(pk=rollback_id, release__deployment__name=name).first())
    if found is None:
        raise NotFound(f"{name} has no rollback {rollback_id}")
    if found.completed_at is None and found.check_complete():
        found.refresh_from_db()
    return JsonResponse(rollback_data(found))


@role_required(*READ_ROLES)
@api("GET")
def metrics(request, name):
    """The page's charts of the last ?minutes= (default 60), as Plotly figures, with the totals."""
    found = _deployment(name)
    minutes = parse_int(request.GET.get("minutes", traffic.WINDOW_MINUTES), "minutes", 1, MAX_MINUTES)
    window = traffic.per_minute(found.pk, minutes=minutes)
    return JsonResponse({"since": window.since, "until": window.until, "sampled": window.sampled,
                         "totals": window.totals(), "charts": dict(charts.deployment_charts(window))})
