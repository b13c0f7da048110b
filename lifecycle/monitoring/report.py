"""The full Evidently report of a window, on demand: up to MONITORING_REPORT_MAX_ROWS logged
answers of the window (the newest) against the version's reference sample, through
`Report([DataDriftPreset()])`, stored as HTML and JSON artifacts. A job on the `monitoring`
queue; Evidently's telemetry is switched off before it is imported.

The text column goes in too (Evidently's text drift is a TF-IDF domain classifier from
scikit-learn: no download, no nltk data). When the texts leave the classifier no terms
(every word in more than half of them), Evidently raises; the report is then made without the
text column, and its summary says why.
"""
import os
import resource
import time

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from lifecycle.core.artifacts import get_store
from lifecycle.core.jobs import enqueue, task
from lifecycle.core.models import AuditEvent
from lifecycle.deployments.models import PredictionLog, Route
from lifecycle.monitoring import features
from lifecycle.monitoring.models import DriftReport, MonitoringError, Reference

EMBEDDINGS = [f"embedding_{i}" for i in range(features.EMBEDDING_SIZE)]
NUMERIC = ["text_length", "token_count", "oov_rate", *EMBEDDINGS]
CHUNK = 20_000  # log rows read per round trip
READ_ROLES = ("ml_engineer", "oncall", "approver", "viewer")


def _evidently():
    """Evidently's Report pieces, imported with its telemetry off (it reads these at import)."""
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["EVIDENTLY_DISABLE_TELEMETRY"] = "1"
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    return DataDefinition, Dataset, Report, DataDriftPreset


def start_report(user, deployment, version, start, end):
    """A DriftReport row and its job, in one transaction; audited."""
    if start >= end:
        raise MonitoringError("The window must start before it ends.")
    reference = Reference.objects.filter(version=version).first()
    if reference is None or reference.status != Reference.Status.READY:
        raise MonitoringError(f"v{version.number} has no ready reference statistics yet; the report compares with them.")
    with transaction.atomic():
        report = DriftReport.objects.create(deployment=deployment, version=version, window_start=start,
                                            window_end=end, created_by=user)
        report.job = enqueue(build_report, user=user, report_id=report.pk)
        report.save(update_fields=["job"])
        AuditEvent.record(user, "drift.report_requested", report, {
            "deployment": deployment.name, "version": version.pk, "window_start": start.isoformat(),
            "window_end": end.isoformat()})
    return report


def _outcome(job):
    from lifecycle.core.jobs import Outcome

    report = DriftReport.objects.get(pk=job.result["report"])
    return Outcome(f"Evidently report of {report.rows:,} answers against {report.reference_rows:,} reference rows.",
                   (("the report", report.get_absolute_url()),))


@task(queue="monitoring", roles=READ_ROLES, outcome=_outcome)
def build_report(job, report_id):
    report = DriftReport.objects.select_related("deployment", "version").get(pk=report_id)
    job.set_progress(phase="reading the window")
    current, reference = frames(report.deployment, report.version, report.window_start, report.window_end)
    job.set_progress(phase="running Evidently", total=len(current))
    began = time.monotonic()
    html, data, summary = run_evidently(current, reference)
    seconds = time.monotonic() - began
    store = get_store()
    DriftReport.objects.filter(pk=report.pk).update(
        rows=len(current), reference_rows=len(reference), summary=summary, seconds=seconds, peak_mb=peak_mb(),
        html_sha256=store.put_bytes(html.encode()).sha256, json_sha256=store.put_bytes(data.encode()).sha256)
    return {"report": report.pk}


def peak_mb():
    """The peak resident memory of this process (RQ runs each job in a fresh work horse, so
    it is the job's, plus the Django process it was forked from)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the two frames -------------------------------------------------------------------------------------


def frames(deployment, version, start, end):
    """(current, reference) frames with the same columns: NUMERIC, label, text."""
    return window_frame(deployment, version, start, end), reference_frame(version)


def window_frame(deployment, version, start, end):
    """The window's newest MONITORING_REPORT_MAX_ROWS answered inputs (not the shadow's), as
    the reference sample's columns; the OOV rate against the version's training words."""
    from lifecycle.monitoring import reference as references

    rows = (PredictionLog.objects.filter(deployment=deployment, version=version, status="ok",
                                         created_at__gte=start, created_at__lt=end)
            .exclude(route=Route.SHADOW).order_by("-created_at")
            .values_list("input_text", "label", "text_length", "token_count", "embedding"))
    rows = rows[: settings.MONITORING_REPORT_MAX_ROWS]
    vocabulary = references.vocabulary(version)
    texts, labels, numbers = [], [], []
    for text, label, length, tokens, embedding in rows.iterator(chunk_size=CHUNK):
        texts.append(text)
        labels.append(label)
        embedding = embedding if len(embedding or ()) == features.EMBEDDING_SIZE else [np.nan] * features.EMBEDDING_SIZE
        numbers.append([length, tokens, features.oov_rate(text, vocabulary), *embedding])
    import pandas as pd  # here, not with the app: every worker process would carry it

    frame = pd.DataFrame(np.asarray(numbers, dtype=np.float64).reshape(-1, len(NUMERIC)), columns=NUMERIC)
    frame["label"] = labels
    frame["text"] = texts
    return frame


def reference_frame(version):
    from lifecycle.monitoring import reference as references

    sample = references.load_sample(version.monitoring_reference)
    frame = sample[NUMERIC].astype(np.float64).reset_index(drop=True)
    frame["label"] = sample["predicted"].astype(str).to_numpy()
    frame["text"] = sample["text"].astype(str).to_numpy()
    return frame


# --- Evidently ------------------------------------------------------------------------------------------


def datasets(current, reference, *, text=True):
    """The two frames as Evidently datasets with our column types (numeric features, the
    predicted label as categorical, the input as text), not Evidently's guesses."""
    DataDefinition, Dataset, _, _ = _evidently()
    numeric = [c for c in NUMERIC if c in current.columns]
    categorical = ["label"] if "label" in current.columns else []
    texts = ["text"] if text and "text" in current.columns else []
    columns = [*numeric, *categorical, *texts]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical, text_columns=texts)
    return (Dataset.from_pandas(current[columns], data_definition=definition),
            Dataset.from_pandas(reference[columns], data_definition=definition))


def run_evidently(current, reference, *, text=True):
    """(html, json, summary) of Report([DataDriftPreset()]) on the two frames."""
    _, _, Report, DataDriftPreset = _evidently()
    try:
        snapshot = Report([DataDriftPreset()]).run(*datasets(current, reference, text=text))
    except ValueError as exc:
        texts = text and "text" in current.columns
        if not texts or "no terms remain" not in str(exc):
            raise
        html, data, summary = run_evidently(current, reference, text=False)
        summary["text"] = f"not checked: Evidently's text drift found no words to compare ({exc})"
        return html, data, summary
    return snapshot.get_html_str(as_iframe=False), snapshot.json(), summarize(snapshot.dict())


def summarize(data):
    """Per column Evidently's method, score, threshold and verdict; the share that drifted."""
    columns, share = {}, None
    for metric in data.get("metrics", []):
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            method, threshold, score = config.get("method", ""), config.get("threshold"), metric.get("value")
            # Evidently's p-value tests drift below the threshold, its distances at or above it.
            drifted = score < threshold if "p_value" in method else score >= threshold
            columns[config["column"]] = {"method": method, "score": score, "threshold": threshold,
                                         "drifted": bool(drifted)}
        elif config.get("type", "").endswith("DriftedColumnsCount"):
            share = metric.get("value", {})
    return {"columns": columns, "drifted": share, "made_at": timezone.now().isoformat(),
            "evidently": _version()}


def _version():
    from evidently import __version__

    return __version__


def artifact_text(sha256):
    return get_store().read_bytes(sha256).decode()
