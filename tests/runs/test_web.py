"""Runs through the real URLs: list, new-run form, run page, live JSON, debug, compare,
cancel and resume. No worker runs here: rows are made directly, and a started run's job
stays queued (its message to Redis is only sent on commit, which these tests never do)."""
import io
import json

import pytest
from django.core.management import call_command
from django.test import override_settings

from lifecycle.core.models import AuditEvent, Job
from lifecycle.datasets.models import Dataset, DatasetVersion, PiiSignOff
from lifecycle.datasets.synthetic import generate
from lifecycle.runs.config import RunConfig
from lifecycle.runs.forms import RunForm
from lifecycle.runs.models import Checkpoint, EvalReport, MetricPoint, Run
from tests.conftest import make_user

MINILM = "all-MiniLM-L6-v2"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


# --- factories (shared with test_api.py and test_run_start.py) ---------------------------------


def make_version(tmp_path, slug="support", rows=None, **dataset_fields):
    """A classification version made by the datasets app's own import, in this process."""
    Dataset.create(None, slug=slug, name=slug.title(), **dataset_fields)
    path = tmp_path / f"{slug}.jsonl"
    rows = rows if rows is not None else list(generate(90, pii_rate=0, dup_rate=0))
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    # The import's heartbeat thread has its own connection, which cannot see this test's
    # uncommitted job row: a beat would read the job as gone and stop it. One beat an hour
    # never comes during the import, however slow the machine is that day.
    with override_settings(JOB_HEARTBEAT_SECONDS=3600):
        call_command("dataset_import", str(path), dataset=slug, stdout=io.StringIO())
    # With the default "redact" policy, PII found in v1 makes a redacted v2: take the newest.
    return DatasetVersion.objects.select_related("dataset").filter(dataset__slug=slug).order_by("-number").first()


def make_run(version, *, name="baseline", user=None, status=Job.Status.QUEUED, error="", progress=None,
             test_metrics=None, task="classification", **config):
    config = RunConfig(dataset_version=version.pk, base_model=MINILM, task=task, **config).as_dict()
    job = Job.create_queued("lifecycle.runs.tasks.train_run", "training", {}, user=user)
    if status != Job.Status.QUEUED:
        Job.objects.filter(pk=job.pk).update(status=status, error=error)
    run = Run.objects.create(name=name, dataset_version=version, base_model=MINILM, task=task, method=config["method"],
                             seed=config["seed"], config=config, job=job, created_by=user, progress=progress or {},
                             test_metrics=test_metrics or {})
    Job.objects.filter(pk=job.pk).update(kwargs={"run_id": run.pk})
    return Run.objects.for_listing().get(pk=run.pk)


def add_points(run, kind, steps, **series):
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, kind=kind, step=step, values={key: values[i] for key, values in series.items()})
        for i, step in enumerate(steps))


def add_report(run, worst=None):
    return EvalReport.objects.create(
        run=run, split="test", metrics={"accuracy": 0.8125, "macro_f1": 0.75, "count": 16, "ece": 0.04},
        per_class=[{"label": "a", "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10},
                   {"label": "b", "precision": 0.6, "recall": 0.7, "f1": 0.65, "support": 6}],
        confusion={"labels": ["a", "b"], "matrix": [[8, 2], [1, 5]]},
        calibration={"ece": 0.04, "bins": [{"lower": 0.5, "upper": 0.6, "count": 4, "confidence": 0.55, "accuracy": 0.5},
                                           {"lower": 0.9, "upper": 1.0, "count": 12, "confidence": 0.95, "accuracy": 0.9}]},
        worst=worst or {})


def form_data(version, **changes):
    return {"dataset_version": version.pk, "base_model": MINILM, "task": "classification", "method": "lora",
            "epochs": 1, "batch_size": 8, "max_length": 64, "name": "", **changes}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def engineer():
    return make_user("erin", "ml_engineer")


@pytest.fixture
def version(tmp_path):
    return make_version(tmp_path)


@pytest.fixture
def run(version, engineer):
    return make_run(version, user=engineer)


@pytest.fixture
def eng(client, engineer):
    client.force_login(engineer)
    return client


def as_role(client, role):
    client.force_login(make_user(f"user-{role}", role))
    return client


# --- who may see what --------------------------------------------------------------------------


@pytest.mark.parametrize("role, allowed", [("ml_engineer", True), ("approver", True), ("viewer", True), ("labeler", False)])
def test_read_pages_by_role(client, run, role, allowed):
    other = make_run(run.dataset_version, name="other")
    add_report(run)
    as_role(client, role)
    urls = ["/runs/", f"/runs/{run.pk}/", f"/runs/{run.pk}/live", f"/runs/compare?runs={run.pk},{other.pk}",
            f"/api/v1/runs/{run.pk}", f"/api/v1/runs/{run.pk}/metrics"]
    for url in urls:
        assert client.get(url).status_code == (200 if allowed else 403), url


@pytest.mark.parametrize("role, status", [("ml_engineer", 200), ("approver", 200), ("viewer", 403), ("labeler", 403)])
def test_debug_page_is_for_row_readers(client, run, role, status):
    add_report(run)
    assert as_role(client, role).get(f"/runs/{run.pk}/debug").status_code == status


@pytest.mark.parametrize("role, status", [("ml_engineer", 200), ("approver", 403), ("viewer", 403), ("labeler", 403)])
def test_only_engineers_start_runs(client, version, role, status):
    as_role(client, role)
    assert client.get("/runs/new").status_code == status
    if status == 403:
        assert client.post("/runs/new", form_data(version)).status_code == 403
        assert client.post(f"/runs/{make_run(version).pk}/cancel").status_code == 403
        assert not Run.objects.exclude(name="baseline").exists() and Job.objects.filter(status="cancelled").count() == 0


def test_run_page_shows_the_action_buttons_to_engineers_only(client, run):
    page = as_role(client, "ml_engineer").get(f"/runs/{run.pk}/").content.decode()
    assert f'action="/runs/{run.pk}/cancel"' in page
    page = as_role(client, "viewer").get(f"/runs/{run.pk}/").content.decode()
    assert f'action="/runs/{run.pk}/cancel"' not in page


# --- the list ----------------------------------------------------------------------------------


def test_list_is_newest_first_filtered_and_paged(eng, version, tmp_path):
    other_version = make_version(tmp_path, slug="billing")
    runs = [make_run(version, name=f"run-{i}") for i in range(52)]
    done = make_run(other_version, name="finished", status=Job.Status.SUCCEEDED, test_metrics={"accuracy": 0.91234},
                    progress={"step": 40, "total_steps": 40})
    first = eng.get("/runs/")
    assert first.status_code == 200
    listed = list(first.context["page"].object_list)
    assert len(listed) == 50 and listed[0] == done and listed[1] == runs[-1]
    assert "0.9123" in first.content.decode() and "40 / 40" in first.content.decode()
    second = eng.get("/runs/", {"page": 2}).context["page"]
    assert [r.pk for r in second.object_list] == [runs[2].pk, runs[1].pk, runs[0].pk]
    assert list(eng.get("/runs/", {"status": "succeeded"}).context["page"].object_list) == [done]
    by_dataset = eng.get("/runs/", {"dataset": "billing"})
    assert list(by_dataset.context["page"].object_list) == [done]
    assert eng.get("/runs/", {"dataset": "support", "page": 2}).context["page"].number == 2
    assert 'href="?dataset=support&amp;page=2"' in eng.get("/runs/", {"dataset": "support"}).content.decode()
    assert eng.get("/runs/", {"status": "exploded"}).status_code == 400


def test_list_shows_perplexity_for_causal_lm(eng, version):
    make_run(version, task="causal_lm", test_metrics={"perplexity": 12.3456, "loss": 2.5})
    assert "perplexity 12.35" in eng.get("/runs/").content.decode()


# --- the new-run form ----------------------------------------------------------------------------


def test_form_offers_usable_versions_and_models(eng, version):
    form = eng.get("/runs/new").context["form"]
    assert (version.pk, f"support v{version.number} ({version.row_count} rows)") in form.fields["dataset_version"].choices
    assert (MINILM, MINILM) in form.fields["base_model"].choices
    assert form.fields["batch_size"].initial == 16 and form.fields["method"].initial == "lora"


def test_form_leaves_out_versions_training_may_not_use(eng, version, tmp_path):
    personal = make_version(tmp_path, slug="personal", rows=list(generate(90, pii_rate=0.3, dup_rate=0)), pii_policy="allow")
    assert personal.pii_status == "found" and not personal.usable_for_training
    choices = [value for value, _ in eng.get("/runs/new").context["form"].fields["dataset_version"].choices]
    assert version.pk in choices and personal.pk not in choices
    response = eng.post("/runs/new", form_data(personal))
    assert response.status_code == 400 and not Run.objects.exists()
    PiiSignOff.sign(personal, make_user("alex", "approver"), "consent recorded in ticket LC-12")
    choices = [value for value, _ in eng.get("/runs/new").context["form"].fields["dataset_version"].choices]
    assert personal.pk in choices


def test_form_starts_a_run_and_redirects_to_it(eng, engineer, version):
    response = eng.post("/runs/new", form_data(version, name="first try", learning_rate="0.0005", target_modules="query, value"))
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.name == "first try" and run.created_by == engineer and run.dataset_version == version
    assert run.config["learning_rate"] == 0.0005 and run.config["target_modules"] == ["query", "value"]
    assert run.config["batch_size"] == 8 and run.config["lora_r"] == 8  # the default fills what was left empty
    assert run.job.status == "queued" and run.job.queue == "training" and run.job.kwargs == {"run_id": run.pk}
    assert f"Run {run.pk} is queued" in eng.get(response["Location"]).content.decode()


@pytest.mark.parametrize("changes, field, message", [
    ({"learning_rate": "0"}, "learning_rate", "must be a number above 0"),
    ({"learning_rate": "NaN"}, "learning_rate", "Enter a number"),
    ({"dataset_version": "999999"}, "dataset_version", "Select a valid choice"),
    ({"target_modules": "q_proj"}, "target_modules", "has no module called q_proj"),
    ({"max_length": "10000"}, "max_length", "above all-MiniLM-L6-v2's limit of 512 positions"),
    ({"batch_size": "0"}, "batch_size", "must be between 1 and 4096"),
    ({"base_model": ""}, "base_model", "choose a base model"),
])
def test_form_errors_show_next_to_their_field_and_start_nothing(eng, version, changes, field, message):
    response = eng.post("/runs/new", form_data(version, **changes))
    assert response.status_code == 400
    errors = " ".join(response.context["form"].errors.get(field, []))
    assert message in errors, response.context["form"].errors
    assert message in response.content.decode().replace("&#x27;", "'")
    assert not Run.objects.exists() and not Job.objects.filter(queue="training").exists()


def test_form_whole_config_errors_show_on_top(eng, version):
    response = eng.post("/runs/new", form_data(version, train_split="test"))
    assert response.status_code == 400
    assert "the training split must differ" in " ".join(response.context["form"].errors["train_split"])
    form = RunForm(form_data(version))
    form.is_valid()
    form.add_config_errors({"": ["the data is blocked"], "nonsense": ["odd"]})
    assert form.non_field_errors() == ["the data is blocked", "nonsense: odd"]


def test_form_says_when_the_queue_is_down(eng, version, monkeypatch):
    from lifecycle.core import queues

    def down(queue_name="default"):
        raise queues.QueueUnavailable("ConnectionError")

    monkeypatch.setattr(queues, "ping", down)
    response = eng.post("/runs/new", form_data(version))
    assert response.status_code == 503 and "The job queue is unavailable" in response.content.decode()
    assert not Run.objects.exists()


# --- the run page ------------------------------------------------------------------------------


def test_run_page_shows_progress_charts_and_evaluation(eng, version):
    run = make_run(version, status=Job.Status.RUNNING,
                   progress={"phase": "training", "step": 30, "total_steps": 120, "epoch": 0.75, "eta_seconds": 95,
                             "examples_per_s": 41.5, "tokens_per_s": 2650})
    add_points(run, "train", [10, 20, 30], loss=[1.2, 0.9, 0.7], lr=[1e-3, 9e-4, 8e-4])
    add_points(run, "eval", [20], eval_loss=[0.95], accuracy=[0.6], macro_f1=[0.55])
    page = eng.get(f"/runs/{run.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "about 1m 35s left" in html and 'data-percent="25.0"' in html and "41.5 examples/s" in html
    charts = {chart["id"]: chart for chart in page.context["curve_charts"]}
    assert set(charts) == {"run-chart-loss", "run-chart-lr", "run-chart-eval-metrics"}
    train_loss, eval_loss = charts["run-chart-loss"]["figure"]["data"]
    assert (train_loss["name"], list(train_loss["y"])) == ("training loss", [1.2, 0.9, 0.7])
    assert (eval_loss["name"], list(eval_loss["x"])) == ("validation loss", [20])
    assert page.context["live"] == {"url": f"/runs/{run.pk}/live", "status": "running", "since": 30, "eval_since": 20,
                                    "charts": {c: charts[c]["traces"] for c in charts}}
    assert 'id="run-live"' in html and "js/runs.js" in html and "vendor/plotly.min.js" in html
    assert "<script>" not in html.replace('<script id="run-live" type="application/json">', "")
    assert "Test evaluation" not in html


def test_finished_run_page_shows_the_test_report_without_polling(eng, version):
    run = make_run(version, status=Job.Status.SUCCEEDED, test_metrics={"accuracy": 0.8125})
    add_points(run, "train", [1, 2], loss=[1.0, 0.8])
    add_report(run)
    Checkpoint.objects.create(run=run, step=2, weights_sha256="a" * 64, state_sha256="b" * 64, size=2048)
    Run.objects.filter(pk=run.pk).update(environment={"torch": "2.5.1", "device": "cpu"}, warnings=["labels unseen: c"])
    page = eng.get(f"/runs/{run.pk}/")
    html = page.content.decode()
    assert page.context["live"] is None and 'id="run-live"' not in html
    assert "Test evaluation" in html and "0.8125" in html and "labels unseen: c" in html and "2.5.1" in html
    assert [chart_id for chart_id, _ in page.context["report_charts"]] == ["run-confusion", "run-reliability"]
    assert [c["id"] for c in page.context["curve_charts"]] == ["run-chart-loss"]  # no lr, no eval points logged
    assert "2.0\xa0KB" in html and f"/runs/{run.pk}/debug" in html


def test_failed_run_shows_the_error(eng, version):
    run = make_run(version, status=Job.Status.FAILED, error="RuntimeError: CUDA out of memory")
    html = eng.get(f"/runs/{run.pk}/").content.decode()
    assert "The run failed: RuntimeError: CUDA out of memory" in html


def test_run_names_are_escaped(eng, version):
    run = make_run(version, name="<script>alert('name')</script>", status=Job.Status.SUCCEEDED)
    html = eng.get(f"/runs/{run.pk}/").content.decode() + eng.get("/runs/").content.decode()
    assert "<script>alert('name')</script>" not in html and "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in html


# --- live JSON ---------------------------------------------------------------------------------


def test_live_json_shape_and_since(eng, version):
    run = make_run(version, status=Job.Status.RUNNING, progress={"phase": "training", "step": 3, "total_steps": 10})
    add_points(run, "train", [1, 2, 3], loss=[1.0, 0.9, 0.8], lr=[0.1, 0.2, 0.3])
    add_points(run, "eval", [2], eval_loss=[0.95], accuracy=[0.5])
    data = eng.get(f"/runs/{run.pk}/live").json()
    assert set(data) == {"status", "progress", "error", "curves", "finished"}
    assert data["status"] == "running" and data["finished"] is False and data["error"] == ""
    assert data["progress"]["step"] == 3
    assert data["curves"]["train"]["loss"] == {"steps": [1, 2, 3], "values": [1.0, 0.9, 0.8]}
    assert data["curves"]["eval"] == {"eval_loss": {"steps": [2], "values": [0.95]}, "accuracy": {"steps": [2], "values": [0.5]}}
    newer = eng.get(f"/runs/{run.pk}/live", {"since": 2}).json()["curves"]
    assert newer["train"] == {"loss": {"steps": [3], "values": [0.8]}, "lr": {"steps": [3], "values": [0.3]}}
    assert newer["eval"] == {}
    split = eng.get(f"/runs/{run.pk}/live", {"since": 3, "eval_since": 1}).json()["curves"]
    assert split["train"] == {} and split["eval"]["eval_loss"]["steps"] == [2]
    assert eng.get(f"/runs/{run.pk}/live", {"since": "x"}).status_code == 400


def test_live_json_says_finished_with_the_error(eng, version):
    run = make_run(version, status=Job.Status.INTERRUPTED, error="worker lost")
    data = eng.get(f"/runs/{run.pk}/live").json()
    assert data["finished"] is True and data["status"] == "interrupted" and data["error"] == "worker lost"
    assert eng.get("/runs/999999/live").status_code == 404


# --- cancel and resume -------------------------------------------------------------------------


def test_cancel_a_queued_run(eng, run):
    response = eng.post(f"/runs/{run.pk}/cancel")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    run.job.refresh_from_db()
    assert run.job.status == "cancelled"
    again = eng.post(f"/runs/{run.pk}/cancel", follow=True)
    assert "Cannot cancel: the run is cancelled" in again.content.decode()
    assert eng.get(f"/runs/{run.pk}/cancel").status_code == 405


def test_resume_without_a_checkpoint_is_refused_with_a_message(eng, version):
    run = make_run(version, status=Job.Status.INTERRUPTED, error="worker lost")
    page = eng.post(f"/runs/{run.pk}/resume", follow=True)
    assert "Cannot resume: the run has no checkpoint to resume from" in page.content.decode()
    assert Job.objects.filter(queue="training").count() == 1 and Run.objects.get(pk=run.pk).attempt == 1


def test_a_run_stopped_before_its_first_checkpoint_may_start_again_from_step_0(engineer, version):
    """What the demo does after Ctrl-C: the same run again from step 0, its telemetry replaced."""
    run = make_run(version, status=Job.Status.INTERRUPTED, error="worker lost")
    MetricPoint.objects.bulk_create([MetricPoint(run=run, kind="train", step=s, values={"loss": 1.0}) for s in (1, 2)])
    assert run.resume(engineer, or_from_start=True) is None
    run.refresh_from_db()
    assert run.attempt == 2 and run.job.status == "queued" and run.job.kwargs == {"run_id": run.pk, "resume": False}
    assert not run.points.exists() and Run.objects.count() == 1
    event = AuditEvent.objects.filter(action="run.resumed").get()
    assert event.payload == {"attempt": 2, "from_step": 0}


def test_two_resumes_make_one_new_job(eng, version):
    run = make_run(version, status=Job.Status.INTERRUPTED, error="worker lost")
    Checkpoint.objects.create(run=run, step=50, weights_sha256="a" * 64, state_sha256="b" * 64, size=10)
    assert "Resume from the last checkpoint" in eng.get(f"/runs/{run.pk}/").content.decode()
    first = eng.post(f"/runs/{run.pk}/resume", follow=True)
    assert "Resuming from the checkpoint at step 50 (attempt 2)" in first.content.decode()
    second = eng.post(f"/runs/{run.pk}/resume", follow=True)
    assert "Cannot resume: the run is queued" in second.content.decode()
    run.refresh_from_db()
    assert Job.objects.filter(queue="training").count() == 2 and run.attempt == 2 and run.job.status == "queued"
    assert run.job.kwargs == {"run_id": run.pk, "resume": True}


# --- debug -------------------------------------------------------------------------------------


def test_debug_page_shows_worst_examples_escaped(eng, tmp_path):
    rows = [{"text": "<img src=x onerror=alert(1)>", "label": "a"}] + list(generate(80, pii_rate=0, dup_rate=0))
    version = make_version(tmp_path, slug="tricky", rows=rows)
    run = make_run(version, status=Job.Status.SUCCEEDED)
    rows_by_text = dict(version.examples.values_list("text", "row"))
    evil_row = rows_by_text["<img src=x onerror=alert(1)>"]
    other_row = next(r for t, r in rows_by_text.items() if r != evil_row)
    add_report(run, worst={
        "confident_mistakes": [{"row": evil_row, "true": "a", "predicted": "<b>b</b>", "confidence": 0.97, "loss": 3.2}],
        "highest_loss": [{"row": other_row, "true": "a", "predicted": "b", "confidence": 0.6, "loss": 4.1},
                         {"row": 99999, "true": "a", "predicted": "b", "confidence": 0.5, "loss": 2.0}],
    })
    html = eng.get(f"/runs/{run.pk}/debug").content.decode()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>b</b>" not in html and "&lt;b&gt;b&lt;/b&gt;" in html
    assert "0.970" in html and "row not found in this version" in html
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        eng.get(f"/runs/{run.pk}/debug")
    assert sum("datasets_example" in q["sql"] for q in queries.captured_queries) == 1


def test_debug_page_without_a_report(eng, run):
    response = eng.get(f"/runs/{run.pk}/debug")
    assert response.status_code == 200 and "no test evaluation yet" in response.content.decode()


# --- compare -----------------------------------------------------------------------------------


def test_compare_overlays_curves_and_marks_differences(eng, version):
    a = make_run(version, name="a", learning_rate=1e-3, test_metrics={"accuracy": 0.8})
    b = make_run(version, name="b", learning_rate=3e-4, test_metrics={"accuracy": 0.85, "macro_f1": 0.8})
    add_points(a, "train", [1, 2], loss=[1.0, 0.7])
    add_points(b, "train", [1, 2], loss=[1.1, 0.6])
    add_points(b, "eval", [2], eval_loss=[0.65])
    response = eng.get("/runs/compare", {"runs": f"{a.pk},{b.pk}"})
    assert response.status_code == 200
    (_, loss), (_, eval_loss) = response.context["charts"]
    assert [t["name"] for t in loss["data"]] == [f"run {a.pk}", f"run {b.pk}"]
    assert list(eval_loss["data"][1]["y"]) == [0.65] and list(eval_loss["data"][0]["y"]) == []
    rows = {row["key"]: row for row in response.context["config_rows"]}
    assert rows["learning_rate"]["differs"] and not rows["batch_size"]["differs"]
    assert 'class="differs"' in response.content.decode()
    metrics = {row["key"]: row["values"] for row in response.context["metric_rows"]}
    assert metrics == {"accuracy": [0.8, 0.85], "macro_f1": [None, 0.8]}
    # The list's checkboxes send runs=1&runs=2.
    assert eng.get(f"/runs/compare?runs={a.pk}&runs={b.pk}").status_code == 200


def test_compare_needs_two_to_five_runs(eng, version):
    runs = [make_run(version, name=f"r{i}") for i in range(6)]
    for query in [str(runs[0].pk), ",".join(str(r.pk) for r in runs), f"{runs[0].pk},{runs[0].pk}", ""]:
        response = eng.get("/runs/compare", {"runs": query})
        assert response.status_code == 400 and "Choose 2 to 5 runs" in response.content.decode(), query
    response = eng.get("/runs/compare", {"runs": f"{runs[0].pk},999999"})
    assert response.status_code == 400 and "There is no run 999999" in response.content.decode()
    assert eng.get("/runs/compare", {"runs": "1,x"}).status_code == 400


def test_a_finished_training_jobs_outcome_links_its_run(version, engineer):
    from lifecycle.core.jobs import job_status

    run = make_run(version, user=engineer, status=Job.Status.SUCCEEDED)
    outcome = job_status(Job.objects.get(pk=run.job_id))["outcome"]
    assert outcome["text"] == f"Trained run {run.pk} (baseline)."
    assert outcome["links"] == [{"label": f"Run {run.pk}", "url": run.get_absolute_url()}]
