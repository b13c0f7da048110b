"""The label-free accuracy estimate (CBPE-style, after NannyML's confidence-based performance
estimation): the share of a window's answers expected to be right, from their confidence alone.

A model's confidence is rarely its chance of being right, so that chance is fitted once per
version on its reference rows (where the true labels are known): histogram binning over
features.CONFIDENCE_EDGES (the bins the rollups already count), then isotonic regression over
the bins (weighted by their rows) so that a more confident bin is never expected to be less
often right — bins with few rows would otherwise make the map jump. The estimate of a window is
then the rows-weighted mean of the fitted accuracy over its confidence histogram. It holds while
the relation between confidence and correctness holds (covariate shift only); a gap to the
feedback accuracy is the sign that it no longer does (concept drift).
"""
import numpy as np

from lifecycle.monitoring import features
from lifecycle.monitoring.models import Reference

METHOD = "histogram binning + isotonic (weighted by bin rows)"
MIN_ROWS = 50  # fewer labeled reference rows than this fit nothing worth showing


def fit(confidence, correct):
    """The calibration map from one sample's confidence and correctness (bools)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.asarray(features.CONFIDENCE_EDGES)
    bins = features.bin_index(confidence, edges)
    size = len(edges) + 1
    rows = np.bincount(bins, minlength=size)
    right = np.bincount(bins, weights=correct, minlength=size)
    filled = rows > 0
    centers = np.concatenate([[edges[0] / 2], (edges[:-1] + edges[1:]) / 2, [(edges[-1] + 1) / 2]])
    from sklearn.isotonic import IsotonicRegression  # here, not with the app: see drift.ks_p_value

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(centers[filled], right[filled] / rows[filled], sample_weight=rows[filled])
    return {"method": METHOD, "edges": list(features.CONFIDENCE_EDGES), "rows": int(rows.sum()),
            "counts": [int(c) for c in rows], "observed": [float(r / n) if n else None for r, n in zip(right, rows)],
            "accuracy": [float(a) for a in iso.predict(centers)]}


def calibration_for(reference):
    """The reference's calibration map, fitted from its sample on first use and stored on
    Reference.calibration; {} when the reference has no labeled sample to fit it on."""
    if reference.calibration.get("accuracy"):
        return reference.calibration
    if reference.status != Reference.Status.READY or not reference.sample_sha256:
        return {}
    from lifecycle.monitoring import reference as references

    sample = references.load_sample(reference)
    if sample is None or not {"confidence", "correct"} <= set(sample.columns):
        return {}  # a sample without the model's answers cannot calibrate them
    sample = sample[["confidence", "correct"]].dropna()
    if len(sample) < MIN_ROWS:
        return {}
    calibration = fit(sample["confidence"], sample["correct"].astype(bool))
    # Idempotent: the same sample fits the same map, so two checks racing here agree.
    Reference.objects.filter(pk=reference.pk).update(calibration=calibration)
    reference.calibration = calibration
    return calibration


def expected_correct(reference, confidence_counts):
    """The number of answers expected to be right among a confidence histogram's; 0.0 when
    there is no calibration (callers that show it use expected_accuracy, which says None)."""
    calibration = calibration_for(reference)
    if not calibration or not confidence_counts:
        return 0.0
    return float(np.dot(np.asarray(confidence_counts, dtype=np.float64), calibration["accuracy"]))


def expected_accuracy(reference, confidence_counts):
    """The window's expected accuracy, or None when it cannot be estimated (no answers, or no
    calibration: never a default)."""
    total = float(sum(confidence_counts or []))
    if not total or not calibration_for(reference):
        return None
    return expected_correct(reference, confidence_counts) / total
