"""Each drift statistic, computed from our fixed-bin histograms, against scipy and against
Evidently's own stattest on the same raw samples (binned into our histograms for ours).

Where binning loses information the tolerance says how much it may: a value moves at most
within its bin, so for the normed Wasserstein distance the error is at most half the mean bin
width under each sample over the reference std; the KS distance of the histograms is at most
the largest bin share below the raw one. Categorical statistics are exact (1e-12)."""
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")

from evidently.legacy.calculations.stattests import (  # noqa: E402
    chi_stat_test, jensenshannon_stat_test, ks_stat_test, psi_stat_test, wasserstein_stat_test, z_stat_test,
)
from evidently.legacy.core import ColumnType  # noqa: E402
from evidently.legacy.metrics.data_drift.embedding_drift_methods import MMDDriftMethod  # noqa: E402

from lifecycle.monitoring import drift, features  # noqa: E402

NUM, CAT = ColumnType.Numerical, ColumnType.Categorical
EXACT = 1e-12


def evidently(test, reference, current, kind=NUM):
    return test(pd.Series(reference), pd.Series(current), kind, None)


def binned(values, name):
    return features.histogram(values, features.FEATURES[name])


def half_bin_tolerance(name, *samples, std):
    """Half the mean width of the bins the values fall into, per sample, over the std."""
    edges = np.asarray(features.FEATURES[name])
    widths = np.diff(edges)
    total = 0.0
    for values in samples:
        inside = (values >= edges[0]) & (values < edges[-1])
        total += widths[np.searchsorted(edges, values[inside], side="right") - 1].mean() / 2
    return total / std


SHAPES = {  # feature: (reference, current) raw samples
    "embedding_3 same": ("embedding_3", lambda r: r.normal(0, 1, 5000), lambda r: r.normal(0, 1, 3000)),
    "embedding_3 shifted": ("embedding_3", lambda r: r.normal(0, 1, 5000), lambda r: r.normal(0.4, 1.2, 3000)),
    "text_length lognormal": ("text_length", lambda r: r.lognormal(4, 0.6, 5000), lambda r: r.lognormal(4.3, 0.6, 3000)),
    "oov_rate beta": ("oov_rate", lambda r: r.beta(1, 12, 5000), lambda r: r.beta(2, 8, 3000)),
}


@pytest.mark.parametrize("case", SHAPES)
def test_normed_wasserstein_from_bins_matches_scipy_and_evidently_within_half_a_bin(case):
    name, make_ref, make_cur = SHAPES[case]
    rng = np.random.default_rng(7)
    reference, current = make_ref(rng), make_cur(rng)
    std = float(np.std(reference))
    ours = drift.wasserstein_normed(binned(reference, name), binned(current, name), features.FEATURES[name], std)
    exact = stats.wasserstein_distance(reference, current) / std
    theirs = evidently(wasserstein_stat_test, reference, current)
    tolerance = half_bin_tolerance(name, reference, current, std=std)
    assert theirs.drift_score == pytest.approx(exact, abs=EXACT)  # Evidently is scipy's W1 over np.std
    assert abs(ours - exact) <= tolerance, (ours, exact, tolerance)
    assert (ours >= drift.DISTANCE_THRESHOLD) == theirs.drifted or abs(exact - drift.DISTANCE_THRESHOLD) < tolerance


def test_the_wasserstein_error_is_far_below_its_bound_in_practice():
    """The bound is loose: both sides are smoothed the same way, so the errors mostly cancel."""
    rng = np.random.default_rng(11)
    errors = []
    for _ in range(20):
        reference, current = rng.normal(0, 1, 3000), rng.normal(rng.uniform(-0.3, 0.3), 1, 2000)
        std = float(np.std(reference))
        ours = drift.wasserstein_normed(binned(reference, "embedding_0"), binned(current, "embedding_0"),
                                        features.FEATURES["embedding_0"], std)
        errors.append(abs(ours - stats.wasserstein_distance(reference, current) / std))
    assert max(errors) < 0.01, max(errors)  # the bound here is 0.05 (bins of 0.1, std 1)


def on_grid(values, name):
    """The values moved to the left edge of their bin: data the histogram holds exactly."""
    edges = np.asarray(features.FEATURES[name])
    index = np.clip(np.searchsorted(edges, values, side="right"), 1, len(edges))
    return edges[index - 1]


@pytest.mark.parametrize("sizes", [(800, 600), (900, 20_000)])  # scipy's exact and asymptotic branches
def test_ks_p_value_from_bins_equals_scipy_and_evidently_on_data_the_bins_hold_exactly(sizes):
    rng = np.random.default_rng(3)
    reference = on_grid(rng.normal(0, 1, sizes[0]), "embedding_1")
    current = on_grid(rng.normal(0.15, 1, sizes[1]), "embedding_1")
    d = drift.ks_statistic(binned(reference, "embedding_1"), binned(current, "embedding_1"))
    ours = drift.ks_p_value(d, *sizes)
    scipy_result = stats.ks_2samp(reference, current)
    assert d == pytest.approx(scipy_result.statistic, abs=EXACT)
    assert ours == pytest.approx(scipy_result.pvalue, rel=1e-9, abs=EXACT)
    assert ours == pytest.approx(evidently(ks_stat_test, reference, current).drift_score, rel=1e-9, abs=EXACT)


def test_ks_from_bins_on_raw_data_is_within_one_bin_share_and_never_less_conservative():
    rng = np.random.default_rng(5)
    for shift in (0.0, 0.1, 0.3):
        reference, current = rng.normal(0, 1, 700), rng.normal(shift, 1, 900)
        ref_counts, cur_counts = binned(reference, "embedding_2"), binned(current, "embedding_2")
        d = drift.ks_statistic(ref_counts, cur_counts)
        raw = stats.ks_2samp(reference, current)
        largest_share = max(max(ref_counts) / len(reference), max(cur_counts) / len(current))
        assert d <= raw.statistic + EXACT and raw.statistic - d <= largest_share
        assert drift.ks_p_value(d, 700, 900) >= raw.pvalue - EXACT  # a smaller D never alarms more
        assert drift.ks_p_value(d, 700, 900) == pytest.approx(evidently(ks_stat_test, on_grid(reference, "embedding_2"),
                                                                        on_grid(current, "embedding_2")).drift_score)


def label_samples(rng, n, shares):
    return rng.choice(["billing", "tech", "refund", "other"][: len(shares)], size=n, p=shares)


def counts_of(values, names):
    found = pd.Series(values).value_counts()
    return [int(found.get(k, 0)) for k in names]


@pytest.mark.parametrize("shares", [(0.4, 0.3, 0.2, 0.1), (0.25, 0.25, 0.25, 0.25)])
def test_jensen_shannon_of_the_label_equals_scipy_natural_log_and_evidently(shares):
    rng = np.random.default_rng(1)
    reference = label_samples(rng, 4000, (0.4, 0.3, 0.2, 0.1))
    current = label_samples(rng, 2500, shares)
    names = sorted(set(reference) | set(current))
    ours = drift.jensen_shannon(counts_of(reference, names), counts_of(current, names))
    shares_of = [np.asarray(counts_of(x, names)) / len(x) for x in (reference, current)]
    assert ours == pytest.approx(distance.jensenshannon(*shares_of), abs=EXACT)  # base e: at most sqrt(ln 2)
    assert ours == pytest.approx(evidently(jensenshannon_stat_test, reference, current, CAT).drift_score, abs=EXACT)


def test_chi_squared_and_z_test_of_the_label_equal_scipy_and_evidently():
    rng = np.random.default_rng(2)
    reference, current = label_samples(rng, 900, (0.4, 0.3, 0.2, 0.1)), label_samples(rng, 700, (0.3, 0.3, 0.3, 0.1))
    names = sorted(set(reference) | set(current))
    ref_counts, cur_counts = counts_of(reference, names), counts_of(current, names)
    ours = drift.chi_squared_p(ref_counts, cur_counts)
    expected = np.asarray(ref_counts) * len(current) / len(reference)
    assert ours == pytest.approx(stats.chisquare(cur_counts, expected).pvalue, abs=EXACT)
    assert ours == pytest.approx(evidently(chi_stat_test, reference, current, CAT).drift_score, abs=EXACT)
    two_ref, two_cur = label_samples(rng, 900, (0.6, 0.4)), label_samples(rng, 700, (0.5, 0.5))
    names = sorted(set(two_ref) | set(two_cur))
    ours = drift.z_test_p(counts_of(two_ref, names), counts_of(two_cur, names))
    assert ours == pytest.approx(evidently(z_stat_test, two_ref, two_cur, CAT).drift_score, abs=EXACT)


def test_psi_over_our_bins_equals_evidentlys_psi_over_the_same_bins():
    """Evidently bins a numeric column by Sturges' rule over both samples; given our bins as
    categories it computes PSI over exactly ours, with the same zero filling."""
    rng = np.random.default_rng(4)
    reference, current = rng.normal(0, 1, 3000), rng.normal(0.5, 1.3, 2000)
    edges = features.FEATURES["embedding_4"]
    ours = drift.psi(binned(reference, "embedding_4"), binned(current, "embedding_4"))
    bins_ref, bins_cur = features.bin_index(reference, edges), features.bin_index(current, edges)
    # Evidently compares only the bins either side uses; ours keeps the empty ones at the
    # same tiny share on both sides, which adds exactly nothing.
    assert ours == pytest.approx(evidently(psi_stat_test, bins_ref, bins_cur, CAT).drift_score, rel=1e-9)


def test_benjamini_hochberg_equals_scipys_false_discovery_control():
    rng = np.random.default_rng(6)
    p_values = list(np.concatenate([rng.uniform(0, 1, 15), [0.001, 0.004, 0.03]]))
    ours = drift.benjamini_hochberg([None, *p_values, None])
    assert ours[0] is None and ours[-1] is None
    np.testing.assert_allclose(ours[1:-1], stats.false_discovery_control(p_values, method="bh"), atol=EXACT)


def test_mmd_statistic_equals_evidentlys_mmd_and_the_permutation_p_value_finds_a_shift():
    rng = np.random.default_rng(8)
    reference = rng.normal(0, 1, (400, features.EMBEDDING_SIZE))
    same = rng.normal(0, 1, (300, features.EMBEDDING_SIZE))
    shifted = rng.normal(0.25, 1, (300, features.EMBEDDING_SIZE))
    for current in (same, shifted):
        ours = drift.mmd_test(reference, current)
        theirs, _, _ = MMDDriftMethod()(pd.DataFrame(current), pd.DataFrame(reference))
        assert max(ours["statistic"], 0) == pytest.approx(theirs, rel=1e-9, abs=EXACT)
    assert drift.mmd_test(reference, same)["p_value"] > 0.05
    assert drift.mmd_test(reference, shifted)["p_value"] == pytest.approx(1 / (1 + drift.MMD_PERMUTATIONS))
    assert drift.mmd_test(reference, same) == drift.mmd_test(reference, same)  # seeded
