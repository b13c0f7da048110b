"""Train/validation/test splits that keep groups and duplicates together, and leakage reports.

A split is an int8 per row: 0 = train, 1 = validation, 2 = test (-1, in user-supplied splits,
means "in no split" and is ignored by the reports). Pure numpy, no Django models.

Rows that must stay together form *blocks*: the connected components of "same group" and
"same unit" (units are usually the duplicate clusters from `dedup.components`). Blocks are
assigned whole, so a group or a duplicate cluster can never straddle two splits.
See docs/dedup-and-splits.md for the algorithms and their guarantees.
"""
import datetime

import numpy as np

from lifecycle.datasets.dedup import components, sorted_unique

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")
UNLABELED_NAME = "(unlabeled)"
MAX_EXAMPLES = 20


def assign_splits(labels, *, groups=None, timestamps=None, units=None, fractions=(0.8, 0.1, 0.1), seed=0, by_time=False):
    """Split rows into train (0), validation (1) and test (2); returns an int8 array.

    labels: int label ids, -1 for unlabeled rows. groups and units: one id per row (rows with
    the same id stay together; a negative int, None, NaN or "" means no group). By default
    blocks are stratified by label; by_time=True orders them by time instead (timestamps
    required) and ignores labels and seed.
    """
    labels = _as_ints(labels, "labels")
    n = len(labels)
    fractions = _check_fractions(fractions)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    blocks = _blocks(n, groups, units)
    if by_time:
        if timestamps is None:
            raise ValueError("by_time=True needs timestamps")
        return _assign_by_time(blocks, _as_times(timestamps, n), fractions)
    return _assign_stratified(labels, blocks, fractions, seed)


def _as_ints(values, name):
    array = np.asarray(values)
    if array.ndim != 1 or (len(array) and array.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a one-dimensional array of integers")
    return array.astype(np.int64)


def _check_fractions(fractions):
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError("fractions must be three non-negative numbers (train, validation, test) summing to 1")
    return fractions / fractions.sum()


def _blocks(n, groups, units):
    """Block index 0..b-1 per row: the connected components of shared group and unit ids."""
    links = [np.zeros((0, 2), np.int32 if n < 2**31 else np.int64)]
    for ids in (groups, units):
        if ids is not None:
            links.append(_same_id_pairs(_sortable_ids(ids, n)))
    roots = components(n, np.concatenate(links))
    del links
    # Dense numbers in the order of the roots (what np.unique's inverse gives), without its
    # sort and its three row-sized arrays: a root is its component's smallest row.
    is_root = np.zeros(n, dtype=bool)
    is_root[roots] = True
    return (np.cumsum(is_root) - 1)[roots]


def _sortable_ids(ids, n):
    """Ids that sort, -1 (or any negative) where a row has none: integer ids as they are (no
    dense codes needed to find equal ones, and no sort to make them: ~40 MB less at a million
    rows), other kinds as _id_codes."""
    array = np.asarray(ids)
    if array.dtype.kind in "iu" and array.shape == (n,):
        return array
    return _id_codes(ids, n)


def _id_codes(ids, n):
    """Dense int codes for group-like ids, -1 where a row has none."""
    array = np.asarray(ids)
    if array.shape != (n,):
        raise ValueError(f"expected one id per row ({n}), got shape {array.shape}")
    if array.dtype.kind == "O":
        return _object_codes(array)
    missing = _missing(array)
    codes = np.full(n, -1, dtype=np.int64)
    codes[~missing] = np.unique(array[~missing], return_inverse=True)[1]
    return codes


def _missing(array):
    if array.dtype.kind in "iu":
        return array < 0
    if array.dtype.kind == "f":
        return np.isnan(array) | (array < 0)
    if array.dtype.kind in "US":
        return array == array.dtype.type()
    return np.zeros(len(array), dtype=bool)


def _object_codes(array):
    # Mixed Python objects cannot be sorted by np.unique; a dict gives each distinct id a code.
    seen = {}
    missing = (None, "")
    return np.fromiter(
        (-1 if _is_missing_object(value, missing) else seen.setdefault(value, len(seen)) for value in array),
        dtype=np.int64, count=len(array),
    )


def _is_missing_object(value, missing):
    if isinstance(value, float):
        return value != value or value < 0
    if isinstance(value, int):
        return value < 0
    return value in missing


def _same_id_pairs(codes):
    """Pairs linking each row to the first row with the same (non-missing) code."""
    rows = np.flatnonzero(codes >= 0)
    order = rows[np.argsort(codes[rows], kind="stable")]
    ordered = codes[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]] if len(order) else np.zeros(0, bool)
    first = order[np.flatnonzero(new)][np.cumsum(new) - 1]
    # 32-bit rows where they fit: these pairs are the split's biggest arrays.
    kind = np.int32 if len(codes) < 2**31 else np.int64
    return np.stack([first[~new].astype(kind), order[~new].astype(kind)], axis=1)


# ---------------------------------------------------------------- stratified assignment


def _assign_stratified(labels, block, fractions, seed):
    """Greedy: blocks in seeded random order, larger first, each to the split it fills least.

    "Fills least" is the smallest share of target reached after adding the block, summed
    over the block's labels (weighted by its rows of each label). Relative rather than
    absolute deficits spread big blocks over all splits in proportion, instead of piling
    them into train until train's deficit drops to validation's.
    """
    stratum = np.unique(labels, return_inverse=True)[1]
    targets = fractions[:, None] * np.bincount(stratum)[None, :]
    # A zero target (a split with fraction 0) must never be chosen: its inverse is infinite.
    with np.errstate(divide="ignore"):
        inverse = np.where(targets > 0, 1.0 / targets, np.inf)
    sizes, single, mixed = _block_strata(block, stratum)
    order = _block_order(sizes, seed)
    chosen = _greedy(order, sizes.tolist(), single.tolist(), mixed, inverse.tolist())
    return np.frombuffer(chosen, dtype=np.int8)[block]


def _block_strata(block, stratum):
    """Rows per block; the stratum of single-stratum blocks (-1 otherwise); (stratum, rows) lists for the rest."""
    n_blocks, n_strata = block.max() + 1, stratum.max() + 1
    pair, count = np.unique(block * n_strata + stratum, return_counts=True)
    owner, which = pair // n_strata, pair % n_strata
    per_block = np.bincount(owner, minlength=n_blocks)
    single = np.full(n_blocks, -1, dtype=np.int64)
    single[owner[per_block[owner] == 1]] = which[per_block[owner] == 1]
    mixed = {}
    for b, s, c in zip(*(a[per_block[owner] > 1].tolist() for a in (owner, which, count))):
        mixed.setdefault(b, []).append((s, c))
    return np.bincount(block, minlength=n_blocks), single, mixed


def _block_order(sizes, seed):
    shuffled = np.random.default_rng(seed).permutation(len(sizes))
    return shuffled[np.argsort(-sizes[shuffled], kind="stable")]


def _greedy(order, sizes, single, mixed, inverse):
    # Plain Python lists on purpose: one loop step per block (a million for a million
    # singleton rows), and numpy scalar arithmetic costs ten times more per step.
    filled = [[0.0] * len(inverse[0]) for _ in range(3)]
    chosen = bytearray(len(sizes))
    for b in _as_ints_in_chunks(order):
        s = single[b]
        if s >= 0:
            split = _least_filled(filled, inverse, s, sizes[b])
            filled[split][s] += sizes[b]
        else:
            split = _least_filled_mixed(filled, inverse, mixed[b])
            for t, c in mixed[b]:
                filled[split][t] += c
        chosen[b] = split
    return chosen


def _as_ints_in_chunks(array, chunk=1 << 16):
    """Python ints from a big array without a list of them all (36 bytes each) at once."""
    for start in range(0, len(array), chunk):
        yield from array[start:start + chunk].tolist()


def _least_filled(filled, inverse, s, size):
    """The split whose share of its target for stratum s would be smallest after adding size rows."""
    a = (filled[0][s] + size) * inverse[0][s]
    b = (filled[1][s] + size) * inverse[1][s]
    c = (filled[2][s] + size) * inverse[2][s]
    return 0 if a <= b and a <= c else (1 if b <= c else 2)


def _least_filled_mixed(filled, inverse, parts):
    scores = [sum(c * (filled[k][t] + c) * inverse[k][t] for t, c in parts) for k in range(3)]
    return scores.index(min(scores))


# ---------------------------------------------------------------- by time


def _assign_by_time(block, times, fractions):
    """Blocks in order of their newest row; cut at the row fractions; straddlers go later.

    A block (a group) that spans a boundary goes to the later split, so train never holds
    a row newer than the train/validation cut-off: the model is not trained on the future.
    The price is that a later split may hold a group's older rows; `time_overlap` reports it.
    Blocks with the same newest time at a boundary all go to the later split as well.
    """
    newest = _block_max(block, times)
    order = np.argsort(newest, kind="stable")
    n = len(block)
    cuts = np.round(np.cumsum(fractions)[:2] * n)
    ends = np.cumsum(np.bincount(block)[order])
    split = (ends[:, None] > cuts[None, :]).sum(axis=1)
    split = _later_on_ties(newest[order], split)
    chosen = np.empty(len(order), dtype=np.int8)
    chosen[order] = split
    return chosen[block]


def _block_max(block, times):
    order = np.argsort(block, kind="stable")
    starts = np.flatnonzero(np.r_[True, block[order][1:] != block[order][:-1]])
    return np.maximum.reduceat(times[order], starts)


def _later_on_ties(sorted_times, split):
    starts = np.flatnonzero(np.r_[True, sorted_times[1:] != sorted_times[:-1]])
    sizes = np.diff(np.r_[starts, len(split)])
    return np.repeat(np.maximum.reduceat(split, starts), sizes)


def _as_times(timestamps, n):
    """Timestamps as a sortable int64 or float64 array (datetimes become POSIX seconds)."""
    array = np.asarray(timestamps)
    if array.shape != (n,):
        raise ValueError(f"expected one timestamp per row ({n}), got shape {array.shape}")
    if array.dtype.kind == "M":
        if np.isnat(array).any():
            raise ValueError("timestamps contain NaT")
        return array.astype("datetime64[us]").view(np.int64)
    if array.dtype.kind == "O":
        array = np.array([_object_time(value) for value in array], dtype=np.float64)
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and np.isnan(array).any()):
        raise ValueError("timestamps must be numbers or datetimes, with none missing")
    return array


def _object_time(value):
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and value == value:
        return float(value)
    raise ValueError(f"not a timestamp: {value!r}")


def time_overlap(splits, timestamps):
    """How far the splits overlap in time, JSON-ready.

    For each ordered pair of splits (train/validation, validation/test, train/test): the
    earlier split's newest time, the later split's oldest, and how many rows of the later
    split are older than the earlier split's newest. Times are reported as given: numbers
    as numbers, datetimes as ISO-8601 strings.
    """
    splits = _as_splits(splits)
    given = np.asarray(timestamps)
    times = _as_times(given, len(splits))
    report = {}
    for earlier, later in ((TRAIN, VALIDATION), (VALIDATION, TEST), (TRAIN, TEST)):
        early, late = np.flatnonzero(splits == earlier), np.flatnonzero(splits == later)
        if len(early) and len(late):
            newest, oldest = early[times[early].argmax()], late[times[late].argmin()]
            report[f"{SPLIT_NAMES[earlier]}/{SPLIT_NAMES[later]}"] = {
                "earlier_newest": _json_time(given[newest]),
                "later_oldest": _json_time(given[oldest]),
                "rows": int((times[late] < times[newest]).sum()),
            }
    return {"pairs": report, "overlap": any(entry["rows"] for entry in report.values())}


def _json_time(value):
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value))
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------- reports


def leakage_report(splits, *, exact_keys, near_pairs=None, groups=None, timestamps=None):
    """What the evaluation splits share with each other, as a JSON-ready dict.

    Counts and up to 20 example row pairs for exact duplicates, near-duplicate pairs and
    groups found in more than one split. has_leakage is true when any of them is non-zero;
    a time overlap (with timestamps) is reported but does not count, since a random split
    always has one.
    """
    splits = _as_splits(splits)
    n = len(splits)
    report = {"rows": _row_counts(splits)}
    report["exact_duplicates"] = None if exact_keys is None else _shared_ids(_exact_codes(exact_keys, n), splits, "keys")
    report["near_duplicates"] = None if near_pairs is None else _crossing_pairs(near_pairs, splits)
    report["groups"] = None if groups is None else _shared_ids(_id_codes(groups, n), splits, "groups")
    report["time_overlap"] = None if timestamps is None else time_overlap(splits, timestamps)
    counts = [report["exact_duplicates"], report["near_duplicates"], report["groups"]]
    report["has_leakage"] = any(entry and entry["rows"] for entry in counts)
    return report


def _as_splits(splits):
    splits = _as_ints(splits, "splits")
    if len(splits) and (splits.min() < -1 or splits.max() > TEST):
        raise ValueError("splits must hold 0 (train), 1 (validation), 2 (test) or -1 (none)")
    return splits


def _row_counts(splits):
    counts = {name: int((splits == value).sum()) for value, name in enumerate(SPLIT_NAMES)}
    counts["unassigned"] = int((splits < 0).sum())
    return counts


def _exact_codes(exact_keys, n):
    keys = np.asarray(exact_keys, dtype=np.int64)
    if keys.shape != (n,):
        raise ValueError(f"expected one exact key per row ({n}), got shape {keys.shape}")
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


def _shared_ids(codes, splits, noun):
    """Ids (keys or groups) whose rows sit in more than one split, rows in them, example pairs."""
    rows = np.flatnonzero((codes >= 0) & (splits >= 0))
    order = rows[np.lexsort((splits[rows], codes[rows]))]
    ids, where = codes[order], splits[order]
    crossing = np.flatnonzero((ids[1:] == ids[:-1]) & (where[1:] != where[:-1]))
    leaking = sorted_unique(ids[crossing])
    examples = np.stack([order[crossing], order[crossing + 1]], axis=1)
    return {
        noun: int(len(leaking)),
        "rows": int(np.isin(ids, leaking).sum()),
        "examples": _examples(examples),
    }


def _crossing_pairs(pairs, splits):
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(splits)):
        raise ValueError("near_pairs must index rows of splits")
    a, b = splits[pairs[:, 0]], splits[pairs[:, 1]]
    crossing = pairs[(a >= 0) & (b >= 0) & (a != b)]
    return {"pairs": int(len(crossing)), "rows": int(len(sorted_unique(crossing.ravel()))), "examples": _examples(crossing)}


def _examples(pairs):
    """The first MAX_EXAMPLES pairs as [low, high] lists of Python ints, lowest rows first."""
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))][:MAX_EXAMPLES]
    return pairs.tolist()


def split_summary(splits, labels, label_names):
    """Rows per split and per label in each split, JSON-ready.

    label_names: a sequence indexed by label id, or a dict id -> name. Named labels are
    listed even at zero, so every split has the same columns; -1 is "(unlabeled)".
    """
    splits, labels = _as_splits(splits), _as_ints(labels, "labels")
    if len(splits) != len(labels):
        raise ValueError("splits and labels must have the same length")
    names = dict(label_names) if isinstance(label_names, dict) else dict(enumerate(label_names))
    summary = {}
    for value, split_name in [(None, "all"), *enumerate(SPLIT_NAMES)]:
        in_split = labels if value is None else labels[splits == value]
        summary[split_name] = {"rows": int(len(in_split)), "labels": _label_counts(in_split, names)}
    return summary


def _label_counts(labels, names):
    counts = {name: 0 for name in names.values()}
    ids, found = np.unique(labels, return_counts=True)
    for label_id, count in zip(ids.tolist(), found.tolist()):
        name = UNLABELED_NAME if label_id < 0 else names.get(label_id, str(label_id))
        counts[name] = counts.get(name, 0) + count
    return counts
