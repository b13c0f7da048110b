"""Start-page panels of the deployments (core/home.py): for on-call and engineers, what each
deployment serves now, the candidates' verdicts, and rollbacks still waiting for a serving
process; for labelers, the way to the answers they may correct."""
from django.urls import reverse

from lifecycle.core.home import Panel, panel
from lifecycle.core.roles import LABELER, ML_ENGINEER, ONCALL
from lifecycle.deployments.models import Deployment, Feedback, Release, Rollback

SHOWN = 8


def _detail(deployment):
    release = deployment.current_release
    text = f"v{release.stable.number} {release.stable_share:g} %"
    if release.candidate_is_live:
        side = f"{release.share:g} %" if release.mode == Release.Mode.CANARY else "shadow"
        verdict = {"passed": "ready to promote", "failed": "verdict failed"}.get(release.verdict, "verdict pending")
        text += f", v{release.candidate.number} {side} ({verdict})"
    elif release.status == Release.Status.ROLLED_BACK:
        text += ", rolled back"
    return f"{deployment.environment}: {text}"


@panel(ONCALL, ML_ENGINEER, order=10)
def deployments(request):
    found = list(Deployment.objects.for_listing().order_by("name")[:SHOWN])
    waiting = Rollback.objects.filter(completed_at__isnull=True).count()
    note = (f"{waiting} rollback{'s' if waiting != 1 else ''} still wait{'s' if waiting == 1 else ''} for a serving "
            "process to apply it." if waiting else "")
    links = [("All deployments", reverse("deployments:list")), ("Review answers", reverse("deployments:review"))]
    return Panel("Deployments", note=note, rows=[(d.name, d.get_absolute_url(), _detail(d)) for d in found],
                 empty="Nothing is deployed yet.", links=links, id="home-deployments")


@panel(LABELER, order=20)
def answers_to_review(request):
    mine = Feedback.objects.filter(given_by=request.user).count()
    note = f"You have corrected or confirmed {mine} answer{'s' if mine != 1 else ''} so far." if mine else ""
    return Panel("Answers to review", note=note or "Correct what the deployed models answered: corrections go back "
                 "into the training data.", links=[("Review recent answers", reverse("deployments:review"))],
                 id="home-review")
