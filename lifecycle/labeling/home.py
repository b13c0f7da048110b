"""Start-page panels of labeling (core/home.py): a labeler's queues, the projects under way."""
from django.template.defaultfilters import pluralize
from django.urls import reverse

from lifecycle.core.home import Panel, panel
from lifecycle.core.roles import APPROVER, LABELER, ML_ENGINEER, VIEWER
from lifecycle.labeling.models import WAITING_CAP, LabelingProject

# Open projects shown per panel: each costs a few index probes for a labeler.
SHOWN = 10


def _open_projects():
    return LabelingProject.objects.for_listing().filter(status=LabelingProject.Status.OPEN).order_by("-pk")


def _waiting(project, user):
    n = project.waiting_for(user)
    if n >= WAITING_CAP:
        return f"{WAITING_CAP}+ examples wait for you"
    return f"{n} example{pluralize(n)} wait{pluralize(n, 's,')} for you" if n else "nothing waits for you"


@panel(LABELER, order=10)
def queues(request):
    projects = list(_open_projects()[:SHOWN])
    rows = [(project.name, reverse("labeling:review", args=[project.pk]), _waiting(project, request.user))
            for project in projects]
    return Panel("Your labeling queues", rows=rows, id="home-queues",
                 empty="No labeling project is open: nothing to label right now.",
                 links=[("All labeling projects", reverse("labeling:list"))])


@panel(ML_ENGINEER, APPROVER, VIEWER, order=40)
def projects(request):
    rows = [(project.name, project.get_absolute_url(), f"{project.item_count} example{pluralize(project.item_count)} of {project.version}")
            for project in _open_projects()[:SHOWN]]
    return Panel("Labeling under way", rows=rows, empty="No labeling project is open.", id="home-labeling",
                 links=[("All labeling projects", reverse("labeling:list"))])
