"""lifecycle/labeling/agreement.py checked against scikit-learn, statsmodels, krippendorff and loops written out by hand.

No database: these are pure functions of three integer arrays (items, raters, labels).
"""
import itertools
import math
import warnings

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from lifecycle.labeling.agreement import (
    cohen_kappa,
    coincidence_matrix,
    fleiss_kappa,
    krippendorff_alpha,
    label_agreement,
    pair_confusion,
    pairwise_kappa,
)

# Our functions must not warn (a 0/0 RuntimeWarning means an undefined case slipped through);
# the references' own warnings are silenced where they are called.
pytestmark = pytest.mark.filterwarnings("error")

# (seed, n_items, n_raters, n_labels, p_answer, p_copy, skew): p_answer is the chance a rater
# answers an item (below 1 leaves items with 0 or 1 answers), p_copy the chance an answer is
# the item's true label (high values push kappa far from 0), skew how lopsided the labels are.
CASES = [
    (0, 60, 2, 2, 1.0, 0.0, 0.0),
    (1, 80, 3, 3, 0.7, 0.6, 0.0),
    (2, 120, 5, 7, 0.5, 0.8, 1.0),
    (3, 150, 12, 3, 0.3, 0.5, 2.0),
    (4, 100, 12, 7, 0.4, 0.9, 0.5),
    (5, 90, 5, 2, 0.6, 0.7, 3.0),
    (6, 200, 3, 7, 0.8, 0.3, 1.5),
    (7, 40, 2, 3, 0.7, 0.95, 0.0),
]
CASE_IDS = [f"seed{c[0]}-{c[1]}items-{c[2]}raters-{c[3]}labels" for c in CASES]


# ---------------------------------------------------------------------------------------
# Data and references
# ---------------------------------------------------------------------------------------

def random_answers(seed, n_items, n_raters, n_labels, p_answer, p_copy, skew):
    """Answers as (items, raters, labels) in shuffled order, from raters who copy a true label with p_copy."""
    rng = np.random.default_rng(seed)
    prevalence = np.exp(-skew * np.arange(n_labels))
    prevalence /= prevalence.sum()
    truth = rng.choice(n_labels, size=n_items, p=prevalence)
    answered = rng.random((n_items, n_raters)) < p_answer
    items, raters = np.nonzero(answered)
    guesses = rng.choice(n_labels, size=items.size, p=prevalence)
    labels = np.where(rng.random(items.size) < p_copy, truth[items], guesses)
    order = rng.permutation(items.size)
    return items[order], raters[order], labels[order]


def reliability_matrix(items, raters, labels, n_items, n_raters):
    """The raters x items float matrix with nan for a missing answer, as krippendorff wants it."""
    matrix = np.full((n_raters, n_items), np.nan)
    matrix[raters, items] = labels
    return matrix


def shared_labels(matrix, i, j):
    both = ~np.isnan(matrix[i]) & ~np.isnan(matrix[j])
    return matrix[i, both].astype(int), matrix[j, both].astype(int)


def sklearn_kappa(a, b, n_labels):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning where it returns nan
        return cohen_kappa_score(a, b, labels=list(range(n_labels)))


def statsmodels_fleiss(items, labels, n_labels, n_ratings):
    """statsmodels' Fleiss kappa on the items with exactly n_ratings answers, via aggregate_raters."""
    by_item = {}
    for item, label in zip(items.tolist(), labels.tolist()):
        by_item.setdefault(item, []).append(label)
    rows = [sorted(answers) for answers in by_item.values() if len(answers) == n_ratings]
    table, _ = aggregate_raters(np.array(rows), n_cat=n_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0/0 where every answer has the same label
        return sm_fleiss_kappa(table, method="fleiss"), len(rows)


def reference_alpha(items, raters, labels, n_labels):
    matrix = reliability_matrix(items, raters, labels, items.max() + 1, raters.max() + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0/0 where every pairable answer has the same label
        return krippendorff.alpha(matrix, level_of_measurement="nominal", value_domain=list(range(n_labels)))


def answers_by_item(items, raters, labels):
    by_item = {}
    for item, rater, label in zip(items.tolist(), raters.tolist(), labels.tolist()):
        by_item.setdefault(item, []).append((rater, label))
    return by_item


def looped_pair_counts(items, raters, labels, n_labels, weighted):
    """Pair confusion (weighted=False) or coincidence matrix (weighted=True), one answer pair at a time."""
    counts = np.zeros((n_labels, n_labels))
    for answers in answers_by_item(items, raters, labels).values():
        for (rater_a, label_a), (rater_b, label_b) in itertools.permutations(answers, 2):
            assert rater_a != rater_b
            counts[label_a, label_b] += 1 / (len(answers) - 1) if weighted else 1
    return counts


def assert_same(value, expected):
    """Equal to 1e-9, where nan only equals nan."""
    if math.isnan(expected):
        assert math.isnan(value), f"expected nan, got {value}"
    else:
        assert value == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------
# Against the references, on random data
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cohen_kappa_matches_sklearn(case):
    items, raters, labels = random_answers(*case)
    matrix = reliability_matrix(items, raters, labels, case[1], case[2])
    for i, j in itertools.combinations(range(case[2]), 2):
        a, b = shared_labels(matrix, i, j)
        assert_same(cohen_kappa(a, b, case[3]), sklearn_kappa(a, b, case[3]))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pairwise_kappa_matches_sklearn_on_each_pairs_shared_items(case):
    items, raters, labels = random_answers(*case)
    n_items, n_raters, n_labels = case[1:4]
    matrix = reliability_matrix(items, raters, labels, n_items, n_raters)
    result = pairwise_kappa(items, raters, labels, n_raters, n_labels)
    expected_pairs = [
        (i, j) for i, j in itertools.combinations(range(n_raters), 2) if shared_labels(matrix, i, j)[0].size
    ]
    assert [(i, j) for i, j, _, _ in result] == expected_pairs
    for i, j, n_shared, kappa in result:
        a, b = shared_labels(matrix, i, j)
        assert n_shared == a.size
        assert_same(kappa, sklearn_kappa(a, b, n_labels))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fleiss_kappa_matches_statsmodels_for_each_number_of_ratings(case):
    items, _, labels = random_answers(*case)
    answers_per_item = np.bincount(items)
    for n_ratings in sorted(set(answers_per_item[answers_per_item >= 2].tolist())):
        kappa, n_used = fleiss_kappa(items, labels, case[3], n_ratings)
        expected, expected_used = statsmodels_fleiss(items, labels, case[3], n_ratings)
        assert n_used == expected_used == (answers_per_item == n_ratings).sum()
        assert_same(kappa, expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_krippendorff_alpha_matches_krippendorff(case):
    items, raters, labels = random_answers(*case)
    assert_same(krippendorff_alpha(items, labels, case[3]), reference_alpha(items, raters, labels, case[3]))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_coincidence_matrix_matches_a_loop_over_answer_pairs(case):
    items, raters, labels = random_answers(*case)
    n_labels = case[3]
    matrix = coincidence_matrix(items, labels, n_labels)
    assert matrix.shape == (n_labels, n_labels)
    assert matrix == pytest.approx(looped_pair_counts(items, raters, labels, n_labels, weighted=True), abs=1e-9)
    # Every answer on an item with a second answer contributes exactly 1, spread over its row.
    answers_per_item = np.bincount(items)
    pairable = answers_per_item[items] >= 2
    assert matrix.sum(axis=1) == pytest.approx(np.bincount(labels[pairable], minlength=n_labels), abs=1e-9)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pair_confusion_matches_a_loop_over_answer_pairs(case):
    items, raters, labels = random_answers(*case)
    n_labels = case[3]
    confusion = pair_confusion(items, raters, labels, n_labels)
    assert confusion.dtype == np.int64
    assert confusion.tolist() == looped_pair_counts(items, raters, labels, n_labels, weighted=False).tolist()
    assert (confusion == confusion.T).all()
    answers_per_item = np.bincount(items)
    assert confusion.sum() == (answers_per_item * (answers_per_item - 1)).sum()
    expected_agreement = [row[k] / sum(row) if sum(row) else math.nan for k, row in enumerate(confusion.tolist())]
    for value, expected in zip(label_agreement(confusion).tolist(), expected_agreement):
        assert_same(value, expected)


def test_random_cases_cover_missing_answers_and_strong_agreement():
    # Guards the cases above against drifting into data that tests nothing interesting.
    items, raters, labels = random_answers(*CASES[3])
    answers_per_item = np.bincount(items, minlength=CASES[3][1])
    assert (answers_per_item == 0).any() and (answers_per_item == 1).any()
    # Sparse answers and a lopsided label mix also leave some pairs with an undefined kappa.
    kappas = [kappa for _, _, _, kappa in pairwise_kappa(items, raters, labels, 12, 3)]
    assert any(math.isnan(kappa) for kappa in kappas)
    items, raters, labels = random_answers(*CASES[4])
    kappas = [kappa for _, _, _, kappa in pairwise_kappa(items, raters, labels, 12, 7)]
    assert np.median(kappas) > 0.6
    assert krippendorff_alpha(items, labels, 7) > 0.7


# ---------------------------------------------------------------------------------------
# Known values and edge cases
# ---------------------------------------------------------------------------------------

def answers_from_table(table):
    """Answers (items, labels) for an items x labels count table."""
    table = np.asarray(table)
    cells = np.nonzero(table)
    counts = table[cells]
    return np.repeat(cells[0], counts), np.repeat(cells[1], counts)


def test_fleiss_kappa_on_the_wikipedia_example():
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    items, labels = answers_from_table(table)
    kappa, n_used = fleiss_kappa(items, labels, 5, 14)
    assert n_used == 10
    assert kappa == pytest.approx(sm_fleiss_kappa(np.array(table)), abs=1e-12)
    assert round(kappa, 3) == 0.210


def test_krippendorff_alpha_on_the_packages_documented_example():
    nan = np.nan
    matrix = np.array([
        [nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
        [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
        [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4],
    ])
    raters, items = np.nonzero(~np.isnan(matrix))
    labels = matrix[raters, items].astype(int) - 1
    assert round(krippendorff_alpha(items, labels, 4), 6) == 0.691358


def test_perfect_agreement_gives_one_everywhere():
    rng = np.random.default_rng(11)
    n_items, n_raters, n_labels = 50, 4, 3
    truth = rng.integers(0, n_labels, n_items)
    items = np.repeat(np.arange(n_items), n_raters)
    raters = np.tile(np.arange(n_raters), n_items)
    labels = truth[items]
    assert cohen_kappa(truth, truth, n_labels) == 1.0
    assert [(i, j, n, k) for i, j, n, k in pairwise_kappa(items, raters, labels, n_raters, n_labels)] == [
        (i, j, n_items, 1.0) for i, j in itertools.combinations(range(n_raters), 2)
    ]
    assert fleiss_kappa(items, labels, n_labels, n_raters) == (pytest.approx(1.0, abs=1e-12), n_items)
    assert krippendorff_alpha(items, labels, n_labels) == pytest.approx(1.0, abs=1e-12)
    confusion = pair_confusion(items, raters, labels, n_labels)
    assert (confusion == np.diag(np.diag(confusion))).all()
    assert label_agreement(confusion).tolist() == [1.0, 1.0, 1.0]


def test_one_label_only_is_undefined_like_the_references():
    items = np.repeat(np.arange(6), 3)
    raters = np.tile(np.arange(3), 6)
    labels = np.full(items.size, 2)
    same = np.full(6, 2)
    assert math.isnan(sklearn_kappa(same, same, 4))
    assert math.isnan(cohen_kappa(same, same, 4))
    assert all(n == 6 and math.isnan(k) for _, _, n, k in pairwise_kappa(items, raters, labels, 3, 4))
    assert math.isnan(statsmodels_fleiss(items, labels, 4, 3)[0])
    kappa, n_used = fleiss_kappa(items, labels, 4, 3)
    assert math.isnan(kappa) and n_used == 6
    assert math.isnan(reference_alpha(items, raters, labels, 4))
    assert math.isnan(krippendorff_alpha(items, labels, 4))
    assert label_agreement(pair_confusion(items, raters, labels, 4))[2] == 1.0


def test_one_rater_always_saying_one_label_gives_kappa_zero_not_nan():
    # Expected agreement is below 1 as long as the other rater varies, so kappa is defined.
    a = np.zeros(8, dtype=int)
    b = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    assert cohen_kappa(a, b, 2) == pytest.approx(sklearn_kappa(a, b, 2), abs=1e-12) == 0.0


def test_pairs_without_shared_items_are_left_out():
    # Raters 0 and 2 never meet; rater 3 answers nothing; rater 4 only meets rater 1.
    items = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    raters = np.array([0, 1, 0, 1, 1, 2, 1, 2, 1, 4, 0])
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1])
    result = pairwise_kappa(items, raters, labels, 5, 2)
    assert [(i, j, n) for i, j, n, _ in result] == [(0, 1, 2), (1, 2, 2), (1, 4, 1)]
    assert result[0][3] == 1.0
    assert result[1][3] == pytest.approx(sklearn_kappa([0, 1], [1, 1], 2), abs=1e-12)
    assert math.isnan(result[2][3])  # one shared item, both said 0


def test_pair_confusion_and_label_agreement_by_hand():
    # Item 0: three annotators say 0, 0, 1. Item 1: two say 1, 1. Item 2: one says 2 (no pairs).
    items = np.array([0, 0, 0, 1, 1, 2])
    raters = np.array([0, 1, 2, 0, 2, 1])
    labels = np.array([0, 0, 1, 1, 1, 2])
    confusion = pair_confusion(items, raters, labels, 3)
    assert confusion.tolist() == [[2, 2, 0], [2, 2, 0], [0, 0, 0]]
    agreement = label_agreement(confusion)
    assert agreement[:2].tolist() == [0.5, 0.5]
    assert math.isnan(agreement[2])
    assert coincidence_matrix(items, labels, 3).tolist() == [[1.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]


def test_label_agreement_of_a_given_matrix():
    agreement = label_agreement([[4, 2, 0], [2, 2, 0], [0, 0, 0]])
    assert agreement[:2] == pytest.approx([4 / 6, 2 / 4], abs=1e-12)
    assert math.isnan(agreement[2])


def test_empty_and_unpairable_data():
    empty = np.array([], dtype=int)
    assert math.isnan(cohen_kappa(empty, empty, 3))
    assert pairwise_kappa(empty, empty, empty, 4, 3) == []
    kappa, n_used = fleiss_kappa(empty, empty, 3, 2)
    assert math.isnan(kappa) and n_used == 0
    assert math.isnan(krippendorff_alpha(empty, empty, 3))
    assert coincidence_matrix(empty, empty, 3).tolist() == np.zeros((3, 3)).tolist()
    assert pair_confusion(empty, empty, empty, 3).tolist() == np.zeros((3, 3), dtype=int).tolist()
    # One answer per item: nothing can be paired, which krippendorff refuses outright.
    items, raters, labels = np.arange(4), np.array([0, 1, 0, 1]), np.array([0, 1, 2, 1])
    with pytest.raises(ValueError):
        reference_alpha(items, raters, labels, 3)
    assert math.isnan(krippendorff_alpha(items, labels, 3))
    assert pairwise_kappa(items, raters, labels, 2, 3) == []
    # No item has exactly 3 answers.
    kappa, n_used = fleiss_kappa(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2, 3)
    assert math.isnan(kappa) and n_used == 0


def test_bad_input_is_refused():
    items, raters, labels = np.array([0, 0, 1]), np.array([0, 0, 1]), np.array([0, 1, 1])
    with pytest.raises(ValueError, match="rater 0 answered item 0 more than once"):
        pairwise_kappa(items, raters, labels, 2, 2)
    with pytest.raises(ValueError, match="more than once"):
        pair_confusion(items, raters, labels, 2)
    with pytest.raises(ValueError, match="labels"):
        krippendorff_alpha(np.array([0, 0]), np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="equal lengths"):
        coincidence_matrix(np.array([0, 0]), np.array([0]), 2)
    with pytest.raises(ValueError, match="n_ratings"):
        fleiss_kappa(np.array([0]), np.array([0]), 2, 1)
    with pytest.raises(ValueError, match="integer"):
        cohen_kappa(np.array([0.5]), np.array([0]), 2)
