"""Monitoring test data: prediction-log batches as the serving process writes them (a
PredictionBatch and its rows in one transaction), with seeded, realistic shapes and an optional
shift, so rollups, drift checks and SLOs read what they read in production."""
import uuid
from datetime import timedelta

import numpy as np
from django.db import transaction
from django.utils import timezone

from lifecycle.deployments.models import PredictionBatch, PredictionLog, Route
from lifecycle.deployments.serving.features import EMBEDDING_SIZE

WORDS = ("refund", "order", "late", "password", "reset", "card", "charge", "delivery", "account", "login",
         "invoice", "cancel", "address", "broken", "help", "thanks", "please", "today", "again", "error")
ODD_WORDS = ("zyxt", "qwopl", "mrrf", "blorp", "snazz", "vexl", "glimb", "trund")


def texts(rng, n, *, shift=0.0):
    """n ticket-like texts; `shift` (0..1) lengthens them and mixes in words no training text has."""
    out = []
    for _ in range(n):
        count = int(rng.integers(4, 14) * (1 + 2 * shift))
        pool = ODD_WORDS if shift and rng.random() < shift else WORDS
        out.append(" ".join(rng.choice(pool, size=count)))
    return out


def log_rows(deployment, n, *, at=None, route=Route.STABLE, version=None, release=None, labels=("billing", "tech"),
             shift=0.0, error_rate=0.0, latency_ms=20.0, seed=0, spread_seconds=60):
    """n PredictionLog rows (dicts of attnames) for `deployment`'s current release."""
    rng = np.random.default_rng(seed)
    release = release or deployment.current_release
    version = version or (release.candidate if route != Route.STABLE else release.stable)
    at = at or timezone.now()
    rows = []
    for i, text in enumerate(texts(rng, n, shift=shift)):
        error = rng.random() < error_rate
        confidence = None if error else float(np.clip(rng.beta(8, 2) - 0.3 * shift, 0.01, 0.999))
        rows.append(dict(
            request_id=uuid.uuid4(), position=0, deployment_id=deployment.pk, release_id=release.pk,
            version_id=version.pk, route=route, input_text=text,
            output={} if error else {"label": labels[i % len(labels)]},
            label="" if error else labels[int(rng.integers(len(labels)))], confidence=confidence,
            latency_ms=float(rng.lognormal(np.log(latency_ms), 0.3)), status="error" if error else "ok",
            text_length=len(text), token_count=len(text.split()) + 2,
            embedding=[] if error else [round(float(x), 4) for x in rng.normal(shift, 1.0, EMBEDDING_SIZE)],
            process="test", created_at=at - timedelta(seconds=float(rng.uniform(0, spread_seconds)))))
    return rows


def write_batch(rows):
    """One PredictionBatch with its rows, in one transaction (as serving/predlog.py writes them)."""
    with transaction.atomic():
        batch = PredictionBatch.objects.create(process="test", rows=len(rows))
        PredictionLog.objects.bulk_create([PredictionLog(**row, batch_id=batch.pk) for row in rows])
    return batch


def make_log(deployment, n, **kwargs):
    """Write n answered inputs for `deployment` as one batch; returns the batch."""
    return write_batch(log_rows(deployment, n, **kwargs))
