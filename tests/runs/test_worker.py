"""Real training through real RQ workers: MiniLM with LoRA beats the majority class, every
method trains and reloads, causal-LM SFT on a tiny model, kill-and-resume, cancel."""
import json
import os
import shutil
import signal
import time
from collections import Counter

import numpy as np
import psutil
import pytest

from lifecycle.core.jobs import reap_interrupted
from lifecycle.datasets.models import Example
from lifecycle.runs import launch
from lifecycle.runs.models import Run
from lifecycle.runs.outputs import Predictor
from tests.conftest import make_user
from tests.runs.conftest import run_training_burst, worker_extra_env
from tests.runs.factories import MINILM, TINY, intent_version, sft_version
from tests.workers import output, start_manage, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def train_losses(run):
    return [values["loss"] for _, values in run.points.filter(kind="train").order_by("step").values_list("step", "values")]


def finished(run):
    return Run.objects.select_related("job").get(pk=run.pk)


def test_lora_on_minilm_beats_the_majority_class(tmp_path, artifacts, redis, model_roots):
    engineer = make_user("erin", "ml_engineer")
    version = intent_version(tmp_path, engineer, n=600)
    run = launch.start(engineer, {"dataset_version": version.pk, "base_model": MINILM, "method": "lora",
                                  "epochs": 3, "batch_size": 16, "learning_rate": 2e-3, "max_length": 64})
    log = run_training_burst(tmp_path)
    run = finished(run)
    assert run.status == "succeeded", (run.job.error, log[-3000:])
    test_labels = Counter(Example.objects.filter(version=version, split=Example.TEST).values_list("label", flat=True))
    majority = max(test_labels.values()) / sum(test_labels.values())
    assert run.test_metrics["accuracy"] > majority + 0.3, (run.test_metrics, majority)
    losses = train_losses(run)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    report = run.reports.get(split="test")
    assert len(report.confusion["matrix"]) == len(report.confusion["labels"])
    assert report.calibration["ece"] is not None
    env = run.environment
    assert env["seed"] == 0 and env["base_model"]["sha256"] == run.base_model_sha256
    assert {"python", "torch", "transformers", "peft", "device", "lifecycle_revision"} <= set(env)


# Twelve steps show a method learning only with a brisk rate (prompt tuning: the paper's 0.3 ≈ Adam's 0.1).
LEARNING_RATES = {"full": {"learning_rate": 1e-4}, "prompt_tuning": {"learning_rate": 0.1}}


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prompt_tuning"])
def test_each_method_trains_and_its_output_reloads_to_the_same_predictions(method, tmp_path, artifacts, redis, model_roots):
    engineer = make_user("erin", "ml_engineer")
    version = intent_version(tmp_path, engineer, n=240)
    run = launch.start(engineer, {"dataset_version": version.pk, "base_model": MINILM, "method": method,
                                  "max_steps": 12, "batch_size": 16, "max_length": 48, "eval_every": 6,
                                  "checkpoint_every": 6, **LEARNING_RATES.get(method, {})})
    log = run_training_burst(tmp_path)
    run = finished(run)
    assert run.status == "succeeded", (run.job.error, log[-3000:])
    losses = train_losses(run)
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses

    predictor = Predictor(run.output_sha256)
    assert predictor.manifest["method"] == method and predictor.manifest["base_model"]["name"] == MINILM
    # The reloaded model gives the very probabilities the evaluation measured.
    report = run.reports.get(split="test")
    worst = report.worst["highest_loss"][:5]
    texts = dict(Example.objects.filter(version=version, row__in=[w["row"] for w in worst]).values_list("row", "text"))
    for item, (label, confidence) in zip(worst, predictor.predict([texts[w["row"]] for w in worst])):
        assert label == item["predicted"]
        assert confidence == pytest.approx(item["confidence"], abs=1e-5)


def test_causal_lm_sft_on_a_tiny_model_trains_packed_and_generates(tmp_path, artifacts, redis, model_roots):
    engineer = make_user("erin", "ml_engineer")
    version = sft_version(tmp_path, engineer, n=160)
    run = launch.start(engineer, {"dataset_version": version.pk, "base_model": TINY, "task": "causal_lm",
                                  "method": "lora", "epochs": 4, "batch_size": 8, "max_length": 32,
                                  "learning_rate": 2e-2, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]})
    log = run_training_burst(tmp_path)
    run = finished(run)
    assert run.status == "succeeded", (run.job.error, log[-3000:])
    losses = train_losses(run)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) * 0.85, losses
    assert run.test_metrics["perplexity"] > 1 and 0 <= run.test_metrics["exact_match"] <= 1
    [answer] = Predictor(run.output_sha256).generate(["question: what do bees make ?"], max_new_tokens=3)
    assert isinstance(answer, str)


# --- Lost workers, resume, cancel, failures


def kill_worker_and_horse(worker):
    """SIGKILL the worker and its work horse, which leads a process group of its own."""
    for child in psutil.Process(worker.pid).children(recursive=True):
        os.killpg(child.pid, signal.SIGKILL)
    os.killpg(worker.pid, signal.SIGKILL)


RESUME_CONFIG = {"base_model": MINILM, "method": "lora", "max_steps": 60, "batch_size": 8, "max_length": 48,
                 "eval_every": 10, "checkpoint_every": 10, "seed": 7}


def test_a_killed_run_resumes_and_ends_exactly_like_an_uninterrupted_one(tmp_path, artifacts, redis, model_roots):
    engineer = make_user("erin", "ml_engineer")
    version = intent_version(tmp_path, engineer, n=240)
    config = {**RESUME_CONFIG, "dataset_version": version.pk}
    whole = launch.start(engineer, config)
    run_training_burst(tmp_path)
    whole = finished(whole)
    assert whole.status == "succeeded", whole.job.error

    broken = launch.start(engineer, config)
    worker = start_manage(tmp_path, "lifecycle_worker", "training", env=worker_extra_env())
    try:
        wait_for(lambda: broken.checkpoints.filter(step__gte=20).exists(), 120, "a checkpoint at step 20")
        kill_worker_and_horse(worker)
    finally:
        stop(worker)
    assert finished(broken).status == "running"
    wait_for(lambda: reap_interrupted() or finished(broken).status == "interrupted", 30, "the reaper")
    broken = finished(broken)
    assert broken.status == "interrupted" and broken.can_resume
    reached = broken.progress["step"]
    assert reached < 60

    checkpoint = broken.resume(engineer)
    log = run_training_burst(tmp_path)
    broken = finished(broken)
    assert broken.status == "succeeded", (broken.job.error, log[-2000:])
    assert broken.attempt == 2 and checkpoint.step >= 20
    assert broken.progress["step"] == whole.progress["step"] == 60
    assert broken.test_metrics == whole.test_metrics
    assert train_losses(broken) == train_losses(whole)  # step for step, after the resume too
    assert broken.curves("eval") == whole.curves("eval")


def test_cancel_stops_a_running_run_within_five_seconds(tmp_path, artifacts, redis, model_roots):
    engineer = make_user("erin", "ml_engineer")
    version = intent_version(tmp_path, engineer, n=240)
    run = launch.start(engineer, {**RESUME_CONFIG, "dataset_version": version.pk, "max_steps": 100_000})
    worker = start_manage(tmp_path, "lifecycle_worker", "training", env=worker_extra_env())
    try:
        wait_for(lambda: (finished(run).progress.get("step") or 0) > 0, 120, "training to start")
        asked = time.monotonic()
        assert run.cancel(engineer)
        wait_for(lambda: finished(run).status == "cancelled", 5, "the run to stop")
        took = time.monotonic() - asked
    finally:
        stop(worker)
    assert took < 5
    assert finished(run).progress["step"] < 100_000


def test_a_missing_model_directory_fails_the_run_with_its_cause(tmp_path, artifacts, redis, model_roots, settings, tiny_model_dir):
    engineer = make_user("erin", "ml_engineer")
    version = sft_version(tmp_path, engineer, n=40)
    doomed = tmp_path / "doomed-model"
    shutil.copytree(tiny_model_dir, doomed)
    settings.MODEL_ROOTS = {**settings.MODEL_ROOTS, "doomed": str(doomed)}
    run = launch.start(engineer, {"dataset_version": version.pk, "base_model": "doomed", "task": "causal_lm",
                                  "max_steps": 2, "max_length": 32})
    shutil.rmtree(doomed)  # gone before a worker picks the run up
    run_training_burst(tmp_path)
    run = finished(run)
    assert run.status == "failed"
    assert run.job.error.startswith("ModelUnavailable: no base model called 'doomed'")
    assert not run.output_sha256 and not run.reports.exists()


def test_run_start_wait_prints_the_final_state_from_a_real_worker(tmp_path, artifacts, redis, model_roots):
    engineer = make_user("erin", "ml_engineer")
    version = sft_version(tmp_path, engineer, n=40)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"dataset_version": version.pk, "base_model": TINY, "task": "causal_lm",
                                "max_steps": 3, "max_length": 32, "generate_limit": 2}))
    command = start_manage(tmp_path, "run_start", "--config", str(path), "--wait", "--user", "erin",
                           env=worker_extra_env())
    try:
        wait_for(lambda: Run.objects.exists(), 60, "run_start to queue the run")
        worker = start_manage(tmp_path, "lifecycle_worker", "training", "--burst", env=worker_extra_env())
        command.wait(timeout=300)
        lines = output(command).strip().splitlines()
    finally:
        stop(command)
        if "worker" in locals():
            stop(worker)
    run = Run.objects.get()
    assert command.returncode == 0, lines
    assert lines[0] == str(run.pk)
    result = json.loads(lines[-1])
    assert result["run"] == run.pk and result["status"] == "succeeded"
    assert result["test_metrics"]["perplexity"] == run.test_metrics["perplexity"]


def test_a_run_with_two_processes_trains_under_torchrun_with_ddp(tmp_path, artifacts, redis, model_roots):
    """What a multi-GPU host does (one process per GPU, NCCL), here with two CPU processes and gloo."""
    engineer = make_user("erin", "ml_engineer")
    version = intent_version(tmp_path, engineer, n=240)
    run = launch.start(engineer, {"dataset_version": version.pk, "base_model": MINILM, "method": "lora",
                                  "max_steps": 16, "batch_size": 8, "max_length": 48, "learning_rate": 2e-3,
                                  "eval_every": 8, "checkpoint_every": 8})
    worker = start_manage(tmp_path, "lifecycle_worker", "training", "--burst",
                          env={**worker_extra_env(), "TRAIN_PROCESSES": "2"})
    try:
        worker.wait(timeout=600)
        log = output(worker)
    finally:
        stop(worker)
    run = finished(run)
    assert run.status == "succeeded", (run.job.error, log[-3000:])
    assert run.environment["processes"] == 2
    losses = train_losses(run)
    assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert run.checkpoints.filter(step=8).exists() and run.reports.filter(split="test").exists()
    assert Predictor(run.output_sha256).predict(["I want a refund for my last invoice"])
