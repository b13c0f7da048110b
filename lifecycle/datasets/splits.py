"""Train/validation/test splits that keep groups and duplicates together, and leakage reports.

A split is an int8 per row: 0 = train, 1 = validation, 2 = test (-1, in user-supplied splits,
means "in no split" and is ignored by the reports). Pure numpy, no Django models.

Rows that must stay together form *blocks*: the connected components of "same group" and
"same unit" (units are usually the duplicate clusters from `dedup.components`). Blocks are
assigned whole, so a group or a duplicate cluster can never straddle two splits.
See docs/dedup-and-splits.md for the algorithms and their guarantees.
"""
import datetime
from dataclasses import dataclass

import numpy as np

from lifecycle.datasets.dedup import components, first_rows, names_another_row, pair_columns, row_kind, sorted_unique

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")
UNLABELED_NAME = "(unlabeled)"
MAX_EXAMPLES = 20
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
# What a split may keep together (SplitOptions.keep_together), strictest first.
KEEP_TOGETHER = {
    "all": "groups, exact and near duplicates",
    "groups_exact": "groups and exact duplicates (near duplicates treated as separate rows)",
    "groups": "groups only (duplicates treated as separate rows)",
}
# The leakage a choice of KEEP_TOGETHER accepts: reported, but not counted as leakage.
ACCEPTED_LEAKAGE = {"all": (), "groups_exact": ("near_duplicates",), "groups": ("near_duplicates", "exact_duplicates")}
# Below this many rows due, a split is held only to not being empty: on small data with many
# labels the per-label greedy gives a small split a few rows less than its share, which
# training takes; an empty split it cannot.
HALF_SHARE_FROM = 20
# Rows per chunk where per-row work goes a chunk at a time: no row-sized temporaries.
_CHUNK = 1 << 16


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
    return array if array.dtype.kind in "iu" else array.astype(np.int64)  # no copy of int32 label ids


def _as_splits(splits):
    array = _as_ints(splits, "splits")
    if len(array) and (array.min() < -1 or array.max() > TEST):
        raise ValueError("splits must hold 0 (train), 1 (validation), 2 (test) or -1 (none)")
    return array.astype(np.int8, copy=False)


def _check_fractions(fractions):
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError("fractions must be three non-negative numbers (train, validation, test) summing to 1")
    return fractions / fractions.sum()


# ---------------------------------------------------------------- blocks: groups and units


def _blocks(n, groups, units):
    """Block index 0..b-1 per row: the connected components of shared group and unit ids."""
    # Each row's first row in its group is a forest to start from: no pair per row.
    start = None if groups is None else _group_forest(groups, n)
    links = np.zeros((0, 2), row_kind(n)) if units is None else _same_id_pairs(_sortable_ids(units, n))
    roots = components(n, links, start=start)
    del links, start
    is_root = np.zeros(n, dtype=bool)
    is_root[roots] = True
    return _ranks(is_root, row_kind(n))[roots]


def _ranks(present, kind):
    """For a mask of the values that occur, each one's rank among them: np.unique's inverse
    without its sort and its row-sized arrays."""
    ranks = np.cumsum(present, dtype=kind)
    ranks -= 1
    return ranks


def _sortable_ids(ids, n):
    """Ids that sort, -1 (or any negative) where a row has none: integer ids as they are (no
    sort to make codes), other kinds as dense int64 codes (NaN and "" have none)."""
    array = np.asarray(ids)
    if array.shape != (n,):
        raise ValueError(f"expected one id per row ({n}), got shape {array.shape}")
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind == "O":  # mixed Python objects, which np.unique cannot sort
        seen = {}
        return np.fromiter((-1 if _is_missing_object(value) else seen.setdefault(value, len(seen)) for value in array),
                           dtype=np.int64, count=n)
    if array.dtype.kind == "f":
        missing = np.isnan(array) | (array < 0)
    else:
        missing = array == array.dtype.type() if array.dtype.kind in "US" else np.zeros(n, dtype=bool)
    codes = np.full(n, -1, dtype=np.int64)
    codes[~missing] = np.unique(array[~missing], return_inverse=True)[1]
    return codes


def _is_missing_object(value):
    if isinstance(value, float):
        return value != value or value < 0
    if isinstance(value, int):
        return value < 0
    return value in (None, "")


def _group_forest(groups, n):
    """Each row's first row in its group (its own where it has none): codes that name a row
    of their own, which _shared_ids checks and _blocks joins without a sort. Groups given in
    that form already (the ingest's) are used as they are."""
    codes = _sortable_ids(groups, n)
    if _names_own_rows(codes) and all((named >= 0).all() for _, named in _slices(codes)):
        return codes
    return first_rows(codes, ignore_negative=True)


def _names_own_rows(codes):
    """True when each code is the row number of a row with that same code: then linking each
    row to the row its code names links every unit together, with no sort to find them."""
    for _, named in _slices(codes):
        named = named[named >= 0]
        if len(named) and (named.max() >= len(codes) or (codes[named] != named).any()):
            return False
    return True


def _same_id_pairs(codes):
    """(k, 2) pairs linking each row with a code (not negative) to the row its code names,
    where every code names a row of its own (units from the ingest), else to the first row
    with its code. Rows are 32-bit where they fit: these pairs are the split's biggest arrays."""
    if not _names_own_rows(codes):
        codes = first_rows(codes, ignore_negative=True)
    kind = row_kind(len(codes))
    links = [np.zeros((0, 2), kind)]
    for start, named in _slices(codes):
        rows = np.flatnonzero((named >= 0) & names_another_row(named, start))
        links.append(np.stack([named[rows].astype(kind), (rows + start).astype(kind)], axis=1))
    return np.concatenate(links)


def _slices(codes):
    """(start, codes[start:start + _CHUNK]), a chunk at a time."""
    for start in range(0, len(codes), _CHUNK):
        yield start, codes[start:start + _CHUNK]


# ---------------------------------------------------------------- stratified assignment


def _assign_stratified(labels, block, fractions, seed):
    """Greedy: blocks in seeded random order, larger first, each to the split it fills least:
    the smallest share of target reached after adding the block, summed over its labels
    (weighted by its rows of each). Relative rather than absolute deficits spread big blocks
    over all splits in proportion, instead of piling them into train until train's deficit
    drops to validation's."""
    low = int(labels.min())
    if int(labels.max()) - low >= 1 << 20:
        stratum = np.unique(labels, return_inverse=True)[1]
    else:  # label ids span a small range: a count per value says which occur, with no sort
        shifted = labels - low if low else labels
        stratum = _ranks(np.bincount(shifted) > 0, np.int32)[shifted]
    targets = fractions[:, None] * np.bincount(stratum)[None, :]
    # A zero target (a split with fraction 0) must never be chosen: its inverse is infinite.
    with np.errstate(divide="ignore"):
        inverse = np.where(targets > 0, 1.0 / targets, np.inf)
    offsets, entry_strata, entry_rows = _block_strata(block, stratum)
    del stratum
    # Larger blocks first; the stable sort keeps the seeded shuffle among blocks of one size.
    sizes = np.bincount(block)
    shuffled = np.random.default_rng(seed).permutation(len(sizes))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    return _greedy(order, offsets, entry_strata, entry_rows, inverse.tolist())[block]


def _block_strata(block, stratum):
    """Each block's (stratum, rows) entries, sorted by block, then stratum: those of block b
    at entries[offsets[b]:offsets[b + 1]]. Arrays, not a dict of lists: a million rows in
    customer groups make hundreds of thousands of blocks with several labels."""
    n_blocks, n_strata = int(block.max()) + 1, int(stratum.max()) + 1
    # 32-bit (block, stratum) codes where they fit: these are the split's biggest arrays.
    pair = block.astype(np.int32 if n_blocks * n_strata < 2**31 else np.int64)
    pair *= n_strata
    pair += stratum
    pair.sort()  # in place: np.unique would sort a copy
    starts = _run_starts(pair)
    rows = np.diff(starts, append=len(pair)).astype(np.int32)
    owner, which = np.divmod(pair[starts], n_strata)
    return np.r_[0, np.cumsum(np.bincount(owner, minlength=n_blocks))], which.astype(np.int32), rows


def _run_starts(ordered):
    """Where each run of equal values starts in a sorted array."""
    return np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])


def _greedy(order, offsets, entry_strata, entry_rows, inverse, chunk=1 << 16):
    # Plain Python lists on purpose: one loop step per block (a million for a million
    # singleton rows), and numpy scalar arithmetic is far slower per step. The lists are
    # made for a chunk of blocks at a time, so they never hold every block.
    filled = [[0.0] * len(inverse[0]) for _ in range(3)]
    chosen = np.zeros(len(order), dtype=np.int8)
    for start in range(0, len(order), chunk):
        blocks = order[start:start + chunk]
        lows, highs = offsets[blocks], offsets[blocks + 1]
        lengths = highs - lows
        entries = np.repeat(lows - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        strata, rows = entry_strata[entries].tolist(), entry_rows[entries].tolist()
        picks, at = bytearray(len(blocks)), 0
        for i, length in enumerate(lengths.tolist()):
            if length == 1:  # one label (most blocks): its share of target alone, no list to build
                s, size = strata[at], rows[at]
                a = (filled[0][s] + size) * inverse[0][s]
                b = (filled[1][s] + size) * inverse[1][s]
                c = (filled[2][s] + size) * inverse[2][s]
                split = 0 if a <= b and a <= c else (1 if b <= c else 2)
                filled[split][s] += size
            else:
                parts = list(zip(strata[at:at + length], rows[at:at + length]))
                scores = [sum(c * (filled[k][t] + c) * inverse[k][t] for t, c in parts) for k in range(3)]
                split = scores.index(min(scores))
                for t, c in parts:
                    filled[split][t] += c
            at += length
            picks[i] = split
        chosen[blocks] = np.frombuffer(picks, dtype=np.int8)
    return chosen


# ---------------------------------------------------------------- splitting again


@dataclass(frozen=True)
class SplitOptions:
    """How to split a version again: the seed, what to keep together (KEEP_TOGETHER), or a
    column of the data that gives each row's split instead (then keep_together says which
    leakage across the given splits is accepted)."""
    seed: int = 0
    keep_together: str = "all"
    column: str = ""

    def __post_init__(self):
        if self.keep_together not in KEEP_TOGETHER:
            raise ValueError(f"keep_together must be one of {', '.join(KEEP_TOGETHER)}")

    def as_dict(self):
        return {"seed": self.seed, "keep_together": self.keep_together, "column": self.column}

    def describe(self):
        if self.column:
            accepting = ("" if self.keep_together == "all"
                         else f", accepting what crosses beyond {KEEP_TOGETHER[self.keep_together]}")
            return f"given by the column “{self.column}”{accepting}"
        together = "" if self.keep_together == "all" else f", keeping {KEEP_TOGETHER[self.keep_together]}"
        return f"seeded (seed {self.seed}){together}"


def split_again(labels, *, groups, keys, units, near_pairs, options, given=None, fractions=DEFAULT_FRACTIONS):
    """(splits, leakage report) for rows split again under `options`.

    labels, groups: int codes (-1: none); keys: the exact-duplicate keys; units and
    near_pairs: what the duplicate search found for these rows (split_units, and the
    confirmed pairs); given: each row's split from options.column. keep_together "all" keeps
    whole duplicate components together, as an upload does; "groups_exact" only exact
    duplicates; "groups" neither. Leakage is reported against every kind, also where the
    options treat duplicates as separate rows (and accept what crosses).
    """
    keys = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)[1] if len(keys) else np.zeros(0, np.int64)
    groups = groups if groups is not None and (np.asarray(groups) >= 0).any() else None
    kept = {"groups": groups}
    kept |= {"all": {"exact_duplicates": keys, "near_duplicates": near_pairs}, "groups_exact": {"exact_duplicates": keys},
             "groups": {}}[options.keep_together]
    if options.column:
        assigned, fractions = np.asarray(given, dtype=np.int8), None
    else:
        together = {"all": units, "groups_exact": keys, "groups": None}[options.keep_together]
        assigned = assign_splits(labels, groups=groups, units=together, fractions=fractions, seed=options.seed)
    accepted = ACCEPTED_LEAKAGE[options.keep_together]
    leak = leakage_report(assigned, exact_keys=keys, near_pairs=near_pairs, groups=groups,
                          kept_together=kept, fractions=fractions, accepted=accepted)
    return assigned, leak | {"splits_from": options.describe(), "split_options": options.as_dict()}


# ---------------------------------------------------------------- by time


def _assign_by_time(block, times, fractions):
    """Blocks in order of their newest row; cut at the row fractions; straddlers go later.

    A block (a group) that spans a boundary goes to the later split, so train never holds
    a row newer than the train/validation cut-off: the model is not trained on the future.
    The price is that a later split may hold a group's older rows; `time_overlap` reports it.
    Blocks with the same newest time at a boundary all go to the later split as well."""
    by_block = np.argsort(block, kind="stable")
    newest = np.maximum.reduceat(times[by_block], _run_starts(block[by_block]))
    order = np.argsort(newest, kind="stable")
    cuts = np.round(np.cumsum(fractions)[:2] * len(block))
    ends = np.cumsum(np.bincount(block)[order])
    split = (ends[:, None] > cuts[None, :]).sum(axis=1)
    ties = _run_starts(newest[order])
    split = np.repeat(np.maximum.reduceat(split, ties), np.diff(np.r_[ties, len(split)]))
    chosen = np.empty(len(order), dtype=np.int8)
    chosen[order] = split
    return chosen[block]


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
    """How far the splits overlap in time, JSON-ready: for each ordered pair of splits
    (train/validation, validation/test, train/test), the earlier split's newest time, the
    later split's oldest, and how many rows of the later split are older than the earlier
    split's newest. Times are reported as given: numbers as numbers, datetimes as ISO-8601."""
    splits = _as_splits(splits)
    given = np.asarray(timestamps)
    times = _as_times(given, len(splits))
    report = {}
    for earlier, later in ((TRAIN, VALIDATION), (VALIDATION, TEST), (TRAIN, TEST)):
        early, late = np.flatnonzero(splits == earlier), np.flatnonzero(splits == later)
        if len(early) and len(late):
            newest, oldest = early[times[early].argmax()], late[times[late].argmin()]
            report[f"{SPLIT_NAMES[earlier]}/{SPLIT_NAMES[later]}"] = {
                "earlier_newest": _json_time(given[newest]), "later_oldest": _json_time(given[oldest]),
                "rows": int((times[late] < times[newest]).sum())}
    return {"pairs": report, "overlap": any(entry["rows"] for entry in report.values())}


def _json_time(value):
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value))
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------- reports: leakage, feasibility


def leakage_report(splits, *, exact_keys, near_pairs=None, groups=None, timestamps=None, kept_together=None,
                   fractions=DEFAULT_FRACTIONS, accepted=()):
    """What the evaluation splits share with each other, and whether they meet their
    fractions, as a JSON-ready dict: counts and up to 20 example row pairs for exact
    duplicates, near-duplicate pairs and groups found in more than one split.

    has_leakage is true when any of them is non-zero, except the kinds named in `accepted`
    (a split asked to treat duplicates as separate rows reports them all the same); a time
    overlap (with timestamps) is reported but does not count, since a random split always
    has one. `feasibility` is `feasibility()`'s report, explained by what `kept_together`
    (by default the groups, exact keys and near pairs given) joins.
    """
    splits = _as_splits(splits)
    n = len(splits)
    rows = {name: int((splits == value).sum()) for value, name in enumerate(SPLIT_NAMES)}
    report = {"rows": rows | {"unassigned": int((splits < 0).sum())}}
    report["exact_duplicates"] = None if exact_keys is None else _shared_ids(_exact_codes(exact_keys, n), splits, "keys")
    report["near_duplicates"] = None if near_pairs is None else _crossing_pairs(near_pairs, splits)
    report["groups"] = None if groups is None else _shared_ids(_group_forest(groups, n), splits, "groups")
    report["time_overlap"] = None if timestamps is None else time_overlap(splits, timestamps)
    counted = [report[kind] for kind in ("exact_duplicates", "near_duplicates", "groups") if kind not in accepted]
    report["has_leakage"] = any(entry and entry["rows"] for entry in counted)
    if accepted:
        report["accepted"] = list(accepted)
    if kept_together is None:
        kept_together = {"groups": groups, "exact_duplicates": exact_keys, "near_duplicates": near_pairs}
    joins = {kind: value for kind, value in kept_together.items() if value is not None}
    report["feasibility"] = feasibility(splits, fractions, joins=joins)
    return report


def feasibility(splits, fractions=DEFAULT_FRACTIONS, *, joins=None):
    """Whether the splits meet their fractions, JSON-ready; where they do not, why.

    A split falls short when it should hold a row or more and holds none, or, where its
    share is HALF_SHARE_FROM rows or more, holds less than half of it: a greedy split of
    whole blocks lands near its targets unless a block is big. fractions=None (splits given
    by the data) checks nothing. Where a split falls short, `units` says what `joins` (kind
    -> groups, exact keys, near-duplicate pairs or duplicate sets) joined the rows into: how
    many units, the largest, and the largest with each kind alone. Only then, since finding
    the units again costs a union-find over every row.
    """
    splits = _as_splits(splits)
    counts = np.bincount(splits[splits >= 0], minlength=3).tolist()
    if fractions is None:
        return {"fractions": None, "rows": dict(zip(SPLIT_NAMES, counts)), "short": [], "meets_fractions": None}
    fractions = _check_fractions(fractions)
    targets = (fractions * sum(counts)).tolist()
    short = [name for name, rows, target in zip(SPLIT_NAMES, counts, targets)
             if target >= 1 and (rows == 0 or (target >= HALF_SHARE_FROM and rows * 2 < target))]
    report = {"fractions": [round(f, 4) for f in fractions.tolist()], "rows": dict(zip(SPLIT_NAMES, counts)),
              "targets": {name: round(t, 1) for name, t in zip(SPLIT_NAMES, targets)},
              "short": short, "meets_fractions": not short}
    if short:
        report["units"] = _units_report(len(splits), joins or {})
    return report


def _units_report(n, joins):
    links = {}
    for kind, value in joins.items():  # (k, 2) int64 row pairs that join rows of each kind
        if kind == "near_duplicates":
            chunks = value.chunks() if hasattr(value, "chunks") else [value]
            parts = [np.stack(pair_columns(chunk, n, np.int64), axis=1) for chunk in chunks]
            links[kind] = np.concatenate([np.zeros((0, 2), np.int64), *parts])
        else:
            codes = _group_forest(value, n) if kind == "groups" else (
                _exact_codes(value, n) if kind == "exact_duplicates" else _sortable_ids(value, n))
            links[kind] = _same_id_pairs(np.asarray(codes)).astype(np.int64)
    together = components(n, np.concatenate([np.zeros((0, 2), np.int64), *links.values()]).astype(np.int64))
    sizes = np.bincount(together, minlength=1)
    largest = int(sizes.argmax())
    in_largest = together == largest
    return {
        "count": int((sizes > 0).sum()),
        "largest": int(sizes[largest]),
        # What joined the largest unit: the kinds with a link inside it.
        "joined_by": [kind for kind, pairs in links.items() if len(pairs) and in_largest[pairs[:, 0]].any()],
        "largest_alone": {kind: int(np.bincount(components(n, pairs.astype(np.int64)), minlength=1).max())
                          for kind, pairs in links.items()},
    }


def _exact_codes(exact_keys, n):
    keys = np.asarray(exact_keys)
    if keys.shape != (n,):
        raise ValueError(f"expected one exact key per row ({n}), got shape {keys.shape}")
    if keys.dtype.kind in "iu" and (not len(keys) or keys.min() >= 0):
        return keys  # codes already (each row's first row with its key, say): no sort to make them
    return np.unique(keys.astype(np.int64), return_inverse=True)[1].astype(np.int64)


def _shared_ids(codes, splits, noun):
    """Ids (keys or groups) whose rows sit in more than one split, rows in them, example pairs.

    Where every row has a split and each code names a row of its own (each row's first row
    with its key, say), an id crosses splits when one of its rows sits in another split than
    the row it names: found a chunk at a time, with no sort of all rows."""
    if (splits >= 0).all() and _names_own_rows(codes):
        crossing = [np.zeros(0, np.int64)]
        for start, named in _slices(codes):
            rows = np.flatnonzero(named >= 0)
            crossing.append(start + rows[splits[start:start + _CHUNK][rows] != splits[named[rows]]])
        crossing = np.concatenate(crossing)
        leaking = sorted_unique(codes[crossing].astype(np.int64))
        in_leaking = np.zeros(len(codes), dtype=bool)
        in_leaking[leaking] = True
        rows_in = sum(int(in_leaking[named[named >= 0]].sum()) for _, named in _slices(codes))
        examples = np.stack([codes[crossing], crossing], axis=1)
    else:
        rows = np.flatnonzero((codes >= 0) & (splits >= 0))
        order = rows[np.lexsort((splits[rows], codes[rows]))]
        ids, where = codes[order], splits[order]
        crossing = np.flatnonzero((ids[1:] == ids[:-1]) & (where[1:] != where[:-1]))
        leaking = sorted_unique(ids[crossing])
        rows_in = int(np.isin(ids, leaking).sum())
        examples = np.stack([order[crossing], order[crossing + 1]], axis=1)
    return {noun: int(len(leaking)), "rows": rows_in, "examples": _examples(examples)}


def _crossing_pairs(pairs, splits):
    """Near-duplicate pairs across splits: pairs as (k, 2) rows or packed (dedup.pack_pairs),
    or anything whose chunks() yields arrays of them (the ingest's pairs on disk), checked a
    chunk at a time."""
    chunks = pairs.chunks() if hasattr(pairs, "chunks") else [pairs]
    n, kind = len(splits), row_kind(len(splits))
    count, in_pair, examples = 0, np.zeros(n, dtype=bool), np.zeros((0, 2), kind)
    for chunk in chunks:
        low, high = pair_columns(chunk, n, kind)
        a, b = splits[low], splits[high]
        crossing = (a >= 0) & (b >= 0) & (a != b)
        low, high = low[crossing], high[crossing]
        count += len(low)
        in_pair[low] = in_pair[high] = True
        examples = np.array(_examples(np.concatenate([examples, np.stack([low, high], axis=1)])), dtype=kind).reshape(-1, 2)
    return {"pairs": count, "rows": int(in_pair.sum()), "examples": _examples(examples)}


def _examples(pairs):
    """The first MAX_EXAMPLES pairs as [low, high] lists of Python ints, lowest rows first."""
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))][:MAX_EXAMPLES]
    return pairs.tolist()


def split_summary(splits, labels, label_names):
    """Rows per split and per label in each split, JSON-ready. label_names: a sequence
    indexed by label id, or a dict id -> name. Named labels are listed even at zero, so every
    split has the same columns; -1 is "(unlabeled)"."""
    splits, labels = _as_splits(splits), _as_ints(labels, "labels")
    if len(splits) != len(labels):
        raise ValueError("splits and labels must have the same length")
    names = dict(label_names) if isinstance(label_names, dict) else dict(enumerate(label_names))
    summary = {}
    for value, split_name in [(None, "all"), *enumerate(SPLIT_NAMES)]:
        in_split = labels if value is None else labels[splits == value]
        counts = {name: 0 for name in names.values()}
        for label_id, count in zip(*(found.tolist() for found in np.unique(in_split, return_counts=True))):
            name = UNLABELED_NAME if label_id < 0 else names.get(label_id, str(label_id))
            counts[name] = counts.get(name, 0) + count
        summary[split_name] = {"rows": int(len(in_split)), "labels": counts}
    return summary
