"""One real training run for the whole registry suite (a LoRA fine-tune of MiniLM), made once
per test session in a subprocess on its own SQLite database, its output left in a shared
artifact folder. Tests copy that folder and record the run in their own database
(factories.trained_run): the output, metrics and evaluation are the real ones."""
import json
import sys
from pathlib import Path

CONFIG = {"base_model": "all-MiniLM-L6-v2", "method": "lora", "epochs": 3, "batch_size": 16,
          "learning_rate": 2e-3, "max_length": 64}


def train(out_dir):
    """Run inside `manage.py shell` (DEBUG on, SQLite, ARTIFACT_DIR under out_dir)."""
    import django_rq
    from django.contrib.auth import get_user_model

    from lifecycle.core import jobs
    from lifecycle.runs import launch
    from lifecycle.runs.models import Run
    from tests.runs.factories import intent_version

    out = Path(out_dir)
    user = get_user_model().objects.create(username="trainer")
    version = intent_version(out, user, n=600)
    run = launch.start(user, {**CONFIG, "dataset_version": version.pk})
    django_rq.get_queue("training").empty()  # trained here, in this process, not by a worker
    jobs.perform(run.job_id)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "succeeded", run.job.error
    losses = [p.values["loss"] for p in run.points.filter(kind="train").order_by("step") if "loss" in p.values]
    report = {
        "output_sha256": run.output_sha256, "test_metrics": run.test_metrics, "warnings": run.warnings,
        "config": run.config, "base_model": run.base_model, "base_model_sha256": run.base_model_sha256,
        "method": run.method, "task": run.task, "seed": run.seed, "environment": run.environment,
        "losses": [losses[0], losses[-1]],
        "reports": [{"split": r.split, "metrics": r.metrics, "per_class": r.per_class, "confusion": r.confusion,
                     "calibration": r.calibration} for r in run.reports.all()],
    }
    (out / "trained.json").write_text(json.dumps(report))
    print(json.dumps({"output": run.output_sha256}), file=sys.stdout)
