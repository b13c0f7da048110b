"""Start-page panel of runs (core/home.py): the newest runs and how they stand."""
from django.urls import reverse

from lifecycle.core.home import Panel, panel
from lifecycle.core.roles import ML_ENGINEER, VIEWER, has_role
from lifecycle.runs.models import Run

RECENT = 5


@panel(ML_ENGINEER, VIEWER, order=30)
def recent_runs(request):
    runs = Run.objects.for_listing().order_by("-pk")[:RECENT]
    rows = [(f"#{run.pk} {run.name}", run.get_absolute_url(), f"{run.status}, {run.method} on {run.dataset_version}")
            for run in runs]
    links = [("New run", reverse("runs:create"))] if has_role(request.user, ML_ENGINEER) else []
    return Panel("Recent runs", rows=rows, empty="No runs yet.", id="home-runs",
                 links=links + [("All runs", reverse("runs:list"))])
