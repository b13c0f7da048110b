"""Loaded versions: verified, loaded, warmed, and kept in an LRU bounded by a memory budget.

A version is loaded only through `ModelVersion.load_checked()`: a fresh folder whose files just
passed the signature check, loaded by `runs.outputs.Predictor`, then removed. One forward pass
runs before the version takes traffic (the first real request does not pay for lazy
initialisation). Each loaded version has one worker thread of its own: its forward passes run
there, one at a time, fed by its batcher (serving/batching.py).
"""
import logging
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lifecycle.deployments.serving import features, metrics

log = logging.getLogger(__name__)
WARM_UP_TEXT = "Warming up before taking traffic."
GENERATE_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class VersionInfo:
    """What the serving process needs to know about a version besides its weights."""

    id: int
    number: int
    model_slug: str
    model_name: str
    task: str
    labels: tuple
    output_sha256: str
    artifact_bytes: int
    pii_policy: str  # the source dataset's: "allow" logs inputs as they are; anything else redacts

    @classmethod
    def of(cls, version):
        dataset = version.run.dataset_version.dataset
        return cls(id=version.pk, number=version.number, model_slug=version.model.slug, model_name=version.model.name,
                   task=version.task, labels=tuple(version.labels), output_sha256=version.output_sha256,
                   artifact_bytes=version.artifact_bytes, pii_policy=dataset.pii_policy)

    @property
    def classifies(self):
        return self.task == "classification"


class LoadedModel:
    def __init__(self, info, predictor, size_bytes):
        import torch

        self.info, self.predictor, self.size_bytes = info, predictor, size_bytes
        self.torch = torch
        self.max_length = predictor.manifest["config"].get("max_length", 512)
        self.labels = list(predictor.labels) or list(info.labels)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{info.id}")
        self.batcher = None  # made on the event loop (serving/batching.py)
        self.load_seconds = 0.0

    def __repr__(self):
        return f"<LoadedModel {self.info.model_slug} v{self.info.number} (id {self.info.id})>"

    def forward(self, texts):
        """One forward pass over `texts`: per text a dict with the answer and its features
        (token_count, embedding). Runs in this model's own thread."""
        if self.info.classifies:
            return self._classify(texts)
        return self._generate(texts)

    def _classify(self, texts):
        torch = self.torch
        tokenizer, model = self.predictor.tokenizer, self.predictor.model
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            out = model(**batch, output_hidden_states=True)
            probabilities = torch.softmax(out.logits.float(), -1).numpy()
            pooled = features.mean_pool(out.hidden_states[-1].float(), batch["attention_mask"]).numpy()
        embeddings = features.summaries(pooled)
        counts = batch["attention_mask"].sum(1).tolist()
        answers = []
        for probs, embedding, count in zip(probabilities, embeddings, counts):
            best = int(probs.argmax())
            answers.append({"label": self.labels[best], "confidence": float(probs[best]),
                            "probabilities": {label: round(float(p), 6) for label, p in zip(self.labels, probs)},
                            "token_count": int(count), "embedding": embedding})
        return answers

    def _generate(self, prompts):
        """Causal LMs answer text, prompt by prompt (greedy, so answers are reproducible); the
        embedding is the prompt's own mean-pooled hidden state."""
        torch = self.torch
        tokenizer, model = self.predictor.tokenizer, self.predictor.model
        answers = []
        with torch.inference_mode():
            for prompt in prompts:
                ids = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=self.max_length)
                hidden = model(**ids, output_hidden_states=True).hidden_states[-1].float()
                pooled = features.mean_pool(hidden, ids["attention_mask"]).numpy()
                out = model.generate(**ids, max_new_tokens=GENERATE_MAX_NEW_TOKENS, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
                text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
                answers.append({"text": text, "token_count": int(ids["attention_mask"].sum()),
                                "embedding": features.summaries(pooled)[0]})
        return answers

    def warm(self):
        self.forward([WARM_UP_TEXT])

    def close(self):
        self.executor.shutdown(wait=False)


class LoadFailed(Exception):
    """The version cannot be served: its signature failed, or its files do not load."""


_dir_sizes = {}


def directory_bytes(path):
    path = Path(path)
    if path not in _dir_sizes:
        _dir_sizes[path] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return _dir_sizes[path]


def load(version_id):
    """Verify, load and warm one version; raises LoadFailed (the reason says why) or a
    DatabaseError (try again later). Runs in the loader thread."""
    from lifecycle.registry.models import ModelVersion, RegistryError
    from lifecycle.runs import basemodels
    from lifecycle.runs.outputs import Predictor

    version = ModelVersion.objects.select_related("model", "run__dataset_version__dataset").get(pk=version_id)
    info = VersionInfo.of(version)
    started = time.monotonic()
    try:
        folder = version.load_checked()
    except RegistryError as exc:
        raise LoadFailed(str(exc)) from None
    try:
        predictor = Predictor(version.output_sha256, directory=folder)
        base_path = basemodels.get(predictor.manifest["base_model"]["name"]).path
        model = LoadedModel(info, predictor, version.artifact_bytes + directory_bytes(base_path))
        model.warm()
    except Exception as exc:  # noqa: BLE001 - files that do not build a working model never will
        raise LoadFailed(f"{version} did not load: {type(exc).__name__}: {exc}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    model.load_seconds = time.monotonic() - started
    metrics.MODEL_LOAD.labels(version=str(version_id)).observe(model.load_seconds)
    log.info("loaded %s in %.1f s (%.0f MB)", version, model.load_seconds, model.size_bytes / 1e6)
    return model


class ModelCache:
    """Loaded versions, least recently used first, within a budget of bytes. What the current
    routes need is never evicted, even past the budget (the routes must serve); what they
    no longer need stays while it fits, so going back to a recent version needs no reload."""

    def __init__(self, budget_bytes):
        self.budget_bytes = budget_bytes
        self._models = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version_id):
        with self._lock:
            model = self._models.get(version_id)
            if model is not None:
                self._models.move_to_end(version_id)
            return model

    def __contains__(self, version_id):
        return version_id in self._models

    def add(self, model, keep):
        """Add `model`; returns the models evicted to stay within the budget (their batchers
        are the caller's to close)."""
        with self._lock:
            self._models[model.info.id] = model
            evicted = []
            for version_id in list(self._models):
                if self._bytes() <= self.budget_bytes:
                    break
                if version_id not in keep and version_id != model.info.id:
                    evicted.append(self._models.pop(version_id))
            if self._bytes() > self.budget_bytes:
                log.warning("the routes need %.0f MB of models, over SERVING_MEMORY_BUDGET_MB (%.0f MB)",
                            self._bytes() / 1e6, self.budget_bytes / 1e6)
        self._report()
        return evicted

    def _bytes(self):
        return sum(m.size_bytes for m in self._models.values())

    def _report(self):
        metrics.LOADED_MODELS.set(len(self._models))
        metrics.LOADED_BYTES.set(self._bytes())

    def summary(self):
        """What the heartbeat stores in ServingProcess.loaded."""
        with self._lock:
            return [{"version": m.info.id, "bytes": m.size_bytes, "load_seconds": round(m.load_seconds, 3)}
                    for m in self._models.values()]

    def all(self):
        with self._lock:
            return list(self._models.values())
