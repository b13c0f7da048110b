"""The start page's story panel (tour/home.py, tour/progress.py): where the demo's story has got
to, read from the rows its steps leave, and what each role could try next."""
import re

import pytest

from lifecycle.core.models import Job
from lifecycle.datasets import demo as datasets_demo
from lifecycle.datasets.models import Dataset
from lifecycle.deployments.models import Route
from lifecycle.runs import demo as runs_demo
from lifecycle.runs.models import Run
from lifecycle.tour import progress
from tests.deployments.factories import make_deployment
from tests.monitoring.factories import make_log
from tests.monitoring.test_alerts import fire

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]


def story_panel(client, user):
    client.force_login(user)
    page = client.get("/").content.decode()
    found = re.search(r'<section class="card home-panel" id="home-story">(.*?)</section>', page, re.S)
    return found.group(1) if found else None


def headline(client, user):
    return re.search(r"<p>Now: (.*?)</p>", story_panel(client, user)).group(1)


def running_demo_run(version, step, total):
    job = Job.create_queued("lifecycle.runs.tasks.train_run", "training", {})
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    return Run.objects.create(name=runs_demo.NAME, dataset_version=version, base_model="all-MiniLM-L6-v2",
                              task="classification", method="lora", seed=0, config={}, job=job,
                              progress={"phase": "training", "step": step, "total_steps": total})


def test_the_panel_says_where_the_story_is_and_what_each_role_could_try(client, people, trained, tmp_path):
    assert story_panel(client, people["vic"]) is None  # no demo data: no story to tell

    Dataset.create(people["erin"], slug=datasets_demo.SLUG, name="Support intents", task="classification",
                   pii_policy="redact")
    assert headline(client, people["vic"]) == "ingesting: PII, duplicates, splits."

    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=20)
    run = running_demo_run(deployment.current_release.stable.run.dataset_version, 40, 100)
    # The deployment is there: its canary waits for the serving process, then receives traffic.
    assert headline(client, people["vic"]) == "canary out, waiting for its first answers."
    make_log(deployment, 30, route=Route.CANARY)
    assert headline(client, people["vic"]) == "canary receiving traffic."
    panel = story_panel(client, people["vic"])
    assert "30 answers from v2" in panel and "→ Fine-tuning MiniLM (LoRA)" in panel and "training — 40 %" in panel
    fire(deployment)  # a drift alert, as a drift check fires it
    assert headline(client, people["vic"]) == "drift alert open."

    # What to try next, per role.
    assert 'href="/monitoring/executive">The executive dashboard' in story_panel(client, people["vic"])
    oncall = story_panel(client, people["ona"])
    assert f'href="{deployment.get_absolute_url()}">The canary&#x27;s page and its rollback button' in oncall
    assert 'href="/monitoring/on-call">The on-call dashboard' in oncall
    assert 'href="/registry/inbox">Your approvals inbox' in story_panel(client, people["ann"])
    assert f'href="{run.get_absolute_url()}">Watch the training run' in story_panel(client, people["erin"])
    assert story_panel(client, people["sam"]) is None  # no role: no start-page panels at all


def test_training_progress_reads_as_a_percentage(client, people, trained, tmp_path):
    Dataset.create(people["erin"], slug=datasets_demo.SLUG, name="Support intents", task="classification",
                   pii_policy="redact")
    deployment = make_deployment(trained, people, tmp_path)
    version = deployment.current_release.stable.run.dataset_version

    running_demo_run(version, 45, 450)
    chapters = progress.steps(progress.demo_objects())
    training = next(step for step in chapters if step.title.startswith("Fine-tuning"))
    assert (training.state, training.detail) == ("now", "training — 10 %")
