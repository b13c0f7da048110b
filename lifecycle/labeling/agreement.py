"""Inter-annotator agreement statistics in plain, vectorised numpy.

Representation: the answers of a labeling task are three equal-length integer arrays with one
entry per answer, never a dense raters x items table:

    items[k]   the item the k-th answer is about, 0..n_items-1
    raters[k]  who gave it, 0..n_raters-1
    labels[k]  the label chosen, 0..n_labels-1

Real labeling data is sparse (each item is seen by a few of many annotators), so a dense table
would be mostly empty, and this is also the shape the answers come out of the database in.
A rater answers an item at most once; every statistic below assumes it, and the functions that
are given `raters` refuse data that breaks it rather than silently double-counting.

Everything is built from two vectorised primitives instead of Python loops over answers or
items: counting with np.bincount, and enumerating all pairs within runs of a sorted array
(`_pairs_within_runs`). That keeps 300,000 answers well under a second.

The numbers match the usual references (scikit-learn's cohen_kappa_score, statsmodels'
fleiss_kappa, the krippendorff package), including returning nan exactly where those are
undefined; tests/labeling/test_agreement.py checks this. None of them is imported here: they
are heavy dependencies for a web process.
"""
import math

import numpy as np

# ---------------------------------------------------------------------------------------
# Public statistics
# ---------------------------------------------------------------------------------------


def cohen_kappa(a, b, n_labels):
    """Cohen's kappa of two raters' labels over the same items (a[k] and b[k] are one item).

    Equals sklearn's cohen_kappa_score(a, b, labels=range(n_labels)); nan where that is undefined:
    no items, or both raters used one and the same label only (chance agreement is then 1).
    """
    a = _index_array(a, "a", n_labels)
    b = _index_array(b, "b", n_labels)
    if a.size != b.size:
        raise ValueError(f"a has {a.size} labels but b has {b.size}")
    confusion = np.bincount(a * n_labels + b, minlength=n_labels * n_labels).reshape(1, n_labels, n_labels)
    return float(_kappas(confusion)[0])


def pairwise_kappa(items, raters, labels, n_raters, n_labels):
    """Cohen's kappa of every pair of raters over the items both answered.

    Returns a list of (rater_i, rater_j, n_shared_items, kappa) with rater_i < rater_j, sorted,
    for every pair that shares at least one item; kappa is nan where undefined (see cohen_kappa).
    All pairs' confusion matrices come out of a single bincount, so the cost grows with the
    number of within-item answer pairs, not with n_raters squared times the data.
    """
    items, raters, labels = _answers(items, labels, n_labels, raters, n_raters)
    # Sorted by (item, rater), each item's answers form one run with raters increasing, so every
    # pair the run yields already has the lower rater first.
    order = _order_by_item_and_rater(items, raters, n_raters)
    items, raters, labels = items[order], raters[order], labels[order]
    first, second = _pairs_within_runs(np.bincount(items))
    pairs, pair_index = np.unique(raters[first] * n_raters + raters[second], return_inverse=True)
    cells = (pair_index * n_labels + labels[first]) * n_labels + labels[second]
    confusions = np.bincount(cells, minlength=pairs.size * n_labels * n_labels).reshape(-1, n_labels, n_labels)
    shared = confusions.sum(axis=(1, 2))
    kappas = _kappas(confusions)
    return [
        (int(pair // n_raters), int(pair % n_raters), int(n), float(kappa))
        for pair, n, kappa in zip(pairs.tolist(), shared.tolist(), kappas.tolist())
    ]


def fleiss_kappa(items, labels, n_labels, n_ratings):
    """Fleiss' kappa over the items that have exactly `n_ratings` answers; returns (kappa, n_items_used).

    Fleiss' kappa needs the same number of ratings on every item, so items with more or fewer
    answers are left out rather than padded. Matches statsmodels' fleiss_kappa(table,
    method="fleiss") on the items x labels count table of the items used; kappa is nan when no
    item qualifies or when every answer used carries the same label (chance agreement is 1).
    """
    if n_ratings < 2:
        raise ValueError(f"n_ratings must be at least 2, got {n_ratings}")
    items, _, labels = _answers(items, labels, n_labels)
    complete = np.bincount(items) == n_ratings
    n_used = int(complete.sum())
    if n_used == 0:
        return math.nan, 0
    used = complete[items]
    _, _, counts = _cells(items[used], labels[used], n_labels)
    total = n_used * n_ratings
    # Mean observed agreement: ordered pairs of same-label answers per item, over all ordered pairs.
    observed = (int((counts * counts).sum()) - total) / (total * (n_ratings - 1))
    # Chance agreement from the label margins, kept as integers so "is it exactly 1" is exact.
    margins = np.bincount(labels[used], minlength=n_labels)
    squares, total_squared = int((margins * margins).sum()), total * total
    if squares == total_squared:
        return math.nan, n_used
    expected = squares / total_squared
    return float((observed - expected) / (1 - expected)), n_used


def krippendorff_alpha(items, labels, n_labels):
    """Krippendorff's alpha for nominal labels, with missing answers allowed.

    Items with fewer than two answers cannot be paired and are ignored, as Krippendorff
    prescribes. Matches krippendorff.alpha(reliability_data=..., level_of_measurement="nominal",
    value_domain=range(n_labels)). nan where undefined: no pairable item, or every pairable
    answer carries the same label (expected disagreement 0).
    """
    o = coincidence_matrix(items, labels, n_labels)
    n_v = o.sum(axis=0)
    n = n_v.sum()
    # Nominal distance is 1 off the diagonal, so both disagreements reduce to "total minus diagonal".
    expected_disagreement = n * n - (n_v * n_v).sum()
    if n == 0 or expected_disagreement == 0:
        return math.nan
    observed_disagreement = n - np.trace(o)
    return float(1 - (n - 1) * observed_disagreement / expected_disagreement)


def coincidence_matrix(items, labels, n_labels):
    """Krippendorff's coincidence matrix: an (n_labels, n_labels) float array.

    Every ordered pair of answers within an item counts 1 / (m_u - 1), m_u being the item's
    number of answers, so each pairable answer contributes exactly 1 in total and items with
    many answers do not outweigh items with few. Items with a single answer contribute nothing.
    """
    items, _, labels = _answers(items, labels, n_labels)
    per_item = np.bincount(items).astype(float) - 1
    weight = np.divide(1.0, per_item, out=np.zeros_like(per_item), where=per_item > 0)
    return _pair_counts(items, labels, n_labels, weight)


def pair_confusion(items, raters, labels, n_labels):
    """Counts of ordered pairs of answers by two different raters on the same item, (n_labels, n_labels) int.

    Cell [a, b] is how often one annotator said a while another said b on the same item; the
    matrix is symmetric and sums to sum over items of m_u * (m_u - 1). Unlike the coincidence
    matrix, an item with many answers counts more: this is for reading which labels get confused.
    """
    items, raters, labels = _answers(items, labels, n_labels, raters)
    # One answer per rater and item makes "pairs of different raters" the same as "pairs of
    # different answers", so raters are only needed to check that.
    _order_by_item_and_rater(items, raters, int(raters.max(initial=-1)) + 1)
    counts = _pair_counts(items, labels, n_labels, np.ones(int(items.max(initial=-1)) + 1))
    # Float sums of integer counts are exact below 2**53, far above any labeling project.
    return np.rint(counts).astype(np.int64)


def label_agreement(confusion):
    """Per label: of the pairs where one annotator chose it, the share where the other did too.

    That is the diagonal over the row sums of pair_confusion's matrix; nan for a label nobody
    chose on an item someone else also answered.
    """
    confusion = np.asarray(confusion, dtype=float)
    rows = confusion.sum(axis=1)
    return np.divide(np.diag(confusion), rows, out=np.full(rows.shape, np.nan), where=rows > 0)


# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------


def _kappas(confusions):
    """Cohen's kappa of each (n_labels, n_labels) count matrix in a (pairs, n_labels, n_labels) stack.

    Written as 1 - n * disagreements / (n**2 - sum of margin products), which is sklearn's
    1 - sum(w * confusion) / sum(w * expected) multiplied through by n: the parts stay integers
    (int64, no overflow below about 3e9 shared items), so the undefined case is tested exactly.
    """
    confusions = confusions.astype(np.int64, copy=False)
    n = confusions.sum(axis=(1, 2))
    agreements = np.trace(confusions, axis1=1, axis2=2)
    margin_products = (confusions.sum(axis=1) * confusions.sum(axis=2)).sum(axis=1)
    denominator = n * n - margin_products
    kappas = np.full(n.shape, np.nan)
    defined = denominator > 0
    kappas[defined] = 1 - (n * (n - agreements))[defined] / denominator[defined]
    return kappas


def _pair_counts(items, labels, n_labels, item_weight):
    """Sum over items of item_weight[u] times the counts of ordered answer pairs by label.

    Works on (item, label) cells rather than on answers: an item where everyone agrees is one
    cell and yields no cross pairs, so the work grows with disagreement, not with raters squared.
    """
    cell_items, cell_labels, counts = _cells(items, labels, n_labels)
    weight = item_weight[cell_items]
    # Within a cell of c equal answers there are c * (c - 1) ordered pairs, all on the diagonal.
    diagonal = np.bincount(cell_labels, weights=counts * (counts - 1) * weight, minlength=n_labels)
    # Between two cells of the same item, every answer of one pairs with every answer of the other.
    first, second = _pairs_within_runs(np.bincount(cell_items))
    across = np.bincount(
        cell_labels[first] * n_labels + cell_labels[second],
        weights=counts[first] * counts[second] * weight[first],
        minlength=n_labels * n_labels,
    ).reshape(n_labels, n_labels)
    return across + across.T + np.diag(diagonal)


def _cells(items, labels, n_labels):
    """The non-empty cells of the items x labels count table, as (item, label, count) sorted by item.

    Sparse because n_items * n_labels can be far larger than the number of answers.
    """
    keys, counts = np.unique(items * n_labels + labels, return_counts=True)
    return keys // n_labels, keys % n_labels, counts.astype(np.int64)


def _pairs_within_runs(sizes):
    """All unordered pairs of positions within consecutive runs of the given sizes (zeros allowed).

    Returns (first, second) index arrays with first < second, both in the same run: for sizes
    [2, 0, 3] the pairs are (0, 1), (2, 3), (2, 4), (3, 4). Position p, with `later` positions
    after it in its run, is repeated `later` times and paired with p + 1, ..., p + later.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(sizes.sum())
    run_starts = np.cumsum(sizes) - sizes
    later = np.repeat(run_starts + sizes, sizes) - np.arange(n) - 1
    first = np.repeat(np.arange(n), later)
    block_starts = np.repeat(np.cumsum(later) - later, later)
    second = first + 1 + (np.arange(first.size) - block_starts)
    return first, second


def _order_by_item_and_rater(items, raters, n_raters):
    """The permutation sorting answers by (item, rater); raises if a rater answered an item twice.

    A second answer would be paired with the rater's own first one and double every pair with
    the others, so every statistic would be quietly wrong.
    """
    keys = items * n_raters + raters
    order = np.argsort(keys)
    ordered = keys[order]
    repeats = ordered[1:] == ordered[:-1]
    if repeats.any():
        key = int(ordered[1:][repeats][0])
        raise ValueError(f"rater {key % n_raters} answered item {key // n_raters} more than once")
    return order


def _answers(items, labels, n_labels, raters=None, n_raters=None):
    """The answer arrays as int64 (so index arithmetic cannot overflow), checked for shape and range."""
    items = _index_array(items, "items")
    labels = _index_array(labels, "labels", n_labels)
    raters = None if raters is None else _index_array(raters, "raters", n_raters)
    lengths = {items.size, labels.size} | (set() if raters is None else {raters.size})
    if len(lengths) > 1:
        raise ValueError("items, raters and labels must have one entry per answer (equal lengths)")
    return items, raters, labels


def _index_array(values, name, upper=None):
    values = np.asarray(values).reshape(-1)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got {values.dtype}")
    values = values.astype(np.int64, copy=False)
    # bincount would silently grow the tables (or refuse negatives with a vague message).
    if values.size and (values.min() < 0 or (upper is not None and values.max() >= upper)):
        bound = "" if upper is None else f" below {upper}"
        raise ValueError(f"{name} must be indices from 0{bound}; got {values.min()}..{values.max()}")
    return values
