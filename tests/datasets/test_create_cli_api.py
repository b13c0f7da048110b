"""A dataset made from the command line and from the JSON API, by the web form's rules; an
expected refusal is one clear line and a log line without a traceback."""
import io
import json
import logging
import subprocess
import sys

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from lifecycle.core.jobs import perform
from lifecycle.core.models import ApiToken, AuditEvent, Job
from lifecycle.datasets.models import Dataset, DatasetVersion, Upload
from tests.conftest import PASSWORD, make_user
from tests.core import jobtasks
from tests.datasets.files import write_csv
from tests.workers import ROOT, worker_env

URL = "/api/v1/datasets"


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


def create(*args, **options):
    out = io.StringIO()
    call_command("dataset_create", *args, stdout=out, **options)
    return json.loads(out.getvalue())


def rows(n=40, labels=("refund", "delivery")):
    return [["body", "intent"]] + [[f"message {i} about an order, number {i * 7}", labels[i % len(labels)]] for i in range(n)]


def written():
    """What a refused create must leave as it was."""
    return Dataset.objects.count(), AuditEvent.objects.filter(action="dataset.created").count()


def created_events():
    return list(AuditEvent.objects.filter(action="dataset.created").order_by("seq").values_list("actor", "payload"))


def post(client, body, **extra):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(URL, data, content_type="application/json", **extra)


def token_client(user, **options):
    return Client(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'script')[1]}", **options)


# --- the command line ------------------------------------------------------------------------


def test_from_an_empty_database_the_command_line_makes_a_version(db, tmp_path, monkeypatch):
    assert not Dataset.objects.exists() and not User.objects.exists()
    call_command("migrate", verbosity=0)
    monkeypatch.setenv("LIFECYCLE_ADMIN_PASSWORD", PASSWORD)
    call_command("bootstrap", admin="root", stdout=io.StringIO())
    made = create("support", task="classification", pii_policy="redact", name="Support tickets",
                  labels="refund, delivery", max_labels="10", user="root")
    assert made["slug"] == "support" and made["name"] == "Support tickets" and made["task"] == "classification"
    assert made["pii_policy"] == "redact" and made["label_set"] == ["refund", "delivery"] and made["max_labels"] == 10
    assert made["url"] == "/datasets/support/" and made["created_by"] == "root"
    assert created_events() == [("root", {"slug": "support", "task": "classification", "pii_policy": "redact"})]
    out = io.StringIO()
    call_command("dataset_import", str(write_csv(tmp_path / "tickets.csv", rows())), dataset="support",
                 map="text=body,label=intent", user="root", stdout=out)
    report = json.loads(out.getvalue())
    assert report["status"] == "succeeded" and report["version"] == 1 and report["manifest"]["row_count"] == 40
    assert DatasetVersion.objects.get(dataset__slug="support").row_count == 40


def test_the_command_line_records_what_the_web_form_records(engineer):
    client = Client()
    client.force_login(engineer)
    response = client.post("/datasets/new", {"name": "Web", "slug": "web", "task": "sft", "pii_policy": "block",
                                             "max_labels": 100, "max_text_chars": 20000, "labels": ""})
    assert response.status_code == 302
    made = create("cli", task="sft", pii_policy="block", user=engineer.username)
    assert made["name"] == "cli" and made["label_set"] == [] and made["max_text_chars"] == 20000
    web, cli = created_events()
    assert web[0] == cli[0] == engineer.username
    assert web[1] | {"slug": "cli"} == cli[1]


@pytest.mark.parametrize("args, options, message", [
    (["taken"], {}, "dataset not created: slug: A dataset with this slug exists already: give another."),
    (["new"], {"task": "regression"}, "task: Select a valid choice. regression is not one of the available choices "
                                      "(one of: classification, sft)."),
    (["new"], {"pii_policy": "ignore"}, "pii_policy: Select a valid choice. ignore is not one of the available "
                                        "choices (one of: block, redact, allow)."),
    (["new"], {"labels": "refund"}, "labels: A label set needs at least two labels."),
    (["new"], {"labels": "refund,refund"}, "labels: Each label may appear once."),
    (["new"], {"max_labels": "many"}, "max_labels: Enter a whole number."),
    (["new"], {"max_labels": "1"}, "max_labels: Ensure this value is greater than or equal to 2."),
    (["Not a slug"], {}, "slug: Enter a valid “slug”"),
    (["new"], {"user": "ghost"}, "no user 'ghost'"),
    ([], {}, "the following arguments are required: slug"),
])
def test_a_refused_create_says_why_in_one_line_and_writes_nothing(engineer, args, options, message):
    create("taken", task="classification", pii_policy="redact")
    before = written()
    options = {"task": "classification", "pii_policy": "redact", **options}
    with pytest.raises(CommandError) as refused:
        call_command("dataset_create", *args, stdout=io.StringIO(), **options)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert written() == before


def test_import_into_a_missing_dataset_names_the_command_that_makes_it(db, tmp_path):
    with pytest.raises(CommandError, match=r"no dataset 'support'; create it first with manage.py dataset_create support "
                                           r"--task classification\|sft --pii-policy block\|redact\|allow"):
        call_command("dataset_import", str(write_csv(tmp_path / "t.csv", rows())), dataset="support")


# --- expected refusals of an import -----------------------------------------------------------


@pytest.mark.parametrize("table, on_error, reason", [
    ([["foo", "bar"], ["x", "y"]], "reject",
     "import refused: missing required columns: text (from column 'body'), label (from column 'intent'); the file has: foo, bar"),
    (rows(labels=("refund",)), "reject", "import refused: only one label in the whole file: a classifier needs at least two"),
    (rows() + [["", "refund"]], "reject", "import refused: 1 of 41 rows are invalid (first: line 42: "),
    # A line break the file put in a column's name stays visible, escaped, on the one line.
    ([["to\nday", "intent"], ["x", "a"]], "drop", "import refused: missing required columns: text (from column 'body'); "
                                                   "the file has: to\\nday, intent"),
])
def test_a_refused_import_is_one_line_and_logged_without_a_traceback(engineer, tmp_path, caplog, table, on_error, reason):
    create("support", task="classification", pii_policy="redact")
    path = write_csv(tmp_path / "t.csv", table)
    caplog.set_level(logging.INFO)
    with pytest.raises(CommandError) as refused:
        call_command("dataset_import", str(path), dataset="support", map="text=body,label=intent", on_error=on_error,
                     stdout=io.StringIO())
    assert str(refused.value).startswith(reason) and "\n" not in str(refused.value)
    assert not DatasetVersion.objects.exists()
    job = Job.objects.get()
    one_line = "\\n".join(job.error.splitlines())
    assert job.status == "failed" and f"import refused: {one_line}" == str(refused.value)
    assert Upload.objects.get().report["refused"] == job.error
    assert not [record for record in caplog.records if record.exc_info or record.exc_text]
    logged = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert logged == [f"job {job.pk} (lifecycle.datasets.tasks.ingest_upload) refused: {one_line}"]


def test_a_bug_in_a_job_still_logs_its_traceback(engineer, caplog):
    job = Job.create_queued(jobtasks.fail.task_name, "default", {"message": "disk full"}, user=engineer)
    perform(job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and job.error == "ValueError: disk full"
    assert [record.exc_info[0] for record in caplog.records if record.exc_info] == [ValueError]


@pytest.mark.django_db(transaction=True)
def test_in_a_shell_a_refusal_is_one_line_on_stderr_and_a_failing_exit(tmp_path):
    Dataset.create(None, slug="support", name="Support")

    def manage(*args):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=worker_env(), capture_output=True,
                              text=True, timeout=120)

    bad = manage("dataset_create", "other", "--task", "regression", "--pii-policy", "redact")
    assert bad.returncode == 1 and bad.stderr.startswith("CommandError: dataset not created: task: ")
    assert len(bad.stderr.splitlines()) == 1, bad.stderr
    refused = manage("dataset_import", str(write_csv(tmp_path / "t.csv", [["foo"], ["x"]])), "--dataset", "support")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert [line for line in refused.stderr.splitlines() if line.startswith("CommandError")] == [
        "CommandError: import refused: missing required columns: text (from column 'text'), label (from column "
        "'label'); the file has: foo"]
    assert json.loads(refused.stdout)["status"] == "failed"
    assert Dataset.objects.count() == 1 and not DatasetVersion.objects.exists()


# --- the JSON API ------------------------------------------------------------------------------


def test_an_engineer_creates_a_dataset_through_the_api(engineer):
    client = token_client(engineer, enforce_csrf_checks=True)
    response = post(client, {"name": "Support tickets", "task": "classification", "pii_policy": "allow",
                             "labels": ["refund", "delivery"], "max_text_chars": 5000, "description": "From the inbox."})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["slug"] == "support-tickets" and body["label_set"] == ["refund", "delivery"] and body["max_labels"] == 100
    assert body["created_by"] == engineer.username and body["versions_url"] == "/api/v1/datasets/support-tickets/versions"
    dataset = Dataset.objects.get()
    assert (dataset.pii_policy, dataset.max_text_chars, dataset.description) == ("allow", 5000, "From the inbox.")
    assert created_events() == [(engineer.username, {"slug": "support-tickets", "task": "classification", "pii_policy": "allow"})]
    assert post(client, {"slug": "by-slug", "task": "sft", "pii_policy": "redact"}).json()["name"] == "by-slug"


@pytest.mark.parametrize("body, status, detail", [
    ({"name": "X"}, 400, "missing field(s): task, pii_policy"),
    ({"task": "sft", "pii_policy": "redact"}, 400, "name: This field is required."),
    ({"name": "X", "task": "sft", "pii_policy": "redact", "max_labels": "many"}, 400, "max_labels must be a whole number"),
    ({"name": "X", "task": "sft", "pii_policy": "redact", "max_labels": True}, 400, "max_labels must be a whole number"),
    ({"name": "X", "task": "sft", "pii_policy": "redact", "max_labels": 1}, 400,
     "max_labels: Ensure this value is greater than or equal to 2."),
    ({"name": None, "task": "sft", "pii_policy": "redact"}, 400, "name must be text"),
    ({"name": "X", "task": "poetry", "pii_policy": "redact"}, 400, "task: Select a valid choice."),
    ({"name": "X", "task": "sft", "pii_policy": "redact", "labels": "a,b"}, 400, "labels must be a list of texts"),
    ({"name": "X", "task": "sft", "pii_policy": "redact", "labels": ["a,b", "c"]}, 400, "a label may not hold a comma"),
    ({"name": "X", "task": "sft", "pii_policy": "redact", "labels": ["a"]}, 400, "labels: A label set needs at least two labels."),
    ({"name": "X", "slug": "taken", "task": "sft", "pii_policy": "redact"}, 400, "slug: A dataset with this slug exists already"),
    ({"name": "X", "task": "sft", "pii_policy": "redact", "owner": "me"}, 400, "unknown field(s): owner"),
    ("{not json", 400, "the body is not valid JSON"),
    ("[]", 400, "the body must be a JSON object"),
    ("", 400, "the body must be a JSON object"),
])
def test_a_refused_api_create_answers_in_the_error_shape_and_writes_nothing(engineer, body, status, detail):
    Dataset.create(None, slug="taken", name="Taken")
    client = token_client(engineer)
    before = written()
    response = post(client, body)
    assert response.status_code == status, response.content
    assert detail in response.json()["detail"] and response.json()["error"]
    assert written() == before


def test_form_errors_name_their_fields(engineer):
    response = post(token_client(engineer), {"slug": "Bad Slug", "task": "x", "pii_policy": "y"})
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    assert set(response.json()["fields"]) == {"slug", "task", "pii_policy"}


def test_a_body_over_the_limit_is_refused(engineer, settings):
    settings.JSON_BODY_MAX_BYTES = 1000
    response = post(token_client(engineer), {"name": "X", "task": "sft", "pii_policy": "redact", "description": "x" * 2000})
    assert response.status_code == 413 and response.json()["error"] == "body too large"
    assert not Dataset.objects.exists()


def test_only_engineers_create_and_readers_list(db):
    body = {"name": "X", "task": "sft", "pii_policy": "redact"}
    assert post(Client(), body).status_code == 401
    assert post(Client(HTTP_AUTHORIZATION="Bearer lc_not-a-token"), body).status_code == 401
    for role in ("labeler", "viewer", "approver", "oncall"):
        response = post(token_client(make_user(f"someone-{role}", role)), body)
        assert response.status_code == 403 and response.json()["error"] == "forbidden", role
    assert not Dataset.objects.exists()
    assert token_client(make_user("vic", "viewer")).get(URL).status_code == 200
    assert token_client(make_user("lee", "labeler")).get(URL).status_code == 403
    assert Client().get(URL).status_code == 401


def test_a_session_needs_the_csrf_token_and_a_bearer_token_does_not(engineer):
    body = {"name": "X", "task": "sft", "pii_policy": "redact"}
    session = Client(enforce_csrf_checks=True)
    session.force_login(engineer)
    assert post(session, body).status_code == 403
    assert not Dataset.objects.exists()
    session.get("/datasets/new")  # the form page sets the CSRF cookie
    assert post(session, body, HTTP_X_CSRFTOKEN=session.cookies["csrftoken"].value).status_code == 201
    assert post(token_client(engineer, enforce_csrf_checks=True), body | {"slug": "y"}).status_code == 201


def test_the_listing_pages_newest_first(engineer):
    for n in range(5):
        Dataset.create(engineer, slug=f"d{n}", name=f"D{n}")
    client = token_client(engineer)
    first = client.get(URL, {"size": 2}).json()
    assert [d["slug"] for d in first["datasets"]] == ["d4", "d3"] and first["newer"] is None
    second = client.get(first["older"]).json()
    assert [d["slug"] for d in second["datasets"]] == ["d2", "d1"]
    assert [d["slug"] for d in client.get(second["newer"]).json()["datasets"]] == ["d4", "d3"]
    assert client.get(URL, {"size": "0"}).status_code == 400
    assert client.put(URL).status_code == 405
