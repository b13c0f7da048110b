"""A version's reference statistics: what its own held-out data looks like to the model, computed
once and reused by every drift check, estimate and debug page.

`ensure_reference` (called when a release names the version) makes the row and sends
`compute_reference` to the `training` queue, because that job loads the model: it runs the
dataset version's validation and test rows through `deployments.serving.loaded` — the very code
the serving process answers with — so a training example and a served input get the same
token count, embedding summary, label and confidence. Every feature is binned over the fixed
edges in monitoring/features.py, like the rollups. torch is imported inside the job only (by
loaded.py): the web tier and the monitoring worker import this module too.

`vocabulary` (the training split's most frequent words, for the OOV rate) needs no model, so
the rollups build it on their own when the job has not run yet; it is stored once as an artifact.
"""
import io
import json
import logging
import tempfile
from collections import Counter
from functools import lru_cache

import numpy as np
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from lifecycle.core.artifacts import get_store
from lifecycle.core.jobs import Outcome, enqueue, maintenance_step, task
from lifecycle.core.models import AuditEvent, canonical_json
from lifecycle.core.queues import QueueUnavailable
from lifecycle.core.roles import READ_ROLES
from lifecycle.datasets.models import SPLIT_NAMES, Example
from lifecycle.deployments.serving.features import EMBEDDING_SIZE
from lifecycle.monitoring import features as F
from lifecycle.monitoring.models import Reference
from lifecycle.registry.models import ModelVersion

log = logging.getLogger(__name__)

MAX_ROWS = 20_000  # reference rows at most; a larger held-out set is sampled (seeded) down to this
SAMPLE_SEED = 19
FORWARD_BATCH = 32  # inputs per forward pass: the serving batcher's order of size, bounded memory
MISSING_PER_PASS = 20  # references the maintenance pass sends at most


def _pk(obj):
    return getattr(obj, "pk", obj)


# --- asking for a reference ---------------------------------------------------------------------


def ensure_reference(version, user=None):
    """The version's Reference, made (pending) and its computation sent to the `training`
    queue once this transaction commits; nothing new when one is ready or on its way. A
    reference whose job ended without it (failed, interrupted) is sent again. Raises
    QueueUnavailable when Redis is down (the row then is not made either)."""
    version_id = _pk(version)
    with transaction.atomic():
        Reference.objects.get_or_create(version_id=version_id)
        reference = Reference.objects.select_for_update(of=("self",)).select_related("job").get(version_id=version_id)
        if _needs_job(reference):
            job = enqueue(compute_reference, user=user, reference_id=reference.pk)
            Reference.objects.filter(pk=reference.pk).update(job=job, status=Reference.Status.PENDING, error="")
            reference.job, reference.status, reference.error = job, Reference.Status.PENDING, ""
    return reference


def _needs_job(reference):
    if reference.status == Reference.Status.READY:
        return False
    return reference.job is None or reference.job.is_terminal


@maintenance_step("monitoring_references")
def send_missing(limit=MISSING_PER_PASS):
    """Released versions with no reference on its way (Redis was down when the release was
    made, or the rows predate monitoring): send them now. A failed one waits for a person (or
    the next release) instead: the same failure every pass would only repeat itself."""
    released = Q(stable_releases__isnull=False) | Q(candidate_releases__isnull=False)
    unsent = Q(monitoring_reference__isnull=True) | Q(monitoring_reference__status=Reference.Status.PENDING,
                                                      monitoring_reference__job__isnull=True)
    missing = ModelVersion.objects.filter(released).filter(unsent).distinct().values_list("pk", flat=True)[:limit]
    sent = 0
    for version_id in missing:
        try:
            ensure_reference(version_id)
        except QueueUnavailable as exc:
            log.warning("references not sent: %s", exc)
            break
        sent += 1
    return sent


# --- the vocabulary (no model needed) -------------------------------------------------------------


def vocabulary(version):
    """The version's training split's VOCABULARY_SIZE most frequent words (features.words)."""
    return _vocabulary(_pk(version))


def _vocabulary(version_id):
    stored = Reference.objects.filter(version_id=version_id).values_list("vocabulary_sha256", flat=True).first()
    if stored:
        return _stored_vocabulary(stored)
    return frozenset(_build_vocabulary(version_id))


@lru_cache(maxsize=64)
def _stored_vocabulary(sha256):
    # Cached per process by the artifact's hash: its content can never change under that name.
    return frozenset(json.loads(get_store().read_bytes(sha256))["words"])


def _build_vocabulary(version_id):
    version = ModelVersion.objects.select_related("run").get(pk=version_id)
    counts = Counter()
    texts = Example.objects.filter(version_id=version.run.dataset_version_id, split=_split(version.run, "train_split"))
    for text in texts.order_by().values_list("text", flat=True).iterator(chunk_size=2000):
        counts.update(F.words(text))
    # Ties broken by the word itself, so the same data always gives the same artifact.
    words = [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:F.VOCABULARY_SIZE]]
    body = {"version": version_id, "dataset_version": version.run.dataset_version_id, "split": "train",
            "words": words}
    sha256 = get_store().put_bytes(canonical_json(body).encode()).sha256
    reference, _ = Reference.objects.get_or_create(version_id=version_id)
    # Only where none is stored: two processes building at once store the same bytes anyway.
    Reference.objects.filter(pk=reference.pk, vocabulary_sha256="").update(vocabulary_sha256=sha256)
    return words


def _split(run, name):
    default = {"train_split": "train", "eval_split": "validation", "test_split": "test"}[name]
    return SPLIT_NAMES.index(run.config.get(name) or default)


# --- computing it (the training queue) -------------------------------------------------------------


def _outcome(job):
    reference = Reference.objects.select_related("version__model").get(pk=job.kwargs["reference_id"])
    version = reference.version
    accuracy = f", accuracy {reference.accuracy:.1%}" if reference.accuracy is not None else ""
    return Outcome(f"Reference statistics of {version}: {reference.rows:,} rows of {' and '.join(reference.splits)}"
                   f"{accuracy}.", ((str(version), version.get_absolute_url()),))


@task(queue="training", roles=READ_ROLES, outcome=_outcome)
def compute_reference(job, reference_id):
    reference = Reference.objects.select_related("version__run").get(pk=reference_id)
    try:
        return _compute(job, reference)
    except Exception as exc:
        # The row says why, for the pages that would otherwise wait on it forever.
        Reference.objects.filter(pk=reference_id).update(status=Reference.Status.FAILED,
                                                         error=f"{type(exc).__name__}: {exc}"[:2000])
        raise


def _compute(job, reference):
    """The pipeline: rows → the model's answers → features → statistics → stored."""
    version = reference.version
    words = vocabulary(version)
    examples = held_out_rows(version.run)
    job.set_progress(phase="loading the model", done=0, total=len(examples["text"]))
    answers = answer(job, version, examples["text"])
    frame = feature_frame(examples, answers, words)
    stats = statistics(frame)
    sample_sha256 = store_sample(frame)
    with transaction.atomic():
        vocabulary_sha256 = Reference.objects.values_list("vocabulary_sha256", flat=True).get(pk=reference.pk)
        Reference.objects.filter(pk=reference.pk).update(
            **stats, splits=examples["splits"], sample_sha256=sample_sha256, status=Reference.Status.READY, error="",
            computed_at=timezone.now())
        AuditEvent.record(None, "monitoring.reference_ready", reference, {
            "version": version.pk, "rows": stats["rows"], "splits": examples["splits"], "accuracy": stats["accuracy"],
            "sample_sha256": sample_sha256, "vocabulary_sha256": vocabulary_sha256})
    return {"reference": reference.pk, "rows": stats["rows"], "accuracy": stats["accuracy"]}


def held_out_rows(run):
    """The run's dataset version's validation and test rows (the run's own split names), at
    most MAX_ROWS of them, a seeded sample beyond: {"splits", "id", "split", "text", "label"}."""
    splits = sorted({_split(run, "eval_split"), _split(run, "test_split")})
    rows = Example.objects.filter(version_id=run.dataset_version_id, split__in=splits).order_by("row")
    ids = list(rows.values_list("pk", flat=True))
    if len(ids) > MAX_ROWS:
        picked = np.random.default_rng(SAMPLE_SEED).choice(len(ids), MAX_ROWS, replace=False)
        ids = [ids[i] for i in sorted(picked)]
        rows = Example.objects.filter(pk__in=ids).order_by("row")
    found = list(rows.values_list("pk", "split", "text", "label"))
    out = {"splits": [SPLIT_NAMES[s] for s in splits], "id": [], "split": [], "text": [], "label": []}
    for pk, split, text, label in found:
        out["id"].append(pk)
        out["split"].append(SPLIT_NAMES[split])
        out["text"].append(text)
        out["label"].append(label)
    return out


def answer(job, version, texts):
    """The model's answers to `texts`, through the serving process's own loading (signature
    check, load, warm-up) and forward pass: per text label, confidence, token_count, embedding."""
    from lifecycle.deployments.serving import loaded  # torch, via the model: the training queue only

    model = loaded.load(version.pk)
    answers = []
    try:
        for first in range(0, len(texts), FORWARD_BATCH):
            job.check_cancelled()
            answers.extend(model.forward(texts[first:first + FORWARD_BATCH]))
            job.set_progress(phase="answering", done=len(answers), total=len(texts))
    finally:
        model.close()
    return answers


def feature_frame(examples, answers, words):
    """One row per example: the sample's columns (see store_sample)."""
    import pandas as pd

    embeddings = np.asarray([a.get("embedding") or [np.nan] * EMBEDDING_SIZE for a in answers],
                            dtype=np.float64).reshape(len(answers), EMBEDDING_SIZE)
    predicted = [a.get("label") for a in answers]
    frame = pd.DataFrame({
        "example_id": examples["id"], "split": examples["split"], "text": examples["text"], "label": examples["label"],
        "predicted": predicted, "confidence": [a.get("confidence") for a in answers],
        "correct": [p == y if p is not None else None for p, y in zip(predicted, examples["label"])],
        "text_length": [len(t) for t in examples["text"]],  # as the serving process logs it
        "token_count": [a.get("token_count", 0) for a in answers],
        "oov_rate": [F.oov_rate(t, words) for t in examples["text"]],
    })
    for i in range(EMBEDDING_SIZE):
        frame[f"embedding_{i}"] = embeddings[:, i]
    return frame


def statistics(frame):
    """The Reference fields the checks read, from the feature frame."""
    features = {name: _summary(frame[name].to_numpy(dtype=np.float64), edges) for name, edges in F.FEATURES.items()}
    predicted = frame["predicted"].dropna()
    confidence = frame["confidence"].dropna().to_numpy(dtype=np.float64)
    correct = frame["correct"].dropna()
    return {
        "rows": len(frame), "features": features, "labels": dict(Counter(predicted.tolist())),
        "true_labels": dict(Counter(label for label in frame["label"].tolist() if label)),
        "confidence": F.histogram(confidence, F.CONFIDENCE_EDGES),
        "accuracy": float(correct.astype(bool).mean()) if len(correct) else None,
    }


def _summary(values, edges):
    values = values[~np.isnan(values)]
    if not len(values):
        return {"counts": [0] * (len(edges) + 1), "n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"counts": F.histogram(values, edges), "n": int(len(values)), "mean": float(values.mean()),
            "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}


def store_sample(frame):
    """The per-row frame as a Parquet artifact (columns: example_id, split, text, label,
    predicted, confidence, correct, text_length, token_count, oov_rate, embedding_0..15)."""
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        frame.to_parquet(tmp.name, index=False)
        return get_store().put_file(tmp.name).sha256


def load_sample(reference, columns=None):
    """The reference's per-row sample as a pandas DataFrame (only `columns`, when given, that
    the sample has: Parquet reads just those)."""
    import pandas as pd
    import pyarrow.parquet as pq

    if not reference.sample_sha256:
        raise ValueError(f"{reference} has no sample yet (it is {reference.status})")
    source = io.BytesIO(get_store().read_bytes(reference.sample_sha256))
    if columns is not None:
        present = set(pq.read_schema(source).names)
        source.seek(0)
        columns = [c for c in columns if c in present]
    return pd.read_parquet(source, columns=columns)
