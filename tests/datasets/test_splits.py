"""Group- and duplicate-safe stratified and time-ordered splits, leakage reports (no database)."""
import datetime
import json

import numpy as np
import pytest

from lifecycle.datasets.dedup import components
from lifecycle.datasets.splits import TEST, TRAIN, VALIDATION, assign_splits, leakage_report, split_summary, time_overlap
from tests.datasets import reference


def grouped_rows(n=20_000, n_labels=12, seed=0):
    """n rows in groups of 1-5 consecutive rows, labels drawn per row."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, size=n)
    groups = np.repeat(np.arange(n), sizes)[:n]
    return rng.integers(0, n_labels, size=n), groups


def assert_groups_intact(splits, groups):
    per_group = {}
    for g, s in zip(groups.tolist(), splits.tolist()):
        per_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in per_group.values())


# ---------------------------------------------------------------- stratified


def test_stratified_split_keeps_groups_and_label_proportions():
    labels, groups = grouped_rows()
    splits = assign_splits(labels, groups=groups, seed=3)
    assert splits.dtype == np.int8
    assert_groups_intact(splits, groups)
    whole = np.bincount(labels, minlength=12) / len(labels)
    for split, fraction in zip((TRAIN, VALIDATION, TEST), (0.8, 0.1, 0.1)):
        in_split = labels[splits == split]
        assert abs(len(in_split) / len(labels) - fraction) < 0.01
        assert np.abs(np.bincount(in_split, minlength=12) / len(in_split) - whole).max() < 0.01


def test_same_seed_same_split_and_another_seed_another():
    labels, groups = grouped_rows(5000)
    first = assign_splits(labels, groups=groups, seed=1)
    assert np.array_equal(first, assign_splits(labels, groups=groups, seed=1))
    assert not np.array_equal(first, assign_splits(labels, groups=groups, seed=2))


def test_units_and_groups_are_combined_into_blocks():
    labels = np.zeros(8, dtype=np.int64)
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    units = np.array([10, 11, 11, 12, 13, 14, 15, 15])  # unit 11 joins groups 0 and 1
    for seed in range(20):
        splits = assign_splits(labels, groups=groups, units=units, fractions=(0.5, 0.25, 0.25), seed=seed)
        assert len(set(splits[:4].tolist())) == 1
        assert_groups_intact(splits, groups)


def test_unlabeled_rows_are_split_by_size_only():
    splits = assign_splits(np.full(1000, -1), seed=0)
    assert np.bincount(splits, minlength=3).tolist() == [800, 100, 100]


def test_a_split_with_fraction_zero_stays_empty():
    labels, groups = grouped_rows(2000)
    splits = assign_splits(labels, groups=groups, fractions=(0.9, 0.0, 0.1))
    assert (splits != VALIDATION).all()


def test_edge_cases_empty_one_row_one_giant_group():
    assert assign_splits(np.zeros(0, np.int64)).shape == (0,)
    assert assign_splits([4]).tolist() == [TRAIN]
    giant = assign_splits(np.arange(100) % 3, groups=np.zeros(100, np.int64))
    assert len(set(giant.tolist())) == 1


def test_all_identical_texts_land_in_one_split():
    texts = ["I want a refund"] * 50 + [f"question number {i} about billing" for i in range(50)]
    units = components(len(texts), reference.exact_pairs(reference.exact_keys(texts)))
    splits = assign_splits(np.zeros(len(texts), np.int64), units=units)
    assert len(set(splits[:50].tolist())) == 1


def test_missing_group_ids_mean_no_group():
    labels = np.zeros(1000, np.int64)
    groups = np.array([None] * 1000, dtype=object)
    groups[:10] = "conversation-1"
    splits = assign_splits(labels, groups=groups)
    assert len(set(splits[:10].tolist())) == 1
    assert len(set(splits[10:].tolist())) == 3  # the other rows are singletons, spread out


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError):
        assign_splits([0, 1, 2], fractions=fractions)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        assign_splits(["a", "b"])
    with pytest.raises(ValueError):
        assign_splits([0, 1], groups=[1])
    with pytest.raises(ValueError):
        assign_splits([0, 1], by_time=True)


# ---------------------------------------------------------------- by time


def test_by_time_puts_train_before_validation_before_test():
    rng = np.random.default_rng(4)
    times = rng.integers(0, 500, size=10_000)  # many ties
    splits = assign_splits(rng.integers(0, 5, 10_000), timestamps=times, by_time=True)
    assert times[splits == TRAIN].max() < times[splits == VALIDATION].min()
    assert times[splits == VALIDATION].max() < times[splits == TEST].min()
    assert abs((splits == TRAIN).mean() - 0.8) < 0.01
    assert not time_overlap(splits, times)["overlap"]


def test_by_time_keeps_groups_whole_and_reports_the_overlap_it_causes():
    n = 1000
    times = np.arange(n)
    groups = np.arange(n)
    groups[[100, 950]] = 5000  # one conversation spanning almost the whole period
    splits = assign_splits(np.zeros(n, np.int64), groups=groups, timestamps=times, by_time=True)
    assert splits[100] == splits[950] == TEST  # a spanning group goes to the later split
    assert_groups_intact(splits, groups)
    newest = [times[splits == s].max() for s in (TRAIN, VALIDATION)]
    assert newest[0] < times[(splits == VALIDATION)].min()  # train still holds no row from later
    overlap = time_overlap(splits, times)
    assert overlap["overlap"]
    assert overlap["pairs"]["train/test"]["rows"] == 1
    assert overlap["pairs"]["validation/test"]["later_oldest"] == 100


def test_by_time_accepts_datetimes():
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    moments = [start + datetime.timedelta(hours=h) for h in range(10)][::-1]
    splits = assign_splits(np.zeros(10, np.int64), timestamps=moments, by_time=True)
    assert splits.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    as_numpy = np.datetime64("2026-01-01T00:00") + np.arange(10)[::-1] * np.timedelta64(1, "h")
    assert assign_splits(np.zeros(10, np.int64), timestamps=as_numpy, by_time=True).tolist() == splits.tolist()
    report = time_overlap(splits, moments)
    json.dumps(report)
    assert report["pairs"]["train/validation"]["earlier_newest"] == "2026-01-01T07:00:00+00:00"


def test_by_time_refuses_missing_times():
    with pytest.raises(ValueError):
        assign_splits([0, 0], timestamps=[1.0, float("nan")], by_time=True)


# ---------------------------------------------------------------- leakage report


def test_leakage_report_finds_planted_exact_near_and_group_leaks():
    texts = [f"message {i} about an order" for i in range(10)]
    texts[7] = texts[2].upper()  # exact duplicate of row 2, row 2 in train, row 7 in test
    splits = np.array([0, 0, 0, 0, 0, 0, 1, 2, 2, -1])
    near = np.array([[1, 6], [3, 4], [5, 9]])  # 1-6 crosses; 3-4 same split; 9 is in no split
    groups = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 5])
    groups[8] = 0  # group 0: row 0 in train, row 8 in test
    report = leakage_report(splits, exact_keys=reference.exact_keys(texts), near_pairs=near, groups=groups)
    assert report["rows"] == {"train": 6, "validation": 1, "test": 2, "unassigned": 1}
    assert report["exact_duplicates"] == {"keys": 1, "rows": 2, "examples": [[2, 7]]}
    assert report["near_duplicates"] == {"pairs": 1, "rows": 2, "examples": [[1, 6]]}
    assert report["groups"] == {"groups": 1, "rows": 2, "examples": [[0, 8]]}
    assert report["has_leakage"] is True
    json.dumps(report)


def test_leakage_examples_are_capped_at_twenty():
    splits = np.tile([0, 2], 100)
    keys = np.repeat(np.arange(100), 2)
    report = leakage_report(splits, exact_keys=keys)
    assert report["exact_duplicates"]["keys"] == 100
    assert len(report["exact_duplicates"]["examples"]) == 20


def test_pipeline_splits_have_no_leakage():
    rng = np.random.default_rng(9)
    words = np.array("refund order parcel card login invoice late broken address cancel".split())
    texts = [" ".join(rng.choice(words, 12)) + f" #{i}" for i in range(3000)]
    for i in range(0, 300, 3):
        texts[i + 1] = texts[i].upper()  # exact
        texts[i + 2] = texts[i] + " please"  # near
    keys = reference.exact_keys(texts)
    index = reference.NearDuplicateIndex()
    for start in range(0, len(texts), 1000):
        index.add(texts[start:start + 1000], start)
    near = reference.verify_pairs(index.candidate_pairs(), lambda rows: [texts[i] for i in rows])
    units = components(len(texts), np.concatenate([reference.exact_pairs(keys), near]))
    groups = rng.integers(0, 1000, len(texts))
    splits = assign_splits(rng.integers(0, 4, len(texts)), groups=groups, units=units)
    report = leakage_report(splits, exact_keys=keys, near_pairs=near, groups=groups)
    assert report["has_leakage"] is False
    assert report["near_duplicates"]["pairs"] == 0 and len(near) >= 100
    # Without the units the same split leaks:
    careless = assign_splits(rng.integers(0, 4, len(texts)), seed=5)
    assert leakage_report(careless, exact_keys=keys, near_pairs=near)["has_leakage"] is True


def test_leakage_report_refuses_bad_splits():
    with pytest.raises(ValueError):
        leakage_report([0, 3], exact_keys=[1, 2])
    with pytest.raises(ValueError):
        leakage_report([0, 1], exact_keys=[1, 2, 3])


# ---------------------------------------------------------------- summary


def test_split_summary_counts_rows_and_labels_per_split():
    splits = np.array([0, 0, 0, 1, 2, 2])
    labels = np.array([0, 1, -1, 0, 1, 7])
    summary = split_summary(splits, labels, ["billing", "shipping", "other"])
    assert summary["all"] == {"rows": 6, "labels": {"billing": 2, "shipping": 2, "other": 0, "(unlabeled)": 1, "7": 1}}
    assert summary["train"] == {"rows": 3, "labels": {"billing": 1, "shipping": 1, "other": 0, "(unlabeled)": 1}}
    assert summary["validation"]["labels"] == {"billing": 1, "shipping": 0, "other": 0}
    assert summary["test"]["rows"] == 2
    json.dumps(summary)
    assert split_summary(splits, labels, {0: "a", 1: "b"})["test"]["labels"] == {"a": 0, "b": 1, "7": 1}


def test_integer_group_ids_split_like_the_same_ids_as_strings():
    """Integer ids (the ingest's 63-bit group hashes, -1 for none) are grouped as they are,
    without dense codes: the same blocks, so the same split, as their text forms."""
    labels, groups = grouped_rows(n=5_000)
    hashed = (groups * 7_919_000_003_301 + 12_345) % (2**63 - 25)  # big, spread-out ids
    hashed[::17] = -1
    as_text = np.array([None if g < 0 else f"customer-{g}" for g in hashed.tolist()], dtype=object)
    units = np.arange(5_000) // 3
    by_text = assign_splits(labels, groups=as_text, units=units, seed=4)
    assert np.array_equal(assign_splits(labels, groups=hashed, units=units, seed=4), by_text)
    small = np.where(hashed >= 0, groups, -1).astype(np.int32)  # another integer kind, the same groups
    assert np.array_equal(assign_splits(labels, groups=small, units=units, seed=4), by_text)
    assert_groups_intact(by_text[hashed >= 0], hashed[hashed >= 0])


def test_groups_and_units_given_as_row_names_split_like_any_ids():
    """The ingest hands groups as each row's first row in its group and units as a row of
    their own: the split and the leakage report take those without sorting, and agree with
    the general path on the same groups and units written as arbitrary ids."""
    from lifecycle.datasets.dedup import first_rows

    rng = np.random.default_rng(12)
    n = 5_000
    labels = rng.integers(-1, 6, n)
    groups = rng.integers(-1, 900, n)
    units = np.arange(n)
    duplicate = rng.random(n) < 0.1
    units[duplicate] = np.minimum(rng.integers(0, n, n), units)[duplicate]
    while (units[units] != units).any():  # until each unit is named by a row of its own
        units = units[units]
    named_groups = first_rows(groups, ignore_negative=True)
    as_text = np.array([f"g{g}" if g >= 0 else "" for g in groups], dtype=object)
    unit_codes = np.array([f"u{u}" for u in units], dtype=object)
    for seed in (0, 4):
        fast = assign_splits(labels, groups=named_groups, units=units, seed=seed)
        slow = assign_splits(labels, groups=as_text, units=unit_codes, seed=seed)
        assert (fast == slow).all()
    careless = rng.integers(0, 3, n)
    near = rng.integers(0, n, size=(300, 2))
    fast = leakage_report(careless, exact_keys=units, near_pairs=near, groups=named_groups)
    slow = leakage_report(careless, exact_keys=-1 - units, near_pairs=near, groups=as_text)  # negative: sorted to codes
    assert fast["near_duplicates"] == slow["near_duplicates"] and fast["has_leakage"] == slow["has_leakage"]
    for kind, codes in (("exact_duplicates", units), ("groups", named_groups)):
        assert {k: v for k, v in fast[kind].items() if k != "examples"} == {k: v for k, v in slow[kind].items() if k != "examples"}
        # Examples may be other pairs of the same leaks: each a row and the row its code names.
        assert len(fast[kind]["examples"]) == len(slow[kind]["examples"]) == 20
        for low, high in fast[kind]["examples"]:
            assert codes[low] == codes[high] and careless[low] != careless[high]


def test_leakage_report_reads_near_pairs_chunk_by_chunk():
    from lifecycle.datasets.dedup import pack_pairs

    rng = np.random.default_rng(13)
    splits = rng.integers(0, 3, 1_000)
    near = rng.integers(0, 1_000, size=(700, 2))

    class OnDisk:
        def chunks(self):
            return np.array_split(pack_pairs(near), 6)

    whole = leakage_report(splits, exact_keys=np.arange(1_000), near_pairs=near)
    assert leakage_report(splits, exact_keys=np.arange(1_000), near_pairs=OnDisk()) == whole
    assert whole["near_duplicates"]["pairs"] > 0 and len(whole["near_duplicates"]["examples"]) == 20
