"""Evaluation metrics for a run, in plain numpy, returned as JSON-ready dicts.

Everything here returns plain Python floats, ints, lists and None, so a report can go
straight into a JSONField. scikit-learn is deliberately not imported: it is a heavy
dependency for a web process, and tests/runs/test_metrics.py checks these numbers against it.
"""
import math

import numpy as np

# exp(50) is about 5e21: any model that far off is useless, and capping keeps math.exp from
# overflowing and the report valid JSON (json.dumps would write the non-standard Infinity).
MAX_LOG_PERPLEXITY = 50.0


# ---------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------

def classification_report(y_true, y_pred, probs, labels):
    """Accuracy, F1, per-class scores, confusion matrix and calibration for one split.

    `y_true` and `y_pred` hold class indices into `labels`; `probs` is (n, k), or None for a
    model that gives no probabilities (calibration is then None).
    """
    k = len(labels)
    y_true, y_pred = _class_indices(y_true, k), _class_indices(y_pred, k)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    matrix = confusion_matrix(y_true, y_pred, k)
    report = {"count": len(y_true), **_summary_scores(matrix)}
    report["per_class"] = _per_class(matrix, labels)
    report["confusion"] = {"labels": list(labels), "matrix": matrix.tolist()}
    if probs is not None:
        probs = _as_probs(probs, len(y_true), k)
    report["calibration"] = None if probs is None else _calibration(probs, y_true == y_pred)
    return report


def confusion_matrix(y_true, y_pred, k):
    """A (k, k) int array: rows are the true class, columns the predicted one."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _class_indices(values, k):
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    # bincount would silently grow the matrix (or refuse negatives with a vague message).
    if values.size and (values.min() < 0 or values.max() >= k):
        raise ValueError(f"class indices must lie in [0, {k}); got {values.min()}..{values.max()}")
    return values


def _counts(matrix):
    tp = np.diag(matrix).astype(float)
    return tp, matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp  # tp, fp, fn


def _ratio(numerator, denominator):
    """Element-wise division with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _precision_recall_f1(matrix):
    tp, fp, fn = _counts(matrix)
    # F1 from counts rather than from P and R: identical where defined, and 0 (not NaN)
    # for a class that is neither present nor predicted, as scikit-learn reports it.
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def _summary_scores(matrix):
    if matrix.sum() == 0:
        return dict.fromkeys(("accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall"))
    precision, recall, f1 = _precision_recall_f1(matrix)
    tp, fp, fn = (total.sum() for total in _counts(matrix))
    return {
        "accuracy": float(tp / matrix.sum()),
        # Macro means run over every label, present or not (sklearn with labels=range(k)).
        "macro_f1": float(f1.mean()),
        "micro_f1": float(_ratio(2 * tp, 2 * tp + fp + fn)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
    }


def _per_class(matrix, labels):
    empty = matrix.sum() == 0
    support = matrix.sum(axis=1)
    scores = zip(*_precision_recall_f1(matrix))
    return [
        {
            "label": label,
            "precision": None if empty else float(p),
            "recall": None if empty else float(r),
            "f1": None if empty else float(f),
            "support": int(s),
        }
        for label, (p, r, f), s in zip(labels, scores, support, strict=True)
    ]


def _as_probs(probs, n, k):
    """`probs` as an (n, k) float array, or a clear error naming the shape it has."""
    probs = np.asarray(probs, dtype=float)
    if probs.size == 0 and n == 0:
        return probs.reshape(0, k)  # [] from an empty split has no second axis to check
    if probs.shape != (n, k):
        raise ValueError(f"probs must have shape ({n}, {k}); got {probs.shape}")
    return probs


def _calibration(probs, correct):
    # max() of a (0, k) array raises, so an empty split gets empty confidences directly.
    confidences = probs.max(axis=1) if len(probs) else np.zeros(0)
    ece, bins = expected_calibration_error(confidences, correct)
    return {"ece": ece, "bins": bins}


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------

def expected_calibration_error(confidences, correct, n_bins=15):
    """ECE over equal-width bins on [0, 1], and the bins themselves for a reliability diagram.

    Returns (ece, bins); ece is None when there is nothing to measure. Bins are [lower, upper)
    except the last, which also takes confidence 1.0.
    """
    confidences = np.asarray(confidences, dtype=float).reshape(-1)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted against the very edges we report, so a row's bin always agrees with the
    # bounds shown (floor(c * n_bins) can land one bin off at an edge through rounding).
    index = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, n_bins - 1)
    bins = [_bin(edges[b], edges[b + 1], confidences[index == b], correct[index == b]) for b in range(n_bins)]
    if not len(confidences):
        return None, bins
    gaps = (abs(b["accuracy"] - b["confidence"]) * b["count"] for b in bins if b["count"])
    return float(sum(gaps) / len(confidences)), bins


def _bin(lower, upper, confidences, correct):
    count = len(confidences)
    return {
        "lower": float(lower),
        "upper": float(upper),
        "count": int(count),
        "confidence": float(confidences.mean()) if count else None,
        "accuracy": float(correct.mean()) if count else None,
    }


# ---------------------------------------------------------------------------------------
# Causal language models
# ---------------------------------------------------------------------------------------

def causal_lm_report(loss_sum, token_count, exact_matches, example_count):
    """Mean token loss, perplexity and exact-match share for a generative evaluation."""
    loss = float(loss_sum) / token_count if token_count else None
    return {
        "loss": loss,
        "perplexity": None if loss is None else math.exp(min(loss, MAX_LOG_PERPLEXITY)),
        "exact_match": float(exact_matches) / example_count if example_count else None,
        "tokens": int(token_count),
        "count": int(example_count),
    }


# ---------------------------------------------------------------------------------------
# Examples worth a look
# ---------------------------------------------------------------------------------------

def worst_examples(rows, y_true, y_pred, probs, losses, labels, limit=20):
    """The most confident mistakes and the highest-loss examples, `limit` of each.

    `losses` may be None: the loss is then the negative log-probability of the true class.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    probs = _as_probs(probs, len(y_true), len(labels))
    at = np.arange(len(y_true))
    confidence = probs[at, y_pred]
    losses = _nll(probs[at, y_true]) if losses is None else np.asarray(losses, dtype=float).reshape(-1)

    def describe(i):
        return {
            "row": rows[i],
            "true": labels[y_true[i]],
            "predicted": labels[y_pred[i]],
            "confidence": float(confidence[i]),
            "loss": float(losses[i]),
        }

    wrong = at[y_true != y_pred]
    # Stable sorts on the negated key: ties keep the input order, so reports do not reshuffle.
    confident = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    lossy = np.argsort(-losses, kind="stable")[:limit]
    return [describe(i) for i in confident], [describe(i) for i in lossy]


def _nll(p_true):
    # Clip so a probability of exactly 0 gives a large finite loss, not inf (invalid JSON).
    return -np.log(np.clip(p_true, 1e-12, 1.0))
