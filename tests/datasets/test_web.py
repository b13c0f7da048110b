"""Datasets through the real URLs: upload, mapping, the ingest job, pages, API, CLI, export."""
import csv
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client

from lifecycle.core.models import ApiToken, Job
from lifecycle.datasets.models import Dataset, DatasetVersion, Upload
from lifecycle.datasets.synthetic import generate
from tests.conftest import make_user


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


def jsonl(n=120, **options):
    return "".join(json.dumps(r) + "\n" for r in generate(n, **options)).encode()


def make_dataset(user=None, **fields):
    fields.setdefault("slug", "support")
    fields.setdefault("name", "Support")
    return Dataset.create(user, **fields)


def perform_queued_jobs():
    """What the worker's horse does for every queued job (the burst-worker path is in test_jobs)."""
    from lifecycle.core.jobs import perform

    for job in Job.objects.filter(status="queued").order_by("pk"):
        perform(job.pk)


def upload_file(client, slug, content, name="messages.jsonl", on_error="reject"):
    return client.post(f"/datasets/{slug}/upload", {"file": SimpleUploadedFile(name, content), "on_error": on_error})


def test_create_dataset_and_upload_map_ingest(eng_client, django_capture_on_commit_callbacks):
    response = eng_client.post("/datasets/new", {"name": "Support", "slug": "support", "task": "classification",
                                                 "pii_policy": "redact", "max_labels": 100, "max_text_chars": 20000, "labels": ""})
    assert response.status_code == 302 and response["Location"] == "/datasets/support/upload"
    response = upload_file(eng_client, "support", jsonl())
    upload = Upload.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/datasets/uploads/{upload.pk}/"
    assert upload.format == "jsonl" and "customer_id" in upload.columns and upload.job is None
    page = eng_client.get(response["Location"])
    assert page.context["form"]["text"].initial == "text" and page.context["form"]["group"].initial == "customer_id"
    with django_capture_on_commit_callbacks(execute=True):
        eng_client.post(response["Location"], {"text": "text", "label": "label", "group": "customer_id", "timestamp": "created_at"})
    upload.refresh_from_db()
    assert upload.job.status == "queued" and upload.mapping["group"] == "customer_id"
    perform_queued_jobs()
    upload.refresh_from_db()
    assert upload.job.status == "succeeded" and upload.version is not None
    status = eng_client.get(f"/api/v1/uploads/{upload.pk}").json()
    assert status["status"] == "succeeded" and status["version"] == upload.version.number
    assert eng_client.get("/datasets/support/").status_code == 200
    version_page = eng_client.get(upload.version.get_absolute_url())
    assert version_page.status_code == 200 and len(version_page.context["examples"]) == 50


def test_split_by_time_needs_the_timestamp_column(eng_client, engineer):
    dataset = make_dataset(engineer)
    upload_file(eng_client, dataset.slug, jsonl(30))
    upload = Upload.objects.get()
    response = eng_client.post(f"/datasets/uploads/{upload.pk}/", {"text": "text", "label": "label", "split_by_time": "on"})
    assert response.status_code == 400 and "Splitting by time needs the timestamp column" in response.content.decode()
    eng_client.post(f"/datasets/uploads/{upload.pk}/", {"text": "text", "label": "label", "timestamp": "created_at", "split_by_time": "on"})
    upload.refresh_from_db()
    assert upload.split_by_time and upload.job is not None


def test_mapping_post_twice_starts_one_job(eng_client, engineer):
    dataset = make_dataset(engineer)
    upload_file(eng_client, dataset.slug, jsonl(30))
    upload = Upload.objects.get()
    form = {"text": "text", "label": "label"}
    eng_client.post(f"/datasets/uploads/{upload.pk}/", form)
    eng_client.post(f"/datasets/uploads/{upload.pk}/", form)
    assert Job.objects.count() == 1


def test_mapping_must_name_required_columns_once(eng_client, engineer):
    dataset = make_dataset(engineer)
    upload_file(eng_client, dataset.slug, jsonl(30))
    upload = Upload.objects.get()
    response = eng_client.post(f"/datasets/uploads/{upload.pk}/", {"text": "text", "label": "text"})
    assert response.status_code == 400 and "Each column can feed only one field" in response.content.decode()
    assert eng_client.post(f"/datasets/uploads/{upload.pk}/", {"text": "text"}).status_code == 400
    assert Job.objects.count() == 0


@pytest.mark.parametrize("content, name, message", [
    (b"", "empty.csv", "The submitted file is empty"),
    (bytes(range(256)) * 300, "binary.csv", "not a text file"),
    (b"caf\xe9,label\nx,y\n", "latin1.csv", "not UTF-8"),
])
def test_bad_files_are_refused_at_upload_with_nothing_stored(eng_client, engineer, artifacts, content, name, message):
    dataset = make_dataset(engineer)
    response = upload_file(eng_client, dataset.slug, content, name=name)
    assert response.status_code == 400 and message in response.content.decode()
    assert not Upload.objects.exists()
    assert not any(p.is_file() for p in artifacts.rglob("*"))


def test_a_file_over_the_limit_is_refused_while_streaming(eng_client, engineer, settings, artifacts):
    settings.DATASET_MAX_UPLOAD_BYTES = 1024 * 1024
    dataset = make_dataset(engineer)
    handler_state = {}
    from lifecycle.lib import uploads as handlers

    original = handlers.SizeLimitUploadHandler.receive_data_chunk

    def spy(self, raw_data, start):
        handler_state["received"] = self.received + len(raw_data)
        return original(self, raw_data, start)

    handlers.SizeLimitUploadHandler.receive_data_chunk = spy
    try:
        response = upload_file(eng_client, dataset.slug, b'{"text": "x", "label": "y"}\n' * 200_000)  # ~5.6 MB
    finally:
        handlers.SizeLimitUploadHandler.receive_data_chunk = original
    assert response.status_code == 413 and "larger than the limit of 1 MB" in response.content.decode()
    assert handler_state["received"] <= 1024 * 1024 + 64 * 1024  # stopped at the limit, not after
    assert not Upload.objects.exists() and not any(p.is_file() for p in artifacts.rglob("*"))


def test_refused_ingest_keeps_its_report_and_makes_no_version(eng_client, engineer):
    dataset = make_dataset(engineer)
    upload_file(eng_client, dataset.slug, b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n{"text": "c", "label": "y"}\n')
    upload = Upload.objects.get()
    eng_client.post(f"/datasets/uploads/{upload.pk}/", {"text": "text", "label": "label"})
    perform_queued_jobs()
    upload.refresh_from_db()
    assert upload.job.status == "failed" and "rows are invalid" in upload.job.error
    assert "line 2: invalid JSON" in upload.report["refused"]
    assert upload.report["errors"][0]["line"] == 2 and upload.report["rows_read"] == 3
    assert not DatasetVersion.objects.exists()
    assert "rows are invalid" in eng_client.get(f"/datasets/uploads/{upload.pk}/").content.decode()


def test_viewer_sees_statistics_but_not_rows_and_cannot_upload(client, engineer):
    dataset = make_dataset(engineer)
    client.force_login(engineer)
    upload_file(client, dataset.slug, jsonl(10))
    pending = Upload.objects.get()
    client.force_login(make_user("vic", "viewer"))
    assert "Waiting for an ML engineer" in client.get(f"/datasets/uploads/{pending.pk}/").content.decode()
    assert client.post(f"/datasets/uploads/{pending.pk}/", {"text": "text", "label": "label"}).status_code == 403
    assert not Job.objects.exists()
    assert client.get("/datasets/").status_code == 200
    assert client.get(f"/datasets/{dataset.slug}/").status_code == 200
    assert upload_file(client, dataset.slug, jsonl(10)).status_code == 403
    assert client.get(f"/datasets/{dataset.slug}/v1/export.csv").status_code == 403
    assert Upload.objects.count() == 1


def ingest_via_api(client, slug, content, **fields):
    return client.post(f"/api/v1/datasets/{slug}/versions", {"file": SimpleUploadedFile("d.jsonl", content), **fields})


def test_api_upload_with_a_token(engineer, django_capture_on_commit_callbacks):
    dataset = make_dataset(engineer)
    _, key = ApiToken.issue(engineer, "ci")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    content = "".join(json.dumps({"body": r["text"], "intent": r["label"]}) + "\n" for r in generate(80)).encode()
    with django_capture_on_commit_callbacks(execute=True):
        response = ingest_via_api(api, dataset.slug, content, mapping="text=body,label=intent", on_error="drop")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["status_url"] == f"/api/v1/uploads/{body['upload']}"
    perform_queued_jobs()
    status = api.get(body["status_url"]).json()
    assert status["status"] == "succeeded"
    manifest = api.get(f"/api/v1/datasets/{dataset.slug}/versions/{status['version']}").json()
    assert manifest["manifest"]["row_count"] > 0 and manifest["usable_for_training"] in (True, False)


def test_api_errors_are_clear(engineer):
    dataset = make_dataset(engineer)
    _, key = ApiToken.issue(engineer, "ci")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.post(f"/api/v1/datasets/{dataset.slug}/versions", {}).json() == {"error": "send the file as multipart form field 'file'"}
    assert ingest_via_api(api, "nope", b"x").status_code == 404
    response = ingest_via_api(api, dataset.slug, jsonl(5), mapping="text")
    assert response.status_code == 400 and "not of the form target=column" in response.json()["error"]
    response = ingest_via_api(api, dataset.slug, jsonl(5), on_error="ignore")
    assert response.status_code == 400
    assert not Upload.objects.exists()
    stranger = Client(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(make_user('sam'), 'x')[1]}")
    assert ingest_via_api(stranger, dataset.slug, jsonl(5)).status_code == 403
    assert Client().post(f"/api/v1/datasets/{dataset.slug}/versions").status_code == 401


def test_cli_import_prints_the_report_as_json(engineer, tmp_path):
    make_dataset(engineer)
    path = tmp_path / "d.csv"
    path.write_text("body;intent;customer\n" + "".join(f"message {i} about things;{['a', 'b'][i % 2]};c{i}\n" for i in range(40)))
    out = io.StringIO()
    call_command("dataset_import", str(path), dataset="support", map="text=body,label=intent,group=customer", stdout=out)
    report = json.loads(out.getvalue())
    assert report["status"] == "succeeded" and report["version"] == 1 and report["manifest"]["row_count"] == 40
    assert report["leakage"]["has_leakage"] is False
    odd = tmp_path / "odd.csv"
    odd.write_text("foo,bar\nx,y\n")
    with pytest.raises(CommandError, match="import refused: missing required columns: text"):
        call_command("dataset_import", str(odd), dataset="support", stdout=io.StringIO())
    with pytest.raises(CommandError, match="no dataset 'nope'"):
        call_command("dataset_import", str(path), dataset="nope")


def test_pages_render_text_escaped_and_export_is_spreadsheet_safe(eng_client, engineer, tmp_path):
    make_dataset(engineer)
    path = tmp_path / "d.jsonl"
    rows = [{"text": "<img src=x onerror=alert(1)></script>", "label": "=cmd|' /C calc'!A0"},
            {"text": "+SUM(A1)", "label": "@x"}] + [{"text": f"plain {i}", "label": "b"} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    call_command("dataset_import", str(path), dataset="support", stdout=io.StringIO())
    page = eng_client.get("/datasets/support/v1/").content.decode()
    assert "<img src=x onerror=alert(1)>" not in page and "&lt;img src=x onerror=alert(1)&gt;&lt;/script&gt;" in page
    response = eng_client.get("/datasets/support/v1/export.csv")
    exported = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert exported[0]["label"] == "'=cmd|' /C calc'!A0" and exported[1]["text"] == "'+SUM(A1)" and exported[1]["label"] == "'@x"


def test_example_browser_filters_and_pages(eng_client, engineer, tmp_path):
    dataset = make_dataset(engineer)
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(400, pii_rate=0.2))
    call_command("dataset_import", str(path), dataset="support", map="group=customer_id", stdout=io.StringIO())
    version = DatasetVersion.objects.get(dataset=dataset, number=1)
    first = eng_client.get("/datasets/support/v1/", {"split": "0"}).context
    assert all(e.split == 0 for e in first["examples"]) and first["next_after"] is not None
    second = eng_client.get("/datasets/support/v1/", {"split": "0", "after": first["next_after"]}).context
    assert second["examples"][0].row > first["examples"][-1].row
    with_pii = eng_client.get("/datasets/support/v1/", {"pii": "yes"}).context["examples"]
    assert with_pii and all(e.pii_kinds for e in with_pii)
    label = version.label_set[0]
    assert all(e.label == label for e in eng_client.get("/datasets/support/v1/", {"label": label}).context["examples"])
    found = eng_client.get("/datasets/support/v1/", {"q": "refund"}).context["examples"]
    assert found and all("refund" in e.text.lower() for e in found)
    assert eng_client.get("/datasets/support/v1/", {"split": "9"}).status_code == 400


def test_child_version_actions_through_the_page(eng_client, engineer, tmp_path, django_capture_on_commit_callbacks):
    dataset = make_dataset(engineer, pii_policy="allow")
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(300, pii_rate=0.2, dup_rate=0.1))
    call_command("dataset_import", str(path), dataset="support", stdout=io.StringIO())
    for operation in ("redact", "dedup"):
        with django_capture_on_commit_callbacks(execute=True):
            response = eng_client.post(f"/datasets/support/v1/{operation}")
        assert response.status_code == 302
    eng_client.post("/datasets/support/v1/dedup")  # a second click is the same job
    assert Job.objects.filter(task="lifecycle.datasets.tasks.derive_version").count() == 2
    failed = Job.objects.get(key__startswith=f"derive:{DatasetVersion.objects.get(number=1).pk}:redact:")
    failed.claim("test-worker") and failed.mark_failed("the worker lost its disk")
    eng_client.post("/datasets/support/v1/redact")  # after a failure, a click is a new try
    assert Job.objects.filter(task="lifecycle.datasets.tasks.derive_version").count() == 3
    perform_queued_jobs()
    ops = dict(DatasetVersion.objects.filter(dataset=dataset).values_list("operation", "number"))
    assert set(ops) == {"upload", "redact", "dedup"}
    assert DatasetVersion.objects.filter(dataset=dataset, operation="redact").count() == 1
    assert eng_client.post("/datasets/support/v1/explode").status_code == 404
    diff = eng_client.get("/datasets/support/diff", {"a": 1, "b": ops["dedup"]})
    assert diff.status_code == 200 and diff.context["diff"]["removed_count"] > 0


def test_only_approvers_sign_off_pii(client, engineer, tmp_path):
    make_dataset(engineer, pii_policy="allow")
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(100, pii_rate=0.3))
    call_command("dataset_import", str(path), dataset="support", stdout=io.StringIO())
    client.force_login(engineer)
    assert client.post("/datasets/support/v1/signoff", {"reason": "looks fine to me"}).status_code == 403
    client.force_login(make_user("alex", "approver"))
    client.post("/datasets/support/v1/signoff", {"reason": "short"})
    assert not DatasetVersion.objects.get(number=1).pii_signed_off
    client.post("/datasets/support/v1/signoff", {"reason": "consent recorded in ticket LC-12"})
    assert DatasetVersion.objects.get(number=1).pii_signed_off
