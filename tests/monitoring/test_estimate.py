"""The label-free accuracy estimate: fitted once on the reference's labeled sample, it predicts
a window's accuracy from its confidence histogram alone, within a stated tolerance, as long as
the relation between confidence and being right holds (covariate shift, no concept drift)."""
import numpy as np
import pytest

from lifecycle.monitoring import estimate, features
from lifecycle.monitoring.models import Reference
from tests.deployments.factories import make_deployment
from tests.monitoring.test_drift import make_reference, right_chance

# Binning: the map is constant over a bin of 0.05 while the chance of being right (c**1.5)
# moves by at most 1.5 * 0.05 across it, but the errors of a bin's two halves mostly cancel;
# sampling: 5,000 reference rows fit each busy bin to about ±0.02, and 3,000 window answers
# are right at their own rate ±0.008 (one standard error). 0.03 covers both with room.
TOLERANCE = 0.03


def sample(rng, n, a, b):
    confidence = np.clip(rng.beta(a, b, n), 0.01, 0.999)
    return confidence, rng.random(n) < right_chance(confidence)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_estimate_is_within_tolerance_of_the_true_accuracy_under_covariate_shift(seed):
    rng = np.random.default_rng(seed)
    calibration = estimate.fit(*sample(rng, 5000, 8, 2))
    # The window is less confident than the reference (Beta(5, 3) instead of Beta(8, 2)), but
    # each answer is right with the same chance given its confidence: no concept drift.
    confidence, right = sample(rng, 3000, 5, 3)
    counts = features.histogram(confidence, features.CONFIDENCE_EDGES)
    estimated = float(np.dot(counts, calibration["accuracy"]) / sum(counts))
    assert abs(estimated - right.mean()) <= TOLERANCE, (estimated, right.mean())
    # The raw confidence would be far off: the model is over-confident.
    assert confidence.mean() - right.mean() > 0.1


def test_the_fitted_map_is_monotone_and_says_how_it_was_made():
    calibration = estimate.fit(*sample(np.random.default_rng(3), 400, 8, 2))
    assert calibration["method"] == estimate.METHOD and calibration["rows"] == 400
    assert len(calibration["accuracy"]) == len(features.CONFIDENCE_EDGES) + 1
    assert all(a <= b for a, b in zip(calibration["accuracy"], calibration["accuracy"][1:]))
    assert None in calibration["observed"]  # an empty low-confidence bin is filled by the monotone fit


@pytest.mark.django_db
def test_the_calibration_is_fitted_once_and_stored_on_the_reference(trained, people, tmp_path, store_with_output,
                                                                     django_assert_num_queries):
    version = make_deployment(trained, people, tmp_path).current_release.stable
    reference = make_reference(version)
    counts = features.histogram(np.full(100, 0.9), features.CONFIDENCE_EDGES)
    first = estimate.expected_accuracy(reference, counts)
    assert first == pytest.approx(0.9**1.5, abs=0.05)
    stored = Reference.objects.get(pk=reference.pk)
    assert stored.calibration["accuracy"] and stored.calibration["rows"] == 5000
    with django_assert_num_queries(0):  # read from the row, not refitted
        assert estimate.expected_accuracy(stored, counts) == first
    assert estimate.expected_correct(stored, counts) == pytest.approx(100 * first)
    assert estimate.expected_accuracy(stored, [0] * len(counts)) is None  # no answers: not estimated, not 0


@pytest.mark.django_db
def test_a_reference_without_a_sample_gives_no_estimate(trained, people, tmp_path, store_with_output):
    version = make_deployment(trained, people, tmp_path).current_release.stable
    reference = make_reference(version)
    Reference.objects.filter(pk=reference.pk).update(sample_sha256="", calibration={})
    reference.refresh_from_db()
    assert estimate.expected_accuracy(reference, [10] * (len(features.CONFIDENCE_EDGES) + 1)) is None
