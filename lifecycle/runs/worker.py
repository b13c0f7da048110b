"""The training job, inside an RQ worker: re-check the plan, record the environment, load
data and model, train with telemetry and checkpoints going to the database and the
artifact store, evaluate on the test split and write the output.

Failures name their cause through the exception's class and message (the Job row keeps
"ClassName: message"): BadConfig, ModelUnavailable, BadDataset, OutOfMemory.
"""
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

from lifecycle.core.artifacts import get_store
from lifecycle.core.jobs import JobCancelled
from lifecycle.core.models import Job
from lifecycle.datasets.versions import iter_row_batches
from lifecycle.runs import basemodels, launch, outputs
from lifecycle.runs.config import ConfigError, RunConfig
from lifecycle.runs.models import Checkpoint, EvalReport, MetricPoint, Run

log = logging.getLogger(__name__)
FLUSH_SECONDS = 2.0  # telemetry reaches the page at most this late
FLUSH_POINTS = 200
CANCEL_POLL_SECONDS = 1.0  # a cancel is noticed within this (plus one step), not a heartbeat


class BadConfig(Exception):
    pass


class ModelUnavailable(Exception):
    pass


class BadDataset(Exception):
    pass


def train(job, *, run_id, resume=False):
    """The job: in this process, or with several processes (one per GPU) under torchrun."""
    processes = training_processes()
    if processes > 1:
        from lifecycle.runs import distributed

        return distributed.launch(job, run_id=run_id, resume=resume, processes=processes)
    return train_here(job, run_id=run_id, resume=resume)


def training_processes():
    """TRAIN_PROCESSES, or one per visible GPU when there are several."""
    if settings.TRAIN_PROCESSES:
        return settings.TRAIN_PROCESSES
    import torch

    return torch.cuda.device_count() if torch.cuda.device_count() > 1 else 1


def train_here(job, *, run_id, resume=False, rank=0, world=1, device=None):
    import torch

    from lifecycle.runs import training

    run = Run.objects.select_related("dataset_version__dataset").get(pk=run_id)
    config = RunConfig.parse(run.config)
    torch.set_num_threads(settings.TRAIN_THREADS or max(1, (os.cpu_count() or 1) // world))
    device, bf16 = training.pick_device(config.precision, device)
    # Only the first process writes telemetry, checkpoints and results; the others compute.
    reporter = DbReporter(run, job) if rank == 0 else training.Reporter()
    reporter.phase("checking")
    plan, version = _plan(config, device)
    base_sha = basemodels.directory_sha256(plan.model.path)
    if rank == 0:
        run.record_start(environment(device, bf16, version, base_sha, config, world), base_sha)

    reporter.phase("loading")
    classify = config.task == "classification"
    labels, all_labels = launch.data_summary(version).class_labels(config) if classify else ([], [])
    torch.manual_seed(config.seed)  # the new head's (and adapters') initial weights
    model, tokenizer = training.load_model(config, str(plan.model.path), len(labels), labels, device)
    data = load_data(version, config, tokenizer, labels, all_labels)
    trainer = training.Trainer(config, model, tokenizer, data, reporter, device, rank=rank, world=world)
    reporter.total_steps = trainer.total_steps
    if resume:
        _restore(run, trainer, delete_later_points=rank == 0)
    try:
        report = trainer.fit()
    except training.Stopped as exc:
        raise JobCancelled(str(exc)) from None
    finally:
        if rank == 0:
            reporter.flush()
    if rank != 0:
        return None
    reporter.phase("writing output", step=trainer.step, total_steps=trainer.total_steps)
    summary = _record_evaluation(run, config, report)
    key = _write_output(run, trainer, plan, version, base_sha, labels, summary)
    reporter.phase("done", step=trainer.step, total_steps=trainer.total_steps)
    return {"run": run.pk, "step": trainer.step, "output": key, "test_metrics": summary}


def _plan(config, device):
    try:
        return launch.plan_for(config, device_memory_gb=device_memory_gb(device))
    except ConfigError as exc:
        if "base_model" in exc.errors:
            raise ModelUnavailable("; ".join(exc.errors["base_model"])) from None
        raise BadConfig(str(exc)) from None


def device_memory_gb(device):
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 1024**3
    return None  # CPU: only a stated memory_limit_gb is checked


def environment(device, bf16, version, base_sha, config, world=1):
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "device": _device_name(device), "precision": "bf16" if bf16 else "fp32",
        "threads": torch.get_num_threads(), "processes": world, "host": socket.gethostname(),
        "lifecycle_revision": revision(),
        "dataset_version": {"id": version.pk, "name": str(version), "content_sha256": version.content_sha256,
                            "manifest_sha256": version.manifest_sha256},
        "base_model": {"name": config.base_model, "sha256": base_sha}, "seed": config.seed,
    }


def _device_name(device):
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}, {torch.cuda.device_count()} visible)"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def revision():
    """Lifecycle's revision: LIFECYCLE_REVISION (set in images), else git, else the version."""
    if os.environ.get("LIFECYCLE_REVISION"):
        return os.environ["LIFECYCLE_REVISION"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(settings.BASE_DIR), capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"lifecycle {version('lifecycle')}"


# --- Data


def load_data(version, config, tokenizer, labels, all_labels):
    from lifecycle.runs import data as D
    from lifecycle.runs import training

    columns = {split: {"rows": [], "text": [], "response": [], "label": []}
               for split in (config.train_split, config.eval_split, config.test_split)}
    offset = 0
    for batch in iter_row_batches(version, columns=["text", "response", "label", "split"]):
        for i, split in enumerate(batch["split"]):
            if split in columns:
                bucket = columns[split]
                bucket["rows"].append(offset + i)
                for name in ("text", "response", "label"):
                    bucket[name].append(batch[name][i] or "")
        offset += len(batch["split"])
    for split, bucket in columns.items():
        if not bucket["rows"]:
            raise BadDataset(f"the {split} split of {version} is empty")
    encode = _encoder(config, tokenizer, {label: i for i, label in enumerate(all_labels)})
    train, evaluation, test = (encode(columns[s]) for s in (config.train_split, config.eval_split, config.test_split))
    data = training.TrainData(train, evaluation, test, labels=labels, all_labels=all_labels)
    if config.task == "causal_lm":
        data.test_prompts = D.prompt_ids(tokenizer, columns[config.test_split]["text"], config.max_length)
        data.test_references = columns[config.test_split]["response"]
    return data


def _encoder(config, tokenizer, label_index):
    from lifecycle.runs import data as D

    def encode(bucket):
        if config.task == "classification":
            try:
                targets = [label_index[label] for label in bucket["label"]]
            except KeyError as exc:
                raise BadDataset(f"row without a known label: {exc}") from None
            return D.encode_classification(tokenizer, bucket["text"], targets, bucket["rows"], config.max_length)
        if not any(bucket["response"]):
            raise BadDataset("causal-LM fine-tuning needs responses; this version has none")
        return D.encode_causal(tokenizer, bucket["text"], bucket["response"], bucket["rows"], config.max_length)

    return encode


# --- Checkpoints


def _restore(run, trainer, delete_later_points=True):
    from safetensors.torch import load as load_safetensors

    from lifecycle.runs import training

    checkpoint = run.checkpoints.order_by("-step").first()
    if checkpoint is None:
        raise BadConfig("there is no checkpoint to resume from")
    store = get_store()
    weights = load_safetensors(store.read_bytes(checkpoint.weights_sha256))
    trainer.restore(weights, training.load_state(store.read_bytes(checkpoint.state_sha256)))
    # The interrupted attempt's telemetry after the checkpoint is replaced by this attempt's.
    if delete_later_points:
        run.points.filter(step__gt=checkpoint.step).delete()
    log.info("run %s resumes at step %s", run.pk, checkpoint.step)


def save_checkpoint(run, step, weights, state):
    from safetensors.torch import save as save_safetensors

    from lifecycle.runs import training

    store = get_store()
    weights_info = store.put_bytes(save_safetensors(weights))
    state_info = store.put_bytes(training.state_bytes(state))
    Checkpoint.objects.update_or_create(run=run, step=step, defaults={
        "weights_sha256": weights_info.sha256, "state_sha256": state_info.sha256,
        "size": weights_info.size + state_info.size})
    _prune_checkpoints(run, store)


def _prune_checkpoints(run, store):
    old = list(run.checkpoints.order_by("-step")[settings.RUN_KEEP_CHECKPOINTS:])
    for checkpoint in old:
        checkpoint.delete()
        for key in (checkpoint.weights_sha256, checkpoint.state_sha256):
            # Content-addressed: another checkpoint may hold the very same bytes.
            if not Checkpoint.objects.filter(weights_sha256=key).exists() and not Checkpoint.objects.filter(state_sha256=key).exists():
                store.delete(key)


# --- Results


def _record_evaluation(run, config, report):
    worst = report.pop("worst", {})
    if config.task == "classification":
        summary = {k: report[k] for k in ("accuracy", "macro_f1", "micro_f1", "loss", "count")}
        summary["ece"] = (report.get("calibration") or {}).get("ece")
        fields = {"per_class": report["per_class"], "confusion": report["confusion"],
                  "calibration": report.get("calibration") or {}, "worst": worst}
    else:
        summary, fields = dict(report), {}
    EvalReport.objects.update_or_create(run=run, split=config.test_split, defaults={"metrics": summary, **fields})
    return summary


def _write_output(run, trainer, plan, version, base_sha, labels, summary):
    with tempfile.TemporaryDirectory(prefix="lifecycle-output-") as directory:
        trainer.save(directory)
        key = outputs.write(directory, {
            "run": run.pk, "task": run.task, "method": run.method, "labels": labels,
            "base_model": {"name": plan.model.name, "sha256": base_sha},
            "dataset_version": {"id": version.pk, "name": str(version), "content_sha256": version.content_sha256},
            "config": run.config, "metrics": summary, "environment": run.environment, "steps": trainer.step,
        })
    run.record_output(key, summary)
    return key


class DbReporter:
    """Telemetry to the database in batches: one bulk INSERT every couple of seconds, the
    run's progress (with an ETA) updated at the same moment."""

    def __init__(self, run, job):
        self.run, self.job = run, job
        self.buffer = []
        self.last_flush = time.monotonic()
        self.last_poll = 0.0
        self.total_steps = 0
        self.current = {"phase": "queued", "step": 0}
        self.recent_step_times = []

    def phase(self, name, **info):
        self.current.update(phase=name, **info)
        self.flush()

    def step(self, step, values):
        self.buffer.append(MetricPoint(run_id=self.run.pk, kind=MetricPoint.Kind.TRAIN, step=step, values=values))
        self.recent_step_times = (self.recent_step_times + [values["step_time"]])[-50:]
        mean = sum(self.recent_step_times) / len(self.recent_step_times)
        self.current.update(phase="training", step=step, total_steps=self.total_steps, epoch=round(values["epoch"], 3),
                            eta_seconds=round(mean * max(0, self.total_steps - step), 1),
                            examples_per_s=round(values["examples_per_s"], 1), tokens_per_s=round(values["tokens_per_s"], 1))
        if len(self.buffer) >= FLUSH_POINTS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def evaluation(self, step, values):
        self.buffer.append(MetricPoint(run_id=self.run.pk, kind=MetricPoint.Kind.EVAL, step=step, values=values))
        self.flush()

    def checkpoint(self, step, weights, state):
        self.flush()
        save_checkpoint(self.run, step, weights, state)

    def flush(self):
        with transaction.atomic():
            if self.buffer:
                MetricPoint.objects.bulk_create(self.buffer)
            self.run.set_progress(**self.current)
        self.buffer = []
        self.last_flush = time.monotonic()
        done, total = self.current.get("step", 0), self.current.get("total_steps") or None
        self.job.set_progress(phase=self.current["phase"], done=done, total=total)

    def stop_requested(self):
        if self.job.cancel_requested():
            return True
        now = time.monotonic()
        if now - self.last_poll < CANCEL_POLL_SECONDS:
            return False
        self.last_poll = now
        row = Job.objects.filter(pk=self.job.id).values("status", "cancel_requested_at").first()
        return row is None or row["cancel_requested_at"] is not None or row["status"] != Job.Status.RUNNING
