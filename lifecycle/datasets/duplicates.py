"""Exact and near duplicates of the staged rows, and their duplicate sets.

Exact duplicates share a content key; near duplicates are LSH candidates (queries.py) whose
MinHash estimate is surely high, or whose shingle Jaccard reaches dedup.NEAR_THRESHOLD when
the estimate is in between. Each duplicate set keeps its first row (dedup keep-first); the
rows that must share a split are whole components of the duplicate pairs (split_units).
"""
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lifecycle.datasets import dedup, queries

# Four partners per LSH bucket: on templated text 16 quadruples the candidates for under 1 %
# more duplicates found (bench/RESULTS.md, dedup).
MAX_PARTNERS = 4
# Estimated Jaccard from 64 MinHash values has a standard deviation of about 0.05 near 0.8:
# far above or below the threshold the estimate decides; in between the shingles do.
SURELY_NEAR, SURELY_NOT = 0.9, 0.7
REPORTED_PAIRS = 50

EXACT_PAIRS = "SELECT first AS low, row AS high FROM firsts WHERE first <> row"
ALL_PAIRS = f"{EXACT_PAIRS} UNION ALL SELECT low, high FROM near"


@dataclass
class Duplicates:
    """Each row's first row with its exact key, its duplicate set (dedup.cluster_ids, -1 for
    none), the unit it shares a split with (split_units), and the report."""
    first: np.ndarray
    clusters: np.ndarray
    units: np.ndarray
    report: dict

    def near_pairs(self, scratch):
        """The confirmed near-duplicate pairs, packed, for splits.leakage_report (chunks())."""
        return _Pairs(scratch, "SELECT low, high FROM near")


class _Pairs:
    def __init__(self, scratch, query):
        self.scratch, self.query = scratch, query

    def chunks(self):
        return queries.packed(self.scratch, self.query)


def find(scratch, n):
    """The duplicates of the n rows in `scratch` (queries.Scratch)."""
    queries.create_firsts(scratch)
    first = scratch.by_row("SELECT row, first FROM firsts", n, dedup.row_kind(n))
    confirm_pairs(scratch, n)
    exact = dedup.exact_duplicate_summary(first)
    near = scratch.sql("SELECT count(*) FROM near").fetchall()[0][0]
    # Every exact duplicate row is one pair with its first row: the pairs are those and the near ones.
    reps = dedup.keep_first_in_order(n, _in_keep_first_order(scratch, n, exact["rows"] + near))
    units = split_units(n, queries.packed(scratch, ALL_PAIRS), reps)
    return Duplicates(first, dedup.cluster_ids(reps), units, _report(scratch, exact, near, reps))


# Pairs one sort holds (a range of larger rows at a time): 16 bytes each.
PAIRS_PER_SORT = 2_000_000


def _in_keep_first_order(scratch, n, count):
    """Every duplicate pair (`count` of them), packed, by larger row and then smaller
    (keep-first's order): a range of larger rows at a time, so that each sort holds about
    PAIRS_PER_SORT pairs (one sort of every pair ran out of DuckDB's limit at 5M rows)."""
    # Twice the parts the count asks for: pairs crowd towards the larger rows (a pair's larger
    # row is the later of two), so equal ranges of rows do not hold equal numbers of pairs.
    step = -(-n // max(1, 2 * -(-count // PAIRS_PER_SORT)))
    for start in range(0, max(n, 1), step):
        yield from queries.packed(scratch, f"""SELECT * FROM ({ALL_PAIRS}) WHERE high >= {start} AND high < {start + step}
                                               ORDER BY high, low""")


def confirm_pairs(scratch, n):
    """Table `near(low, high)`: the candidates that are near duplicates. Sure ones on their
    estimate; the uncertain ones through the distinct pairs of texts they stand for (rows with
    the same exact key have the same shingles, so each pair of texts is checked once)."""
    queries.create_candidates(scratch, n, MAX_PARTNERS)
    for name in ("near", "uncertain", "kept_texts"):
        scratch.sql(f"CREATE TABLE {name} (low BIGINT, high BIGINT)")
    for batch in queries.candidates_with_signatures(scratch):
        low, high = (batch.column(i).to_numpy(zero_copy_only=False) for i in (0, 1))
        estimate = _estimates(batch.column(2), batch.column(3))
        _insert(scratch, "near", low, high, estimate >= SURELY_NEAR)
        _insert(scratch, "uncertain", low, high, (estimate >= SURELY_NOT) & (estimate < SURELY_NEAR))
    _create_uncertain_texts(scratch)
    scratch.sql("CREATE TABLE text_pairs AS SELECT DISTINCT low_text AS low, high_text AS high FROM uncertain_texts")
    for batch in queries.text_pairs_with_texts(scratch):
        low, high = (batch.column(i).to_numpy(zero_copy_only=False) for i in (0, 1))
        _insert(scratch, "kept_texts", low, high, _jaccard(low, high, batch) >= dedup.NEAR_THRESHOLD)
    scratch.sql("""INSERT INTO near SELECT u.low, u.high FROM uncertain_texts u
                   SEMI JOIN kept_texts k ON k.low = u.low_text AND k.high = u.high_text""")
    for name in ("candidates", "uncertain", "uncertain_texts", "text_pairs", "kept_texts"):
        scratch.sql(f"DROP TABLE {name}")


def _create_uncertain_texts(scratch):
    """Table `uncertain_texts`: each uncertain pair with the pair of texts it stands for (the
    first rows of its rows' exact keys, smaller first). Joined on one row, then the other: one
    query with both joins holds two hash tables of every row's first row, which DuckDB could
    not fit in its limit at 5M rows."""
    scratch.sql("""CREATE TABLE half_joined AS SELECT u.low, u.high, a.first AS low_first
                   FROM uncertain u JOIN firsts a ON a.row = u.low""")
    scratch.sql("""CREATE TABLE uncertain_texts AS
                   SELECT h.low, h.high, least(h.low_first, b.first) AS low_text, greatest(h.low_first, b.first) AS high_text
                   FROM half_joined h JOIN firsts b ON b.row = h.high""")
    scratch.sql("DROP TABLE half_joined")


def _estimates(low_signatures, high_signatures):
    """Estimated Jaccard of each pair: the share of equal values of their 16-bit signatures."""
    return (_signatures(low_signatures) == _signatures(high_signatures)).mean(axis=1).astype(np.float32)


def _signatures(column):
    """A binary column of equal-length signatures as an (n, num_perm) uint16 array, no copy per value."""
    width = 2 * dedup.DEFAULT_NUM_PERM
    offsets = np.frombuffer(column.buffers()[1], np.int64 if pa.types.is_large_binary(column.type) else np.int32)
    start = offsets[column.offset]
    data = np.frombuffer(column.buffers()[2], np.uint8)[start:start + width * len(column)]
    return data.view(np.uint16).reshape(len(column), dedup.DEFAULT_NUM_PERM)


def _jaccard(low, high, batch, step=5_000):
    """Shingle Jaccard of each pair of texts in a batch of text_pairs_with_texts, `step` pairs
    at a time: the shingles of a few thousand texts are all a check holds."""
    texts = dict(zip(low.tolist(), batch.column(2).to_pylist())) | dict(zip(high.tolist(), batch.column(3).to_pylist()))
    pairs = np.stack([low, high], axis=1)
    jaccard = [dedup.pair_jaccard(pairs[start:start + step], lambda rows: [texts[row] for row in rows.tolist()])
               for start in range(0, len(pairs), step)]
    return np.concatenate([np.zeros(0, np.float32), *jaccard])


def _insert(scratch, table, low, high, keep):
    if keep.any():
        scratch.db.register("found", pa.table({"low": low[keep], "high": high[keep]}))
        scratch.sql(f"INSERT INTO {table} SELECT low, high FROM found")
        scratch.db.unregister("found")


def split_units(n, chunks, reps):
    """Rows that must share a split: whole duplicate components, so no near-duplicate pair
    crosses splits — except where a component is huge (templated text chains into one), which
    would starve the small splits; those rows fall back to their keep-first duplicate set, and
    the leakage report counts whatever pairs still cross."""
    components = dedup.components_of_chunks(n, chunks)
    huge = _in_huge_component(components, cap=max(50, n // 100))
    # Each unit is named by one of its rows (its component's smallest, or its kept row), so
    # the split links rows to their unit without sorting (see splits._same_id_pairs).
    return np.where(huge, reps, components)


def _in_huge_component(components, cap):
    """Whether each row's component has more than `cap` rows."""
    roots, sizes = np.unique(components, return_counts=True)
    huge = np.zeros(len(components), dtype=bool)
    huge[roots[sizes > cap]] = True
    return huge[components]


def _report(scratch, exact, count, reps):
    lowest = scratch.sql(f"SELECT low, high FROM near ORDER BY low, high LIMIT {REPORTED_PAIRS}").fetchall()
    return {
        "exact_duplicate_rows": exact["rows"],
        "exact_groups": exact["groups"],
        "near_duplicate_pairs": int(count),
        "removable_rows": int((reps != np.arange(len(reps))).sum()),
        "pairs": [list(pair) for pair in lowest],
        "examples": exact["examples"],
    }
