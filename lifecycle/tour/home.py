"""The start page's story panel (core/home.py), for everyone while the demo's data is here:
where the story has got to, each chapter with a link, and what this person could try next."""
from django.urls import reverse

from lifecycle.core.home import Panel, panel
from lifecycle.core.roles import APPROVER, LABELER, ML_ENGINEER, ONCALL, ROLES, VIEWER, user_roles
from lifecycle.tour import progress

MARKS = {"done": "✓", "now": "→", "later": "·"}


def _try_next(request, story, deployment):
    """Per role, one or two places to go now (only those the story has reached)."""
    from lifecycle.labeling import demo as labeling_demo
    from lifecycle.labeling.models import LabelingProject

    roles = user_roles(request.user)
    links = []
    # Round 2 once the first round is frozen; the first while it still takes answers.
    open_projects = LabelingProject.objects.filter(name__in=[labeling_demo.ROUND_TWO, labeling_demo.NAME],
                                                   status=LabelingProject.Status.OPEN)
    project = open_projects.order_by("-pk").first()
    if LABELER in roles and project:
        links.append(("Label the next examples", reverse("labeling:review", args=[project.pk])))
    if ML_ENGINEER in roles:
        training = next((step for step in story if step.detail.startswith(("training", "the canary's run"))), None)
        if training:
            links.append(("Watch the training run", training.url))
    if APPROVER in roles:
        links.append(("Your approvals inbox", reverse("registry:inbox")))
    if ONCALL in roles and deployment:
        links.append(("The canary's page and its rollback button", deployment.get_absolute_url()))
        links.append(("The on-call dashboard", reverse("monitoring:oncall")))
    if VIEWER in roles:
        links.append(("The executive dashboard", reverse("monitoring:executive")))
    return links


@panel(*ROLES, order=1)
def story(request):
    found = progress.demo_objects()
    if found["dataset"] is None:
        return None
    chapters = progress.steps(found)
    rows = [(f"{MARKS[step.state]} {step.title}", step.url if step.state != "later" else "", step.detail)
            for step in chapters]
    return Panel("The demo's story", note=f"Now: {progress.now(chapters)}.", rows=rows,
                 links=_try_next(request, chapters, found["deployment"]), id="home-story")
