"""Prediction log rows for the page tests, written by bulk_create as the serving process's
buffer does on SQLite (it uses COPY on PostgreSQL; the rows are the same)."""
import html
import re
import uuid

from django.utils import timezone

from lifecycle.deployments.models import PredictionLog

EMBEDDING = [0.0] * 16


def log_row(deployment, *, route="stable", label="order_status", confidence=0.9, latency_ms=10.0, status="ok",
            text="where is my order 1234", request_id=None, position=0, created_at=None, release=None, version=None):
    release = release or deployment.current_release
    version = version or (release.candidate if route in ("canary", "shadow") else release.stable)
    error = status == "error"
    return PredictionLog(
        request_id=request_id or uuid.uuid4(), position=position, deployment=deployment, release=release,
        version=version, route=route, input_text=text,
        output={} if error else {"label": label, "probabilities": {label: confidence}},
        label="" if error else label, confidence=None if error else confidence, latency_ms=latency_ms,
        status=status, error="model failed" if error else "", text_length=len(text), token_count=len(text.split()),
        embedding=EMBEDDING, process="test:1", created_at=created_at or timezone.now())


def write(rows):
    return PredictionLog.objects.bulk_create(rows)


def as_user(client, user):
    client.force_login(user)
    return client


def page_text(response):
    """The page's HTML with its entities decoded (“section's”, not “section&#x27;s”)."""
    return html.unescape(re.sub(r"\s+", " ", response.content.decode()))
