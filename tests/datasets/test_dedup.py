"""Exact keys, MinHash/LSH near duplicates, verification and components (no database)."""
import hashlib
import random

import numpy as np
import pytest
from datasketch import MinHash

from lifecycle.datasets.dedup import (
    EMPTY_BAND_KEY,
    MinHasher,
    components,
    exact_duplicate_summary,
    exact_key,
    first_rows,
    normalize,
    shingle_hashes,
)
from tests.datasets import reference

WORDS = (
    "order refund delivery parcel invoice account password login charge card subscription "
    "cancel upgrade address shipping tracking broken damaged missing late payment billing "
    "support agent manager discount coupon voucher return exchange warranty receipt email "
    "phone number update change wrong item size colour color store online app crash error"
).split()

TRICKY = [
    "Where is my order #123?",
    "  ＦＵＬＬ－ＷＩＤＴＨ\ttext\n\nand Straße ",
    "\u0301starts with a combining accent",
    "café vs cafe\u0301 — the same after NFKC",
    "¿Dónde está mi pedido? «¡Ya!»",
    "emoji 😡😡 and $100 + tax",
    "under_score and ellipsis…",
    "nul\x00inside",
    "ok",
    "?!?",
    "",
    "abcde",
    "hindi किताब",
]


def sentence(rng, words=20):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def true_jaccard(a, b):
    sa, sb = reference.shingles(a), reference.shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def texts_getter(texts):
    return lambda rows: [texts[i] for i in rows]


# ---------------------------------------------------------------- normalisation and exact keys


def test_normalize_folds_width_case_and_whitespace_but_keeps_punctuation():
    assert normalize("  ＨＥＬＬＯ\t\u00a0Straße\n") == "hello strasse"
    assert normalize("Refund?") != normalize("Refund!")


def test_exact_key_is_blake2b_of_the_normalized_text_as_signed_int64():
    expected = int.from_bytes(hashlib.blake2b(b"where is my order", digest_size=8).digest(), "big", signed=True)
    assert exact_key("  Where IS   my order ") == expected
    assert -(2**63) <= expected < 2**63


def test_exact_keys_match_exact_key_and_separate_punctuation():
    texts = ["Hello world", "hello   WORLD", "Hello world!", ""]
    keys = reference.exact_keys(texts)
    assert keys.dtype == np.int64
    assert keys.tolist() == [exact_key(t) for t in texts]
    assert keys[0] == keys[1] and keys[0] != keys[2]


def test_exact_duplicate_summary_counts_planted_duplicates():
    texts = ["a b", "c", "A  B", "d", "c", "a b"]
    summary = exact_duplicate_summary(first_rows(reference.exact_keys(texts)))
    assert summary == {"rows": 3, "groups": 2, "examples": [[0, 2, 5], [1, 4]]}


def test_exact_duplicate_summary_edge_cases():
    assert exact_duplicate_summary(first_rows(np.zeros(0, np.int64))) == {"rows": 0, "groups": 0, "examples": []}
    assert exact_duplicate_summary(first_rows(reference.exact_keys(["one"])))["groups"] == 0
    same = exact_duplicate_summary(first_rows(reference.exact_keys(["same"] * 9)))
    assert same == {"rows": 8, "groups": 1, "examples": [[0, 1, 2, 3, 4]]}
    many = exact_duplicate_summary(first_rows(np.repeat(np.arange(30), 2)), examples=20)
    assert many["groups"] == 30 and len(many["examples"]) == 20 and many["examples"][0] == [0, 1]


def test_exact_pairs_link_duplicates_to_their_first_row():
    pairs = reference.exact_pairs(reference.exact_keys(["x", "y", "x", "x", "y", "z"]))
    assert sorted(pairs.tolist()) == [[0, 2], [0, 3], [1, 4]]
    assert components(6, pairs).tolist() == [0, 1, 0, 0, 1, 5]


# ---------------------------------------------------------------- shingles


def test_shingles_of_short_and_empty_texts():
    assert reference.shingles("Where is my order #123?") == reference.shingles("where is my order 123")
    assert reference.shingles("OK!") == {"ok"}
    assert reference.shingles("?!?") == set() and reference.shingles("") == set()
    assert reference.shingles("abcde") == {"abcde"}
    assert reference.shingles("abcdef") == {"abcde", "bcdef"}


def test_normalize_for_shingles_turns_punctuation_into_single_spaces():
    assert reference.normalize_for_shingles("  Hello,world!!  How's   it… going?") == "hello world how s it going"
    assert reference.normalize_for_shingles("¿Dónde? «¡Ya!»") == "dónde ya"


def test_batched_shingle_hashes_match_the_reference_shingles():
    hashes, counts = shingle_hashes(TRICKY)
    assert counts.tolist() == [_count(t) for t in TRICKY]
    for text, group in zip(TRICKY, np.split(hashes, np.cumsum(counts)[:-1])):
        assert len(np.unique(group)) == len(reference.shingles(text)), text


def _count(text):
    normalized = reference.normalize_for_shingles(text)
    return max(len(normalized) - 4, 1) if normalized else 0


def test_a_texts_shingle_hashes_do_not_depend_on_its_neighbours_in_the_batch():
    alone = [shingle_hashes([text])[0] for text in TRICKY]
    hashes, counts = shingle_hashes(list(reversed(TRICKY)))
    together = list(reversed(np.split(hashes, np.cumsum(counts)[:-1])))
    for text, a, b in zip(TRICKY, alone, together):
        assert np.array_equal(a, b), text


# ---------------------------------------------------------------- MinHash against datasketch


def test_estimated_jaccard_agrees_with_datasketch_and_the_true_jaccard():
    rng = random.Random(7)
    hasher = MinHasher(num_perm=256, bands=32)
    mine, theirs = [], []
    for _ in range(40):
        base = sentence(rng, 25).split()
        edited = list(base)
        for i in rng.sample(range(25), rng.randint(0, 12)):
            edited[i] = rng.choice(WORDS)
        a, b = " ".join(base), " ".join(edited)
        truth = true_jaccard(a, b)
        sig = hasher.signatures([a, b])
        mine.append(reference.estimated_jaccard(sig[0], sig[1]) - truth)
        theirs.append(_datasketch(a).jaccard(_datasketch(b)) - truth)
    mine, theirs = np.abs(mine), np.abs(theirs)
    # 256 permutations: standard error <= 0.031, so 0.13 is four of them.
    assert mine.max() < 0.13 and theirs.max() < 0.13
    assert mine.mean() < 0.04
    assert mine.mean() < theirs.mean() + 0.02


def _datasketch(text):
    minhash = MinHash(num_perm=256, seed=1)
    for shingle in reference.shingles(text):
        minhash.update(shingle.encode("utf-8"))
    return minhash


def test_signatures_do_not_depend_on_how_a_batch_is_chunked(monkeypatch):
    from lifecycle.datasets import dedup

    rng = random.Random(3)
    texts = [sentence(rng, rng.randint(1, 40)) for _ in range(30)] + ["word " * 20_000, ""] + TRICKY
    whole = MinHasher().signatures(texts)
    monkeypatch.setattr(dedup, "_CHUNK_TEXTS", 3)
    monkeypatch.setattr(dedup, "_CHUNK_CHARS", 100)
    assert np.array_equal(MinHasher().signatures(texts), whole)
    assert np.array_equal(MinHasher().signatures([texts[30]])[0], whole[30])


def test_signatures_are_deterministic_per_seed():
    texts = ["reset my password please", "my card was charged twice"]
    assert np.array_equal(MinHasher(seed=3).signatures(texts), MinHasher(seed=3).signatures(texts))
    assert not np.array_equal(MinHasher(seed=3).signatures(texts), MinHasher(seed=4).signatures(texts))


def test_estimated_jaccard_rowwise_on_arrays():
    sig = MinHasher().signatures(["same text here", "same text here", "something else entirely"])
    assert reference.estimated_jaccard(sig[[0, 0]], sig[[1, 2]]).tolist()[0] == 1.0
    assert reference.estimated_jaccard(sig[0], sig[2]) < 0.2


def test_minhasher_rejects_bands_that_do_not_divide_num_perm():
    with pytest.raises(ValueError):
        MinHasher(num_perm=64, bands=7)


# ---------------------------------------------------------------- LSH candidates and verification


def planted_corpus():
    rng = random.Random(11)
    unrelated = [sentence(rng, rng.randint(8, 30)) for _ in range(300)]
    long_a = "Hello, I ordered a blue jacket three weeks ago and it still has not arrived at my address in Leeds"
    long_b = long_a.replace("blue", "green")
    texts = unrelated + ["Where is my order #123?", long_a, "OK!", "where is my order #124 ?", long_b, "ok"]
    planted = {(300, 303), (301, 304), (302, 305)}
    return texts, planted


def test_planted_near_duplicates_are_found_and_unrelated_texts_are_not():
    texts, planted = planted_corpus()
    hasher = MinHasher()
    pairs = reference.candidate_pairs(hasher.band_keys(hasher.signatures(texts)))
    found = {tuple(p) for p in pairs.tolist()}
    assert planted <= found
    verified, similarity = reference.verify_pairs(pairs, texts_getter(texts), threshold=0.8, return_similarity=True)
    assert {tuple(p) for p in verified.tolist()} == planted
    assert (similarity >= 0.8).all()
    assert true_jaccard(texts[301], texts[304]) > 0.8


def test_verify_pairs_computes_exact_jaccard_and_drops_false_positives():
    texts = ["where is my order 123", "where is my order 124", "completely different words", "", "?!"]
    pairs = np.array([[0, 1], [0, 2], [3, 4]])
    kept, similarity = reference.verify_pairs(pairs, texts_getter(texts), threshold=0.5, return_similarity=True)
    assert kept.tolist() == [[0, 1], [3, 4]]
    assert similarity[0] == pytest.approx(true_jaccard(texts[0], texts[1]))
    assert similarity[1] == 1.0  # two texts without shingles count as identical


def test_verify_pairs_fetches_texts_in_batches_of_rows():
    texts, planted = planted_corpus()
    calls = []

    def get_texts(rows):
        calls.append(rows.tolist())
        return [texts[i] for i in rows]

    pairs = np.array(sorted(planted))
    kept = reference.verify_pairs(pairs, get_texts, batch_pairs=2)
    assert kept.tolist() == [list(p) for p in sorted(planted)]  # in the order given
    assert len(calls) == 2 and sorted(len(rows) for rows in calls) == [2, 4]


def test_verify_pairs_checks_a_family_of_rows_in_one_batch():
    """Rows linked through pairs are fetched together, not once per batch they appear in."""
    texts = ["where is my order 123", "where is my order 124", "where is my order 125",
             "refund for the broken kettle", "refund for the broken kettles", "refund for a broken kettle"]
    calls = []

    def get_texts(rows):
        calls.append(rows.tolist())
        return [texts[i] for i in rows]

    # Given interleaved, the two families of three rows each come out as one batch each.
    pairs = np.array([[0, 1], [3, 4], [1, 2], [4, 5], [0, 2], [3, 5]])
    kept = reference.verify_pairs(pairs, get_texts, threshold=0.5, batch_pairs=3)
    assert calls == [[0, 1, 2], [3, 4, 5]]
    assert kept.tolist() == pairs.tolist()


def test_the_separator_table_covers_every_code_point():
    """Only the first two planes are looked at: nothing above them is whitespace or punctuation."""
    import unicodedata

    from lifecycle.datasets.dedup import _SEPARATORS_BELOW, _separator_table

    table = _separator_table()
    assert not any(chr(cp).isspace() or unicodedata.category(chr(cp))[0] == "P"
                   for cp in range(_SEPARATORS_BELOW, 0x110000))
    assert table[[ord(" "), ord("\u3000"), ord("¿"), ord("…"), ord("_"), 0x1039F]].all()
    assert not table[[ord("a"), ord("$"), ord("😡"), ord("\u0301")]].any()


def test_verify_pairs_rejects_a_getter_that_returns_the_wrong_number_of_texts():
    with pytest.raises(ValueError):
        reference.verify_pairs(np.array([[0, 1]]), lambda rows: ["only one"])


def test_texts_without_shingles_are_never_candidates():
    hasher = MinHasher()
    sig = hasher.signatures(["", "?!", "", "real text"])
    assert (sig[:3] == 0xFFFFFFFF).all()
    keys = hasher.band_keys(sig)
    assert (keys[:3] == EMPTY_BAND_KEY).all() and (keys[3] != EMPTY_BAND_KEY).all()
    assert reference.candidate_pairs(keys).shape == (0, 2)


def test_a_huge_bucket_is_capped_but_stays_connected():
    hasher = MinHasher()
    keys = hasher.band_keys(hasher.signatures(["thanks"] * 100))
    pairs = reference.candidate_pairs(keys)
    assert len(pairs) == sum(min(rank, reference.MAX_PARTNERS) for rank in range(100))
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert (components(100, pairs) == 0).all()


def test_small_buckets_give_every_pair_once():
    keys = np.array([[5, 9], [5, 9], [7, 9], [5, 1]], dtype=np.uint64)
    assert reference.candidate_pairs(keys).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3]]


def test_empty_and_single_row_inputs():
    hasher = MinHasher()
    assert hasher.signatures([]).shape == (0, 64)
    assert hasher.band_keys(hasher.signatures([])).shape == (0, 8)
    assert reference.candidate_pairs(np.zeros((0, 8), np.uint64)).shape == (0, 2)
    assert reference.candidate_pairs(hasher.band_keys(hasher.signatures(["one row"]))).shape == (0, 2)
    kept, similarity = reference.verify_pairs(np.zeros((0, 2), np.int64), texts_getter([]), return_similarity=True)
    assert kept.shape == (0, 2) and similarity.shape == (0,)
    assert components(0, np.zeros((0, 2))).shape == (0,)


def test_all_identical_texts_form_one_cluster():
    texts = ["Same message, every time."] * 40
    index = reference.NearDuplicateIndex()
    index.add(texts, 0)
    verified = reference.verify_pairs(index.candidate_pairs(), texts_getter(texts))
    assert (components(40, verified) == 0).all()


# ---------------------------------------------------------------- streaming index


def test_index_in_batches_matches_one_batch_and_uses_row_offsets():
    texts, planted = planted_corpus()
    hasher = MinHasher()
    whole = reference.candidate_pairs(hasher.band_keys(hasher.signatures(texts)))
    index = reference.NearDuplicateIndex(hasher)
    for start in range(0, len(texts), 70):
        index.add(texts[start:start + 70], start)
    assert len(index) == len(texts)
    assert np.array_equal(index.candidate_pairs(), whole)

    shifted = reference.NearDuplicateIndex(hasher)
    shifted.add(texts, 1000)
    assert np.array_equal(shifted.candidate_pairs(), whole + 1000)


def crowded_corpus():
    """The planted corpus with big buckets: many copies of one text and a run of templated ones."""
    texts, _ = planted_corpus()
    rng = random.Random(5)
    texts = texts + ["thank you so much"] * 40 + [f"please refund order {n} for my account" for n in range(60)]
    rng.shuffle(texts)
    return texts


def test_index_rejects_overlapping_batches():
    index = reference.NearDuplicateIndex()
    index.add(["a text", "another"], 0)
    index.add(["a third"], 1)
    with pytest.raises(ValueError):
        index.candidate_pairs()


def test_empty_index_has_no_pairs():
    assert reference.NearDuplicateIndex().candidate_pairs().shape == (0, 2)


# ---------------------------------------------------------------- components


def test_components_match_a_reference_union_find():
    rng = np.random.default_rng(5)
    for n, edges in [(50, 10), (200, 150), (500, 1000), (1000, 5000)]:
        pairs = rng.integers(0, n, size=(edges, 2))
        assert components(n, pairs).tolist() == _reference_components(n, pairs.tolist())


def _reference_components(n, pairs):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return [find(x) for x in range(n)]


def test_components_on_a_long_chain_and_out_of_range_pairs():
    n = 10_000
    chain = np.stack([np.arange(1, n), np.arange(n - 1)], axis=1)[::-1]
    assert (components(n, chain) == 0).all()
    with pytest.raises(ValueError):
        components(3, [[0, 3]])


# ---------------------------------------------------------------- first rows, chunked forms


def _reference_first_rows(keys, ignore_negative=False):
    seen = {}
    return [row if ignore_negative and key < 0 else seen.setdefault(key, row) for row, key in enumerate(keys)]


def test_first_rows_match_a_reference():
    """For 63-bit hashes, small codes and negative keys."""
    rng = np.random.default_rng(3)
    for keys in (rng.integers(-2**63, 2**63 - 1, 400)[rng.integers(0, 400, 1000)],  # hashes, repeated
                 rng.integers(-1, 30, 1000),  # small codes, -1 = none
                 np.zeros(0, np.int64), np.array([5])):
        for ignore in (False, True):
            found = first_rows(keys, ignore_negative=ignore)
            assert found.dtype == np.int32
            assert found.tolist() == _reference_first_rows(keys.tolist(), ignore)
    with pytest.raises(ValueError):
        first_rows(np.array([0.5, 1.5]))


def test_components_from_a_start_forest_equal_the_pairs_way_and_leave_the_forest_alone():
    rng = np.random.default_rng(8)
    n = 2_000
    groups = rng.integers(-1, 300, n)
    pairs = rng.integers(0, n, size=(500, 2))
    start = first_rows(groups, ignore_negative=True)
    before = start.copy()
    group_pairs = np.stack([start, np.arange(n)], axis=1)
    assert (components(n, pairs, start=start) == components(n, np.concatenate([pairs, group_pairs]))).all()
    assert (start == before).all()  # hooking works on a copy


def test_packed_pairs_and_chunks_give_the_same_components_and_keep_first(monkeypatch):
    from lifecycle.datasets import dedup

    rng = np.random.default_rng(9)
    n = 3_000
    pairs = np.sort(rng.integers(0, n, size=(2_500, 2)), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    whole, reps = components(n, pairs), reference.keep_first(n, pairs)
    monkeypatch.setattr(dedup, "PAIR_CHUNK", 17)
    packed = dedup.pack_pairs(pairs)
    assert (components(n, packed) == whole).all() and (reference.keep_first(n, packed) == reps).all()
    ordered = packed[np.argsort(reference.by_larger_row(packed))]
    assert (dedup.keep_first_in_order(n, np.array_split(ordered, 9)) == reps).all()
    assert (dedup.components_of_chunks(n, np.array_split(packed, 5)) == whole).all()
    assert reps.dtype == np.int32 and whole.dtype == np.int32


def test_cluster_ids_mark_kept_rows_with_duplicates_and_their_duplicates(monkeypatch):
    from lifecycle.datasets import dedup

    reps = np.array([0, 0, 2, 3, 3, 3, 6])
    assert dedup.cluster_ids(reps).tolist() == [0, 0, -1, 3, 3, 3, -1]
    assert dedup.cluster_ids(reps, chunk=2).tolist() == [0, 0, -1, 3, 3, 3, -1]
    assert dedup.cluster_ids(np.zeros(0, np.int32)).tolist() == []
