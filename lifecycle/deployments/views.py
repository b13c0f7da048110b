"""Deployment pages. Thin views: a helper that fetches the object or 404s, a form, one model
method, a redirect.

Who does what: engineers create deployments, start releases, change shares, ask for promotion,
make serving tokens and export feedback; engineers and on-call roll back; approvers, viewers
and on-call read. Feedback is reviewed by engineers, on-call and labelers (REVIEW_ROLES).
"""
from datetime import timedelta

from django.contrib import messages
from django.db.models import Prefetch
from django.http import QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.core.jobs import QueueUnavailable, outcome_of
from lifecycle.core.roles import APPROVER, LABELER, ML_ENGINEER, ONCALL, VIEWER, has_role, role_required
from lifecycle.deployments import charts, feedback_export, notices, traffic
from lifecycle.deployments.forms import (
    DeploymentForm, FeedbackForm, PromoteForm, ReleaseForm, ReviewFilterForm, RollbackForm, ShadowPageForm, ShareForm,
    TokenForm,
)
from lifecycle.deployments.models import (
    PROCESS_LIVE_SECONDS, Deployment, DeploymentError, Feedback, Release, RegistryError, Rollback, RouteAck,
    ServingProcess, ServingToken,
)
from lifecycle.lib.pagination import keyset_page
from lifecycle.lib.params import BadParameter, parse_optional_id

READ_ROLES = (ML_ENGINEER, APPROVER, VIEWER, ONCALL)
ROLLBACK_ROLES = (ONCALL, ML_ENGINEER)
# Correcting answers is reviewing labels: labelers do it elsewhere, on-call sees wrong answers first.
REVIEW_ROLES = (ML_ENGINEER, ONCALL, LABELER)
PAGE_SIZE = 50
RELEASES_PER_PAGE = 20
REVIEW_PAGE_SIZE = 25
EXAMPLES_PER_PAGE = 20
PROCESSES_SHOWN = 50
PROCESSES_SINCE = timedelta(hours=1)  # processes gone longer ago than this are not listed

# --- helpers ---------------------------------------------------------------------------------


def _get_deployment(name):
    related = ("model", "created_by", "current_release__stable__model", "current_release__candidate",
               "current_release__promotion_request", "current_release__created_by")
    return get_object_or_404(Deployment.objects.select_related(*related), name=name)


def _get_release(deployment, number):
    return get_object_or_404(Release.objects.select_related("stable", "candidate", "deployment"),
                             deployment=deployment, number=number)


def _keys(request):
    return {"before": parse_optional_id(request.GET.get("before"), "before"),
            "after": parse_optional_id(request.GET.get("after"), "after")}


def _query(request, drop=("before", "after")):
    return urlencode({k: v for k, v in request.GET.items() if k not in drop and v})


def _bad_request(request, message):
    return render(request, "deployments/_error.html", {"message": message}, status=400)


def _show(value):
    """A verdict number as text: floats to four significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _percent(value):
    return "—" if value is None else f"{100 * value:.2f} %"


def _rate(side):
    """A rate with its confidence interval: "1.20 % [0.80 %, 1.90 %] of 500"."""
    if not isinstance(side, dict):
        return "—"
    shown = _percent(side.get("rate"))
    if side.get("low") is not None and side.get("high") is not None:
        shown += f" [{_percent(side['low'])}, {_percent(side['high'])}]"
    return f"{shown} of {side['n']}" if "n" in side else shown


def flat_rows(numbers, prefix=""):
    """Numbers as (name, value) rows; nested objects become dotted names."""
    rows = []
    for key, value in (numbers or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flat_rows(value, f"{name} · ")
        elif isinstance(value, list):
            rows.append((name, f"{len(value)} entries"))
        else:
            rows.append((name, _show(value)))
    return rows


# The verdict's numbers as verdicts.evaluate writes them: per side counts, per rule (sequential)
# or per interval (threshold). Keys shown in their own table; anything else is listed flat.
VERDICT_TABLES = ("sides", "results", "checks", "intervals", "rules", "routes")


def verdict_view(numbers):
    numbers = numbers or {}
    sides = [{"side": name, **{k: _show(v) for k, v in side.items() if not k.endswith("_rate")},
              "error_rate": _percent(side.get("error_rate")), "slow_rate": _percent(side.get("slow_rate"))}
             for name, side in (numbers.get("sides") or {}).items() if isinstance(side, dict)]
    rules = []
    for name, result in (numbers.get("results") or {}).items():
        if not isinstance(result, dict):
            continue
        worse = result.get("worse_by") or {}
        bounds = (f"{_percent(worse.get('estimate'))} [{_percent(worse.get('low'))}, {_percent(worse.get('high'))}]"
                  if worse else "—")
        limits = (f"fails above {_percent(result['fail_margin'])}, passes below {_percent(result['pass_margin'])}"
                  if "fail_margin" in result else f"limit {_percent(result['limit'])}" if "limit" in result else "")
        rules.append({"rule": result.get("title") or name, "decision": result.get("decision", ""),
                      "candidate": _rate(result.get("candidate")), "stable": _rate(result.get("stable")),
                      "worse_by": bounds, "limits": limits})
    intervals = [i for i in numbers.get("intervals") or [] if isinstance(i, dict)]
    rest = {k: v for k, v in numbers.items() if k not in VERDICT_TABLES}
    return {"sides": sides, "rules": rules, "checks": numbers.get("checks") or {}, "intervals": intervals,
            "other": flat_rows(rest), "any": bool(numbers)}


def totals_rows(window):
    """The last hour's totals per route, with the error rate as a percentage to show."""
    rows = []
    for route, t in window.totals().items():
        rate = t["error_rate"]
        rows.append({"route": route, **t, "error_percent": "—" if rate is None else f"{100 * rate:.2f} %"})
    return rows


# --- the list and new deployments ----------------------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def deployment_list(request):
    try:
        page = keyset_page(Deployment.objects.for_listing(), "pk", size=PAGE_SIZE, **_keys(request))
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    return render(request, "deployments/list.html", {"page": page, "is_engineer": has_role(request.user, ML_ENGINEER)})


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def deployment_create(request):
    form = DeploymentForm(request.POST or None, initial={"model": request.GET.get("model", "")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            deployment = Deployment.create(request.user, name=data["name"], model=data["model"], stable=data["stable"],
                                           environment=data["environment"], description=data["description"])
        except DeploymentError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"{deployment.name} serves {data['stable']} at 100 %. Make a serving token "
                             "for its clients, then start a canary or a shadow beside it.")
            return redirect(deployment)
    return render(request, "deployments/form.html", {"form": form}, status=400 if form.errors else 200)


# --- a deployment's page ---------------------------------------------------------------------------


def _processes(deployment):
    """Serving processes seen in the last hour, each with whether it is live and the
    generation of this deployment it applied."""
    now = timezone.now()
    seen = list(ServingProcess.objects.filter(last_seen_at__gte=now - PROCESSES_SINCE)[:PROCESSES_SHOWN])
    acks = dict(RouteAck.objects.filter(deployment=deployment, process__in=seen).values_list("process_id", "generation"))
    live_after = now - timedelta(seconds=PROCESS_LIVE_SECONDS)
    return [{"process": p, "live": p.last_seen_at >= live_after, "applied": acks.get(p.pk),
             "current": acks.get(p.pk, 0) >= deployment.generation} for p in seen]


def _history(deployment, keys):
    rollbacks = Prefetch("rollbacks", queryset=Rollback.objects.select_related("actor").order_by("clicked_at"))
    releases = (deployment.releases.select_related("stable", "candidate", "created_by", "promotion_request")
                .prefetch_related(rollbacks))
    return keyset_page(releases, "number", size=RELEASES_PER_PAGE, **keys)


def _export(request, deployment):
    job = feedback_export.latest_job(deployment) if has_role(request.user, ML_ENGINEER) else None
    return {"export_job": job, "export_outcome": outcome_of(job) if job else None,
            "usable_feedback": feedback_export.usable(deployment).count()}


def _detail_context(request, deployment, keys, **forms):
    release = deployment.current_release
    is_engineer = has_role(request.user, ML_ENGINEER)
    live = release.candidate_is_live
    window = traffic.per_minute(deployment.pk)
    processes = _processes(deployment)
    context = {
        "deployment": deployment, "release": release, "is_engineer": is_engineer,
        "can_rollback": has_role(request.user, *ROLLBACK_ROLES) and live,
        "verdict": verdict_view(release.verdict_numbers),
        "charts": charts.deployment_charts(window), "totals": totals_rows(window), "sampled": window.sampled,
        "history": _history(deployment, keys), "query": _query(request),
        "latest_rollback": release.rollbacks.select_related("actor").order_by("-clicked_at").first(),
        "processes": processes, "live_processes": sum(p["live"] for p in processes),
        "redis_ok": notices.redis_ok(), "refresh_seconds": _refresh_seconds(),
        "release_form": forms.get("release_form") or (ReleaseForm(deployment=deployment) if is_engineer and not live else None),
        # The share may change while a promotion waits: the canary serves until it is decided.
        "share_form": forms.get("share_form") or (ShareForm(initial={"share": release.share})
                                                  if is_engineer and live and release.mode == Release.Mode.CANARY
                                                  else None),
        "promote_form": forms.get("promote_form") or (PromoteForm() if is_engineer and live
                                                      and release.status == Release.Status.ACTIVE else None),
        "error": forms.get("error", ""),
        "feedback_count": Feedback.objects.filter(deployment=deployment).count(),
    }
    if release.promotion_request_id:
        request_ = release.promotion_request
        context["promotion"] = {"request": request_, "approvals": request_.valid_approvals().count()}
    if is_engineer:
        context.update(_export(request, deployment))
    return context


def _refresh_seconds():
    from django.conf import settings

    return settings.SERVING_ROUTES_REFRESH_SECONDS


@role_required(*READ_ROLES)
@require_GET
def deployment_detail(request, name):
    deployment = _get_deployment(name)
    try:
        keys = _keys(request)
    except BadParameter as exc:
        return _bad_request(request, f"The page asked for does not exist: {exc}.")
    return render(request, "deployments/detail.html", _detail_context(request, deployment, keys))


def _refused(request, deployment, status=400, **forms):
    """The deployment's page again, with the form that was refused and its errors."""
    deployment = _get_deployment(deployment.name)  # as it stands now
    return render(request, "deployments/detail.html", _detail_context(request, deployment, {}, **forms), status=status)


@role_required(ML_ENGINEER)
@require_POST
def release_start(request, name):
    deployment = _get_deployment(name)
    form = ReleaseForm(request.POST, deployment=deployment)
    if not form.is_valid():
        return _refused(request, deployment, release_form=form)
    data = form.cleaned_data
    try:
        release = deployment.start_release(request.user, candidate=data["candidate"], mode=data["mode"],
                                           share=data["share"], reason=data["reason"])
    except DeploymentError as exc:
        form.add_error(None, str(exc))
        return _refused(request, deployment, release_form=form)
    if release.mode == Release.Mode.CANARY:
        messages.success(request, f"Release {release.number}: {release.candidate} takes {release.share:g} % of live traffic.")
    else:
        messages.success(request, f"Release {release.number}: {release.candidate} sees a copy of every request as a shadow.")
    return redirect(deployment)


@role_required(ML_ENGINEER)
@require_POST
def release_share(request, name, number):
    deployment = _get_deployment(name)
    release = _get_release(deployment, number)
    form = ShareForm(request.POST)
    if not form.is_valid():
        return _refused(request, deployment, share_form=form)
    before = release.share
    try:
        release.set_share(request.user, form.cleaned_data["share"], form.cleaned_data["reason"])
    except DeploymentError as exc:
        form.add_error(None, str(exc))
        return _refused(request, deployment, share_form=form)
    messages.success(request, f"The canary's share went from {before:g} % to {release.share:g} %.")
    return redirect(deployment)


@role_required(ML_ENGINEER)
@require_POST
def release_promote(request, name, number):
    deployment = _get_deployment(name)
    release = _get_release(deployment, number)
    form = PromoteForm(request.POST)
    if not form.is_valid():
        return _refused(request, deployment, promote_form=form)
    try:
        promotion = release.promote(request.user, form.cleaned_data["reason"])
    except (DeploymentError, RegistryError) as exc:
        form.add_error(None, str(exc))
        return _refused(request, deployment, promote_form=form)
    if promotion is None:
        messages.success(request, f"{release.candidate} was in production already: it is the stable version now.")
    else:
        messages.success(request, f"Promotion requested (request #{promotion.pk}): the canary keeps its share until "
                         "the registry's gates and approvals move it to production.")
    return redirect(deployment)


@role_required(*ROLLBACK_ROLES)
@require_http_methods(["GET", "POST"])
def release_rollback(request, name, number):
    """The confirm step (GET) and the rollback itself (POST, with a reason)."""
    deployment = _get_deployment(name)
    release = _get_release(deployment, number)
    form = RollbackForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            rollback = release.rollback(request.user, form.cleaned_data["reason"])
        except DeploymentError as exc:
            error = str(exc)
        else:
            messages.success(request, f"Rolled back: all traffic goes to {release.stable} again.")
            return redirect(reverse("deployments:detail", args=[deployment.name]) + f"#rollback-{rollback.pk}")
    is_current = deployment.current_release_id == release.pk and release.candidate_is_live
    status = 400 if request.method == "POST" else 200
    return render(request, "deployments/rollback.html", {
        "deployment": deployment, "release": release, "form": form, "error": error, "is_current": is_current,
        "live_processes": ServingProcess.objects.live().count(), "refresh_seconds": _refresh_seconds(),
    }, status=status)


# --- shadow against live -------------------------------------------------------------------------


@role_required(*READ_ROLES)
@require_GET
def shadow(request, name, number):
    deployment = _get_deployment(name)
    release = _get_release(deployment, number)
    form = ShadowPageForm(request.GET)
    if not form.is_valid():
        return _bad_request(request, " ".join(e for errors in form.errors.values() for e in errors))
    data = form.cleaned_data
    summary = traffic.shadow_summary(release.pk)
    flip = (data["live"], data["shadow"]) if data["live"] else None
    rows = traffic.disagreements(release.pk, live_label=flip[0] if flip else None, shadow_label=flip[1] if flip else None)
    examples = keyset_page(rows, "pk", size=EXAMPLES_PER_PAGE, before=data["before"], after=data["after"])
    flips = [{"live": live, "shadow": shadow_label, "count": count, "current": flip == (live, shadow_label),
              "query": urlencode({"live": live, "shadow": shadow_label})} for live, shadow_label, count in summary.flips]
    return render(request, "deployments/shadow.html", {
        "deployment": deployment, "release": release, "summary": summary, "difference": summary.latency_difference(),
        "flip": flip, "flips": flips, "examples": examples, "query": _query(request),
        "agreement_percent": f"{100 * summary.agreement:.1f} %" if summary.pairs else "",
        "latency_chart": charts.shadow_latency(summary) if summary.pairs else None,
    })


# --- feedback: review and export ---------------------------------------------------------------------


def _review_back(query):
    """The review page with the filters the reviewer had, rebuilt from known keys only."""
    given = QueryDict(query or "")
    kept = {k: given[k] for k in (*ReviewFilterForm.FILTERS, "before", "after") if given.get(k)}
    return reverse("deployments:review") + (f"?{urlencode(kept)}" if kept else "")


def _review_rows(page):
    """The page's answers, each with the feedback already given on it (one query)."""
    given = {}
    ids = {row.request_id for row in page.items}
    for feedback in Feedback.objects.filter(request_id__in=ids).select_related("given_by"):
        given[(feedback.request_id, feedback.position)] = feedback
    return [{"row": row, "feedback": given.get((row.request_id, row.position))} for row in page.items]


@role_required(*REVIEW_ROLES)
@require_GET
def review(request):
    form = ReviewFilterForm(request.GET)
    if not form.is_valid():
        return render(request, "deployments/review.html", {"form": form, "rows": [], "page": None}, status=400)
    data = form.cleaned_data
    rows = traffic.reviewable(deployment=data["deployment"], route=data["route"], label=data["label"],
                              confidence_min=data["confidence_min"], confidence_max=data["confidence_max"],
                              disagreeing=data["disagreeing"])
    page = keyset_page(rows, "pk", size=REVIEW_PAGE_SIZE, before=data["before"], after=data["after"])
    return render(request, "deployments/review.html", {
        "form": form, "page": page, "rows": _review_rows(page), "query": _query(request),
        "back": request.GET.urlencode(), "can_open_deployments": has_role(request.user, *READ_ROLES),
    })


@role_required(*REVIEW_ROLES)
@require_POST
def review_give(request):
    form = FeedbackForm(request.POST)
    back = _review_back(request.POST.get("back", ""))
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"Nothing was saved: {error}")
        return redirect(back)
    data = form.cleaned_data
    try:
        feedback = Feedback.give(request_id=data["request_id"], position=data["position"], label=data["label"],
                                 correct=form.correct(), note=data["note"], user=request.user)
    except DeploymentError as exc:
        messages.error(request, f"Nothing was saved: {exc}")
        return redirect(back)
    if feedback.is_override:
        messages.success(request, f"Corrected: {feedback.predicted_label or 'the answer'} → {feedback.label or 'wrong'}.")
    else:
        messages.success(request, "Recorded: the answer is right.")
    return redirect(back)


@role_required(ML_ENGINEER)
@require_POST
def feedback_export_start(request, name):
    deployment = _get_deployment(name)
    try:
        job = feedback_export.start(request.user, deployment)
    except DeploymentError as exc:
        messages.error(request, f"Nothing was exported: {exc}")
    except QueueUnavailable as exc:
        messages.error(request, f"Nothing was exported: the job queue is unavailable ({exc}). Try again once Redis is back.")
    else:
        messages.success(request, f"Exporting the feedback (job {job.pk}): its rows become an upload into the "
                         "training data's dataset, whose ingest makes the version.")
    return redirect(reverse("deployments:detail", args=[deployment.name]) + "#feedback")


# --- serving tokens -----------------------------------------------------------------------------------


def _tokens_page(request, form, *, created=None, status=200):
    tokens = ServingToken.objects.select_related("created_by").prefetch_related("deployments").order_by(
        "revoked_at", "-created_at")
    context = {"form": form, "tokens": tokens[:200], "created": created}
    response = render(request, "deployments/tokens.html", context, status=status)
    if created:
        response["Cache-Control"] = "no-store"  # the one page with the key: no copy in any cache
    return response


@role_required(ML_ENGINEER)
@require_http_methods(["GET", "POST"])
def tokens(request):
    form = TokenForm(request.POST or None)
    if request.method == "POST":
        if not form.is_valid():
            return _tokens_page(request, form, status=400)
        data = form.cleaned_data
        try:
            token, key = ServingToken.issue(request.user, data["name"], data["deployments"],
                                            rate_per_second=data["rate_per_second"], burst=data["burst"])
        except DeploymentError as exc:
            form.add_error(None, str(exc))
            return _tokens_page(request, form, status=400)
        # Rendered, not redirected: the key goes out in this response only.
        return _tokens_page(request, TokenForm(), created={"token": token, "key": key}, status=201)
    return _tokens_page(request, form)


@role_required(ML_ENGINEER)
@require_POST
def token_revoke(request, token_id):
    token = get_object_or_404(ServingToken, pk=token_id)
    if token.revoke(request.user):
        messages.success(request, f"Revoked {token}: serving processes refuse it from their next re-read.")
    else:
        messages.error(request, f"{token} was revoked already.")
    return redirect("deployments:tokens")

