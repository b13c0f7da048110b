"""The dataset pages a new user meets: the new-dataset form's slug, the upload's preview, the
example browser's Previous and total, the upload page once its job ended."""
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from lifecycle.datasets.models import Dataset, DatasetVersion, Upload
from lifecycle.datasets.synthetic import generate
from tests.conftest import make_user

# Transactional: the job's heartbeat thread must see the job row (see test_split_feasibility).
pytestmark = pytest.mark.django_db(transaction=True)
FORM = {"name": "Customer Orders 2026", "slug": "", "task": "classification", "pii_policy": "redact",
        "max_labels": 100, "max_text_chars": 20000, "labels": ""}


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


@pytest.fixture
def eng_client(client, db):
    client.force_login(make_user("erin", "ml_engineer"))
    return client


def test_the_new_dataset_form_names_the_pii_policy_and_makes_the_slug_from_the_name(eng_client):
    page = eng_client.get("/datasets/new").content.decode()
    assert ">PII policy:</label>" in page and "Pii policy" not in page
    assert 'data-slug-source="id_slug"' in page and "js/dataset-form.js" in page and "<script>" not in page
    assert eng_client.post("/datasets/new", FORM)["Location"] == "/datasets/customer-orders-2026/upload"
    again = eng_client.post("/datasets/new", FORM)
    assert again.status_code == 400 and "“customer-orders-2026” exists already" in again.content.decode()
    nothing = eng_client.post("/datasets/new", FORM | {"name": "!!!"})
    assert nothing.status_code == 400 and "no letters or digits" in nothing.content.decode()
    bad = eng_client.post("/datasets/new", FORM | {"slug": "not a slug"})
    assert bad.status_code == 400
    assert list(Dataset.objects.values_list("slug", flat=True)) == ["customer-orders-2026"]


def test_the_mapping_step_shows_the_first_rows_escaped_and_only_to_engineers(eng_client, client):
    Dataset.create(None, slug="support", name="Support")
    rows = [{"body": "<script>alert(1)</script> first", "intent": "a"}] + [{"body": f"row {i}", "intent": "b"} for i in range(9)]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    eng_client.post("/datasets/support/upload", {"file": SimpleUploadedFile("m.jsonl", content), "on_error": "reject"})
    upload = Upload.objects.get()
    assert upload.report["preview"][0] == ["<script>alert(1)</script> first", "a"] and len(upload.report["preview"]) == 5
    page = eng_client.get(f"/datasets/uploads/{upload.pk}/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; first" in page and "<script>alert(1)" not in page
    assert "row 3" in page and "row 4" not in page  # five rows: the first and rows 0-3
    client.force_login(make_user("vic", "viewer"))
    assert "row 3" not in client.get(f"/datasets/uploads/{upload.pk}/").content.decode()
    assert "preview" not in client.get(f"/api/v1/uploads/{upload.pk}").json()["report"]


def test_the_example_browser_pages_back_and_counts_what_matches(eng_client, tmp_path):
    Dataset.create(None, slug="support", name="Support")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(230, pii_rate=0.2)))
    call_command("dataset_import", str(path), dataset="support", stdout=io.StringIO())
    version = DatasetVersion.objects.get(number=1)
    first = eng_client.get("/datasets/support/v1/").context
    assert first["total"] == 230 and first["prev_before"] is None and first["next_after"] == 49
    second = eng_client.get("/datasets/support/v1/", {"after": 49}).context
    assert [e.row for e in second["examples"]] == list(range(50, 100)) and second["prev_before"] == 50
    back = eng_client.get("/datasets/support/v1/", {"before": 50}).context
    assert [e.row for e in back["examples"]] == list(range(50)) and back["prev_before"] is None and back["next_after"] == 49
    for query in ({"split": "1"}, {"split": "0", "label": version.label_set[0]}, {"pii": "yes"}, {"q": "refund"}):
        context = eng_client.get("/datasets/support/v1/", query).context
        assert context["total"] == DatasetVersion.objects.get(pk=version.pk).examples.browse(
            **context["form"].filters()).count() > 0
    assert eng_client.get("/datasets/support/v1/", {"before": "-3"}).status_code == 400


def test_a_finished_upload_shows_no_phase(eng_client, tmp_path):
    Dataset.create(None, slug="support", name="Support", pii_policy="redact")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(60, pii_rate=0.3)))
    call_command("dataset_import", str(path), dataset="support", stdout=io.StringIO())
    upload = Upload.objects.get()
    assert upload.job.status == "succeeded" and upload.job.progress["phase"] == "redacting"
    page = eng_client.get(f"/datasets/uploads/{upload.pk}/").content.decode()
    assert '<span id="upload-phase" class="muted"></span>' in page
