"""Start-page panels of datasets (core/home.py): recent uploads, sign-offs waiting, datasets to read."""
from django.urls import reverse

from lifecycle.core.home import Panel, panel
from lifecycle.core.roles import APPROVER, ML_ENGINEER, VIEWER
from lifecycle.datasets.models import Dataset, DatasetVersion, Upload

RECENT = 5
SIGNOFFS = 10


@panel(ML_ENGINEER, order=20)
def recent_uploads(request):
    uploads = Upload.objects.select_related("dataset", "job", "created_by").order_by("-pk")[:RECENT]
    rows = [(f"{u.filename} → {u.dataset.slug}", u.get_absolute_url(), _upload_detail(u)) for u in uploads]
    return Panel("Recent uploads", rows=rows, empty="No uploads yet.", id="home-uploads",
                 links=[("New dataset", reverse("datasets:create")), ("All datasets", reverse("datasets:list"))])


def _upload_detail(upload):
    by = f" by {upload.created_by.username}" if upload.created_by else ""
    return f"{upload.status}{by}, {upload.created_at:%Y-%m-%d %H:%M}"


def waiting_for_signoff():
    """Versions whose found PII their dataset's policy allows only with an approver's sign-off."""
    return (DatasetVersion.objects.filter(pii_status=DatasetVersion.PiiStatus.FOUND, pii_signoff__isnull=True,
                                          dataset__pii_policy=Dataset.PiiPolicy.ALLOW)
            .select_related("dataset").only("number", "created_at", "dataset__slug").order_by("-pk"))


@panel(APPROVER, order=20)
def pii_signoffs(request):
    versions = list(waiting_for_signoff()[:SIGNOFFS + 1])
    rows = [(str(v), v.get_absolute_url(), f"PII found, created {v.created_at:%Y-%m-%d %H:%M}") for v in versions[:SIGNOFFS]]
    note = f"Showing the newest {SIGNOFFS}; more are waiting." if len(versions) > SIGNOFFS else ""
    return Panel("Datasets waiting for your PII sign-off", rows=rows, note=note, id="home-signoffs",
                 empty="No dataset version waits for a PII sign-off.")


@panel(VIEWER, order=20)
def datasets(request):
    newest = Dataset.objects.order_by("-pk")[:RECENT]
    return Panel("Datasets", rows=[(d.name or d.slug, d.get_absolute_url(), d.slug) for d in newest],
                 empty="No datasets yet.", id="home-datasets", links=[("All datasets", reverse("datasets:list"))])
