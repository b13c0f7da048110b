"""Throughput and peak memory of exact keys, MinHash/LSH near duplicates and splits.

    python bench/dedup_bench.py --rows 1000000

Streams --rows synthetic customer messages (8-45 words, ~50-300 characters) in batches,
as ingest does: 2% of rows are near duplicates of an earlier row (one word changed, a
word appended, case and punctuation changed, or whitespace only). A row's text is a pure
function of its index, so no text is kept and verify_pairs fetches texts by regenerating
them. Text generation is not timed. Prints rows/s per stage, the recall of the planted
pairs and the process's peak RSS as JSON.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lifecycle.datasets.dedup import MinHasher, components  # noqa: E402
from lifecycle.datasets.splits import assign_splits, leakage_report  # noqa: E402
from tests.datasets.reference import NearDuplicateIndex, exact_keys, exact_pairs, verify_pairs  # noqa: E402

NEAR_EVERY = 50  # row i is a near duplicate when i % 50 == 49: 2% of rows
OPENERS = ["Hi,", "Hello team,", "Hey", "Good morning,", "Dear support,", "Urgent:", "", "", "", ""]


def mix(x):
    """splitmix64: a fixed, fast pseudo-random function of a uint64 array."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def vocabulary(size=5000):
    rng = np.random.default_rng(0)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = np.linspace(2.0, 0.1, len(letters))
    return ["".join(rng.choice(letters, rng.integers(2, 10), p=weights / weights.sum())) for _ in range(size)]


VOCAB = vocabulary()


def source_rows(rows):
    near = rows % NEAR_EVERY == NEAR_EVERY - 1
    back = 1 + mix(rows.astype(np.uint64) ^ np.uint64(0xA5)) % np.uint64(NEAR_EVERY - 1)
    return np.where(near & (rows >= NEAR_EVERY), rows - back.astype(np.int64), rows), near & (rows >= NEAR_EVERY)


def make_texts(rows):
    rows = np.asarray(rows, dtype=np.int64)
    source, near = source_rows(rows)
    length = 8 + (mix(source.astype(np.uint64)) % np.uint64(38)).astype(np.int64)
    position = np.arange(length.max() + 1, dtype=np.uint64)
    draws = mix(source.astype(np.uint64)[:, None] * np.uint64(64) + position[None, :])
    # Squared uniform draws: a few words are common, as in real messages.
    words = ((draws >> np.uint64(11)).astype(np.float64) / 2.0**53) ** 2 * len(VOCAB)
    kinds = (mix(rows.astype(np.uint64) ^ np.uint64(0x5A)) % np.uint64(4)).astype(np.int64)
    kinds = np.where(near, kinds, -1)
    columns = (rows.tolist(), source.tolist(), length.tolist(), words.astype(np.int64).tolist(), kinds.tolist())
    return [_text(*row) for row in zip(*columns)]


def _text(row, source, length, words, kind):
    tokens = [VOCAB[w] for w in words[:length]]
    if kind == 0:
        tokens[row % length] = VOCAB[(words[length] + 1) % len(VOCAB)]
    elif kind == 1:
        tokens.append(VOCAB[words[length]])
    opener = OPENERS[source % len(OPENERS)]
    text = f"{opener} {' '.join(tokens).capitalize()}{'?' if source % 3 else '.'}".strip()
    if kind == 2:
        return text.upper().replace("?", " ?!")
    return text.replace(" ", "  ", 2) if kind == 3 else text


def peak_rss_mb():
    try:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stopwatch:
    def __init__(self):
        self.seconds, self.peak_mb = {}, {}

    def time(self, name, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        self.peak_mb[name] = round(peak_rss_mb(), 1)  # the high-water mark when this stage ended
        return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--num-perm", type=int, default=64)
    parser.add_argument("--bands", type=int, default=8)
    args = parser.parse_args()
    n, watch = args.rows, Stopwatch()
    baseline_mb = peak_rss_mb()

    keys = np.empty(n, dtype=np.int64)
    index = NearDuplicateIndex(MinHasher(num_perm=args.num_perm, bands=args.bands))
    chars = 0
    for start in range(0, n, args.batch):
        texts = make_texts(np.arange(start, min(n, start + args.batch)))
        chars += sum(map(len, texts))
        keys[start:start + len(texts)] = watch.time("exact_keys", exact_keys, texts)
        watch.time("signatures_band_keys", index.add, texts, start)
    candidates = watch.time("candidate_pairs", index.candidate_pairs)
    near = watch.time("verify_pairs", verify_pairs, candidates, make_texts)
    units = watch.time("components", components, n, np.concatenate([exact_pairs(keys), near]))

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, n)
    groups = np.repeat(np.arange(n), rng.integers(1, 6, n))[:n]
    splits = watch.time("assign_splits", assign_splits, labels, groups=groups, units=units)
    report = watch.time("leakage_report", leakage_report, splits, exact_keys=keys, near_pairs=near, groups=groups)

    print(json.dumps({
        "rows": n,
        "hasher": repr(index.hasher),
        "mean_chars": round(chars / n, 1),
        "rows_per_s": {name: round(n / s) for name, s in watch.seconds.items()},
        "seconds": {name: round(s, 2) for name, s in watch.seconds.items()},
        "dedup_rows_per_s": round(n / sum(watch.seconds[k] for k in ("signatures_band_keys", "candidate_pairs"))),
        "candidates": int(len(candidates)),
        "verified": int(len(near)),
        "recall": planted_recall(n, candidates, near),
        "has_leakage": report["has_leakage"],
        "band_key_mb": round(len(index) * index.hasher.bands * 8 / 2**20, 1),
        "rss_mb_after_imports": round(baseline_mb, 1),
        "peak_rss_mb_after_stage": watch.peak_mb,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }, indent=2))


def planted_recall(n, candidates, verified):
    """Share of planted pairs with true Jaccard >= 0.8 that LSH proposed and verification kept."""
    rows = np.arange(NEAR_EVERY - 1 + NEAR_EVERY, n, NEAR_EVERY)
    planted = np.stack([source_rows(rows)[0], rows], axis=1)
    _, similarity = verify_pairs(planted, make_texts, threshold=0.0, return_similarity=True)
    high = planted[similarity >= 0.8]
    found = {tuple(p) for p in candidates.tolist()}
    kept = {tuple(p) for p in verified.tolist()}
    return {
        "planted": int(len(planted)),
        "planted_jaccard_ge_0_8": int(len(high)),
        "candidates": round(sum(tuple(p) in found for p in high.tolist()) / max(len(high), 1), 4),
        "verified": round(sum(tuple(p) in kept for p in high.tolist()) / max(len(high), 1), 4),
    }


if __name__ == "__main__":
    main()
