"""The ingest in a real worker process, with helper processes spawned from the RQ work horse."""
import time

import pytest

from lifecycle.datasets import uploads
from lifecycle.datasets.models import Dataset, Upload
from lifecycle.datasets.synthetic import write_jsonl
from tests.conftest import make_user
from tests.workers import output, start_manage, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_ingests_with_helper_processes(tmp_path, settings, monkeypatch):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    monkeypatch.setenv("DATASET_PARALLEL_MIN_BYTES", "0")  # read by the worker's settings
    engineer = make_user("erin", "ml_engineer")
    dataset = Dataset.create(engineer, slug="support", name="Support", pii_policy="allow")
    write_jsonl(tmp_path / "d.jsonl", 20_000, seed=2)
    upload = uploads.receive(dataset, str(tmp_path / "d.jsonl"), "d.jsonl", user=engineer, on_error="drop")
    uploads.start_ingest(upload, {"text": "text", "label": "label", "group": "customer_id"}, engineer)
    worker = start_manage(tmp_path, "lifecycle_worker", "default")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            upload = Upload.objects.select_related("job").get(pk=upload.pk)
            if upload.job.is_terminal:
                break
            time.sleep(0.5)
        # The job's row turns terminal inside the work horse; RQ logs completion just after.
        done = "Successfully completed lifecycle.datasets.tasks.ingest_upload"
        if upload.job.status == "succeeded":
            wait_for(lambda: done in output(worker), 15, "the worker's completion line")
        log = output(worker)
    finally:
        stop(worker)
    assert upload.job.status == "succeeded", log
    assert "2 helper processes analyse the rows" in log
    assert upload.version.row_count == 20_000 - upload.version.validation_report["rows_dropped"]
