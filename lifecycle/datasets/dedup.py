"""Exact and near-duplicate detection for dataset rows, in numpy, with no Django models.

Ingest streams millions of rows, so everything here works on batches and keeps only small
per-row arrays: an int64 exact key (8 bytes) and the LSH band keys (8 bytes per band,
64 bytes with the defaults). Texts are never held; `verify_pairs` fetches the few it needs
through a callback. See docs/dedup-and-splits.md for the parameters and measured speed.

    keys = exact_keys(texts)                                   # one int64 per row
    index = NearDuplicateIndex()
    index.add(batch_texts, start_index)                        # batch by batch
    pairs = verify_pairs(index.candidate_pairs(), get_texts)
    units = components(n, np.concatenate([exact_pairs(keys), pairs]))
"""
import functools
import hashlib
import unicodedata

import numpy as np

DEFAULT_NUM_PERM = 64
DEFAULT_BANDS = 8
DEFAULT_SHINGLE_SIZE = 5
NEAR_THRESHOLD = 0.8  # exact shingle Jaccard at or above which verify_pairs keeps a pair
# A bucket bigger than this links each row to its first MAX_PARTNERS rows only, so a very
# common text ("thanks") costs n * 16 pairs, not n² / 2, and still ends up in one component.
MAX_PARTNERS = 16

# Texts are processed in chunks of at most this many texts and characters inside one call:
# the shingle hashes of ~1k short texts (~1 MB) stay in the CPU cache across the num_perm
# passes of the MinHash loop, and the ~70 bytes of temporaries per character stay ~35 MB
# however long the texts are (a single longer text is a chunk of its own).
_CHUNK_TEXTS = 1024
_CHUNK_CHARS = 1 << 19
# Band key of a row without shingles (an empty text): such rows are never near-duplicate
# candidates; identical ones are already caught by their exact key.
EMPTY_BAND_KEY = np.uint64(0)
_ALL_ONES_32 = np.uint32(0xFFFFFFFF)


# ---------------------------------------------------------------- normalisation, exact keys


def normalize(text):
    """The text an exact key is computed from: NFKC, casefold, whitespace collapsed, stripped.

    Punctuation is kept: "I love it :)" and "I love it :(" must not share an exact key. Rows
    that differ only in punctuation are still found, by the near-duplicate pass, whose
    shingles ignore punctuation (see `normalize_for_shingles`).
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_key(text):
    """A signed 64-bit key of the normalised text: fits a numpy int64 and a PostgreSQL bigint."""
    digest = hashlib.blake2b(normalize(text).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def exact_keys(texts):
    """`exact_key` for a batch, as an int64 array."""
    return np.fromiter((exact_key(text) for text in texts), dtype=np.int64, count=len(texts))


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
    order, starts, sizes = _runs(keys[rows])  # a stable sort: each run starts at its lowest row
    first[rows[order]] = np.repeat(rows[order[starts]], sizes)
    return first


def exact_pairs(keys):
    """(k, 2) pairs linking each duplicate row to the first row with its key (for `components`)."""
    return pairs_to_first(first_rows(keys))


def names_another_row(codes, start):
    """For a slice of per-row codes that name rows (first rows, kept rows, roots) beginning
    at row `start`: whether each names a row other than its own."""
    return codes != np.arange(start, start + len(codes))


def pairs_to_first(first):
    """`exact_pairs` from `first_rows`, for a caller that has them already."""
    duplicate = np.flatnonzero(first != np.arange(len(first)))
    return np.stack([first[duplicate], duplicate], axis=1)


def sorted_unique(values, *, in_place=False):
    """np.unique without its hash-table path: numpy 2.4 takes ~100x longer than a sort for
    millions of distinct int64 values when no return_* option is given. in_place sorts
    `values` itself, saving a copy of a big array the caller no longer needs."""
    if in_place:
        values.sort()
    else:
        values = np.sort(values, kind="stable")
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _runs(values):
    """Stable sort order of values, and the start and size of each run of equal values."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(values) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(values)])
    return order, starts, sizes


# ---------------------------------------------------------------- shingles


@functools.cache
def _separator_table():
    """True for every code point that separates words in shingles: whitespace and punctuation.

    Punctuation is Unicode category P* (so "¿", "…", "、" count, and "_" too); symbols
    (S*: "$", "+", emoji) and marks (M*) are kept, so accents and Indic vowel signs stay
    inside their words.
    """
    table = np.zeros(0x110000, dtype=bool)
    # Planes 2 and up hold no whitespace or punctuation (CJK, tags, private use; a test checks
    # the whole range): looking at the first two only takes 13 ms instead of 0.65 s.
    chars = (chr(cp) for cp in range(_SEPARATORS_BELOW))
    table[[ord(ch) for ch in chars if ch.isspace() or unicodedata.category(ch)[0] == "P"]] = True
    return table


_SEPARATORS_BELOW = 0x20000


def normalize_for_shingles(text):
    """`normalize`, then punctuation turned into spaces and whitespace collapsed again.

    The reference for what the batched numpy code computes; tests check the two agree.
    """
    table = _separator_table()
    spaced = "".join(" " if table[ord(ch)] else ch for ch in normalize(text))
    return " ".join(spaced.split())


def shingles(text, shingle_size=DEFAULT_SHINGLE_SIZE):
    """The set of character shingles of one text (reference implementation, for tests and docs).

    A text shorter than the shingle size is one shingle, itself; an empty one has none.
    """
    text = normalize_for_shingles(text)
    if len(text) <= shingle_size:
        return {text} if text else set()
    return {text[i:i + shingle_size] for i in range(len(text) - shingle_size + 1)}


def _clean_codepoints(texts):
    """Code points of all texts normalised for shingles, one array, and each text's start and length.

    One NFKC/casefold over the joined batch and numpy for the rest: about 1 µs per short text,
    where per-text Python string work costs several.
    """
    texts = [text.replace("\x00", " ") for text in texts] if any("\x00" in text for text in texts) else texts
    # NUL is the boundary: it is not whitespace or punctuation, and NFKC/casefold leave it alone.
    joined = unicodedata.normalize("NFKC", "\x00".join(texts)).casefold()
    points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    points = _collapse_separators(points, _separator_table()[points])
    bounds = np.flatnonzero(points == 0)
    starts = np.r_[0, bounds + 1]
    return points, starts, np.r_[bounds, len(points)] - starts


def _collapse_separators(points, separator):
    """Every run of separators becomes one space; spaces at a text's start or end are dropped."""
    if not len(points):
        return points
    points = np.where(separator, np.uint32(32), points)
    first_of_run = ~(separator & np.r_[False, separator[:-1]])
    points, separator = points[first_of_run], separator[first_of_run]
    edge = points == 0
    at_edge = separator & (np.r_[True, edge[:-1]] | np.r_[edge[1:], True])
    return points[~at_edge]


@functools.cache
def _constants(name, count):
    """Fixed odd 64-bit constants, derived with blake2b so they never change with numpy's RNG."""
    digests = (hashlib.blake2b(f"lifecycle.dedup:{name}:{i}".encode(), digest_size=8).digest() for i in range(count))
    return np.array([int.from_bytes(d, "little") | 1 for d in digests], dtype=np.uint64)


def shingle_hashes(texts, shingle_size=DEFAULT_SHINGLE_SIZE):
    """64-bit hashes of every shingle of every text, in text order, and the count per text.

    A shingle's hash is sum(code_point[j] * K[j]) mod 2**64 over its characters, computed for
    the whole batch at once (a text shorter than a shingle: over its own characters only). A
    text may repeat a hash (a repeated shingle); callers that need sets deduplicate. Distinct
    shingles collide with probability about 2**-64, or 2**-32 in the top 32 bits that
    MinHash and verify_pairs use. Temporaries are ~70 bytes per character: chunk big batches.
    """
    if not len(texts):
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    points, starts, lengths = _clean_codepoints(texts)
    window = _window_hashes(points, shingle_size)
    counts = np.where(lengths >= shingle_size, lengths - shingle_size + 1, (lengths > 0).astype(np.int64))
    offsets = np.cumsum(counts) - counts
    positions = np.repeat(starts - offsets, counts) + np.arange(counts.sum())
    hashes = window[positions]
    short = (lengths > 0) & (lengths < shingle_size)
    hashes[offsets[short]] = _short_hashes(points, starts[short], lengths[short], shingle_size)
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


def _window_hashes(points, shingle_size):
    padded = np.r_[points, np.zeros(shingle_size, np.uint32)].astype(np.uint64)
    factors = _constants("shingle", shingle_size)
    window = np.zeros(len(points), dtype=np.uint64)
    for j in range(shingle_size):
        window += padded[j:j + len(points)] * factors[j]
    return window


def _short_hashes(points, starts, lengths, shingle_size):
    """The hash of a text shorter than a shingle: its characters only, not the next text's."""
    factors = _constants("shingle", shingle_size)
    hashes = np.zeros(len(starts), dtype=np.uint64)
    padded = np.r_[points, np.zeros(shingle_size, np.uint32)].astype(np.uint64)
    for j in range(shingle_size):
        hashes += np.where(j < lengths, padded[starts + j], 0).astype(np.uint64) * factors[j]
    return hashes


# ---------------------------------------------------------------- MinHash and LSH


class MinHasher:
    """MinHash signatures and LSH band keys for batches of texts.

    The permutations are h -> (a*h + b) mod 2**64, top 32 bits, for 32-bit shingle hashes h
    and random 64-bit a (odd) and b: Dietzfelbinger's multiply-add-shift family, strongly
    universal like (a*h + b) mod p but without a 64-bit division per element, which makes it
    4-6x faster in numpy. Defaults: 64 permutations in 8 bands of 8 rows, so a pair with
    Jaccard s becomes a candidate with probability 1 - (1 - s**8)**8 (0.77 at s=0.8, 0.99 at
    0.9, 0.03 at 0.5); see docs/dedup-and-splits.md for the S-curve.
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


def estimated_jaccard(sig_a, sig_b):
    """Share of equal signature values: a float for two signatures, an array for two (n, p) arrays."""
    equal = np.asarray(sig_a) == np.asarray(sig_b)
    return float(equal.mean()) if equal.ndim == 1 else equal.mean(axis=-1)


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
    return _unique_pairs(found)


def _bucket_pairs(keys, max_partners):
    """Pairs of row positions in one band's column that share a (non-empty) key."""
    order, starts, sizes = _runs(keys)
    rank = np.arange(len(keys)) - np.repeat(starts, sizes)
    partners = np.minimum(rank, max_partners)
    partners[keys[order] == EMPTY_BAND_KEY] = 0
    member = np.repeat(np.arange(len(keys)), partners)
    within = np.arange(len(member)) - np.repeat(np.cumsum(partners) - partners, partners)
    hub = np.repeat(np.repeat(starts, sizes), partners) + within
    # A stable sort keeps each bucket in row order, so the hub is always the smaller row.
    return np.stack([order[hub], order[member]], axis=1)


def _unique_pairs(pair_arrays):
    packed = np.concatenate([np.zeros(0, np.uint64)] + [pack_pairs(pairs) for pairs in pair_arrays])
    return unpack_pairs(sorted_unique(packed))


def pack_pairs(pairs):
    """(k, 2) row pairs (rows under 2**32) as one uint64 each, low row in the high half: 8
    bytes a pair, not 16, and sorting them sorts the pairs."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pack_rows(pairs[:, 0], pairs[:, 1])


def pack_rows(a, b):
    """`pack_pairs` of the pairs (a[i], b[i]), from two columns."""
    return np.minimum(a, b).astype(np.uint64) << np.uint64(32) | np.maximum(a, b).astype(np.uint64)


def packed_rows(packed):
    """The (low rows, high rows) of packed pairs, as int64 columns."""
    return (packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)


def unpack_pairs(packed):
    pairs = np.empty((len(packed), 2), dtype=np.int64)  # filled column by column: no temporaries
    pairs[:, 0] = packed >> np.uint64(32)
    pairs[:, 1] = packed & np.uint64(0xFFFFFFFF)
    return pairs


def uint64_blocks(spilled, size):
    """A file of uint64 values from where it stands, `size` values at a time."""
    while len(block := np.fromfile(spilled, dtype=np.uint64, count=size)):
        yield block


class NearDuplicateIndex:
    """Batches of texts in, their LSH band keys kept in memory, candidate pairs out: the
    whole search in one process for tools and tests (the ingest keeps the band keys on disk
    and asks DuckDB for the pairs: queries.create_candidates)."""

    def __init__(self, hasher=None, max_partners=MAX_PARTNERS):
        self.hasher = hasher or MinHasher()
        self.max_partners = max_partners
        self._rows, self._keys = [], []  # per batch added: its row indices and band keys

    def __len__(self):
        return sum(len(rows) for rows in self._rows)

    def add(self, texts, start_index):
        """Add texts that are rows start_index, start_index + 1, ... of the dataset."""
        self.add_band_keys(self.hasher.band_keys(self.hasher.signatures(texts)), start_index)

    def add_band_keys(self, keys, start_index):
        """Add (rows, bands) keys made elsewhere with this index's hasher (e.g. in a helper process)."""
        keys = np.asarray(keys, dtype=np.uint64)
        self._rows.append(np.arange(start_index, start_index + len(keys), dtype=np.int64))
        self._keys.append(keys)

    def candidate_pairs(self):
        """(k, 2) int64 pairs of dataset row indices i < j sharing a band key, sorted, without
        repeats; a capped bucket pairs its earliest-added rows."""
        rows = np.concatenate([np.zeros(0, np.int64), *self._rows])
        if len(sorted_unique(rows)) != len(rows):
            raise ValueError("two batches were added for the same row indices")
        keys = np.concatenate([np.zeros((0, self.hasher.bands), np.uint64), *self._keys])
        pairs = rows[candidate_pairs(keys, self.max_partners)]
        return unpack_pairs(sorted_unique(pack_pairs(np.sort(pairs, axis=1))))


# ---------------------------------------------------------------- verification


def verify_pairs(pairs, get_texts, threshold=NEAR_THRESHOLD, *, shingle_size=DEFAULT_SHINGLE_SIZE,
                 batch_pairs=5_000, return_similarity=False):
    """The candidate pairs whose shingle Jaccard is at least threshold, as a (k, 2) int64 array
    in the order given.

    get_texts(rows) gets a sorted int64 array of row indices and returns their texts in that
    order; it is called once per batch of batch_pairs pairs, so only those texts (and a few
    MB of arrays) are ever in memory. Pairs are checked family by family (connected rows
    together): a batch shingles each text it needs once, and a text shared by many pairs is
    shingled in one or two batches instead of in nearly every one (at a million rows of
    templated text, half the texts shingled and 13.9 -> 8.8 s, measured). With
    return_similarity, returns (pairs, similarity) with the Jaccard of each kept pair as
    float32. Shingles are compared by their 32-bit hashes: a chance collision (about 1e-5 per
    pair of short texts) can add one shared shingle. Two texts without shingles (empty,
    punctuation only) are identical.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    jaccard = np.zeros(len(pairs), dtype=np.float32)
    order = _by_family(pairs)
    for start in range(0, len(pairs), batch_pairs):
        part = order[start:start + batch_pairs]
        jaccard[part] = pair_jaccard(pairs[part], get_texts, shingle_size)
    kept = jaccard >= threshold
    if return_similarity:
        return pairs[kept], jaccard[kept]
    return pairs[kept]


def _by_family(pairs):
    """Positions of `pairs` ordered by connected component, then by their rows."""
    if not len(pairs):
        return np.zeros(0, np.int64)
    rows = sorted_unique(pairs.ravel())
    ends = np.stack([np.searchsorted(rows, pairs[:, 0]), np.searchsorted(rows, pairs[:, 1])], axis=1).astype(np.int32)
    family = components(len(rows), ends)[ends[:, 0]]
    return np.lexsort((ends[:, 1], ends[:, 0], family))


def pair_jaccard(pairs, get_texts, shingle_size=DEFAULT_SHINGLE_SIZE):
    """The shingle Jaccard of each pair; get_texts(rows) as for verify_pairs."""
    rows = sorted_unique(pairs.ravel())
    texts = list(get_texts(rows))
    if len(texts) != len(rows):
        raise ValueError(f"get_texts returned {len(texts)} texts for {len(rows)} rows")
    sets, counts = _shingle_sets(texts, shingle_size)
    left, right = np.searchsorted(rows, pairs[:, 0]), np.searchsorted(rows, pairs[:, 1])
    inter = _intersections(sets, counts, left, right)
    union = counts[left] + counts[right] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float32)


def _shingle_sets(texts, shingle_size):
    """Each text's distinct shingle hashes as sorted int64 (text << 32 | hash >> 32), and their counts.

    Built a chunk of texts at a time, so the big per-character temporaries stay small.
    """
    sets = []
    for start, end in _chunks(texts):
        hashes, counts = shingle_hashes(texts[start:end], shingle_size)
        owner = np.repeat(np.arange(start, end, dtype=np.int64), counts)
        sets.append(sorted_unique(owner << 32 | (hashes >> np.uint64(32)).astype(np.int64)))
    sets = np.concatenate([np.zeros(0, np.int64), *sets])
    return sets, np.bincount(sets >> 32, minlength=len(texts))


def _intersections(sets, counts, left, right, chunk=1024):
    """Shared shingles of texts left[i] and right[i]: look each of left's up in right's set.
    A chunk of pairs at a time: the lookups cost ~40 bytes a shingle while they run (40 MB
    for a batch of 5,000 pairs of 200-character texts at once)."""
    offsets = np.cumsum(counts) - counts
    shared = np.zeros(len(left), dtype=np.int64)
    for start in range(0, len(left), chunk):
        part = slice(start, start + chunk)
        shared[part] = _shared_shingles(sets, counts, offsets, left[part], right[part])
    return shared


def _shared_shingles(sets, counts, offsets, left, right):
    sizes = counts[left]
    within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    shingle = sets[np.repeat(offsets[left], sizes) + within] & 0xFFFFFFFF
    query = np.repeat(right.astype(np.int64), sizes) << 32 | shingle
    where = np.minimum(np.searchsorted(sets, query), max(len(sets) - 1, 0))
    found = sets[where] == query if len(sets) else np.zeros(0, bool)
    return np.bincount(np.repeat(np.arange(len(left)), sizes)[found], minlength=len(left))


# ---------------------------------------------------------------- connected components


def components(n, pairs, start=None):
    """Connected component of each of n rows linked by pairs; the id is the component's smallest row.

    Numpy hook-and-compress (Shiloach-Vishkin style): each round hooks every root to the
    smallest root it is linked to, then jumps pointers until every row points at its root.
    Rounds are few (logarithmic in practice), each a handful of vectorised passes. Pairs as
    (k, 2) rows or packed (pack_pairs); the result is int32 below 2**31 rows. `start`, if
    given, is a forest to begin from (each row's parent a row no later than itself, such as
    first_rows gives): rows it joins are joined without a pair each.
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


# Pairs components and keep-first take at a time: their temporaries stay a chunk's size.
PAIR_CHUNK = 1 << 18


def _pairs_array(pairs):
    """Pairs as given: packed (one-dimensional uint64) or as a (k, 2) array."""
    pairs = np.asarray(pairs)
    return pairs if pairs.ndim == 1 and pairs.dtype == np.uint64 else pairs.reshape(-1, 2)


def row_kind(n):
    """The integer type for row numbers of n rows: 32-bit where they fit, half the memory."""
    return np.int32 if n < 2**31 else np.int64


def pair_columns(pairs, n, kind):
    """The two rows of each pair as arrays of `kind`, from (k, 2) pairs or packed ones (a
    one-dimensional uint64 array, see pack_pairs: 8 bytes a pair, not 16, where they come
    from). Checks that they index rows 0..n-1."""
    pairs = _pairs_array(pairs)
    if pairs.ndim == 1:
        low, high = (pairs >> np.uint64(32)), (pairs & np.uint64(0xFFFFFFFF))
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


def keep_first(n, pairs):
    """Keep-first deduplication: walking pairs (i < j) by their later row, j becomes a duplicate
    of i when i is itself kept. Each row points at the kept row it duplicates (or itself).

    Unlike connected components this does not chain: A≈B and B≈C with A≉C keeps A and C,
    so a run of templated messages is not collapsed into one giant cluster. Pairs as (k, 2)
    rows or packed (pack_pairs); the result is int32 below 2**31 rows.
    """
    if n > 2**32:
        raise ValueError("keep_first takes up to 2**32 rows")
    pairs = _pairs_array(pairs)
    # By later row, then earlier: one uint64 a pair (later << 32 | earlier), made a chunk at a
    # time and sorted in place, instead of a lexsort's order and the pairs it orders.
    ordered = np.empty(len(pairs), dtype=np.uint64)
    for begin in range(0, len(pairs), PAIR_CHUNK):
        low, high = pair_columns(pairs[begin:begin + PAIR_CHUNK], n, np.uint64)
        ordered[begin:begin + len(low)] = high << np.uint64(32) | low
    ordered.sort()
    return _walk_keep_first(n, (ordered[start:start + 100_000] for start in range(0, len(ordered), 100_000)))


def keep_first_in_order(n, chunks):
    """`keep_first` of pairs that come in chunks (packed, see pack_pairs) already in its
    order: by larger row, then smaller, across all chunks. Holds a chunk at a time."""
    if n > 2**32:
        raise ValueError("keep_first takes up to 2**32 rows")
    return _walk_keep_first(n, (by_larger_row(chunk) for chunk in chunks))


def by_larger_row(packed):
    """Packed pairs (low << 32 | high) as high << 32 | low."""
    packed = np.asarray(packed, dtype=np.uint64)
    return (packed & np.uint64(0xFFFFFFFF)) << np.uint64(32) | (packed >> np.uint64(32))


def _walk_keep_first(n, ordered_chunks):
    reps = np.arange(n, dtype=row_kind(n))
    for ordered in ordered_chunks:
        # Python ints a slice at a time: a list of millions of pairs would cost more memory
        # than everything else in the ingest.
        for start in range(0, len(ordered), 100_000):
            chunk = ordered[start:start + 100_000]
            for j, i in zip((chunk >> np.uint64(32)).tolist(), (chunk & np.uint64(0xFFFFFFFF)).tolist()):
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
