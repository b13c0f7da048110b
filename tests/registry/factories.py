"""Registry test data: a run recorded from the session's real training (conftest.trained),
registered models and versions through the real methods."""
from django.utils import timezone

from lifecycle.core.models import Job
from lifecycle.registry.models import ModelVersion, RegisteredModel
from lifecycle.runs.models import EvalReport, Run
from tests.runs.factories import intent_version


def trained_run(trained, user, tmp_path, *, version=None, metrics=None, name="lora minilm"):
    """A succeeded Run in this test's database whose output is the session's trained one
    (its artifacts copied into this test's store by the store_with_output fixture).
    `metrics` overrides test metrics (to exercise the gates)."""
    version = version or intent_version(tmp_path, user, n=300)
    now = timezone.now()
    job = Job.objects.create(task="lifecycle.runs.tasks.train_run", queue="training", kwargs={},
                             status=Job.Status.SUCCEEDED, created_by=user, started_at=now, finished_at=now)
    run = Run.objects.create(
        name=name, dataset_version=version, base_model=trained["base_model"],
        base_model_sha256=trained["base_model_sha256"], task=trained["task"], method=trained["method"],
        seed=trained["seed"], config=trained["config"], warnings=trained["warnings"], job=job,
        environment=trained["environment"], test_metrics={**trained["test_metrics"], **(metrics or {})},
        output_sha256=trained["output_sha256"], created_by=user)
    Job.objects.filter(pk=job.pk).update(kwargs={"run_id": run.pk})
    for report in trained["reports"]:
        EvalReport.objects.create(run=run, **report)
    return run


# Thresholds the session's small run clears by a margin (its test split has ~50 rows), so the
# gate tests decide pass or fail by the metrics they set, not by the training's luck.
TEST_GATES = {
    "staging": {"metrics": {"accuracy": {"min": 0.2}}, "regression_tolerance": None},
    "production": {"metrics": {"accuracy": {"min": 0.3}, "macro_f1": {"min": 0.2}, "ece": {"max": 0.6}},
                   "regression_tolerance": 0.02},
}


def make_model(user, slug="intent-router", description="Routes support tickets to the right team."):
    model = RegisteredModel.create(user, name=slug.replace("-", " ").title(), slug=slug, description=description)
    RegisteredModel.objects.filter(pk=model.pk).update(gate_settings=TEST_GATES)
    model.gate_settings = TEST_GATES
    return model


def registered(trained, user, tmp_path, *, model=None, slug="intent-router", **run_kwargs):
    model = model or RegisteredModel.objects.filter(slug=slug).first() or make_model(user, slug)
    return ModelVersion.register(user, model, trained_run(trained, user, tmp_path, **run_kwargs))
