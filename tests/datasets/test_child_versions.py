"""Child versions: the same operation on the same parent with the same settings finds the
child already made (and says so) instead of repeating it; a child's page counts its own rows."""
import io
import json

import pytest
from django.core.management import call_command

from lifecycle.core.jobs import enqueue, perform
from lifecycle.core.models import Job
from lifecycle.datasets import tasks
from lifecycle.datasets.models import Dataset, DatasetVersion
from lifecycle.datasets.synthetic import generate
from tests.datasets.test_web import perform_queued_jobs

# Transactional: the job's heartbeat thread must see the job row (see test_split_feasibility).
pytestmark = pytest.mark.django_db(transaction=True)
DERIVE = "lifecycle.datasets.tasks.derive_version"


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


def import_synthetic(tmp_path, engineer, n=200, **options):
    Dataset.create(engineer, slug="support", name="Support", pii_policy="allow")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(n, **options)))
    call_command("dataset_import", str(path), dataset="support", stdout=io.StringIO())
    return DatasetVersion.objects.get(number=1)


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def test_redacting_again_returns_the_child_already_made(eng_client, engineer, tmp_path):
    import_synthetic(tmp_path, engineer, pii_rate=0.3)
    eng_client.post("/datasets/support/v1/redact")
    perform_queued_jobs()
    child = DatasetVersion.objects.get(number=2)
    assert child.operation == "redact"
    response = eng_client.post("/datasets/support/v1/redact", follow=True)
    assert response.redirect_chain[-1][0] == "/datasets/support/v2/"
    assert "v2 already is this redaction of v1: nothing new was made." in messages_of(response)
    assert DatasetVersion.objects.count() == 2 and Job.objects.filter(task=DERIVE).count() == 1


def test_removing_duplicates_again_returns_the_child_and_its_page_counts_its_own_rows(eng_client, engineer, tmp_path):
    import_synthetic(tmp_path, engineer, dup_rate=0.2)
    eng_client.post("/datasets/support/v1/dedup")
    perform_queued_jobs()
    child = DatasetVersion.objects.get(number=2)
    assert child.row_count < 200
    response = eng_client.post("/datasets/support/v1/dedup", follow=True)
    assert "v2 already is this removal of duplicates of v1: nothing new was made." in messages_of(response)
    assert DatasetVersion.objects.count() == 2
    page = eng_client.get("/datasets/support/v2/").content.decode()
    assert f"{child.row_count} of 200 rows of v1 kept" in page and "200 of 200 rows" not in page
    assert "200 of 200 rows of the file kept" in eng_client.get("/datasets/support/v1/").content.decode()


def test_a_split_again_with_the_same_settings_is_found_and_other_settings_make_a_new_child(eng_client, engineer, tmp_path):
    import_synthetic(tmp_path, engineer)
    eng_client.post("/datasets/support/v1/resplit", {"seed": 3})
    perform_queued_jobs()
    response = eng_client.post("/datasets/support/v1/resplit", {"seed": 3, "keep_together": "all"}, follow=True)
    assert "v2 already is this split of v1 — seeded (seed 3): nothing new was made." in messages_of(response)
    eng_client.post("/datasets/support/v1/resplit", {"seed": 3, "keep_together": "groups"})
    eng_client.post("/datasets/support/v1/resplit", {"seed": 4})
    perform_queued_jobs()
    children = DatasetVersion.objects.filter(parent__number=1, operation="resplit")
    assert sorted((c.split_options["seed"], c.split_options["keep_together"]) for c in children) == [
        (3, "all"), (3, "groups"), (4, "all")]


def test_a_job_for_a_child_already_made_writes_nothing(engineer, tmp_path):
    parent = import_synthetic(tmp_path, engineer, pii_rate=0.3)
    first = enqueue(tasks.derive_version, user=engineer, key="first", version_id=parent.pk, operation="redact")
    # A second job queued before the first ran (another click's, a retried one): it finds the child.
    second = enqueue(tasks.derive_version, user=engineer, key="second", version_id=parent.pk, operation="redact")
    perform(first.pk)
    perform(second.pk)
    second.refresh_from_db()
    assert second.status == "succeeded" and second.result == {"version": 2, "rows": 200, "existing": True}
    assert parent.dataset.versions.count() == 2
