"""A trained run suggests a label for every example; labelers see it, the table filters on it."""
import pytest

from lifecycle.core.models import Job
from lifecycle.labeling.models import Item
from lifecycle.runs import launch
from lifecycle.runs.models import Run
from tests.conftest import client_for, make_user
from tests.labeling.factories import make_project
from tests.runs.conftest import run_training_burst
from tests.runs.factories import MINILM, intent_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_trained_run_suggests_labels_that_labelers_see(tmp_path, settings, redis, client):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    engineer = make_user("erin-engineer", "ml_engineer")
    labeler = make_user("lee-labeler", "labeler")
    version = intent_version(tmp_path, engineer, n=300)
    run = launch.start(engineer, {"dataset_version": version.pk, "base_model": MINILM, "method": "lora", "epochs": 2,
                                  "batch_size": 16, "learning_rate": 2e-3, "max_length": 48})
    project = make_project(version, engineer, overlap=1, gold_share=0)
    client_for(client, engineer)
    refused = client.post(f"/labeling/{project.pk}/suggest", {"run": run.pk}, follow=True).content.decode()
    assert "Pick a trained classification run" in refused  # not trained yet: not offered
    log = run_training_burst(tmp_path)
    assert Run.objects.get(pk=run.pk).status == "succeeded", log[-3000:]

    page = client.get(project.get_absolute_url()).content.decode()
    assert f"#{run.pk} " in page
    client.post(f"/labeling/{project.pk}/suggest", {"run": run.pk})
    log = run_training_burst(tmp_path)
    job = Job.objects.get(task="lifecycle.labeling.tasks.suggest_labels")
    assert job.status == "succeeded", log[-3000:]
    items = list(Item.objects.filter(project=project).select_related("example"))
    assert all(i.suggested_label in project.label_set and 0 < i.suggested_confidence <= 1 for i in items)
    right = sum(i.suggested_label == i.example.label for i in items) / len(items)
    assert right > 0.5, right  # a dozen intents: chance is below 0.1

    client_for(client, labeler)
    data = client.get(f"/labeling/{project.pk}/next").json()
    shown = Item.objects.get(pk=data["item"])
    assert data["suggestion"] == {"label": shown.suggested_label, "confidence": shown.suggested_confidence}
    client_for(client, engineer)
    low = client.get(f"/labeling/{project.pk}/table?show=low_confidence").context["page"].paginator.count
    assert low == sum(i.suggested_confidence < project.low_confidence for i in items)
