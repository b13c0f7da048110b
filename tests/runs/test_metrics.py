"""lifecycle/runs/metrics.py checked against scikit-learn and against ECE written out by hand."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from lifecycle.runs.metrics import (
    causal_lm_report,
    classification_report,
    expected_calibration_error,
    worst_examples,
)


def random_split(seed, n=200, k=4):
    """Random probabilities, predictions mostly from their argmax, and noisy true labels."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), size=n)
    y_pred = probs.argmax(axis=1)
    y_true = np.where(rng.random(n) < 0.6, y_pred, rng.integers(0, k, n))
    return y_true, y_pred, probs


def assert_matches_sklearn(report, y_true, y_pred, k):
    labels = list(range(k))
    assert report["count"] == len(y_true)
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    assert report["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    assert report["macro_precision"] == pytest.approx(precision.mean())
    assert report["macro_recall"] == pytest.approx(recall.mean())
    assert [row["precision"] for row in report["per_class"]] == pytest.approx(precision.tolist())
    assert [row["recall"] for row in report["per_class"]] == pytest.approx(recall.tolist())
    assert [row["f1"] for row in report["per_class"]] == pytest.approx(f1.tolist())
    assert [row["support"] for row in report["per_class"]] == support.tolist()
    assert report["confusion"]["matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()


def direct_ece(confidences, correct, n_bins):
    """ECE by looping over the bins one at a time, the way a textbook writes it."""
    total = 0.0
    for b in range(n_bins):
        lower, upper = b / n_bins, (b + 1) / n_bins
        last = b == n_bins - 1
        members = [i for i, c in enumerate(confidences) if lower <= c < upper or (last and c == 1.0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            confidence = sum(confidences[i] for i in members) / len(members)
            total += abs(accuracy - confidence) * len(members)
    return total / len(confidences)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_classification_report_matches_sklearn(seed):
    y_true, y_pred, probs = random_split(seed, k=3 + seed % 3)
    k = probs.shape[1]
    report = classification_report(y_true, y_pred, probs, [f"class-{i}" for i in range(k)])
    assert_matches_sklearn(report, y_true, y_pred, k)
    assert report["per_class"][0]["label"] == "class-0"
    assert report["confusion"]["labels"] == [f"class-{i}" for i in range(k)]


def test_class_never_predicted_and_class_never_present():
    # Class 2 is present but never predicted; class 3 is predicted but never present;
    # class 4 is neither. sklearn gives 0 for each undefined score and so must we.
    y_true = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    y_pred = np.array([0, 1, 1, 3, 0, 1, 0, 3])
    probs = np.full((len(y_true), 5), 0.2)
    report = classification_report(y_true, y_pred, probs, ["a", "b", "c", "d", "e"])
    assert_matches_sklearn(report, y_true, y_pred, 5)
    never_predicted, never_present, neither = report["per_class"][2:]
    assert (never_predicted["precision"], never_predicted["recall"], never_predicted["support"]) == (0.0, 0.0, 2)
    assert (never_present["precision"], never_present["recall"], never_present["support"]) == (0.0, 0.0, 0)
    assert (neither["f1"], neither["support"]) == (0.0, 0)


def test_report_is_plain_json():
    y_true, y_pred, probs = random_split(7)
    report = classification_report(y_true, y_pred, probs, ["a", "b", "c", "d"])
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert type(report["accuracy"]) is float and type(report["per_class"][0]["support"]) is int


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_direct_computation(seed):
    y_true, y_pred, probs = random_split(seed, n=300)
    report = classification_report(y_true, y_pred, probs, ["a", "b", "c", "d"])
    confidences, correct = probs.max(axis=1).tolist(), (y_true == y_pred).tolist()
    assert report["calibration"]["ece"] == pytest.approx(direct_ece(confidences, correct, 15))
    bins = report["calibration"]["bins"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 300
    assert (bins[0]["lower"], bins[-1]["upper"]) == (0.0, 1.0)


def test_ece_edges_and_empty_bins():
    # 0.0 belongs in the first bin, 1.0 in the last, 0.5 starts the upper of two bins.
    ece, bins = expected_calibration_error([0.0, 0.5, 1.0, 1.0], [False, True, True, False], n_bins=2)
    assert [b["count"] for b in bins] == [1, 3]
    assert bins[1]["confidence"] == pytest.approx(2.5 / 3) and bins[1]["accuracy"] == pytest.approx(2 / 3)
    assert ece == pytest.approx(direct_ece([0.0, 0.5, 1.0, 1.0], [False, True, True, False], 2))

    ece, bins = expected_calibration_error([0.95, 0.97], [True, True], n_bins=10)
    assert ece == pytest.approx(0.04)
    assert bins[0] == {"lower": 0.0, "upper": 0.1, "count": 0, "confidence": None, "accuracy": None}


def test_perfect_calibration_has_zero_ece():
    ece, _ = expected_calibration_error([0.8] * 5, [True, True, True, True, False], n_bins=10)
    assert ece == pytest.approx(0.0)


def test_empty_inputs_give_none_not_a_crash():
    report = classification_report([], [], [], ["a", "b"])
    assert report["count"] == 0
    assert report["accuracy"] is None and report["macro_f1"] is None and report["micro_f1"] is None
    assert report["confusion"]["matrix"] == [[0, 0], [0, 0]]
    assert report["per_class"][0] == {"label": "a", "precision": None, "recall": None, "f1": None, "support": 0}
    assert report["calibration"]["ece"] is None
    assert all(b["count"] == 0 for b in report["calibration"]["bins"])
    json.dumps(report, allow_nan=False)

    assert expected_calibration_error([], [])[0] is None
    assert worst_examples([], [], [], [], [], ["a", "b"]) == ([], [])


def test_without_probabilities_calibration_is_none():
    report = classification_report([0, 1], [0, 0], None, ["a", "b"])
    assert report["calibration"] is None and report["accuracy"] == 0.5


@pytest.mark.parametrize(
    "y_true, y_pred, probs",
    [
        ([0, 2], [0, 1], None),  # 2 is not a class of a two-label report
        ([0, -1], [0, 1], None),
        ([0, 1], [0], None),
        ([0, 1], [0, 1], [[0.5, 0.5]]),
    ],
)
def test_bad_shapes_and_indices_are_refused(y_true, y_pred, probs):
    with pytest.raises(ValueError):
        classification_report(y_true, y_pred, probs, ["a", "b"])


def test_worst_examples_ordering():
    rows = ["r0", "r1", "r2", "r3", "r4"]
    y_true = [0, 1, 1, 0, 1]
    y_pred = [1, 1, 0, 1, 0]
    probs = [[0.4, 0.6], [0.1, 0.9], [0.95, 0.05], [0.2, 0.8], [0.6, 0.4]]
    losses = [0.9, 0.1, 3.0, 1.6, 0.5]
    mistakes, lossy = worst_examples(rows, y_true, y_pred, probs, losses, ["neg", "pos"])

    assert [m["row"] for m in mistakes] == ["r2", "r3", "r0", "r4"]
    assert mistakes[0] == {"row": "r2", "true": "pos", "predicted": "neg", "confidence": 0.95, "loss": 3.0}
    assert [m["row"] for m in lossy] == ["r2", "r3", "r0", "r4", "r1"]

    mistakes, lossy = worst_examples(rows, y_true, y_pred, probs, losses, ["neg", "pos"], limit=2)
    assert [m["row"] for m in mistakes] == ["r2", "r3"] and [m["row"] for m in lossy] == ["r2", "r3"]


def test_worst_examples_loss_defaults_to_true_class_nll():
    _, lossy = worst_examples(["a", "b"], [0, 1], [0, 1], [[0.9, 0.1], [0.0, 1.0]], None, ["x", "y"])
    assert [row["row"] for row in lossy] == ["a", "b"]
    assert lossy[0]["loss"] == pytest.approx(-math.log(0.9))
    assert lossy[1]["loss"] == pytest.approx(0.0)


def test_causal_lm_report():
    report = causal_lm_report(loss_sum=20.0, token_count=10, exact_matches=3, example_count=4)
    assert report == {"loss": 2.0, "perplexity": pytest.approx(math.exp(2.0)), "exact_match": 0.75, "tokens": 10, "count": 4}


def test_causal_lm_report_empty_and_huge_loss():
    empty = causal_lm_report(0.0, 0, 0, 0)
    assert empty == {"loss": None, "perplexity": None, "exact_match": None, "tokens": 0, "count": 0}
    # math.exp(1000) would overflow; the capped perplexity stays finite and valid JSON.
    huge = causal_lm_report(10_000.0, 10, 0, 1)
    assert huge["perplexity"] == pytest.approx(math.exp(50))
    json.dumps(huge, allow_nan=False)
