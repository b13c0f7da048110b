"""Exact and near-duplicate detection for dataset rows, in numpy, with no Django models.

Ingest streams millions of rows, so everything here works on batches and keeps only small
per-row arrays: an int64 exact key (8 bytes) and the LSH band keys (8 bytes per band,
64 bytes with the defaults). The ingest asks DuckDB for the rows that share keys
(lifecycle/datasets/queries.py) and uses what is here for the rest: exact keys, MinHash
signatures and band keys, the shingle Jaccard of candidate pairs, components, keep-first.
tests/datasets/reference.py holds the whole search in memory, for tests and the bench. See
docs/dedup-and-splits.md for the parameters and measured speed.
"""
import functools
import hashlib
import unicodedata

import numpy as np

DEFAULT_NUM_PERM = 64
DEFAULT_BANDS = 8
DEFAULT_SHINGLE_SIZE = 5
NEAR_THRESHOLD = 0.8  # exact shingle Jaccard at or above which a candidate pair is a near duplicate

# Texts are processed in chunks of at most this many texts and characters: the shingle
# hashes of ~1k short texts stay in the CPU cache across the MinHash loop's num_perm passes,
# and the per-character temporaries stay bounded (a longer text is a chunk of its own).
_CHUNK_TEXTS = 1024
_CHUNK_CHARS = 1 << 19
# Band key of a row without shingles (an empty text): such rows are never near-duplicate
# candidates; identical ones are already caught by their exact key.
EMPTY_BAND_KEY = np.uint64(0)
_ALL_ONES_32 = np.uint32(0xFFFFFFFF)
_LOW_32 = np.uint64(0xFFFFFFFF)


# ---------------------------------------------------------------- normalisation, exact keys


def normalize(text):
    """The text an exact key is computed from: NFKC, casefold, whitespace collapsed, stripped.

    Punctuation is kept: "I love it :)" and "I love it :(" must not share an exact key. Rows
    that differ only in punctuation are still found, by the near-duplicate pass, whose
    shingles ignore punctuation.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_key(text):
    """A signed 64-bit key of the normalised text: fits a numpy int64 and a PostgreSQL bigint."""
    digest = hashlib.blake2b(normalize(text).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def exact_duplicate_summary(first, examples=20, per_example=5):
    """Exact duplicates from `first_rows`: rows that repeat an earlier row, keys held by two or
    more rows, and up to `examples` of those groups (their first rows first), each as its
    first `per_example` rows. No list of every group: a million rows have ~100k of them."""
    first = np.asarray(first)
    repeats = first != np.arange(len(first), dtype=first.dtype)
    heads = sorted_unique(first[repeats])
    shown = [np.flatnonzero(first == head)[:per_example].tolist() for head in heads[:examples]]
    return {"rows": int(repeats.sum()), "groups": int(len(heads)), "examples": shown}


def first_rows(keys, *, ignore_negative=False):
    """Each row's first row with the same key (a key's first row is its own); with
    ignore_negative, rows with a negative key (no group, say) are only their own. int32 below
    2**31 rows. Since a row's first row names itself, the result can stand for the keys
    wherever only equal keys matter (splits, leakage), with no sort to make codes. (The
    ingest asks DuckDB the same question: queries.first_rows.)"""
    keys = np.asarray(keys)
    if keys.ndim != 1 or (len(keys) and keys.dtype.kind not in "iu"):
        raise ValueError("keys must be a one-dimensional array of integers")
    first = np.arange(len(keys), dtype=row_kind(len(keys)))
    rows = np.flatnonzero(keys >= 0) if ignore_negative and keys.dtype.kind == "i" else np.arange(len(keys))
    order = rows[np.argsort(keys[rows], kind="stable")]  # stable: each run of a key starts at its lowest row
    ordered = keys[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]] if len(order) else np.zeros(0, bool)
    first[order] = order[new][np.cumsum(new) - 1]
    return first


def names_another_row(codes, start):
    """For a slice of per-row codes that name rows (first rows, kept rows, roots) beginning
    at row `start`: whether each names a row other than its own."""
    return codes != np.arange(start, start + len(codes))


def sorted_unique(values, *, in_place=False):
    """np.unique without its hash-table path, which numpy 2.4 takes for millions of distinct
    int64 values when no return_* option is given, far slower than a sort. in_place sorts
    `values` itself, saving a copy of a big array the caller no longer needs."""
    if in_place:
        values.sort()
    else:
        values = np.sort(values, kind="stable")
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


# ---------------------------------------------------------------- shingles


# Planes 2 and up hold no whitespace or punctuation (CJK, tags, private use; a test checks
# the whole range), so the separator table looks at the first two only: far quicker to build.
_SEPARATORS_BELOW = 0x20000


@functools.cache
def _separator_table():
    """True for every code point that separates words in shingles: whitespace and punctuation.

    Punctuation is Unicode category P* (so "¿", "…", "、" count, and "_" too); symbols
    (S*: "$", "+", emoji) and marks (M*) are kept, so accents and Indic vowel signs stay
    inside their words.
    """
    table = np.zeros(0x110000, dtype=bool)
    chars = (chr(cp) for cp in range(_SEPARATORS_BELOW))
    table[[ord(ch) for ch in chars if ch.isspace() or unicodedata.category(ch)[0] == "P"]] = True
    return table


def _clean_codepoints(texts):
    """Code points of all texts normalised for shingles (`normalize`, then each run of
    whitespace and punctuation one space, none at a text's ends), one array, and each text's
    start and length: one NFKC/casefold over the joined batch, far cheaper than one a text."""
    texts = [text.replace("\x00", " ") for text in texts] if any("\x00" in text for text in texts) else texts
    # NUL is the boundary: it is not whitespace or punctuation, and NFKC/casefold leave it alone.
    joined = unicodedata.normalize("NFKC", "\x00".join(texts)).casefold()
    points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    if len(points):
        separator = _separator_table()[points]
        points = np.where(separator, np.uint32(32), points)
        first_of_run = ~(separator & np.r_[False, separator[:-1]])
        points, separator = points[first_of_run], separator[first_of_run]
        edge = points == 0
        points = points[~(separator & (np.r_[True, edge[:-1]] | np.r_[edge[1:], True]))]
    bounds = np.flatnonzero(points == 0)
    starts = np.r_[0, bounds + 1]
    return points, starts, np.r_[bounds, len(points)] - starts


@functools.cache
def _constants(name, count):
    """Fixed odd 64-bit constants, derived with blake2b so they never change with numpy's RNG."""
    digests = (hashlib.blake2b(f"lifecycle.dedup:{name}:{i}".encode(), digest_size=8).digest() for i in range(count))
    return np.array([int.from_bytes(d, "little") | 1 for d in digests], dtype=np.uint64)


def shingle_hashes(texts, shingle_size=DEFAULT_SHINGLE_SIZE):
    """64-bit hashes of every shingle of every text, in text order, and the count per text.

    A shingle's hash is sum(code_point[j] * K[j]) mod 2**64 over its characters (a text
    shorter than a shingle: its own characters only), for the whole batch at once. A text may
    repeat a hash (a repeated shingle). Distinct shingles collide with probability about
    2**-64, or 2**-32 in the top 32 bits that MinHash and pair_jaccard use. Temporaries are
    ~70 bytes per character: chunk big batches."""
    if not len(texts):
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    points, starts, lengths = _clean_codepoints(texts)
    padded = np.r_[points, np.zeros(shingle_size, np.uint32)].astype(np.uint64)
    factors = _constants("shingle", shingle_size)
    window = np.zeros(len(points), dtype=np.uint64)
    for j in range(shingle_size):
        window += padded[j:j + len(points)] * factors[j]
    counts = np.where(lengths >= shingle_size, lengths - shingle_size + 1, (lengths > 0).astype(np.int64))
    offsets = np.cumsum(counts) - counts
    hashes = window[np.repeat(starts - offsets, counts) + np.arange(counts.sum())]
    short = (lengths > 0) & (lengths < shingle_size)
    short_hashes = np.zeros(int(short.sum()), dtype=np.uint64)
    for j in range(shingle_size):  # a text shorter than a shingle: its own characters only
        short_hashes += np.where(j < lengths[short], padded[starts[short] + j], 0).astype(np.uint64) * factors[j]
    hashes[offsets[short]] = short_hashes
    return hashes, counts.astype(np.int64)


def _chunks(texts):
    """(start, end) bounds of consecutive chunks of at most _CHUNK_TEXTS texts and _CHUNK_CHARS characters."""
    ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
    start = 0
    while start < len(texts):
        before = ends[start - 1] if start else 0
        fits = int(np.searchsorted(ends, before + _CHUNK_CHARS, side="right"))
        end = max(start + 1, min(start + _CHUNK_TEXTS, fits))
        yield start, end
        start = end


# ---------------------------------------------------------------- MinHash and LSH


class MinHasher:
    """MinHash signatures and LSH band keys for batches of texts.

    The permutations are h -> (a*h + b) mod 2**64, top 32 bits, for 32-bit shingle hashes h
    and random 64-bit a (odd) and b: Dietzfelbinger's multiply-add-shift family, strongly
    universal like (a*h + b) mod p but without a 64-bit division per element, which numpy
    does slowly. Defaults: 64 permutations in 8 bands of 8 rows, so a pair with Jaccard s
    becomes a candidate with probability 1 - (1 - s**8)**8 (0.77 at s=0.8, 0.99 at 0.9,
    0.03 at 0.5); see docs/dedup-and-splits.md for the S-curve.
    """

    def __init__(self, num_perm=DEFAULT_NUM_PERM, bands=DEFAULT_BANDS, shingle_size=DEFAULT_SHINGLE_SIZE, seed=1):
        if num_perm < 1 or bands < 1 or num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a positive multiple of bands ({bands})")
        if shingle_size < 1:
            raise ValueError("shingle_size must be at least 1")
        self.num_perm, self.bands, self.shingle_size, self.seed = num_perm, bands, shingle_size, seed
        self.rows = num_perm // bands
        self._a = _constants(f"perm-a:{seed}", num_perm)
        self._b = _constants(f"perm-b:{seed}", num_perm)
        self._band_factors = _constants(f"band:{seed}", self.rows)

    def __repr__(self):
        return f"MinHasher(num_perm={self.num_perm}, bands={self.bands}, shingle_size={self.shingle_size}, seed={self.seed})"

    def signatures(self, texts):
        """(n, num_perm) uint32 signatures; a text without shingles gets all 0xFFFFFFFF."""
        texts = texts if isinstance(texts, (list, tuple)) else list(texts)
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for start, end in _chunks(texts):
            hashes, counts = shingle_hashes(texts[start:end], self.shingle_size)
            out[start:end] = self._minhash(hashes >> np.uint64(32), counts)
        return out

    def _minhash(self, hashes, counts):
        signature = np.full((self.num_perm, len(counts)), _ALL_ONES_32, dtype=np.uint32)
        filled = counts > 0
        if not filled.any():
            return signature.T
        offsets = (np.cumsum(counts) - counts)[filled]
        value = np.empty(len(hashes), dtype=np.uint64)
        for p in range(self.num_perm):
            np.multiply(hashes, self._a[p], out=value)
            value += self._b[p]
            # The top 32 bits are monotone in the 64-bit value: take the minimum, then shift.
            signature[p, filled] = np.minimum.reduceat(value, offsets) >> np.uint64(32)
        return signature.T

    def band_keys(self, signatures):
        """(n, bands) uint64: each band's rows hashed to one key; EMPTY_BAND_KEY for empty texts."""
        signatures = np.asarray(signatures, dtype=np.uint32)
        banded = signatures.reshape(len(signatures), self.bands, self.rows)
        keys = np.zeros((len(signatures), self.bands), dtype=np.uint64)
        for j in range(self.rows):
            keys += banded[:, :, j].astype(np.uint64) * self._band_factors[j]
        keys[keys == EMPTY_BAND_KEY] = 1
        keys[(signatures == _ALL_ONES_32).all(axis=1)] = EMPTY_BAND_KEY
        return keys


# ---------------------------------------------------------------- shingle Jaccard


def pair_jaccard(pairs, get_texts, shingle_size=DEFAULT_SHINGLE_SIZE):
    """The shingle Jaccard of each (k, 2) pair of rows, as float32; get_texts(rows) gets a
    sorted int64 array of rows and returns their texts in that order. Shingles are compared
    by their 32-bit hashes: a chance collision (about 1e-5 per pair of short texts) can add
    one shared shingle. Two texts without shingles (empty, punctuation only) are identical."""
    rows = sorted_unique(pairs.ravel())
    texts = list(get_texts(rows))
    if len(texts) != len(rows):
        raise ValueError(f"get_texts returned {len(texts)} texts for {len(rows)} rows")
    # Each text's distinct shingle hashes as sorted int64 (text << 32 | hash >> 32), built a
    # chunk of texts at a time so the per-character temporaries stay small.
    sets = [np.zeros(0, np.int64)]
    for start, end in _chunks(texts):
        hashes, counts = shingle_hashes(texts[start:end], shingle_size)
        owner = np.repeat(np.arange(start, end, dtype=np.int64), counts)
        sets.append(sorted_unique(owner << 32 | (hashes >> np.uint64(32)).astype(np.int64)))
    sets = np.concatenate(sets)
    counts = np.bincount(sets >> 32, minlength=len(texts))
    left, right = np.searchsorted(rows, pairs[:, 0]), np.searchsorted(rows, pairs[:, 1])
    inter = _intersections(sets, counts, left, right)
    union = counts[left] + counts[right] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float32)


def _intersections(sets, counts, left, right, chunk=1024):
    """Shared shingles of texts left[i] and right[i]: each of left's looked up in right's set.
    A chunk of pairs at a time: the lookups cost ~40 bytes a shingle while they run."""
    offsets = np.cumsum(counts) - counts
    shared = np.zeros(len(left), dtype=np.int64)
    for start in range(0, len(left), chunk):
        lefts, rights = left[start:start + chunk], right[start:start + chunk]
        sizes = counts[lefts]
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        shingle = sets[np.repeat(offsets[lefts], sizes) + within] & 0xFFFFFFFF
        query = np.repeat(rights.astype(np.int64), sizes) << 32 | shingle
        where = np.minimum(np.searchsorted(sets, query), max(len(sets) - 1, 0))
        found = sets[where] == query if len(sets) else np.zeros(0, bool)
        shared[start:start + chunk] = np.bincount(np.repeat(np.arange(len(lefts)), sizes)[found], minlength=len(lefts))
    return shared


# ---------------------------------------------------------------- pairs, connected components


def components(n, pairs, start=None):
    """Connected component of each of n rows linked by pairs; the id is the component's smallest row.

    Numpy hook-and-compress (Shiloach-Vishkin style): each round hooks every root to the
    smallest root it is linked to, then jumps pointers until every row points at its root;
    rounds are few (logarithmic in practice). Pairs as (k, 2) rows or packed (pack_pairs);
    int32 below 2**31 rows. `start`, if given, is a forest to begin from (each row's parent
    no later than itself, as first_rows gives): rows it joins need no pair each.
    """
    pairs = _pairs_array(pairs)
    return components_of_chunks(n, (pairs[begin:begin + PAIR_CHUNK] for begin in range(0, len(pairs), PAIR_CHUNK)),
                                start=start)


def components_of_chunks(n, chunks, start=None):
    """`components` of the pairs in `chunks` (arrays of pairs in either form), joined chunk
    after chunk: components only ever merge, so that gives the same forest, and the per-pair
    temporaries stay a chunk's size."""
    kind = row_kind(n)
    # A copy of `start`: hooking changes parents in place, and the caller's forest stays its own.
    parent = np.arange(n, dtype=kind) if start is None else _compress(np.array(start, dtype=kind))
    for chunk in chunks:
        left, right = pair_columns(chunk, n, kind)
        while len(left):
            root_left, root_right = parent[left], parent[right]
            apart = root_left != root_right
            left, right, root_left, root_right = left[apart], right[apart], root_left[apart], root_right[apart]
            # Hooking only ever lowers a parent, so parent[x] <= x holds and no cycle can form.
            np.minimum.at(parent, np.maximum(root_left, root_right), np.minimum(root_left, root_right))
            parent = _compress(parent)
    return parent


# Pairs components takes at a time: its temporaries stay a chunk's size.
PAIR_CHUNK = 1 << 18


def _pairs_array(pairs):
    """Pairs as given: packed (one-dimensional uint64) or as a (k, 2) array."""
    pairs = np.asarray(pairs)
    return pairs if pairs.ndim == 1 and pairs.dtype == np.uint64 else pairs.reshape(-1, 2)


def row_kind(n):
    """The integer type for row numbers of n rows: 32-bit where they fit, half the memory."""
    return np.int32 if n < 2**31 else np.int64


def pack_pairs(pairs):
    """(k, 2) row pairs (rows under 2**32) as one uint64 each, low row in the high half: 8
    bytes a pair, not 16, and sorting them sorts the pairs."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pack_rows(pairs[:, 0], pairs[:, 1])


def pack_rows(a, b):
    """`pack_pairs` of the pairs (a[i], b[i]), from two columns."""
    return np.minimum(a, b).astype(np.uint64) << np.uint64(32) | np.maximum(a, b).astype(np.uint64)


def pair_columns(pairs, n, kind):
    """The two rows of each pair as arrays of `kind`, from (k, 2) pairs or packed ones (a
    one-dimensional uint64 array, see pack_pairs: 8 bytes a pair, not 16, where they come
    from). Checks that they index rows 0..n-1."""
    pairs = _pairs_array(pairs)
    if pairs.ndim == 1:
        low, high = (pairs >> np.uint64(32)), (pairs & _LOW_32)
    else:
        low, high = pairs[:, 0], pairs[:, 1]
    for rows in (low, high):
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(f"pairs must index rows 0..{n - 1}")
    return low.astype(kind, copy=False), high.astype(kind, copy=False)


def _compress(parent):
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


# ---------------------------------------------------------------- keep-first duplicate sets


def keep_first_in_order(n, chunks):
    """Keep-first deduplication of packed pairs (pack_pairs) that come in chunks sorted by
    larger row, then smaller: walking them, the larger row becomes a duplicate of the smaller
    when both are still kept. Each row points at the kept row it duplicates (or itself);
    int32 below 2**31 rows. Unlike components this does not chain: A≈B and B≈C with A≉C
    keeps A and C, so a run of templated messages is not collapsed into one giant cluster.
    """
    if n > 2**32:
        raise ValueError("keep_first takes up to 2**32 rows")
    reps = np.arange(n, dtype=row_kind(n))
    for packed in chunks:
        packed = np.asarray(packed, dtype=np.uint64)
        # Python ints a slice at a time: a list of millions of pairs would cost more memory
        # than everything else in the ingest.
        for start in range(0, len(packed), 100_000):
            part = packed[start:start + 100_000]
            for i, j in zip((part >> np.uint64(32)).tolist(), (part & _LOW_32).tolist()):
                if reps[i] == i and reps[j] == j:
                    reps[j] = i
    return reps


def cluster_ids(reps, chunk=1 << 16):
    """The duplicate set of each row (its representative), -1 for rows in no set. A row is in
    a set when it points at another row, or another row points at it: marked a chunk at a
    time, with no count per row (8 bytes each)."""
    reps = np.asarray(reps)
    reps = reps if reps.dtype.kind == "i" else reps.astype(np.int64)
    in_set = np.zeros(len(reps), dtype=bool)
    for start in range(0, len(reps), chunk):
        pointing = reps[start:start + chunk]
        duplicate = names_another_row(pointing, start)
        in_set[start:start + chunk] |= duplicate
        in_set[pointing[duplicate]] = True
    clusters = reps.copy()
    np.putmask(clusters, ~in_set, -1)
    return clusters
