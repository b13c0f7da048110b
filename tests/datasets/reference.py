"""In-memory reference forms of the duplicate search, for tests and the dedup bench.

The ingest asks DuckDB for candidate pairs and keep-first's order (lifecycle/datasets/
queries.py) and checks pairs with dedup.pair_jaccard; these do the same in one process, in
plain numpy or Python, so tests can hold the fast paths against them.

    index = NearDuplicateIndex()
    index.add(batch_texts, start_index)                        # batch by batch
    pairs = verify_pairs(index.candidate_pairs(), get_texts)
    units = dedup.components(n, np.concatenate([exact_pairs(exact_keys(texts)), pairs]))
"""
import numpy as np

from lifecycle.datasets import dedup

# A bucket bigger than this links each row to its first MAX_PARTNERS rows only, so a very
# common text ("thanks") costs n * 16 pairs, not n² / 2, and still ends up in one component.
MAX_PARTNERS = 16


def exact_keys(texts):
    """`dedup.exact_key` for a batch, as an int64 array."""
    return np.fromiter((dedup.exact_key(text) for text in texts), dtype=np.int64, count=len(texts))


def exact_pairs(keys):
    """(k, 2) pairs linking each duplicate row to the first row with its key (for `components`)."""
    first = dedup.first_rows(keys)
    duplicate = np.flatnonzero(dedup.names_another_row(first, 0))
    return np.stack([first[duplicate], duplicate], axis=1)


def normalize_for_shingles(text):
    """`dedup.normalize`, then punctuation turned into spaces and whitespace collapsed again:
    what dedup's batched numpy code computes before it shingles."""
    table = dedup._separator_table()
    spaced = "".join(" " if table[ord(ch)] else ch for ch in dedup.normalize(text))
    return " ".join(spaced.split())


def shingles(text, shingle_size=dedup.DEFAULT_SHINGLE_SIZE):
    """The set of character shingles of one text. A text shorter than the shingle size is
    one shingle, itself; an empty one has none."""
    text = normalize_for_shingles(text)
    if len(text) <= shingle_size:
        return {text} if text else set()
    return {text[i:i + shingle_size] for i in range(len(text) - shingle_size + 1)}


def estimated_jaccard(sig_a, sig_b):
    """Share of equal signature values: a float for two signatures, an array for two (n, p) arrays."""
    equal = np.asarray(sig_a) == np.asarray(sig_b)
    return float(equal.mean()) if equal.ndim == 1 else equal.mean(axis=-1)


# ---------------------------------------------------------------- LSH candidates


def candidate_pairs(band_keys, max_partners=MAX_PARTNERS):
    """(k, 2) int64 row pairs i < j that share at least one band key, sorted, without repeats.

    Within a bucket (rows sharing one band's key) each row is paired with every earlier row,
    up to the bucket's first max_partners rows: all pairs for buckets up to max_partners + 1
    rows, and n * max_partners pairs, still connected, for bigger ones.
    """
    band_keys = np.asarray(band_keys, dtype=np.uint64)
    if band_keys.ndim != 2:
        raise ValueError("band_keys must be a (rows, bands) array")
    found = [_bucket_pairs(band_keys[:, band], max_partners) for band in range(band_keys.shape[1])]
    return _unique_pairs(np.concatenate([np.zeros(0, np.uint64)] + [dedup.pack_pairs(pairs) for pairs in found]))


def _bucket_pairs(keys, max_partners):
    """Pairs of row positions in one band's column that share a (non-empty) key."""
    # A stable sort keeps each bucket in row order, so the hub is always the smaller row.
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(keys) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(keys)])
    partners = np.minimum(np.arange(len(keys)) - np.repeat(starts, sizes), max_partners)
    partners[ordered == dedup.EMPTY_BAND_KEY] = 0
    member = np.repeat(np.arange(len(keys)), partners)
    within = np.arange(len(member)) - np.repeat(np.cumsum(partners) - partners, partners)
    hub = np.repeat(np.repeat(starts, sizes), partners) + within
    return np.stack([order[hub], order[member]], axis=1)


def _unique_pairs(packed):
    """Packed pairs as sorted (k, 2) int64 pairs, each once."""
    packed = dedup.sorted_unique(packed)
    return np.stack([packed >> np.uint64(32), packed & np.uint64(0xFFFFFFFF)], axis=1).astype(np.int64)


class NearDuplicateIndex:
    """Batches of texts in, their LSH band keys kept in memory, candidate pairs out: the
    whole search in one process (the ingest keeps the band keys on disk and asks DuckDB for
    the pairs: queries.create_candidates)."""

    def __init__(self, hasher=None, max_partners=MAX_PARTNERS):
        self.hasher = hasher or dedup.MinHasher()
        self.max_partners = max_partners
        self._rows, self._keys = [], []  # per batch added: its row indices and band keys

    def __len__(self):
        return sum(len(rows) for rows in self._rows)

    def add(self, texts, start_index):
        """Add texts that are rows start_index, start_index + 1, ... of the dataset."""
        keys = self.hasher.band_keys(self.hasher.signatures(texts))
        self._rows.append(np.arange(start_index, start_index + len(keys), dtype=np.int64))
        self._keys.append(keys)

    def candidate_pairs(self):
        """(k, 2) int64 pairs of dataset row indices i < j sharing a band key, sorted, without
        repeats; a capped bucket pairs its earliest-added rows."""
        rows = np.concatenate([np.zeros(0, np.int64), *self._rows])
        if len(dedup.sorted_unique(rows)) != len(rows):
            raise ValueError("two batches were added for the same row indices")
        keys = np.concatenate([np.zeros((0, self.hasher.bands), np.uint64), *self._keys])
        return _unique_pairs(dedup.pack_pairs(rows[candidate_pairs(keys, self.max_partners)]))


# ---------------------------------------------------------------- verification, keep-first


def verify_pairs(pairs, get_texts, threshold=dedup.NEAR_THRESHOLD, *, shingle_size=dedup.DEFAULT_SHINGLE_SIZE,
                 batch_pairs=5_000, return_similarity=False):
    """The candidate pairs whose shingle Jaccard is at least threshold, as a (k, 2) int64 array
    in the order given; with return_similarity, (pairs, their Jaccard as float32).

    get_texts(rows) gets a sorted int64 array of row indices and returns their texts in that
    order; it is called once per batch of batch_pairs pairs. Pairs are checked family by
    family (connected rows together), so a text shared by many pairs is shingled in one or
    two batches instead of in nearly every one.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    jaccard = np.zeros(len(pairs), dtype=np.float32)
    order = _by_family(pairs)
    for start in range(0, len(pairs), batch_pairs):
        part = order[start:start + batch_pairs]
        jaccard[part] = dedup.pair_jaccard(pairs[part], get_texts, shingle_size)
    kept = jaccard >= threshold
    return (pairs[kept], jaccard[kept]) if return_similarity else pairs[kept]


def _by_family(pairs):
    """Positions of `pairs` ordered by connected component, then by their rows."""
    if not len(pairs):
        return np.zeros(0, np.int64)
    rows = dedup.sorted_unique(pairs.ravel())
    ends = np.stack([np.searchsorted(rows, pairs[:, 0]), np.searchsorted(rows, pairs[:, 1])], axis=1).astype(np.int32)
    family = dedup.components(len(rows), ends)[ends[:, 0]]
    return np.lexsort((ends[:, 1], ends[:, 0], family))


def keep_first(n, pairs):
    """Keep-first in plain Python, pairs as (k, 2) rows or packed: walking them by their later
    row, then earlier, the later becomes a duplicate of the earlier when both are still kept."""
    earlier, later = dedup.pair_columns(pairs, n, np.int64)
    reps = list(range(n))
    for j, i in sorted(zip(later.tolist(), earlier.tolist())):
        if reps[i] == i and reps[j] == j:
            reps[j] = i
    return np.array(reps, dtype=dedup.row_kind(n))


def by_larger_row(packed):
    """Packed pairs (low << 32 | high) as high << 32 | low: sorted, keep-first's order."""
    packed = np.asarray(packed, dtype=np.uint64)
    return (packed & np.uint64(0xFFFFFFFF)) << np.uint64(32) | (packed >> np.uint64(32))
